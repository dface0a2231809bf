#!/usr/bin/env bash
# Builds every guest module for wasm32-wasip1 and copies each .wasm to modules/dist/<name>.wasm,
# then builds the programs in COMPONENTS again for wasm32-wasip2 (WASI 0.2 components, the same
# behaviour) as modules/dist/<name>-c.wasm; it prints one line per file with its size. Works from any directory. Quick when nothing
# changed: cargo skips the build, and a file in dist/ is replaced only when its bytes differ,
# so a worker hot-reloading dist/ sees no spurious changes.
#
# Then the language runners (py, csvstats, js: lang/build.sh), which need python3 and npm:
#   --languages=auto  (default) builds them when python3 and npm are installed, else says so
#   --languages=yes   builds them or fails (the test suite uses this)
#   --languages=no    skips them
#
# CARGO_TARGET_DIR may point elsewhere; it defaults to modules/target.
set -euo pipefail

languages=auto
for arg in "$@"; do
  case "$arg" in
    --languages=auto | --languages=yes | --languages=no) languages="${arg#--languages=}" ;;
    *)
      echo "usage: modules/build.sh [--languages=auto|yes|no]" >&2
      exit 2
      ;;
  esac
done

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# Programs also shipped as components, named <name>-c: two useful ones and those the outcome
# and contract tests need.
COMPONENTS=(upper wc echo exit sleep spin membomb trap flood recurse escape lookup probe)

for target in wasm32-wasip1 wasm32-wasip2; do
  if ! rustup target list --installed | grep -qx "$target"; then
    echo "installing the $target target"
    rustup target add "$target"
  fi
done

target_dir="${CARGO_TARGET_DIR:-$here/target}"
locked=()
if [[ -f "$here/Cargo.lock" ]]; then
  locked=(--locked)
fi
cargo build --quiet --release --target wasm32-wasip1 "${locked[@]}" \
  --manifest-path "$here/Cargo.toml" --target-dir "$target_dir"
bins=()
for name in "${COMPONENTS[@]}"; do
  bins+=(--bin "$name")
done
cargo build --quiet --release --target wasm32-wasip2 "${locked[@]}" "${bins[@]}" \
  --manifest-path "$here/Cargo.toml" --target-dir "$target_dir"

dist="$here/dist"
mkdir -p "$dist"

# Copies $1 to dist/$2.wasm unless it is already there, and prints its size.
install_guest() {
  local wasm="$1" name="$2"
  if ! cmp -s "$wasm" "$dist/$name.wasm"; then
    # Copy then rename, so a watcher never sees a half-written module.
    cp "$wasm" "$dist/.$name.wasm.tmp"
    mv -f "$dist/.$name.wasm.tmp" "$dist/$name.wasm"
  fi
  printf '%-10s %10d bytes\n' "$name" "$(stat -c %s "$dist/$name.wasm")"
}

# One module per src/bin/<name>.rs; naming them here (rather than globbing the target
# directory) keeps a stale .wasm of a removed module out of dist/.
for source in "$here"/src/bin/*.rs; do
  name="$(basename "$source" .rs)"
  install_guest "$target_dir/wasm32-wasip1/release/$name.wasm" "$name"
done
for name in "${COMPONENTS[@]}"; do
  install_guest "$target_dir/wasm32-wasip2/release/$name.wasm" "$name-c"
done

case "$languages" in
  no) ;;
  yes) bash "$here/lang/build.sh" "$dist" ;;
  auto)
    if command -v python3 > /dev/null && command -v npm > /dev/null; then
      bash "$here/lang/build.sh" "$dist"
    else
      echo "skipping py, csvstats and js: they need python3 and npm (Node 20); see modules/README.md"
    fi
    ;;
esac
