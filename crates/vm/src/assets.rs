//! The guest kernel: Debian's cloud kernel package, fetched with
//! `apt-get download` and unpacked with `dpkg-deb -x` into a cache msb owns
//! (no root, nothing installed on the host), and the modules the guest needs.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Debian package whose dependency is the versioned cloud kernel.
const KERNEL_METAPACKAGE: &str = "linux-image-cloud-amd64";

/// Modules the guest needs, by name; their dependencies are added.
/// virtio_pci is left out: microvm has no PCI bus.
pub const GUEST_MODULES: &[&str] = &[
    "virtio",
    "virtio_ring",
    "virtio_mmio",
    "virtio_blk",
    "virtio_console",
    "fuse",
    "virtiofs",
    "overlay",
];

/// Errors finding or fetching the kernel.
#[derive(Debug, thiserror::Error)]
pub enum AssetsError {
    /// A file operation in the cache failed.
    #[error("{what} {path} failed")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// A helper program failed to run or failed.
    #[error("{program} failed: {detail}")]
    Tool {
        program: &'static str,
        detail: String,
    },
    /// apt knows no versioned kernel behind the metapackage.
    #[error("apt names no kernel package behind {0}")]
    NoKernelPackage(String),
    /// The unpacked package lacks the kernel or its modules.
    #[error("no kernel image or modules under {0}")]
    Incomplete(PathBuf),
    /// A module the guest needs is neither built in nor present.
    #[error("kernel module {0} not found")]
    NoModule(String),
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> AssetsError {
    let path = path.to_owned();
    move |source| AssetsError::Io { what, path, source }
}

/// The cache directory: `$MSB_VM_ASSETS`, else `<msb home>/vm` where home is
/// `$MSB_HOME` or `~/.microsandbox`.
pub fn assets_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MSB_VM_ASSETS") {
        return dir.into();
    }
    let home = std::env::var_os("MSB_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| "/".into())
                .join(".microsandbox")
        });
    home.join("vm")
}

/// An unpacked guest kernel.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The compressed kernel image.
    pub image: PathBuf,
    /// `lib/modules/<release>`.
    pub modules_dir: PathBuf,
    /// The kernel release, such as `6.1.0-57-cloud-amd64`.
    pub release: String,
}

impl Kernel {
    /// The kernel cached under `dir/kernel`, fetched first if missing. A
    /// fetch happens in a temporary directory renamed into place, so an
    /// interrupted one leaves no half cache.
    pub fn ensure(dir: &Path) -> Result<Kernel, AssetsError> {
        let root = dir.join("kernel");
        if !root.exists() {
            fetch(dir, &root)?;
        }
        Kernel::at(&root)
    }

    /// A kernel unpacked (as by `dpkg-deb -x`) at `root`.
    pub fn at(root: &Path) -> Result<Kernel, AssetsError> {
        let incomplete = || AssetsError::Incomplete(root.to_owned());
        let boot = root.join("boot");
        let mut image = None;
        for entry in fs::read_dir(&boot).map_err(io_err("reading", &boot))? {
            let entry = entry.map_err(io_err("reading", &boot))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(release) = name.strip_prefix("vmlinuz-") {
                image = Some((entry.path(), release.to_owned()));
            }
        }
        let (image, release) = image.ok_or_else(incomplete)?;
        let modules_dir = root.join("lib/modules").join(&release);
        if !modules_dir.is_dir() {
            return Err(incomplete());
        }
        Ok(Kernel {
            image,
            modules_dir,
            release,
        })
    }

    /// The module files to load for `names`, dependencies first, skipping
    /// modules built into the kernel. Dependencies come from each module's
    /// `.modinfo` (`depends=`), since an unpacked package has no modules.dep.
    pub fn module_files(&self, names: &[&str]) -> Result<Vec<PathBuf>, AssetsError> {
        let builtin_list = self.modules_dir.join("modules.builtin");
        let builtin: HashSet<String> = fs::read_to_string(&builtin_list)
            .map_err(io_err("reading", &builtin_list))?
            .lines()
            .map(module_name)
            .collect();
        let mut available = HashMap::new();
        index_modules(&self.modules_dir.join("kernel"), &mut available)?;

        let mut order = Vec::new();
        let mut seen = HashSet::new();
        for name in names {
            self.visit(
                &normalize(name),
                &builtin,
                &available,
                &mut seen,
                &mut order,
            )?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        builtin: &HashSet<String>,
        available: &HashMap<String, PathBuf>,
        seen: &mut HashSet<String>,
        order: &mut Vec<PathBuf>,
    ) -> Result<(), AssetsError> {
        if builtin.contains(name) || !seen.insert(name.to_owned()) {
            return Ok(());
        }
        let path = available
            .get(name)
            .ok_or_else(|| AssetsError::NoModule(name.to_owned()))?;
        let bytes = fs::read(path).map_err(io_err("reading", path))?;
        for dep in modinfo_depends(&bytes) {
            self.visit(&normalize(&dep), builtin, available, seen, order)?;
        }
        order.push(path.clone());
        Ok(())
    }
}

/// Module names use `_` where file names may use `-`.
fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    normalize(file.split('.').next().unwrap_or(file))
}

fn index_modules(dir: &Path, into: &mut HashMap<String, PathBuf>) -> Result<(), AssetsError> {
    for entry in fs::read_dir(dir).map_err(io_err("reading", dir))? {
        let entry = entry.map_err(io_err("reading", dir))?;
        let path = entry.path();
        if entry
            .file_type()
            .map_err(io_err("reading", &path))?
            .is_dir()
        {
            index_modules(&path, into)?;
        } else if path.extension().is_some_and(|e| e == "ko") {
            into.insert(module_name(&path.to_string_lossy()), path);
        }
    }
    Ok(())
}

/// The `depends=` entry of a module's `.modinfo` strings (NUL separated).
fn modinfo_depends(module: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(at) = module.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let rest = &module[at + KEY.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn run(program: &'static str, cmd: &mut Command) -> Result<String, AssetsError> {
    let out = cmd.output().map_err(|e| AssetsError::Tool {
        program,
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        let detail = format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return Err(AssetsError::Tool { program, detail });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The versioned kernel package: `$MSB_VM_KERNEL_PACKAGE`, else what the
/// cloud metapackage's candidate depends on.
fn kernel_package() -> Result<String, AssetsError> {
    if let Ok(pkg) = std::env::var("MSB_VM_KERNEL_PACKAGE") {
        return Ok(pkg);
    }
    let deps = run(
        "apt-cache",
        Command::new("apt-cache").args(["depends", KERNEL_METAPACKAGE]),
    )?;
    deps.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-cloud-amd64"))
        .map(str::to_owned)
        .ok_or_else(|| AssetsError::NoKernelPackage(KERNEL_METAPACKAGE.into()))
}

/// Removes the temporary directories of fetches whose process is gone
/// (killed mid-fetch); a running fetch keeps its own.
fn remove_abandoned_fetches(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(".kernel-fetch-")
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn fetch(dir: &Path, root: &Path) -> Result<(), AssetsError> {
    fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    let package = kernel_package()?;
    remove_abandoned_fetches(dir);
    let tmp = dir.join(format!(".kernel-fetch-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir(&tmp).map_err(io_err("creating", &tmp))?;
    let result = (|| {
        run(
            "apt-get download",
            Command::new("apt-get")
                .arg("download")
                .arg(&package)
                .current_dir(&tmp),
        )?;
        let deb = fs::read_dir(&tmp)
            .map_err(io_err("reading", &tmp))?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .ok_or_else(|| AssetsError::Tool {
                program: "apt-get download",
                detail: "no .deb downloaded".into(),
            })?;
        let unpacked = tmp.join("root");
        run(
            "dpkg-deb",
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked),
        )?;
        Kernel::at(&unpacked)?;
        match fs::rename(&unpacked, root) {
            // Another process finished the same fetch first.
            Err(_) if root.exists() => Ok(()),
            r => r.map_err(io_err("renaming into", root)),
        }
    })();
    let _ = fs::remove_dir_all(&tmp);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_come_from_modinfo() {
        let blob = b"\x7fELF junk\0license=GPL\0depends=virtio,virtio_ring\0name=virtio_blk\0";
        assert_eq!(modinfo_depends(blob), vec!["virtio", "virtio_ring"]);
        assert!(modinfo_depends(b"\0depends=\0name=overlay\0").is_empty());
        assert_eq!(module_name("kernel/lib/crc-t10dif.ko"), "crc_t10dif");
    }
}
