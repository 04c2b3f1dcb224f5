package microsandbox

// The native library is the msb Rust API behind a small C ABI (crate
// crates/capi, header crates/capi/include/msb_capi.h), built and copied
// into ./native by build-native.sh.

/*
#cgo CFLAGS: -I${SRCDIR}/../../crates/capi/include
#cgo LDFLAGS: -L${SRCDIR}/native -lmsb_capi -lgcc_s -lutil -lrt -lpthread -lm -ldl
#include <stdlib.h>
#include <string.h>
#include "msb_capi.h"
*/
import "C"

import (
	"encoding/json"
	"time"
	"unsafe"
)

// reply is what msb_call returns: a result or an error.
type reply struct {
	Ok  json.RawMessage `json:"ok"`
	Err *wireError      `json:"err"`
}

type wireError struct {
	Kind    string `json:"kind"`
	Message string `json:"message"`
}

func (w *wireError) toError() error {
	return &Error{Kind: kindFromWire(w.Kind), Message: w.Message}
}

// takeString copies a string returned by the library and frees it.
func takeString(p *C.char) []byte {
	b := C.GoBytes(unsafe.Pointer(p), C.int(C.strlen(p)))
	C.msb_string_free(p)
	return b
}

// takeBytes copies a buffer returned by the library and frees it.
func takeBytes(p *C.uint8_t, n C.size_t) []byte {
	b := C.GoBytes(unsafe.Pointer(p), C.int(n))
	C.msb_bytes_free(p, n)
	return b
}

// errorReply decodes an error string returned by the library (nil: success).
func errorReply(p *C.char) error {
	if p == nil {
		return nil
	}
	var w wireError
	if err := json.Unmarshal(takeString(p), &w); err != nil {
		return &Error{Kind: ErrInternal, Message: "undecodable error from msb: " + err.Error()}
	}
	return w.toError()
}

// call runs operation op with input encoded as JSON and decodes the result
// into out (if not nil).
func call(op string, input any, out any) error {
	in, err := json.Marshal(input)
	if err != nil {
		return &Error{Kind: ErrInvalidArgument, Message: err.Error(), Cause: err}
	}
	raw := callRaw(op, in)
	var r reply
	if err := json.Unmarshal(raw, &r); err != nil {
		return &Error{Kind: ErrInternal, Message: "undecodable reply from msb: " + err.Error()}
	}
	if r.Err != nil {
		return r.Err.toError()
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(r.Ok, out); err != nil {
		return &Error{Kind: ErrInternal, Message: "undecodable reply from msb: " + err.Error()}
	}
	return nil
}

// callRaw runs op with JSON input and returns the raw reply.
func callRaw(op string, in []byte) []byte {
	cop := C.CString(op)
	defer C.free(unsafe.Pointer(cop))
	cin := C.CString(string(in))
	defer C.free(unsafe.Pointer(cin))
	return takeString(C.msb_call(cop, cin))
}

// fsOp values, as msb_capi.h numbers them.
const (
	fsRead      = C.MSB_FS_READ
	fsWrite     = C.MSB_FS_WRITE
	fsMkdir     = C.MSB_FS_MKDIR
	fsRemove    = C.MSB_FS_REMOVE
	fsRemoveAll = C.MSB_FS_REMOVE_ALL
	fsExists    = C.MSB_FS_EXISTS
)

// fsCall runs one file operation; data is passed without copying, the
// reply (read bytes, or the exists flag in n) is copied out.
func fsCall(op C.uint32_t, volume, path string, data []byte) (out []byte, n uint64, err error) {
	cvol := C.CString(volume)
	defer C.free(unsafe.Pointer(cvol))
	var outp *C.uint8_t
	var outn C.size_t
	// Go memory passed for the call's duration only, holding no Go pointers.
	pathp := (*C.uint8_t)(unsafe.Pointer(unsafe.StringData(path)))
	var datap *C.uint8_t
	if len(data) > 0 {
		datap = (*C.uint8_t)(unsafe.Pointer(&data[0]))
	}
	e := C.msb_fs(op, cvol, pathp, C.size_t(len(path)), datap, C.size_t(len(data)), &outp, &outn)
	if err := errorReply(e); err != nil {
		return nil, 0, err
	}
	if op == fsRead {
		return takeBytes(outp, outn), 0, nil
	}
	return nil, uint64(outn), nil
}

// execWait collects command id.
func execWait(id uint64) (*ExecOutput, error) {
	var status C.int32_t
	var outp, errp *C.uint8_t
	var outn, errn C.size_t
	e := C.msb_exec_wait(C.uint64_t(id), &status, &outp, &outn, &errp, &errn)
	if err := errorReply(e); err != nil {
		return nil, err
	}
	return &ExecOutput{
		stdout:   takeBytes(outp, outn),
		stderr:   takeBytes(errp, errn),
		exitCode: int(status),
	}, nil
}

// benchRust times input through the Rust API (see msb_bench_rust).
func benchRust(input any) (float64, error) {
	in, err := json.Marshal(input)
	if err != nil {
		return 0, err
	}
	cin := C.CString(string(in))
	defer C.free(unsafe.Pointer(cin))
	var r struct {
		Ok *struct {
			NsPerOp float64 `json:"ns_per_op"`
		} `json:"ok"`
		Err *wireError `json:"err"`
	}
	if err := json.Unmarshal(takeString(C.msb_bench_rust(cin)), &r); err != nil {
		return 0, err
	}
	if r.Err != nil {
		return 0, r.Err.toError()
	}
	return r.Ok.NsPerOp, nil
}

// volumeRecords looks volume *name up, or lists every volume if name is
// nil, decoding the records of msb_volumes (format in msb_capi.h).
func volumeRecords(name *string) ([]*VolumeHandle, error) {
	var cname *C.char
	if name != nil {
		cname = C.CString(*name)
		defer C.free(unsafe.Pointer(cname))
	}
	var outp *C.uint8_t
	var outn C.size_t
	if err := errorReply(C.msb_volumes(cname, &outp, &outn)); err != nil {
		return nil, err
	}
	// One copy into a string: every name, path and label is a substring.
	s := string(unsafe.Slice((*byte)(unsafe.Pointer(outp)), int(outn)))
	C.msb_bytes_free(outp, outn)
	d := recordReader{s: s}
	count := d.u32()
	if int64(count) > int64(len(s)) {
		return nil, &Error{Kind: ErrInternal, Message: "bad volume records from msb"}
	}
	// One allocation for all the handles; labels only where there are any.
	store := make([]VolumeHandle, count)
	hs := make([]*VolumeHandle, count)
	for i := range hs {
		h := &store[i]
		h.name, h.path = d.str(), d.str()
		h.kind = VolumeKindDir
		if d.u8() == 1 {
			h.kind = VolumeKindDisk
		}
		h.flags = d.u8()
		h.quotaMiB, h.usedBytes, h.capacityBytes = d.u32(), d.u64(), d.u64()
		if created := int64(d.u64()); h.flags&flagCreated != 0 {
			h.createdAt = time.Unix(0, created)
		}
		h.diskFormat, h.diskFstype = d.str(), d.str()
		// Labels stay encoded until asked for (see VolumeHandle.Labels).
		start := d.off
		for n := d.u32(); n > 0 && !d.bad; n-- {
			d.str()
			d.str()
		}
		h.labels = d.s[start:d.off]
		hs[i] = h
	}
	if d.bad {
		return nil, &Error{Kind: ErrInternal, Message: "truncated volume records from msb"}
	}
	return hs, nil
}

// decodeLabels decodes the labels part of a volume record.
func decodeLabels(raw string) map[string]string {
	d := recordReader{s: raw}
	n := d.u32()
	m := make(map[string]string, n)
	for ; n > 0 && !d.bad; n-- {
		k := d.str()
		m[k] = d.str()
	}
	return m
}

// Bits of a record's flags byte.
const (
	flagQuota    = 1
	flagCapacity = 2
	flagCreated  = 4
)

// recordReader reads the records of msb_volumes; reading past the end
// sets bad and yields zero values.
type recordReader struct {
	s   string
	off int
	bad bool
}

func (r *recordReader) take(n int) string {
	if r.bad || n < 0 || r.off+n > len(r.s) {
		r.bad = true
		return ""
	}
	v := r.s[r.off : r.off+n]
	r.off += n
	return v
}

func (r *recordReader) u8() uint8 {
	if b := r.take(1); b != "" {
		return b[0]
	}
	return 0
}

func (r *recordReader) u32() uint32 {
	if b := r.take(4); b != "" {
		return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
	}
	return 0
}

func (r *recordReader) u64() uint64 {
	lo, hi := r.u32(), r.u32()
	return uint64(lo) | uint64(hi)<<32
}

func (r *recordReader) str() string { return r.take(int(r.u32())) }
