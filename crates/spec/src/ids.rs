//! How a sandbox's user and group ids relate to the host's.
//!
//! A sandbox runs in its own user namespace: its ids `0..count` are the
//! host's `host_base..host_base + count`. Its root is therefore an
//! unprivileged host user, and whatever it creates on host storage is owned
//! by that range, never by host root. Policy code (metadata records, quota)
//! speaks in guest ids; only the edges translate.

use serde::{Deserialize, Serialize};

/// The id a guest sees for a host id outside the map (the kernel's
/// overflow id).
pub const OVERFLOW_ID: u32 = 65534;

/// A contiguous mapping of guest ids `0..count` onto host ids
/// `host_base..host_base + count`, the same for users and groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IdMap {
    /// The host id of guest id 0.
    pub host_base: u32,
    /// How many ids are mapped.
    pub count: u32,
}

impl IdMap {
    /// Host ids of rootful sandboxes: 65536 ids at the top of the range
    /// systemd sets aside for containers (0x80000..0x6FFFFFFF), far from
    /// login users and the usual `/etc/subuid` ranges.
    pub const ROOTFUL: IdMap = IdMap {
        host_base: 0x6FFF_0000,
        count: 65536,
    };

    /// No translation: guest ids are host ids (a mount seen from the host).
    pub const IDENTITY: IdMap = IdMap {
        host_base: 0,
        count: u32::MAX,
    };

    /// A rootless sandbox's map: guest root is the calling user, and no
    /// other id exists.
    pub fn single(host_id: u32) -> IdMap {
        IdMap {
            host_base: host_id,
            count: 1,
        }
    }

    /// The host id of guest id `guest`, if mapped.
    pub fn to_host(&self, guest: u32) -> Option<u32> {
        (guest < self.count).then(|| self.host_base.wrapping_add(guest))
    }

    /// The guest id of host id `host`, if mapped.
    pub fn to_guest(&self, host: u32) -> Option<u32> {
        let off = host.wrapping_sub(self.host_base);
        (host >= self.host_base && off < self.count).then_some(off)
    }

    /// The guest id of `host`, or [`OVERFLOW_ID`] when unmapped (as the
    /// kernel shows it).
    pub fn to_guest_or_overflow(&self, host: u32) -> u32 {
        self.to_guest(host).unwrap_or(OVERFLOW_ID)
    }

    /// The host id of guest root.
    pub fn root(&self) -> u32 {
        self.host_base
    }

    /// The line for `/proc/PID/uid_map` and `gid_map`.
    pub fn proc_line(&self) -> String {
        format!("0 {} {}\n", self.host_base, self.count)
    }
}

impl Default for IdMap {
    fn default() -> Self {
        IdMap::ROOTFUL
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translates_both_ways_within_the_range() {
        let m = IdMap::ROOTFUL;
        assert_eq!(m.to_host(0), Some(0x6FFF_0000));
        assert_eq!(m.to_host(65535), Some(0x6FFF_FFFF));
        assert_eq!(m.to_host(65536), None);
        assert_eq!(m.to_guest(0x6FFF_0005), Some(5));
        assert_eq!(m.to_guest(0), None);
        assert_eq!(m.to_guest_or_overflow(0), OVERFLOW_ID);
        assert_eq!(m.proc_line(), "0 1878982656 65536\n");
        let one = IdMap::single(1000);
        assert_eq!(one.to_host(0), Some(1000));
        assert_eq!(one.to_host(1), None);
        assert_eq!(one.to_guest(1000), Some(0));
        assert_eq!(one.to_guest(999), None);
        assert_eq!(IdMap::IDENTITY.to_guest(12345), Some(12345));
        assert_eq!(IdMap::IDENTITY.to_host(0), Some(0));
    }
}
