//! Filesystem type detection from superblock magic numbers.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Why no filesystem type could be told.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("cannot read the superblock area of {path}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "{0} holds no filesystem msb recognizes (ext2/3/4, xfs, btrfs, vfat, f2fs, squashfs, iso9660); pass fstype="
    )]
    Unknown(String),
}

/// Bytes read from the start of a device: enough to reach btrfs's superblock.
const PROBE_LEN: usize = 0x10048;

/// Detects the filesystem on the image or block device at `path`.
pub fn detect_fstype(path: &Path) -> Result<&'static str, DetectError> {
    let read_err = |source| DetectError::Read {
        path: path.display().to_string(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let mut buf = vec![0u8; PROBE_LEN];
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(read_err(e)),
        }
    }
    buf.truncate(filled);
    detect_fstype_bytes(&buf).ok_or_else(|| DetectError::Unknown(path.display().to_string()))
}

/// Detects the filesystem from the first bytes of a device (up to 65608
/// bytes are looked at; fewer is fine, signatures past the end are absent).
pub fn detect_fstype_bytes(b: &[u8]) -> Option<&'static str> {
    let at = |off: usize, len: usize| b.get(off..off + len);
    let le16 = |off: usize| at(off, 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let le32 = |off: usize| at(off, 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]));
    if le16(1024 + 0x38) == Some(0xef53) {
        let compat = le32(1024 + 0x5c).unwrap_or(0);
        let incompat = le32(1024 + 0x60).unwrap_or(0);
        let ro_compat = le32(1024 + 0x64).unwrap_or(0);
        // extents, 64bit, flex_bg, mmp, inline data / huge_file, dir_nlink, extra_isize, metadata_csum
        let ext4_only = incompat & (0x40 | 0x80 | 0x200 | 0x100 | 0x8000) != 0
            || ro_compat & (0x8 | 0x20 | 0x40 | 0x400) != 0;
        return Some(if ext4_only {
            "ext4"
        } else if compat & 0x4 != 0 {
            "ext3"
        } else {
            "ext2"
        });
    }
    if at(0, 4) == Some(b"XFSB") {
        return Some("xfs");
    }
    if at(0x10040, 8) == Some(b"_BHRfS_M") {
        return Some("btrfs");
    }
    if at(0, 4) == Some(b"hsqs") {
        return Some("squashfs");
    }
    if le32(0x400) == Some(0xf2f5_2010) {
        return Some("f2fs");
    }
    if at(0x8001, 5) == Some(b"CD001") {
        return Some("iso9660");
    }
    let boot_sig = at(0x1fe, 2) == Some(&[0x55, 0xaa]);
    if boot_sig
        && (at(0x36, 5) == Some(b"FAT12")
            || at(0x36, 5) == Some(b"FAT16")
            || at(0x52, 5) == Some(b"FAT32"))
    {
        return Some("vfat");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(len: usize, patches: &[(usize, &[u8])]) -> Vec<u8> {
        let mut b = vec![0u8; len];
        for (off, bytes) in patches {
            b[*off..off + bytes.len()].copy_from_slice(bytes);
        }
        b
    }

    #[test]
    fn signatures() {
        assert_eq!(
            detect_fstype_bytes(&with(4096, &[(0, b"XFSB")])),
            Some("xfs")
        );
        assert_eq!(
            detect_fstype_bytes(&with(PROBE_LEN, &[(0x10040, b"_BHRfS_M")])),
            Some("btrfs")
        );
        assert_eq!(
            detect_fstype_bytes(&with(4096, &[(0x52, b"FAT32"), (0x1fe, &[0x55, 0xaa])])),
            Some("vfat")
        );
        assert_eq!(
            detect_fstype_bytes(&with(4096, &[(0x36, b"FAT16"), (0x1fe, &[0x55, 0xaa])])),
            Some("vfat")
        );
        // FAT label without the boot signature is not enough
        assert_eq!(detect_fstype_bytes(&with(4096, &[(0x36, b"FAT16")])), None);
        assert_eq!(
            detect_fstype_bytes(&with(4096, &[(0, b"hsqs")])),
            Some("squashfs")
        );
        assert_eq!(
            detect_fstype_bytes(&with(4096, &[(0x400, &0xf2f5_2010u32.to_le_bytes())])),
            Some("f2fs")
        );
        assert_eq!(
            detect_fstype_bytes(&with(0x9000, &[(0x8001, b"CD001")])),
            Some("iso9660")
        );
        let ext = |compat: u32, incompat: u32| {
            with(
                4096,
                &[
                    (1024 + 0x38, &[0x53, 0xef]),
                    (1024 + 0x5c, &compat.to_le_bytes()),
                    (1024 + 0x60, &incompat.to_le_bytes()),
                ],
            )
        };
        assert_eq!(detect_fstype_bytes(&ext(0, 0)), Some("ext2"));
        assert_eq!(detect_fstype_bytes(&ext(4, 0)), Some("ext3"));
        assert_eq!(detect_fstype_bytes(&ext(4, 0x40)), Some("ext4"));
        assert_eq!(detect_fstype_bytes(&[0u8; 4096]), None);
        assert_eq!(detect_fstype_bytes(&[]), None);
    }

    #[test]
    fn real_ext_images() {
        let dir = tempfile::tempdir().unwrap();
        for (t, want) in [("ext2", "ext2"), ("ext3", "ext3"), ("ext4", "ext4")] {
            let img = dir.path().join(format!("{t}.img"));
            std::fs::File::create(&img)
                .unwrap()
                .set_len(16 << 20)
                .unwrap();
            let out = std::process::Command::new("mke2fs")
                .args(["-q", "-F", "-t", t])
                .arg(&img)
                .output()
                .expect("mke2fs (e2fsprogs) is needed");
            assert!(out.status.success(), "{out:?}");
            assert_eq!(detect_fstype(&img).unwrap(), want);
        }
        let blank = dir.path().join("blank");
        std::fs::File::create(&blank)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let msg = detect_fstype(&blank).unwrap_err().to_string();
        assert!(msg.contains("pass fstype="), "{msg}");
        assert!(matches!(
            detect_fstype(&dir.path().join("missing")),
            Err(DetectError::Read { .. })
        ));
    }
}
