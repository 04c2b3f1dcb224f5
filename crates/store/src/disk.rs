//! Disk volume images: sparse raw ext4 files made with `mke2fs`, and their
//! usage read straight from the ext4 superblock (no mount needed).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

/// Errors of disk image handling.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot run mke2fs (install e2fsprogs)")]
    Mke2fsMissing(#[source] io::Error),
    #[error("mke2fs failed: {0}")]
    Mke2fs(String),
    #[error("cannot read disk image {path}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("disk image {0} does not hold an ext4 filesystem")]
    NotExt4(String),
}

/// Makes a sparse ext4 image of `size_mib` MiB at `path` (which must not
/// exist), whose root directory is owned by `root_owner` (host uid, gid).
///
/// Inode tables and the journal are initialized lazily, so even a 100 GiB
/// image takes a few MiB on the host and a fraction of a second to make; no
/// blocks are reserved for root, since the whole volume belongs to its user.
pub fn make_image(path: &Path, size_mib: u32, root_owner: (u32, u32)) -> Result<(), DiskError> {
    let file = File::create_new(path).map_err(|source| DiskError::Read {
        path: path.display().to_string(),
        source,
    })?;
    file.set_len(u64::from(size_mib) << 20)
        .map_err(|source| DiskError::Read {
            path: path.display().to_string(),
            source,
        })?;
    drop(file);
    let out = die_with_caller(&mut Command::new("mke2fs"))
        .args(["-t", "ext4", "-F", "-q", "-m", "0", "-E"])
        .arg(format!(
            "lazy_itable_init=1,lazy_journal_init=1,nodiscard,root_owner={}:{}",
            root_owner.0, root_owner.1
        ))
        .args(["-O", "^resize_inode"])
        .arg(path)
        .env("MKE2FS_CONFIG", "/etc/mke2fs.conf")
        .output()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => DiskError::Mke2fsMissing(e),
            _ => DiskError::Mke2fs(e.to_string()),
        })?;
    if !out.status.success() {
        return Err(DiskError::Mke2fs(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

const EXT4_MAGIC: u16 = 0xef53;
const INCOMPAT_64BIT: u32 = 0x80;

/// Bytes in use inside the ext4 filesystem of `image`: allocated blocks less
/// the filesystem's own overhead (inode tables, journal, bitmaps), as `df`
/// counts them. Read from the on-disk superblock; while a sandbox has the
/// image mounted the kernel updates these counters lazily.
pub fn used_bytes(image: &Path) -> Result<u64, DiskError> {
    let read_err = |source| DiskError::Read {
        path: image.display().to_string(),
        source,
    };
    let file = File::open(image).map_err(read_err)?;
    let mut sb = [0u8; 1024];
    file.read_exact_at(&mut sb, 1024).map_err(read_err)?;
    let u32_at = |o: usize| {
        u64::from(u32::from_le_bytes(
            sb[o..o + 4].try_into().expect("4 bytes"),
        ))
    };
    if u16::from_le_bytes([sb[0x38], sb[0x39]]) != EXT4_MAGIC {
        return Err(DiskError::NotExt4(image.display().to_string()));
    }
    let wide = u32_at(0x60) as u32 & INCOMPAT_64BIT != 0;
    let hi = |o: usize| if wide { u32_at(o) << 32 } else { 0 };
    let blocks = u32_at(0x04) | hi(0x150);
    let free = u32_at(0x0c) | hi(0x158);
    let overhead = u32_at(0x248);
    let log = u32_at(0x18);
    if log > 6 {
        return Err(DiskError::NotExt4(image.display().to_string()));
    }
    let block_size = 1024u64 << log;
    Ok(blocks.saturating_sub(free).saturating_sub(overhead) * block_size)
}

/// Ends a helper program with the thread that started it: a killed
/// `msb volume create` or clone must not leave `mke2fs` or `cp` writing
/// into a staging folder (or holding the store lock it inherited until
/// its exec).
pub(crate) fn die_with_caller(cmd: &mut Command) -> &mut Command {
    let caller = rustix::process::getpid();
    // SAFETY: between fork and exec the closure only makes the
    // async-signal-safe calls prctl and getppid, and allocates nothing.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, move || {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            // The caller may have died before the signal was armed.
            if rustix::process::getppid() != Some(caller) {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_die_with_their_caller() {
        use std::os::unix::process::ExitStatusExt;
        // The death signal follows the thread that started the child.
        let mut child = std::thread::spawn(|| {
            die_with_caller(Command::new("sleep").arg("30"))
                .spawn()
                .unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(child.wait().unwrap().signal(), Some(9));
    }

    fn dumpe2fs_field(image: &Path, field: &str) -> u64 {
        let out = Command::new("dumpe2fs")
            .arg("-h")
            .arg(image)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.starts_with(field))
            .unwrap_or_else(|| panic!("no {field}"));
        line.split(':').nth(1).unwrap().trim().parse().unwrap()
    }

    #[test]
    fn fresh_image_is_sparse_and_nearly_empty() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.raw");
        make_image(&img, 1024, (0, 0)).unwrap();
        let meta = std::fs::metadata(&img).unwrap();
        assert_eq!(meta.len(), 1 << 30);
        assert!(std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < 10 << 20);
        let expected = (dumpe2fs_field(&img, "Block count")
            - dumpe2fs_field(&img, "Free blocks")
            - dumpe2fs_field(&img, "Overhead clusters"))
            * dumpe2fs_field(&img, "Block size");
        assert_eq!(used_bytes(&img).unwrap(), expected);
        assert!(expected < 1 << 20, "{expected}");
    }

    #[test]
    fn refuses_existing_file_and_non_ext4() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.raw");
        std::fs::write(&img, vec![0u8; 8192]).unwrap();
        assert!(matches!(
            make_image(&img, 64, (0, 0)),
            Err(DiskError::Read { .. })
        ));
        assert!(matches!(used_bytes(&img), Err(DiskError::NotExt4(_))));
        assert_eq!(std::fs::read(&img).unwrap(), vec![0u8; 8192]);
    }
}
