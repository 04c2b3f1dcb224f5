//! The guest's initramfs: an uncompressed newc cpio archive (the kernel
//! unpacks it faster than a compressed one under TCG) holding the agent as
//! `/init`, the modules it loads and `/dev/console`. Written here rather
//! than with cpio(1) so that device nodes need no root.

use std::fs;
use std::io;
use std::path::PathBuf;

/// The guest agent, built statically by this crate's build script.
pub static AGENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/msb-agent"));

/// Errors building the initramfs.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// Reading a file to include failed.
    #[error("reading {0} for the initramfs failed")]
    Read(PathBuf, #[source] io::Error),
}

/// Something extra to put into the initramfs (tests and tools use it to
/// give a guest without a root share some programs).
#[derive(Debug, Clone)]
pub enum InitramfsEntry {
    /// A directory.
    Dir {
        /// Absolute path in the guest.
        path: String,
        /// Permission bits.
        mode: u32,
    },
    /// A regular file copied from the host.
    File {
        /// Absolute path in the guest.
        path: String,
        /// The host file to copy.
        source: PathBuf,
        /// Permission bits.
        mode: u32,
    },
    /// A regular file with the given contents.
    Bytes {
        /// Absolute path in the guest.
        path: String,
        /// The contents.
        contents: Vec<u8>,
        /// Permission bits.
        mode: u32,
    },
    /// A symbolic link.
    Symlink {
        /// Absolute path in the guest.
        path: String,
        /// Where it points.
        target: String,
    },
}

/// A newc ("070701") cpio archive being written.
#[derive(Debug, Default)]
pub struct Cpio {
    out: Vec<u8>,
    next_ino: u32,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

impl Cpio {
    /// An empty archive.
    pub fn new() -> Cpio {
        Cpio {
            out: Vec::new(),
            next_ino: 1,
        }
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        let name = name.trim_start_matches('/');
        let ino = self.next_ino;
        self.next_ino += 1;
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        let fields = [
            ino,
            mode,
            0,
            0,
            nlink,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    /// Adds a directory.
    pub fn dir(&mut self, path: &str, mode: u32) {
        self.entry(path, S_IFDIR | (mode & 0o7777), (0, 0), &[]);
    }

    /// Adds a regular file.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.entry(path, S_IFREG | (mode & 0o7777), (0, 0), data);
    }

    /// Adds a symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) {
        self.entry(path, S_IFLNK | 0o777, (0, 0), target.as_bytes());
    }

    /// Adds a character device node.
    pub fn char_dev(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        self.entry(path, S_IFCHR | (mode & 0o7777), (major, minor), &[]);
    }

    /// Ends the archive and returns its bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        // The kernel reads the archive in 512-byte blocks.
        while !self.out.len().is_multiple_of(512) {
            self.out.push(0);
        }
        self.out
    }
}

/// Builds the guest initramfs: `init` as `/init`, the modules (loaded in
/// the given order via `/msb/modules`), and the extra entries.
pub fn build(
    init: &[u8],
    modules: &[PathBuf],
    extra: &[InitramfsEntry],
) -> Result<Vec<u8>, InitramfsError> {
    let mut cpio = Cpio::new();
    for dir in [
        "/dev",
        "/proc",
        "/sys",
        "/run",
        "/tmp",
        "/msb",
        "/msb/modules.d",
    ] {
        cpio.dir(dir, 0o755);
    }
    // The kernel opens /dev/console for init's stdio before devtmpfs exists.
    cpio.char_dev("/dev/console", 0o600, 5, 1);
    cpio.file("/init", 0o755, init);
    let mut list = String::new();
    for module in modules {
        let data = fs::read(module).map_err(|e| InitramfsError::Read(module.clone(), e))?;
        let name = module
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path = format!("/msb/modules.d/{name}");
        cpio.file(&path, 0o644, &data);
        list.push_str(&path);
        list.push('\n');
    }
    cpio.file("/msb/modules", 0o644, list.as_bytes());
    for entry in extra {
        match entry {
            InitramfsEntry::Dir { path, mode } => cpio.dir(path, *mode),
            InitramfsEntry::File { path, source, mode } => {
                let data = fs::read(source).map_err(|e| InitramfsError::Read(source.clone(), e))?;
                cpio.file(path, *mode, &data);
            }
            InitramfsEntry::Bytes {
                path,
                contents,
                mode,
            } => cpio.file(path, *mode, contents),
            InitramfsEntry::Symlink { path, target } => cpio.symlink(path, target),
        }
    }
    Ok(cpio.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// cpio(1) must read our archive back: names, types and contents.
    #[test]
    fn cpio_reads_the_archive_back() {
        let mut cpio = Cpio::new();
        cpio.dir("/bin", 0o755);
        cpio.file("/bin/hello", 0o755, b"hi there\n");
        cpio.symlink("/bin/sh", "hello");
        cpio.char_dev("/dev/console", 0o600, 5, 1);
        let bytes = cpio.finish();
        assert_eq!(bytes.len() % 512, 0);
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.cpio");
        fs::write(&archive, &bytes).unwrap();
        let out = std::process::Command::new("cpio")
            .args(["-itv", "-F"])
            .arg(&archive)
            .output();
        let Ok(out) = out else {
            eprintln!("skipping: cpio(1) is not installed");
            return;
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(listing.contains("bin/hello"), "{listing}");
        assert!(listing.contains("bin/sh -> hello"), "{listing}");
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with('c') && l.contains("5,") && l.contains("dev/console")),
            "{listing}"
        );
        let extract = dir.path().join("x");
        fs::create_dir(&extract).unwrap();
        let status = std::process::Command::new("cpio")
            .args(["-i", "-d", "--quiet", "-F"])
            .arg(&archive)
            .arg("bin/hello")
            .current_dir(&extract)
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(fs::read(extract.join("bin/hello")).unwrap(), b"hi there\n");
    }
}
