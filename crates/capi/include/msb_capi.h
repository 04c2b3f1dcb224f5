/*
 * msb_capi.h: the C ABI of the msb Rust API (crate crates/capi, static
 * library libmsb_capi.a). Used by the Go SDK in sdk/go.
 *
 * Ownership: every char* and uint8_t* this library returns belongs to the
 * caller, who frees it exactly once with msb_string_free or msb_bytes_free.
 * Arguments stay the caller's and are only read during the call. Calls
 * block until done, may come from any thread, and never unwind: a panic
 * becomes an error of kind "Internal".
 *
 * Errors are the JSON object {"kind": KIND, "message": MESSAGE}, MESSAGE
 * being the Rust error with its sources. KIND is one of:
 *   VolumeNotFound VolumeAlreadyExists VolumeInUse InvalidName InvalidConfig
 *   IO Database Disk PathEscape InvalidPath VolumeRoot PathNotFound
 *   PathAlreadyExists NotADirectory IsADirectory NotAFile DirectoryNotEmpty
 *   SymlinkLoop IsRoot HardLinked ReadOnly QuotaExceeded NotUTF8 Filesystem
 *   InvalidMount HostPath IncompatibleVolume SandboxNotFound
 *   SandboxAlreadyExists SandboxAlreadyRunning SandboxStillRunning
 *   SandboxNotRunning SandboxStartFailed HelperNotFound ExecFailed
 *   InvalidArgument Internal
 */
#ifndef MSB_CAPI_H
#define MSB_CAPI_H

#include <stddef.h>
#include <stdint.h>

/*
 * Runs operation `op` with JSON input `input` on the default home
 * ($MSB_HOME, else ~/.microsandbox). Returns {"ok": RESULT} or
 * {"err": ERROR}; free it with msb_string_free.
 *
 *   volume.create  {name, kind?, size_mib?, quota_mib?, labels?} -> {name, path, kind}
 *   volume.remove  {name} -> null
 *   sandbox.create {name, mounts?: {GUEST: MOUNT}, rootfs?, env?, workdir?,
 *                   memory_mib?, cpus?} -> {name, state}   (created and started)
 *   sandbox.start | sandbox.get {name} -> {name, state}
 *   sandbox.list   {} -> [{name, state}]
 *   sandbox.stop | sandbox.remove {name} -> null
 *   exec.start     {sandbox, cmd, args?} -> {id}   (collect with msb_exec_wait)
 *   exec.kill      {id} -> null   (SIGKILL; no-op once collected)
 *
 * MOUNT: the Go SDK's
 * MountConfig with snake_case keys (kind, bind, named, named_mode,
 * named_kind, quota_mib, tmpfs, disk, format, fstype, readonly, noexec,
 * nosuid, nodev, size_mib, stat_virtualization, host_permissions).
 */
char *msb_call(const char *op, const char *input);

/*
 * Looks volume `name` up (usage counted now), or lists every volume when
 * `name` is NULL (newest first, usage from the counters). On success
 * returns NULL and sets *out/*out_len (msb_bytes_free) to: u32 count, then
 * per volume: STR name, STR path, u8 kind (0 dir, 1 disk), u8 flags (bit 0
 * quota set, bit 1 capacity set, bit 2 creation time known), u32 quota_mib,
 * u64 used_bytes, u64 capacity_bytes, i64 created (ns since the epoch),
 * STR disk_format, STR disk_fstype (empty: none), u32 label count, then
 * STR key, STR value per label. Numbers are little-endian; STR is a u32
 * length and that many bytes. Otherwise returns an error JSON string.
 */
char *msb_volumes(const char *name, uint8_t **out, size_t *out_len);

/* msb_fs operations. */
#define MSB_FS_READ 0       /* bytes into *out / *out_len (msb_bytes_free) */
#define MSB_FS_WRITE 1      /* data/data_len, created or truncated, 0644 */
#define MSB_FS_MKDIR 2      /* a tree, 0755 */
#define MSB_FS_REMOVE 3     /* a file or an empty directory */
#define MSB_FS_REMOVE_ALL 4 /* recursively */
#define MSB_FS_EXISTS 5     /* *out_len = 1 or 0 */

/*
 * One file operation on the volume named `volume`, at `path` (path_len
 * bytes, relative to the volume root, confined to it). Returns NULL on
 * success, else an error JSON string (msb_string_free).
 */
char *msb_fs(uint32_t op, const char *volume, const uint8_t *path, size_t path_len,
             const uint8_t *data, size_t data_len, uint8_t **out, size_t *out_len);

/*
 * Waits for command `id` (from exec.start) and collects its exit status and
 * output (each buffer freed with msb_bytes_free); the id is forgotten.
 * Returns NULL on success, else an error JSON string.
 */
char *msb_exec_wait(uint64_t id, int32_t *status, uint8_t **out, size_t *out_len,
                    uint8_t **err, size_t *err_len);

/*
 * Times `input` ({op, n, name?, path?, size?}; op create_remove, get, list
 * or fs_write_read) through the Rust API. Returns
 * {"ok": {"ns_per_op": N}} or {"err": ERROR} (msb_string_free).
 */
char *msb_bench_rust(const char *input);

/* Frees a string returned by this library; NULL is ignored. */
void msb_string_free(char *s);

/* Frees a buffer of len bytes returned by this library; NULL is ignored. */
void msb_bytes_free(uint8_t *p, size_t len);

#endif
