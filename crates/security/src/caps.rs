//! Capabilities of the workload, applied between fork and exec.

use crate::Security;

/// Capabilities the default profile keeps: what a container runtime grants
/// root in a container, minus `CAP_MKNOD` (no device cgroup guards device
/// nodes here). Notably absent: `CAP_SYS_ADMIN` (mount, remount, pivot),
/// `CAP_SYS_MODULE`, `CAP_SYS_RAWIO`, `CAP_SYS_PTRACE`, `CAP_NET_ADMIN`.
const DEFAULT_KEEP: [u32; 12] = [
    0,  // CAP_CHOWN
    1,  // CAP_DAC_OVERRIDE
    3,  // CAP_FOWNER
    4,  // CAP_FSETID
    5,  // CAP_KILL
    6,  // CAP_SETGID
    7,  // CAP_SETUID
    8,  // CAP_SETPCAP
    10, // CAP_NET_BIND_SERVICE
    18, // CAP_SYS_CHROOT
    29, // CAP_AUDIT_WRITE
    31, // CAP_SETFCAP
];
/// `CAP_MKNOD`.
#[cfg(test)]
const CAP_MKNOD: u32 = 27;
/// `CAP_SYS_ADMIN`.
#[cfg(test)]
const CAP_SYS_ADMIN: u32 = 21;

/// The capabilities to keep, as a 64-bit mask.
pub fn keep_set(security: Security) -> u64 {
    match security {
        Security::Default => DEFAULT_KEEP.iter().fold(0, |m, c| m | 1u64 << c),
        Security::Restricted => 0,
        Security::Privileged => u64::MAX,
    }
}

/// The highest capability number this kernel knows.
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

/// Drops every capability outside `keep` from the bounding, ambient,
/// effective, permitted and inheritable sets; with `no_new_privs`, also
/// forbids gaining privileges through exec. Async-signal-safe.
pub fn apply(keep: u64, last_cap: u32, no_new_privs: bool) -> std::io::Result<()> {
    let fail = || Err(std::io::Error::last_os_error());
    // SAFETY: prctl/capset with plain integer arguments and pointers to
    // initialized locals.
    unsafe {
        for cap in 0..=last_cap.min(63) {
            if keep & (1u64 << cap) == 0
                && libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) < 0
                && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL)
            {
                return fail();
            }
        }
        if libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        ) < 0
        {
            return fail();
        }
        let mut header = CapHeader {
            version: CAP_VERSION_3,
            pid: 0,
        };
        let lo = keep as u32;
        let hi = (keep >> 32) as u32;
        let data = [
            CapData {
                effective: lo,
                permitted: lo,
                inheritable: 0,
            },
            CapData {
                effective: hi,
                permitted: hi,
                inheritable: 0,
            },
        ];
        if libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) < 0 {
            return fail();
        }
        if no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
            return fail();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles() {
        assert_eq!(keep_set(Security::Restricted), 0);
        let d = keep_set(Security::Default);
        assert_eq!(d & (1 << CAP_SYS_ADMIN), 0);
        assert_eq!(d & (1 << CAP_MKNOD), 0);
        assert_ne!(d & (1 << 0), 0);
        assert!(last_cap() >= 37);
    }
}
