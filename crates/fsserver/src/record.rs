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
}
