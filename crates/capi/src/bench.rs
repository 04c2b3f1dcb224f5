//! The Rust side of the Go SDK's benchmarks: the same operations through
//! the Rust API, timed in this library's runtime, so one `go test -bench`
//! run can print Go's cost next to Rust's.

use std::ffi::c_char;
use std::time::Instant;

use msb::{Volume, VolumeStore};
use serde::Deserialize;

use crate::error::CallError;
use crate::{give_string, guarded, runtime, str_arg};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Bench {
    /// `create_remove`, `get`, `list` or `fs_write_read`.
    op: String,
    n: u32,
    /// The volume (`get`, `fs_*`) or the name prefix (`create_remove`).
    #[serde(default)]
    name: String,
    /// The file (`fs_*`), rewritten by every pair: creating a new file
    /// each time would time ext4's inode allocator instead.
    #[serde(default)]
    path: String,
    /// Bytes written (`fs_*`).
    #[serde(default)]
    size: usize,
}

async fn run(b: &Bench) -> Result<(), CallError> {
    let data = vec![0x5a_u8; b.size];
    match b.op.as_str() {
        "create_remove" => {
            for i in 0..b.n {
                let name = format!("{}{i}", b.name);
                Volume::builder(name.as_str()).create().await?;
                Volume::remove(&name).await?;
            }
        }
        "get" => {
            for _ in 0..b.n {
                Volume::get(&b.name).await?;
            }
        }
        "list" => {
            for _ in 0..b.n {
                Volume::list().await?;
            }
        }
        // What one Go `Write` and one `Read` do: open the volume's files
        // (the volume looked up by name) for each operation.
        "fs_write_read" => {
            for _ in 0..b.n {
                let path = b.path.as_str();
                let store = VolumeStore::default_home()?;
                store
                    .files(&b.name, true)
                    .await?
                    .write(path, &data)
                    .map_err(fs)?;
                let got = store.files(&b.name, false).await?.read(path).map_err(fs)?;
                assert_eq!(got.len(), data.len());
            }
        }
        other => {
            return Err(CallError::new(
                "InvalidArgument",
                format!("unknown benchmark {other:?}"),
            ));
        }
    }
    Ok(())
}

fn fs(e: msb::FsError) -> CallError {
    msb::Error::from(e).into()
}

/// Times benchmark `input` (JSON: `op`, `n`, and `name`, `path`, `size` as
/// the operation needs) through the Rust API in one task, and returns
/// `{"ok": {"ns_per_op": N}}` or `{"err": ERROR}`; the caller frees the
/// string with [`crate::msb_string_free`].
///
/// # Safety
/// `input` is a valid NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn msb_bench_rust(input: *const c_char) -> *mut c_char {
    let result = guarded(|| {
        // SAFETY: forwarded caller contract.
        let input = unsafe { str_arg(input, "input")? };
        let b: Bench = serde_json::from_str(input)
            .map_err(|e| CallError::new("InvalidArgument", e.to_string()))?;
        let start = Instant::now();
        runtime().block_on(run(&b))?;
        Ok(start.elapsed().as_nanos() as f64 / f64::from(b.n.max(1)))
    });
    give_string(match result {
        Ok(ns) => format!("{{\"ok\":{{\"ns_per_op\":{ns}}}}}"),
        Err(e) => format!("{{\"err\":{}}}", e.to_json()),
    })
}
