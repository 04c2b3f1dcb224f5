//! The C ABI called as C would: real store in a temporary home, strings and
//! buffers freed through the library's own free functions.

use std::ffi::{CStr, CString, c_char};
use std::ptr;

use msb_capi::{msb_bytes_free, msb_call, msb_fs, msb_string_free, msb_volumes};
use serde_json::Value;

fn call(op: &str, input: &str) -> Value {
    let (op, input) = (CString::new(op).unwrap(), CString::new(input).unwrap());
    // SAFETY: valid NUL-terminated strings; the reply is freed once.
    unsafe {
        let r = msb_call(op.as_ptr(), input.as_ptr());
        let v = serde_json::from_str(CStr::from_ptr(r).to_str().unwrap()).unwrap();
        msb_string_free(r);
        v
    }
}

fn error(r: *mut c_char) -> Option<Value> {
    if r.is_null() {
        return None;
    }
    // SAFETY: a string from the library, freed once.
    unsafe {
        let v = serde_json::from_str(CStr::from_ptr(r).to_str().unwrap()).unwrap();
        msb_string_free(r);
        Some(v)
    }
}

fn fs(op: u32, vol: &CStr, path: &[u8], data: &[u8]) -> Result<(Vec<u8>, usize), Value> {
    let (mut out, mut len) = (ptr::null_mut(), 0usize);
    // SAFETY: pointers and lengths describe live buffers; out-pointers are writable.
    let err = unsafe {
        msb_fs(
            op,
            vol.as_ptr(),
            path.as_ptr(),
            path.len(),
            data.as_ptr(),
            data.len(),
            &mut out,
            &mut len,
        )
    };
    if let Some(e) = error(err) {
        return Err(e);
    }
    if out.is_null() {
        return Ok((Vec::new(), len));
    }
    // SAFETY: a buffer of `len` bytes from the library, freed once.
    let bytes = unsafe { std::slice::from_raw_parts(out, len).to_vec() };
    // SAFETY: as above.
    unsafe { msb_bytes_free(out, len) };
    Ok((bytes, len))
}

#[test]
fn the_abi_end_to_end() {
    let home = tempfile::tempdir().unwrap();
    // SAFETY: set before any other thread of this test binary reads it.
    unsafe { std::env::set_var("MSB_HOME", home.path()) };

    let r = call(
        "volume.create",
        r#"{"name":"v1","quota_mib":4,"labels":{"a":"b"}}"#,
    );
    assert_eq!(r["ok"]["name"], "v1", "{r}");
    assert_eq!(r["ok"]["kind"], "dir");
    let r = call("volume.create", r#"{"name":"v1"}"#);
    assert_eq!(r["err"]["kind"], "VolumeAlreadyExists", "{r}");
    assert_eq!(r["err"]["message"], "volume already exists: v1");

    let vol = c"v1";
    fs(1, vol, b"f", b"hello\0bytes").unwrap();
    assert_eq!(fs(0, vol, b"f", &[]).unwrap().0, b"hello\0bytes");
    assert_eq!(fs(5, vol, b"f", &[]).unwrap().1, 1);
    assert_eq!(fs(5, vol, b"nope", &[]).unwrap().1, 0);
    assert_eq!(fs(0, vol, b"../x", &[]).unwrap_err()["kind"], "PathEscape");
    assert_eq!(fs(0, vol, b"a\0b", &[]).unwrap_err()["kind"], "InvalidPath");
    assert_eq!(
        fs(1, vol, b"big", &[0; 5 << 20]).unwrap_err()["kind"],
        "QuotaExceeded"
    );
    assert_eq!(
        fs(9, vol, b"f", &[]).unwrap_err()["kind"],
        "InvalidArgument"
    );
    assert_eq!(
        fs(0, c"nov", b"f", &[]).unwrap_err()["kind"],
        "VolumeNotFound"
    );

    let (mut out, mut len) = (ptr::null_mut(), 0usize);
    // SAFETY: null name lists; out-pointers are writable.
    assert!(error(unsafe { msb_volumes(ptr::null(), &mut out, &mut len) }).is_none());
    // SAFETY: a buffer of `len` bytes from the library, freed once.
    let records = unsafe { std::slice::from_raw_parts(out, len).to_vec() };
    // SAFETY: as above.
    unsafe { msb_bytes_free(out, len) };
    assert_eq!(&records[..4], &1u32.to_le_bytes());
    assert_eq!(&records[4..10], b"\x02\0\0\0v1");
    // SAFETY: a valid name; out-pointers are writable.
    let e = error(unsafe { msb_volumes(c"nov".as_ptr(), &mut out, &mut len) }).unwrap();
    assert_eq!(e["kind"], "VolumeNotFound");

    assert_eq!(call("volume.nope", "{}")["err"]["kind"], "InvalidArgument");
    assert_eq!(
        call("volume.remove", "{not json")["err"]["kind"],
        "InvalidArgument"
    );
    let r = call(
        "sandbox.create",
        r#"{"name":"s","mounts":{"/t":{"tmpfs":true,"host_permissions":"mirror"}}}"#,
    );
    assert_eq!(r["err"]["kind"], "InvalidMount", "{r}");
    assert_eq!(
        call("sandbox.get", r#"{"name":"s"}"#)["err"]["kind"],
        "SandboxNotFound"
    );
    // SAFETY: null arguments are refused, not read.
    let r = unsafe { msb_call(ptr::null(), ptr::null()) };
    // SAFETY: a string from the library.
    let v: Value = serde_json::from_str(unsafe { CStr::from_ptr(r) }.to_str().unwrap()).unwrap();
    // SAFETY: freed once.
    unsafe { msb_string_free(r) };
    assert_eq!(v["err"]["kind"], "InvalidArgument");

    assert!(call("volume.remove", r#"{"name":"v1"}"#)["ok"].is_null());
    assert_eq!(
        call("volume.remove", r#"{"name":"v1"}"#)["err"]["kind"],
        "VolumeNotFound"
    );
}
