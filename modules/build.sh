#!/usr/bin/env bash
# Builds every guest module for wasm32-wasip1 and copies each .wasm to modules/dist/<name>.wasm,
# printing one line per module with its size. Works from any directory. Quick when nothing
# changed: cargo skips the build, and a file in dist/ is replaced only when its bytes differ,
# so a worker hot-reloading dist/ sees no spurious changes.
#
# CARGO_TARGET_DIR may point elsewhere; it defaults to modules/target.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
target=wasm32-wasip1

if ! rustup target list --installed | grep -qx "$target"; then
  echo "installing the $target target"
  rustup target add "$target"
fi

target_dir="${CARGO_TARGET_DIR:-$here/target}"
locked=()
if [[ -f "$here/Cargo.lock" ]]; then
  locked=(--locked)
fi
cargo build --quiet --release --target "$target" "${locked[@]}" \
  --manifest-path "$here/Cargo.toml" --target-dir "$target_dir"

dist="$here/dist"
mkdir -p "$dist"
# One module per src/bin/<name>.rs; naming them here (rather than globbing the target
# directory) keeps a stale .wasm of a removed module out of dist/.
for source in "$here"/src/bin/*.rs; do
  name="$(basename "$source" .rs)"
  wasm="$target_dir/$target/release/$name.wasm"
  if ! cmp -s "$wasm" "$dist/$name.wasm"; then
    # Copy then rename, so a watcher never sees a half-written module.
    cp "$wasm" "$dist/.$name.wasm.tmp"
    mv -f "$dist/.$name.wasm.tmp" "$dist/$name.wasm"
  fi
  printf '%-10s %10d bytes\n' "$name" "$(stat -c %s "$dist/$name.wasm")"
done
