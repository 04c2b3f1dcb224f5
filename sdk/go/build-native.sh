#!/usr/bin/env bash
# Builds the native library the Go SDK links (crate crates/capi, a static
# library) and the msb binary that sandboxes need as their helper, and
# copies both into sdk/go/native/. Run it once after cloning and after
# changing the Rust code; `go generate` in sdk/go runs it too.
#   MSB_CAPI_PROFILE=release (default) or debug
#   CARGO_TARGET_DIR as for cargo (default: the workspace's target/)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
profile=${MSB_CAPI_PROFILE:-release}
target=${CARGO_TARGET_DIR:-$repo/target}
export PATH="$HOME/.cargo/bin:$PATH"
flag=()
[ "$profile" = release ] && flag=(--release)
(cd "$repo" && cargo build "${flag[@]}" -p msb-capi -p msb --lib --bin msb)
mkdir -p "$here/native"
# Copied, not linked: cgo must not see a stale library if the target moves.
cp "$target/$profile/libmsb_capi.a" "$here/native/libmsb_capi.a.tmp"
mv "$here/native/libmsb_capi.a.tmp" "$here/native/libmsb_capi.a"
cp "$target/$profile/msb" "$here/native/msb.tmp"
mv "$here/native/msb.tmp" "$here/native/msb"
echo "native library and msb binary in $here/native ($profile)"
