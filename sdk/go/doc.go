// Package microsandbox is the Go SDK of msb: named volumes, host-side
// access to their files, mounts, and sandboxes that use them. It is a thin
// binding over the msb Rust library (linked statically through its C ABI,
// crate crates/capi); every behaviour is the Rust library's.
//
// The home is $MSB_HOME, else ~/.microsandbox, read at each call.
// Sandboxes need the msb binary as their helper: $MSB_BIN, next to the
// program, or on PATH. Build the native library with build-native.sh (or
// go generate) before go build; see README.md.
package microsandbox

//go:generate ./build-native.sh
