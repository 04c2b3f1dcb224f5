//! The guest metadata record kept in a `user.` xattr on each host file.
//!
//! Format, version 1: exactly 20 bytes, little endian.
//!
//! | offset | size | field                                                  |
//! |--------|------|--------------------------------------------------------|
//! | 0      | 1    | version, `1`                                           |
//! | 1      | 3    | reserved, zero                                         |
//! | 4      | 4    | uid                                                    |
//! | 8      | 4    | gid                                                    |
//! | 12     | 4    | mode: file type and permission bits, as in `st_mode`   |
//! | 16     | 4    | rdev of a device node (`makedev` encoding), else zero  |
//!
//! A value of another length, another version, non-zero reserved bytes,
//! mode bits outside `S_IFMT | 07777` or an unknown file type is corrupt.

use std::collections::HashMap;

/// Name of the xattr holding the record.
pub const RECORD_XATTR: &str = "user.msb.meta";
/// Every xattr under this prefix belongs to msb and is hidden from clients
/// (and not counted as volume usage).
pub const RESERVED_PREFIX: &[u8] = msb_quota::usage::OWN_XATTR_PREFIX;

const VERSION: u8 = 1;
const LEN: usize = 20;

/// Guest-visible ownership, mode and file type of one host file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// Owner shown to the guest.
    pub uid: u32,
    /// Group shown to the guest.
    pub gid: u32,
    /// File type and permission bits shown to the guest.
    pub mode: u32,
    /// Device number of a guest device node.
    pub rdev: u32,
}

/// A record that cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("metadata record is corrupt")]
pub struct CorruptRecord;

impl Record {
    /// The on-disk bytes.
    pub fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0] = VERSION;
        b[4..8].copy_from_slice(&self.uid.to_le_bytes());
        b[8..12].copy_from_slice(&self.gid.to_le_bytes());
        b[12..16].copy_from_slice(&self.mode.to_le_bytes());
        b[16..20].copy_from_slice(&self.rdev.to_le_bytes());
        b
    }

    /// Parses and validates stored bytes.
    pub fn decode(b: &[u8]) -> Result<Self, CorruptRecord> {
        if b.len() != LEN || b[0] != VERSION || b[1..4] != [0, 0, 0] {
            return Err(CorruptRecord);
        }
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let r = Record {
            uid: word(4),
            gid: word(8),
            mode: word(12),
            rdev: word(16),
        };
        let known = [
            libc::S_IFREG,
            libc::S_IFDIR,
            libc::S_IFLNK,
            libc::S_IFCHR,
            libc::S_IFBLK,
            libc::S_IFIFO,
            libc::S_IFSOCK,
        ];
        if r.mode & !(libc::S_IFMT | 0o7777) != 0 || !known.contains(&(r.mode & libc::S_IFMT)) {
            return Err(CorruptRecord);
        }
        Ok(r)
    }

    /// The file type bits.
    pub fn kind(&self) -> u32 {
        self.mode & libc::S_IFMT
    }
}

/// Whether an xattr name is msb's own and must stay invisible to clients.
pub fn is_reserved(name: &[u8]) -> bool {
    name.starts_with(RESERVED_PREFIX)
}

/// A host object: device and inode number.
pub(crate) type Key = (u64, u64);
/// A host ctime: seconds and nanoseconds.
pub(crate) type Ctime = (i64, u64);

/// Objects per generation of the [`RecordCache`]: two generations hold
/// at least this many of the latest records (about 1 MiB each).
const GENERATION: usize = 16_384;

/// Records read lately, so that looking up an unchanged object again (a
/// guest that dropped its caches, a second `ls -lR`) costs no xattr read:
/// that read was most of a lookup's time on the server.
///
/// A record stays valid while its object's ctime is the one read with it,
/// since setting or removing an xattr sets the ctime (whoever does it: this
/// server, another one serving the same volume, the host). For that to
/// hold, the ctime must be older than any change still to come: only a
/// record whose ctime lies in an earlier second than the clock read just
/// before the xattr is kept (the kernel stamps changes from that coarse
/// clock, at most truncated to whole seconds). A clock that went back
/// could repeat a ctime, so seeing it go back empties the cache.
#[derive(Default)]
pub(crate) struct RecordCache {
    recent: HashMap<Key, (Ctime, Option<Record>)>,
    older: HashMap<Key, (Ctime, Option<Record>)>,
    /// The latest clock second seen.
    clock: i64,
}

impl RecordCache {
    /// The record of `key` (`Some(None)`: it has none) if it was read at
    /// `ctime` and the clock, at second `now`, has not gone back.
    pub(crate) fn get(&mut self, key: Key, ctime: Ctime, now: i64) -> Option<Option<Record>> {
        self.observe(now);
        if let Some(&(c, r)) = self.recent.get(&key) {
            return (c == ctime).then_some(r);
        }
        let (c, r) = self.older.remove(&key)?;
        if c != ctime {
            return None;
        }
        self.insert_unchecked(key, c, r);
        Some(r)
    }

    /// Keeps `record`, read from `key` at `ctime` after the clock said
    /// second `read_at`, if that ctime cannot come again.
    pub(crate) fn insert(&mut self, key: Key, ctime: Ctime, record: Option<Record>, read_at: i64) {
        self.observe(read_at);
        if ctime.0 < read_at {
            self.insert_unchecked(key, ctime, record);
        } else {
            self.recent.remove(&key);
            self.older.remove(&key);
        }
    }

    fn insert_unchecked(&mut self, key: Key, ctime: Ctime, record: Option<Record>) {
        if self.recent.len() >= GENERATION && !self.recent.contains_key(&key) {
            self.older = std::mem::take(&mut self.recent);
        }
        self.recent.insert(key, (ctime, record));
    }

    fn observe(&mut self, now: i64) {
        if now < self.clock {
            self.recent.clear();
            self.older.clear();
        }
        self.clock = self.clock.max(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let r = Record {
            uid: 1000,
            gid: 100,
            mode: libc::S_IFCHR | 0o640,
            rdev: 0x0103,
        };
        assert_eq!(Record::decode(&r.encode()), Ok(r));
    }

    #[test]
    fn rejects_corruption() {
        let good = Record {
            uid: 1,
            gid: 2,
            mode: libc::S_IFREG | 0o644,
            rdev: 0,
        }
        .encode();
        assert_eq!(Record::decode(&good[..19]), Err(CorruptRecord));
        let mut v = good;
        v[0] = 2;
        assert_eq!(Record::decode(&v), Err(CorruptRecord));
        let mut v = good;
        v[2] = 1;
        assert_eq!(Record::decode(&v), Err(CorruptRecord));
        let mut v = good;
        v[12..16].copy_from_slice(&0o644u32.to_le_bytes());
        assert_eq!(Record::decode(&v), Err(CorruptRecord));
        assert_eq!(Record::decode(b""), Err(CorruptRecord));
        assert!(is_reserved(b"user.msb.meta"));
        assert!(!is_reserved(b"user.other"));
    }

    fn rec(uid: u32) -> Option<Record> {
        Some(Record {
            uid,
            gid: 0,
            mode: libc::S_IFREG | 0o644,
            rdev: 0,
        })
    }

    #[test]
    fn cached_records_hold_while_the_ctime_does() {
        let mut c = RecordCache::default();
        c.insert((1, 2), (100, 5), rec(7), 101);
        assert_eq!(c.get((1, 2), (100, 5), 102), Some(rec(7)));
        // Changed since (another ctime), or another object.
        assert_eq!(c.get((1, 2), (100, 6), 102), None);
        assert_eq!(c.get((1, 3), (100, 5), 102), None);
        assert_eq!(c.get((2, 2), (100, 5), 102), None);
        // No record is remembered too.
        c.insert((1, 4), (90, 0), None, 101);
        assert_eq!(c.get((1, 4), (90, 0), 102), Some(None));
    }

    #[test]
    fn records_of_the_current_second_are_not_kept() {
        let mut c = RecordCache::default();
        // A change later in second 100 could carry the same ctime.
        c.insert((1, 2), (100, 5), rec(7), 100);
        assert_eq!(c.get((1, 2), (100, 5), 100), None);
        // And a newer read of such an object drops what was kept.
        c.insert((1, 2), (99, 0), rec(7), 100);
        c.insert((1, 2), (100, 0), rec(8), 100);
        assert_eq!(c.get((1, 2), (99, 0), 100), None);
    }

    #[test]
    fn a_clock_that_went_back_empties_the_cache() {
        let mut c = RecordCache::default();
        c.insert((1, 2), (100, 5), rec(7), 200);
        assert_eq!(c.get((1, 2), (100, 5), 200), Some(rec(7)));
        assert_eq!(c.get((1, 2), (100, 5), 150), None);
        // Gone for good, not just while the clock is behind.
        assert_eq!(c.get((1, 2), (100, 5), 201), None);
    }

    #[test]
    fn two_generations_keep_the_latest_records() {
        let mut c = RecordCache::default();
        let n = 2 * GENERATION as u64 + 1;
        for ino in 0..n {
            c.insert((1, ino), (1, 0), rec(ino as u32), 5);
        }
        // The latest generation's worth is always there; the oldest went.
        for ino in n - GENERATION as u64..n {
            assert_eq!(c.get((1, ino), (1, 0), 5), Some(rec(ino as u32)), "{ino}");
        }
        assert_eq!(c.get((1, 0), (1, 0), 5), None);
        assert!(c.recent.len() + c.older.len() <= 2 * GENERATION);
    }
}
