//! A C ABI over the msb Rust API, built as a static library that the Go SDK
//! (`sdk/go`) links with cgo. The declarations are in `include/msb_capi.h`.
//!
//! The boundary is small: one JSON call for everything that is not bulk
//! data ([`msb_call`]), one call for a volume's files with the data passed
//! as pointer and length ([`msb_fs`]), one for volume records in a compact
//! binary form ([`msb_volumes`], so a listing of many volumes is cheap to
//! decode), one to collect a command's output ([`msb_exec_wait`]), and the
//! two free functions.
//!
//! Ownership: every string or buffer returned by this library belongs to
//! the caller, who frees it exactly once with [`msb_string_free`] or
//! [`msb_bytes_free`]. Everything passed in stays the caller's and is only
//! read during the call. No panic crosses the boundary: a panic becomes an
//! error of kind `Internal`. Errors are the JSON object
//! `{"kind": KIND, "message": MESSAGE}`, KIND being one of the stable names
//! in the header.
//!
//! The library owns one Tokio runtime; calls block the calling thread until
//! done and may come from any number of threads at once.

mod bench;
mod error;
mod ops;

use std::ffi::{CStr, CString, c_char};
use std::os::unix::ffi::OsStrExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::OnceLock;

pub use error::CallError;

/// The runtime every call runs on.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .thread_name("msb-capi")
            .enable_all()
            .build()
            .expect("cannot start the msb runtime")
    })
}

/// Runs `f`, turning a panic into an `Internal` error.
fn guarded<T>(f: impl FnOnce() -> Result<T, CallError>) -> Result<T, CallError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let what = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(CallError::new("Internal", format!("msb panicked: {what}")))
    })
}

/// A string handed to the caller (JSON never holds a NUL byte).
fn give_string(s: String) -> *mut c_char {
    CString::new(s)
        .unwrap_or_else(|_| {
            c"{\"err\":{\"kind\":\"Internal\",\"message\":\"NUL in reply\"}}".into()
        })
        .into_raw()
}

/// A buffer handed to the caller.
fn give_bytes(v: Vec<u8>, out: *mut *mut u8, out_len: *mut usize) {
    let b = v.into_boxed_slice();
    let len = b.len();
    // SAFETY: the caller passed valid, writable out-pointers (header contract).
    unsafe {
        *out_len = len;
        *out = Box::into_raw(b).cast::<u8>();
    }
}

/// A borrowed C string as UTF-8.
///
/// # Safety
/// `p` is null or a valid NUL-terminated string that outlives the call.
unsafe fn str_arg<'a>(p: *const c_char, what: &str) -> Result<&'a str, CallError> {
    if p.is_null() {
        return Err(CallError::new("InvalidArgument", format!("{what} is null")));
    }
    // SAFETY: non-null and NUL-terminated by the caller's contract.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| CallError::new("InvalidArgument", format!("{what} is not UTF-8")))
}

/// Borrowed bytes given as pointer and length.
///
/// # Safety
/// `p` points to `len` readable bytes that outlive the call (any pointer
/// when `len` is 0).
unsafe fn bytes_arg<'a>(p: *const u8, len: usize) -> &'a [u8] {
    if len == 0 {
        return &[];
    }
    // SAFETY: the caller's contract, see above.
    unsafe { std::slice::from_raw_parts(p, len) }
}

/// Runs the operation named `op` with the JSON input `input` and returns
/// `{"ok": RESULT}` or `{"err": ERROR}` as a new string the caller frees
/// with [`msb_string_free`].
///
/// # Safety
/// `op` and `input` are valid NUL-terminated strings.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn msb_call(op: *const c_char, input: *const c_char) -> *mut c_char {
    let result = guarded(|| {
        // SAFETY: forwarded caller contract.
        let (op, input) = unsafe { (str_arg(op, "op")?, str_arg(input, "input")?) };
        ops::call(op, input)
    });
    give_string(match result {
        Ok(v) => format!("{{\"ok\":{v}}}"),
        Err(e) => format!("{{\"err\":{}}}", e.to_json()),
    })
}

/// The operations of [`msb_fs`].
const FS_READ: u32 = 0;
const FS_WRITE: u32 = 1;
const FS_MKDIR: u32 = 2;
const FS_REMOVE: u32 = 3;
const FS_REMOVE_ALL: u32 = 4;
const FS_EXISTS: u32 = 5;

/// One file operation on volume `volume` (a NUL-terminated name) at
/// `path` (`path_len` bytes, relative to the volume root, any bytes but
/// confined like every path of `VolumeFs`).
///
/// `op`: 0 read (the file's bytes into `*out`/`*out_len`, freed with
/// [`msb_bytes_free`]), 1 write (`data`/`data_len`, created or truncated,
/// 0644), 2 mkdir (a tree, 0755), 3 remove (a file or empty directory),
/// 4 remove all, 5 exists (`*out_len` set to 1 or 0, `*out` untouched).
/// Returns null on success, else an error JSON string the caller frees
/// with [`msb_string_free`].
///
/// # Safety
/// `volume` is a valid NUL-terminated string, `path` and `data` point to
/// `path_len` and `data_len` readable bytes, and `out` and `out_len` are
/// writable where the operation writes them.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn msb_fs(
    op: u32,
    volume: *const c_char,
    path: *const u8,
    path_len: usize,
    data: *const u8,
    data_len: usize,
    out: *mut *mut u8,
    out_len: *mut usize,
) -> *mut c_char {
    let result = guarded(|| {
        // SAFETY: forwarded caller contract.
        let volume = unsafe { str_arg(volume, "volume")? };
        // SAFETY: forwarded caller contract.
        let path = Path::new(std::ffi::OsStr::from_bytes(unsafe {
            bytes_arg(path, path_len)
        }));
        let write = matches!(op, FS_WRITE | FS_MKDIR | FS_REMOVE | FS_REMOVE_ALL);
        if op > FS_EXISTS {
            return Err(CallError::new(
                "InvalidArgument",
                format!("unknown file operation {op}"),
            ));
        }
        let files = ops::files(volume, write)?;
        let fs_err = |e: msb::FsError| CallError::from(msb::Error::from(e));
        match op {
            FS_READ => give_bytes(files.read(path).map_err(fs_err)?, out, out_len),
            // SAFETY: forwarded caller contract.
            FS_WRITE => files
                .write(path, unsafe { bytes_arg(data, data_len) })
                .map_err(fs_err)?,
            FS_MKDIR => files.mkdir(path).map_err(fs_err)?,
            FS_REMOVE => files.remove(path).map_err(fs_err)?,
            FS_REMOVE_ALL => files.remove_all(path).map_err(fs_err)?,
            _ => {
                let found = files.exists(path).map_err(fs_err)?;
                // SAFETY: the caller passed a writable `out_len`.
                unsafe { *out_len = usize::from(found) };
            }
        }
        Ok(())
    });
    match result {
        Ok(()) => std::ptr::null_mut(),
        Err(e) => give_string(e.to_json()),
    }
}

/// Looks volume `name` up (its usage counted now), or lists every volume
/// when `name` is null (newest first, usage from the counters), and
/// returns the records in `*out`/`*out_len` (freed with
/// [`msb_bytes_free`]) in the format the header describes. Returns null on
/// success, else an error JSON string.
///
/// # Safety
/// `name` is null or a valid NUL-terminated string; `out` and `out_len`
/// are writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn msb_volumes(
    name: *const c_char,
    out: *mut *mut u8,
    out_len: *mut usize,
) -> *mut c_char {
    let result = guarded(|| {
        let name = if name.is_null() {
            None
        } else {
            // SAFETY: non-null, so a valid string by the caller's contract.
            Some(unsafe { str_arg(name, "name")? })
        };
        give_bytes(ops::volumes(name)?, out, out_len);
        Ok(())
    });
    match result {
        Ok(()) => std::ptr::null_mut(),
        Err(e) => give_string(e.to_json()),
    }
}

/// Waits for the command started by the `exec.start` operation with id
/// `id` and collects it: its exit status into `*status` (128+N when killed
/// by signal N) and its output into `*out`/`*out_len` and
/// `*err`/`*err_len` (freed with [`msb_bytes_free`]). The id is forgotten.
/// Returns null on success, else an error JSON string.
///
/// # Safety
/// All out-pointers are valid and writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn msb_exec_wait(
    id: u64,
    status: *mut i32,
    out: *mut *mut u8,
    out_len: *mut usize,
    err: *mut *mut u8,
    err_len: *mut usize,
) -> *mut c_char {
    let result = guarded(|| {
        let o = ops::exec_wait(id)?;
        // SAFETY: writable by the caller's contract.
        unsafe { *status = o.status };
        give_bytes(o.stdout, out, out_len);
        give_bytes(o.stderr, err, err_len);
        Ok(())
    });
    match result {
        Ok(()) => std::ptr::null_mut(),
        Err(e) => give_string(e.to_json()),
    }
}

/// Frees a string returned by this library; null is ignored.
///
/// # Safety
/// `s` came from this library and was not freed before.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn msb_string_free(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: made by `CString::into_raw` in `give_string`.
        drop(unsafe { CString::from_raw(s) });
    }
}

/// Frees a buffer of `len` bytes returned by this library; null is ignored.
///
/// # Safety
/// `p` and `len` came from this library together and were not freed before.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn msb_bytes_free(p: *mut u8, len: usize) {
    if !p.is_null() {
        // SAFETY: made by `Box::into_raw` of a boxed slice of `len` bytes.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(p, len)) });
    }
}
