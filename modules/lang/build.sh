#!/usr/bin/env bash
# Builds the language runners into a modules directory ($1, default modules/dist): `py` (the
# generic Python runner), `csvstats` (a Python app baked into a module) and `js` (the generic
# JavaScript runner), each a pre-initialised WASI 0.2 component.
#
# The tools are pinned and installed here, never fetched at run time: componentize-py from
# python/requirements.txt (hash-checked) into python/.venv, componentize-js from js/package-lock.json
# (`npm ci`) into js/node_modules. A runner is rebuilt only when its sources, the WIT or the tool
# changed (a stamp of their sha256 next to the output), and dist/ is replaced atomically.
#
# Needs python3 (with venv) and npm; exits 3 naming what is missing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dist="${1:-$here/../dist}"
mkdir -p "$dist"
dist="$(cd "$dist" && pwd)"
stamps="$dist/.lang-stamps"
mkdir -p "$stamps"

for tool in python3 npm; do
  if ! command -v "$tool" > /dev/null; then
    echo "modules/lang/build.sh: $tool is not installed; py, csvstats and js need python3 and npm (Node 20)" >&2
    exit 3
  fi
done

venv="$here/python/.venv"
if [[ ! -x "$venv/bin/componentize-py" ]] \
  || ! cmp -s "$here/python/requirements.txt" "$venv/requirements.txt"; then
  echo "installing componentize-py into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --require-hashes --no-deps -r "$here/python/requirements.txt"
  cp "$here/python/requirements.txt" "$venv/requirements.txt"
fi

if [[ ! -x "$here/js/node_modules/.bin/componentize-js" ]] \
  || ! cmp -s "$here/js/package-lock.json" "$here/js/node_modules/.package-lock.json.installed"; then
  echo "installing componentize-js into $here/js/node_modules (npm ci)"
  (cd "$here/js" && npm ci --no-audit --no-fund --loglevel=error)
  cp "$here/js/package-lock.json" "$here/js/node_modules/.package-lock.json.installed"
fi

# Prints the sha256 of every file given, and of the WIT, as one fingerprint.
fingerprint() {
  cat "$@" $(find "$here/wit" -name '*.wit' | sort) | sha256sum | cut -d' ' -f1
}

# build <name> <fingerprint> <command...>: runs the command (which writes $out) unless
# dist/<name>.wasm was built from the same fingerprint, then installs it atomically.
build() {
  local name="$1" print="$2"
  shift 2
  local target="$dist/$name.wasm"
  if [[ -f "$target" && "$(cat "$stamps/$name" 2> /dev/null)" == "$print" ]]; then
    printf '%-10s %10d bytes (up to date)\n' "$name" "$(stat -c %s "$target")"
    return
  fi
  out="$dist/.$name.wasm.tmp"
  "$@"
  mv -f "$out" "$target"
  echo "$print" > "$stamps/$name"
  printf '%-10s %10d bytes\n' "$name" "$(stat -c %s "$target")"
}

python_app() {
  "$venv/bin/componentize-py" --wit-path "$here/wit" --world command \
    componentize --python-path "$app" app --output "$out" > /dev/null
}

for app_name in py csvstats; do
  app="$here/python/$app_name"
  build "$app_name" "$(fingerprint "$app/app.py" "$here/python/requirements.txt")" python_app
done

# Without `http` and `fetch-event`: the runner would import wasi:http, which workers do not
# provide (tasks have no network), and fail to load.
js_app() {
  (cd "$here/js" && node_modules/.bin/componentize-js --wit ../wit --world-name command \
    --disable http fetch-event --out "$out" runner.js > /dev/null)
}
build js "$(fingerprint "$here/js/runner.js" "$here/js/package-lock.json" "$0")" js_app
