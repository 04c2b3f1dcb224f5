package microsandbox

import (
	"context"
	"errors"
)

// ErrorKind says what kind of failure an *Error is. Each kind is itself an
// error, so both errors.Is(err, ErrVolumeNotFound) and
// IsKind(err, ErrVolumeNotFound) work. The kinds mirror the error variants
// of the Rust API; switches over them should have a default case.
type ErrorKind int

// The kinds of error.
const (
	// ErrUnknown is a kind this version of the SDK does not know.
	ErrUnknown ErrorKind = iota
	// ErrVolumeNotFound: no volume has the name.
	ErrVolumeNotFound
	// ErrVolumeAlreadyExists: a volume with the name exists.
	ErrVolumeAlreadyExists
	// ErrVolumeInUse: a sandbox or host mount uses the volume.
	ErrVolumeInUse
	// ErrInvalidName: the volume or sandbox name is not valid.
	ErrInvalidName
	// ErrInvalidConfig: the volume or sandbox settings are inconsistent.
	ErrInvalidConfig
	// ErrIO: a host I/O failure.
	ErrIO
	// ErrDatabase: the catalog failed or is foreign.
	ErrDatabase
	// ErrDisk: a disk volume's filesystem cannot be opened.
	ErrDisk
	// ErrPathEscape: a VolumeFs path is absolute or leads outside the volume.
	ErrPathEscape
	// ErrInvalidPath: a VolumeFs path holds a NUL byte or is too long.
	ErrInvalidPath
	// ErrVolumeRoot: the volume's root cannot be opened (or is a symlink).
	ErrVolumeRoot
	// ErrPathNotFound: nothing exists at a VolumeFs path.
	ErrPathNotFound
	// ErrPathAlreadyExists: something exists at a VolumeFs path.
	ErrPathAlreadyExists
	// ErrNotADirectory: a path component used as a directory is not one.
	ErrNotADirectory
	// ErrIsADirectory: a file operation was given a directory.
	ErrIsADirectory
	// ErrNotAFile: the path is not a regular file.
	ErrNotAFile
	// ErrDirectoryNotEmpty: Remove of a directory with entries.
	ErrDirectoryNotEmpty
	// ErrSymlinkLoop: symlinks loop or are too many.
	ErrSymlinkLoop
	// ErrIsRoot: the operation would remove the volume root.
	ErrIsRoot
	// ErrHardLinked: a write through a file with several hard links.
	ErrHardLinked
	// ErrReadOnly: the volume is read-only (for instance attached to a sandbox).
	ErrReadOnly
	// ErrQuotaExceeded: the write would pass the volume's quota.
	ErrQuotaExceeded
	// ErrNotUTF8: ReadString of bytes that are not UTF-8.
	ErrNotUTF8
	// ErrFilesystem: any other VolumeFs failure.
	ErrFilesystem
	// ErrInvalidMount: a MountConfig or guest path is invalid.
	ErrInvalidMount
	// ErrHostPath: a bind source, disk image or root filesystem cannot be used.
	ErrHostPath
	// ErrIncompatibleVolume: an existing volume does not match an
	// ensure-exists mount.
	ErrIncompatibleVolume
	// ErrSandboxNotFound: no sandbox has the name.
	ErrSandboxNotFound
	// ErrSandboxAlreadyExists: a sandbox with the name exists.
	ErrSandboxAlreadyExists
	// ErrSandboxAlreadyRunning: StartSandbox of a running sandbox.
	ErrSandboxAlreadyRunning
	// ErrSandboxStillRunning: RemoveSandbox of a running sandbox.
	ErrSandboxStillRunning
	// ErrSandboxNotRunning: Exec in a stopped sandbox.
	ErrSandboxNotRunning
	// ErrSandboxStartFailed: the sandbox did not start.
	ErrSandboxStartFailed
	// ErrHelperNotFound: no msb binary to run sandboxes with (set MSB_BIN).
	ErrHelperNotFound
	// ErrExecFailed: the command could not be started or collected.
	ErrExecFailed
	// ErrInvalidArgument: a malformed request reached the native library.
	ErrInvalidArgument
	// ErrCancelled: the context ended first.
	ErrCancelled
	// ErrInternal: anything else (a failed background task, a panic).
	ErrInternal
)

// kindNames are the stable names the native library uses (msb_capi.h).
var kindNames = map[ErrorKind]string{
	ErrVolumeNotFound:        "VolumeNotFound",
	ErrVolumeAlreadyExists:   "VolumeAlreadyExists",
	ErrVolumeInUse:           "VolumeInUse",
	ErrInvalidName:           "InvalidName",
	ErrInvalidConfig:         "InvalidConfig",
	ErrIO:                    "IO",
	ErrDatabase:              "Database",
	ErrDisk:                  "Disk",
	ErrPathEscape:            "PathEscape",
	ErrInvalidPath:           "InvalidPath",
	ErrVolumeRoot:            "VolumeRoot",
	ErrPathNotFound:          "PathNotFound",
	ErrPathAlreadyExists:     "PathAlreadyExists",
	ErrNotADirectory:         "NotADirectory",
	ErrIsADirectory:          "IsADirectory",
	ErrNotAFile:              "NotAFile",
	ErrDirectoryNotEmpty:     "DirectoryNotEmpty",
	ErrSymlinkLoop:           "SymlinkLoop",
	ErrIsRoot:                "IsRoot",
	ErrHardLinked:            "HardLinked",
	ErrReadOnly:              "ReadOnly",
	ErrQuotaExceeded:         "QuotaExceeded",
	ErrNotUTF8:               "NotUTF8",
	ErrFilesystem:            "Filesystem",
	ErrInvalidMount:          "InvalidMount",
	ErrHostPath:              "HostPath",
	ErrIncompatibleVolume:    "IncompatibleVolume",
	ErrSandboxNotFound:       "SandboxNotFound",
	ErrSandboxAlreadyExists:  "SandboxAlreadyExists",
	ErrSandboxAlreadyRunning: "SandboxAlreadyRunning",
	ErrSandboxStillRunning:   "SandboxStillRunning",
	ErrSandboxNotRunning:     "SandboxNotRunning",
	ErrSandboxStartFailed:    "SandboxStartFailed",
	ErrHelperNotFound:        "HelperNotFound",
	ErrExecFailed:            "ExecFailed",
	ErrInvalidArgument:       "InvalidArgument",
	ErrCancelled:             "Cancelled",
	ErrInternal:              "Internal",
}

var kindsByName = func() map[string]ErrorKind {
	m := make(map[string]ErrorKind, len(kindNames))
	for k, n := range kindNames {
		m[n] = k
	}
	return m
}()

func kindFromWire(name string) ErrorKind {
	if k, ok := kindsByName[name]; ok {
		return k
	}
	return ErrUnknown
}

// String is the kind's stable name, such as "VolumeNotFound".
func (k ErrorKind) String() string {
	if n, ok := kindNames[k]; ok {
		return n
	}
	return "Unknown"
}

// Error makes a kind usable as the target of errors.Is.
func (k ErrorKind) Error() string { return "microsandbox: " + k.String() }

// Error is the error every operation of this package returns: its kind and
// the Rust API's message (with its causes).
type Error struct {
	Kind    ErrorKind
	Message string
	// Cause is the Go error behind it, if any (such as context.Canceled).
	Cause error
}

// Error returns the message.
func (e *Error) Error() string {
	if e.Message == "" {
		return e.Kind.String()
	}
	return e.Message
}

// Is reports whether target is this error's kind.
func (e *Error) Is(target error) bool {
	k, ok := target.(ErrorKind)
	return ok && k == e.Kind
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Cause }

// IsKind reports whether err is, or wraps, an *Error of the given kind.
func IsKind(err error, kind ErrorKind) bool {
	var e *Error
	return errors.As(err, &e) && e.Kind == kind
}

// checkContext returns an ErrCancelled error if ctx has ended.
func checkContext(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return &Error{Kind: ErrCancelled, Message: err.Error(), Cause: err}
	}
	return nil
}
