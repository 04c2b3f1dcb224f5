//! Resource limits of a sandbox: one cgroup per sandbox, limiting memory
//! (swap included), processes and CPU time.
//!
//! cgroup v2 is used when its hierarchy has the memory and pids controllers
//! (most hosts: unified at `/sys/fs/cgroup`); else cgroup v1, one group per
//! controller hierarchy. Groups live under a parent named `msb` at the root
//! of each hierarchy, `msb/<id>`, so that [`SandboxCgroup::cleanup_stale`]
//! finds what a crashed supervisor left wherever it ran. The files are
//! written directly: a few writes do not justify a cgroup library.

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};
use serde::{Deserialize, Serialize};

/// The group under each hierarchy's root that holds the sandboxes' groups.
const PARENT: &str = "msb";
/// The CFS period; a quota is CPUs times this.
const CPU_PERIOD_US: u64 = 100_000;
/// `PID_MAX_LIMIT` on 64-bit: `pids.max` takes nothing larger.
const MAX_PIDS: u32 = 4 * 1024 * 1024;
/// How long an empty group must have existed before
/// [`SandboxCgroup::cleanup_stale`] takes it for a leftover rather than
/// one whose creator is about to add a process to it.
const STALE_AFTER: Duration = Duration::from_secs(30);
/// How long removing a group waits for its killed processes to exit.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// Pids pinned at a time while killing without `cgroup.kill` (each pin is
/// a descriptor).
const PIN_BATCH: usize = 128;

/// A sandbox's resource limits.
///
/// The defaults, 1 GiB of memory without swap, no CPU limit and 1024
/// processes, leave room for compilers and test suites while a runaway
/// sandbox can neither fork-bomb nor exhaust the memory of a small host
/// (2 cores, 24 GiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Memory in MiB; swap is not added on top.
    pub memory_mib: u32,
    /// CPU time in thousandths of a CPU (1000: one CPU); `None`: no limit.
    pub cpus_milli: Option<u32>,
    /// Processes and threads.
    pub pids: u32,
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            memory_mib: 1024,
            cpus_milli: None,
            pids: 1024,
        }
    }
}

impl Resources {
    /// The smallest memory limit: less hardly starts a shell.
    pub const MIN_MEMORY_MIB: u32 = 16;
    /// The smallest CPU limit, 0.01 CPU: the kernel's minimum quota (1 ms)
    /// per 100 ms period.
    pub const MIN_CPUS_MILLI: u32 = 10;
    /// The largest CPU limit, 1024 CPUs.
    pub const MAX_CPUS_MILLI: u32 = 1024 * 1000;
    /// The smallest process limit.
    pub const MIN_PIDS: u32 = 16;

    /// Parses a memory limit given as a size (`512`, `512M`, `1.5G`; a bare
    /// number is MiB) into MiB.
    pub fn parse_memory(s: &str) -> Result<u32, CgroupError> {
        let mib = msb_spec::parse_size_mib(s).map_err(|source| CgroupError::Memory {
            value: s.to_string(),
            source,
        })?;
        check_memory(mib)?;
        Ok(mib)
    }

    /// Parses a CPU limit given as a decimal number of CPUs (`1`, `1.5`,
    /// `0.25`; at most three decimals) into thousandths of a CPU.
    pub fn parse_cpus(s: &str) -> Result<u32, CgroupError> {
        let bad = || CgroupError::Cpus(s.to_string());
        let (int, frac) = s.trim().split_once('.').unwrap_or((s.trim(), ""));
        let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
        if int.is_empty() || !digits(int) || !digits(frac) || frac.len() > 3 {
            return Err(bad());
        }
        if s.contains('.') && frac.is_empty() {
            return Err(bad());
        }
        let whole: u32 = int.parse().map_err(|_| bad())?;
        let thousandths: u32 = format!("{frac:0<3}").parse().map_err(|_| bad())?;
        let milli = whole
            .checked_mul(1000)
            .and_then(|m| m.checked_add(thousandths))
            .ok_or_else(bad)?;
        check_cpus(milli)?;
        Ok(milli)
    }

    /// Parses a process limit.
    pub fn parse_pids(s: &str) -> Result<u32, CgroupError> {
        let pids = s
            .trim()
            .parse()
            .map_err(|_| CgroupError::PidsSyntax(s.to_string()))?;
        check_pids(pids)?;
        Ok(pids)
    }

    /// Checks limits built by hand or read back against the same bounds as
    /// the parsers.
    pub fn validate(&self) -> Result<(), CgroupError> {
        check_memory(self.memory_mib)?;
        if let Some(milli) = self.cpus_milli {
            check_cpus(milli)?;
        }
        check_pids(self.pids)
    }
}

fn check_memory(mib: u32) -> Result<(), CgroupError> {
    if mib < Resources::MIN_MEMORY_MIB {
        return Err(CgroupError::MemoryTooSmall(mib));
    }
    Ok(())
}

fn check_cpus(milli: u32) -> Result<(), CgroupError> {
    if !(Resources::MIN_CPUS_MILLI..=Resources::MAX_CPUS_MILLI).contains(&milli) {
        return Err(CgroupError::CpusOutOfRange(milli));
    }
    Ok(())
}

fn check_pids(pids: u32) -> Result<(), CgroupError> {
    if !(Resources::MIN_PIDS..=MAX_PIDS).contains(&pids) {
        return Err(CgroupError::PidsOutOfRange(pids));
    }
    Ok(())
}

/// Errors of resource limits and sandbox cgroups.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A memory limit is not a size.
    #[error("invalid memory limit {value:?}")]
    Memory {
        /// The text given.
        value: String,
        /// Why it is not a size.
        #[source]
        source: msb_spec::SizeError,
    },
    /// A memory limit below [`Resources::MIN_MEMORY_MIB`].
    #[error("a memory limit of {0} MiB is too small; the minimum is 16 MiB")]
    MemoryTooSmall(u32),
    /// A CPU limit is not a decimal number of CPUs.
    #[error("invalid CPU limit {0:?}; expected a number of CPUs such as 2, 1.5 or 0.25")]
    Cpus(String),
    /// A CPU limit outside 0.01..=1024 CPUs.
    #[error("a CPU limit of {0} thousandths of a CPU is out of range; allowed: 0.01 to 1024 CPUs")]
    CpusOutOfRange(u32),
    /// A process limit is not a whole number.
    #[error("invalid process limit {0:?}; expected a whole number")]
    PidsSyntax(String),
    /// A process limit outside 16..=4194304.
    #[error("a process limit of {0} is out of range; allowed: 16 to 4194304")]
    PidsOutOfRange(u32),
    /// A group id that is not a plain name.
    #[error(
        "invalid cgroup id {0:?}; it must start with a letter or digit and hold only ASCII letters, digits, '.', '_' and '-'"
    )]
    Id(String),
    /// Neither cgroup version offers memory and pids limits here.
    #[error(
        "no usable cgroup hierarchy: neither cgroup v2 with the memory and pids controllers nor cgroup v1 memory and pids hierarchies are mounted"
    )]
    NoHierarchy,
    /// A limit was asked for whose controller this host lacks.
    #[error("the cgroup hierarchy has no {0} controller")]
    MissingController(&'static str),
    /// A v2 group with processes of its own cannot pass a controller on to
    /// groups under it (the "no internal processes" rule); the hierarchy's
    /// real root is exempt, but a container's cgroup namespace root is not.
    #[error(
        "cannot enable the {controller} controller under {path}: cgroup v2 gives no controllers to the children of a group that holds processes (run msb from a group of its own; in a container, move the container's processes out of its root group first)"
    )]
    HasProcesses {
        /// The group that holds processes.
        path: PathBuf,
        /// The controller.
        controller: &'static str,
    },
    /// A cgroup directory could not be created.
    #[error("cannot create cgroup {path}")]
    Create {
        /// The directory.
        path: PathBuf,
        /// The system's reason.
        #[source]
        source: io::Error,
    },
    /// A cgroup file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The system's reason.
        #[source]
        source: io::Error,
    },
    /// A cgroup file could not be opened for writing.
    #[error("cannot open {path} for writing")]
    Open {
        /// The file.
        path: PathBuf,
        /// The system's reason.
        #[source]
        source: io::Error,
    },
    /// A cgroup file refused a value.
    #[error("cannot write {value:?} to {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The value.
        value: String,
        /// The system's reason.
        #[source]
        source: io::Error,
    },
    /// A cgroup directory could not be removed.
    #[error("cannot remove cgroup {path}")]
    Remove {
        /// The directory.
        path: PathBuf,
        /// The system's reason.
        #[source]
        source: io::Error,
    },
    /// Processes of a group outlived the wait after they were killed.
    #[error("processes in cgroup {0} did not exit within 10 s of being killed")]
    Busy(PathBuf),
}

/// Where the controllers are mounted.
#[derive(Debug)]
enum Hierarchy {
    /// cgroup v2: the unified hierarchy's mount point.
    Unified(PathBuf),
    /// cgroup v1: each controller's mount point.
    Legacy {
        memory: PathBuf,
        pids: PathBuf,
        cpu: Option<PathBuf>,
    },
}

impl Hierarchy {
    /// Finds the hierarchies in this process's mount table, preferring v2
    /// when it has the memory and pids controllers.
    fn detect() -> Option<Self> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
        let (mut memory, mut pids, mut cpu) = (None, None, None);
        for line in mountinfo.lines() {
            // "id parent dev root mountpoint options ... - fstype source superoptions"
            let Some((mount, fs)) = line.split_once(" - ") else {
                continue;
            };
            let Some(point) = mount.split(' ').nth(4).map(PathBuf::from) else {
                continue;
            };
            let mut fs = fs.split(' ');
            match fs.next() {
                Some("cgroup2") => {
                    let usable = controllers(&point, "cgroup.controllers").is_ok_and(|have| {
                        ["memory", "pids"]
                            .iter()
                            .all(|c| have.iter().any(|h| h == c))
                    });
                    if usable {
                        return Some(Hierarchy::Unified(point));
                    }
                }
                Some("cgroup") => {
                    for option in fs.nth(1).unwrap_or_default().split(',') {
                        match option {
                            "memory" => memory = Some(point.clone()),
                            "pids" => pids = Some(point.clone()),
                            "cpu" => cpu = Some(point.clone()),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        Some(Hierarchy::Legacy {
            memory: memory?,
            pids: pids?,
            cpu,
        })
    }

    /// The `msb` parent groups in use.
    fn parents(&self) -> Vec<PathBuf> {
        match self {
            Hierarchy::Unified(root) => vec![root.join(PARENT)],
            Hierarchy::Legacy { memory, pids, cpu } => [Some(memory), Some(pids), cpu.as_ref()]
                .into_iter()
                .flatten()
                .map(|root| root.join(PARENT))
                .collect(),
        }
    }
}

/// The controllers listed in `dir`'s `file` (`cgroup.controllers` or
/// `cgroup.subtree_control`).
fn controllers(dir: &Path, file: &str) -> Result<Vec<String>, CgroupError> {
    let path = dir.join(file);
    let text = fs::read_to_string(&path).map_err(|source| CgroupError::Read { path, source })?;
    Ok(text.split_whitespace().map(str::to_string).collect())
}

/// Writes `value` to `dir`'s `file`.
fn write(dir: &Path, file: &str, value: impl ToString) -> Result<(), CgroupError> {
    let path = dir.join(file);
    let value = value.to_string();
    fs::write(&path, &value).map_err(|source| CgroupError::Write {
        path,
        value,
        source,
    })
}

/// Writes `value` to `dir`'s `file` if the kernel offers that file (swap
/// limits exist only with swap accounting).
fn write_if_present(dir: &Path, file: &str, value: impl ToString) -> Result<(), CgroupError> {
    if dir.join(file).exists() {
        write(dir, file, value)?;
    }
    Ok(())
}

/// Enables `wanted` for the children of v2 group `dir`.
fn enable(dir: &Path, wanted: &[&'static str]) -> Result<(), CgroupError> {
    let available = controllers(dir, "cgroup.controllers")?;
    let enabled = controllers(dir, "cgroup.subtree_control")?;
    for &c in wanted {
        if !available.iter().any(|a| a == c) {
            return Err(CgroupError::MissingController(c));
        }
        if !enabled.iter().any(|e| e == c) {
            match write(dir, "cgroup.subtree_control", format!("+{c}")) {
                Err(CgroupError::Write { source, .. })
                    if source.raw_os_error() == Some(libc::EBUSY) =>
                {
                    return Err(CgroupError::HasProcesses {
                        path: dir.to_path_buf(),
                        controller: c,
                    });
                }
                r => r?,
            }
        }
    }
    Ok(())
}

/// Creates `dir` unless it exists.
fn ensure_dir(dir: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(CgroupError::Create {
            path: dir.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// The pids listed in `dir`'s `cgroup.procs`.
fn procs(dir: &Path) -> io::Result<Vec<i32>> {
    Ok(fs::read_to_string(dir.join("cgroup.procs"))?
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// The cgroup of one sandbox: created with its limits, joined by the
/// sandbox's first process (its children follow), and on drop emptied, by
/// killing whatever is left in it, and removed.
#[derive(Debug)]
pub struct SandboxCgroup {
    /// The group's directories: one on v2, one per controller on v1.
    dirs: Vec<PathBuf>,
    /// Whether the group is a v2 one (`cgroup.kill` may exist).
    unified: bool,
}

impl SandboxCgroup {
    /// Creates the group `msb/<id>` with the limits `r`. `id` must be
    /// unique to the sandbox (e.g. its name and the supervisor's pid) and a
    /// plain name: ASCII letters, digits, `.`, `_`, `-`, starting with a
    /// letter or digit.
    pub fn create(id: &str, r: &Resources) -> Result<Self, CgroupError> {
        let plain = id.len() <= 200
            && id.starts_with(|c: char| c.is_ascii_alphanumeric())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !plain {
            return Err(CgroupError::Id(id.to_string()));
        }
        r.validate()?;
        let hierarchy = Hierarchy::detect().ok_or(CgroupError::NoHierarchy)?;
        let bytes = u64::from(r.memory_mib) << 20;
        // Dropped on error: removes what was created.
        let mut group = SandboxCgroup {
            dirs: Vec::new(),
            unified: matches!(hierarchy, Hierarchy::Unified(_)),
        };
        match hierarchy {
            Hierarchy::Unified(root) => {
                let mut wanted = vec!["memory", "pids"];
                if r.cpus_milli.is_some() {
                    wanted.push("cpu");
                }
                let parent = root.join(PARENT);
                enable(&root, &wanted)?;
                ensure_dir(&parent)?;
                enable(&parent, &wanted)?;
                let dir = group.make(&parent, id)?;
                write(&dir, "memory.max", bytes)?;
                // No swap on top of the memory limit.
                write_if_present(&dir, "memory.swap.max", 0)?;
                write(&dir, "pids.max", r.pids)?;
                if let Some(milli) = r.cpus_milli {
                    let quota = u64::from(milli) * CPU_PERIOD_US / 1000;
                    write(&dir, "cpu.max", format!("{quota} {CPU_PERIOD_US}"))?;
                }
            }
            Hierarchy::Legacy { memory, pids, cpu } => {
                let dir = group.make(&memory.join(PARENT), id)?;
                // The memory limit first: memory+swap may not go below it.
                write(&dir, "memory.limit_in_bytes", bytes)?;
                write_if_present(&dir, "memory.memsw.limit_in_bytes", bytes)?;
                let dir = group.make(&pids.join(PARENT), id)?;
                write(&dir, "pids.max", r.pids)?;
                if let Some(milli) = r.cpus_milli {
                    let cpu = cpu.ok_or(CgroupError::MissingController("cpu"))?;
                    let dir = group.make(&cpu.join(PARENT), id)?;
                    let quota = u64::from(milli) * CPU_PERIOD_US / 1000;
                    write(&dir, "cpu.cfs_period_us", CPU_PERIOD_US)?;
                    write(&dir, "cpu.cfs_quota_us", quota)?;
                }
            }
        }
        Ok(group)
    }

    /// Creates `parent/id` (and `parent` if needed) as one of this group's
    /// directories.
    fn make(&mut self, parent: &Path, id: &str) -> Result<PathBuf, CgroupError> {
        ensure_dir(parent)?;
        let dir = parent.join(id);
        fs::create_dir(&dir).map_err(|source| CgroupError::Create {
            path: dir.clone(),
            source,
        })?;
        self.dirs.push(dir.clone());
        Ok(dir)
    }

    /// Moves process `pid` into the group; the children it starts from
    /// then on are born in it.
    pub fn add(&self, pid: i32) -> Result<(), CgroupError> {
        self.dirs
            .iter()
            .try_for_each(|dir| write(dir, "cgroup.procs", pid))
    }

    /// Opens the group's entry files, before fork, so that a child can
    /// move itself in between fork and exec ([`CgroupEntry::enter`]): no
    /// process then runs outside the group, and a cgroup namespace the
    /// child creates afterwards is rooted at the group.
    pub fn entry(&self) -> Result<CgroupEntry, CgroupError> {
        let files = self
            .dirs
            .iter()
            .map(|dir| {
                let path = dir.join(entry_file(self.unified));
                fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map(OwnedFd::from)
                    .map_err(|source| CgroupError::Open { path, source })
            })
            .collect::<Result<_, _>>()?;
        Ok(CgroupEntry { files })
    }

    /// The v2 group's directory, opened for `clone3(CLONE_INTO_CGROUP)`,
    /// which starts a child in the group at no extra cost; `None` on v1.
    pub fn clone_target(&self) -> Result<Option<OwnedFd>, CgroupError> {
        if !self.unified {
            return Ok(None);
        }
        let path = &self.dirs[0];
        rustix::fs::open(
            path,
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map(Some)
        .map_err(|e| CgroupError::Open {
            path: path.clone(),
            source: e.into(),
        })
    }

    /// The group's directories: one on cgroup v2, one per controller
    /// hierarchy (memory, pids, then cpu if limited) on v1.
    pub fn paths(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Kills every process left in the group and removes it, reporting
    /// what dropping it would only attempt.
    pub fn remove(mut self) -> Result<(), CgroupError> {
        let result = self.teardown();
        self.dirs.clear();
        result
    }

    fn teardown(&mut self) -> Result<(), CgroupError> {
        let deadline = Instant::now() + KILL_TIMEOUT;
        loop {
            self.kill_all();
            // A group without live processes can go, even if zombies of
            // it wait to be reaped.
            let mut failed = None;
            self.dirs.retain(|dir| match fs::remove_dir(dir) {
                Ok(()) => false,
                Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => true,
                Err(source) => {
                    failed.get_or_insert(CgroupError::Remove {
                        path: dir.clone(),
                        source,
                    });
                    true
                }
            });
            if let Some(e) = failed {
                return Err(e);
            }
            let Some(busy) = self.dirs.first() else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                return Err(CgroupError::Busy(busy.clone()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGKILL to every process in the group.
    fn kill_all(&self) {
        if self.unified
            && let Some(dir) = self.dirs.first()
        {
            let kill = dir.join("cgroup.kill");
            // Race-free against forks, unlike killing by pid.
            if kill.exists() && fs::write(&kill, "1").is_ok() {
                return;
            }
        }
        // Without cgroup.kill (v1, or v2 before Linux 5.14), by pid. A pid
        // is pinned with a pidfd and signalled only if still listed after:
        // then the pinned process is in the group, or gone (and the signal
        // reaches nobody); a recycled pid never redirects the kill.
        for dir in &self.dirs {
            let Ok(listed) = procs(dir) else { continue };
            for batch in listed.chunks(PIN_BATCH) {
                let pinned: Vec<(i32, OwnedFd)> = batch
                    .iter()
                    .filter_map(|&pid| {
                        let fd = pidfd_open(Pid::from_raw(pid)?, PidfdFlags::empty()).ok()?;
                        Some((pid, fd))
                    })
                    .collect();
                let Ok(still) = procs(dir) else { continue };
                for (pid, fd) in pinned {
                    if still.contains(&pid) {
                        let _ = pidfd_send_signal(&fd, Signal::KILL);
                    }
                }
            }
        }
    }

    /// Removes the empty sandbox groups a crashed supervisor left behind
    /// (older than 30 s, so that a group just created, whose process is
    /// about to join, stays). Groups with processes are left alone. Returns
    /// how many were removed; finding none usable hierarchy is no error.
    pub fn cleanup_stale() -> usize {
        let Some(hierarchy) = Hierarchy::detect() else {
            return 0;
        };
        let now = SystemTime::now();
        hierarchy
            .parents()
            .iter()
            .filter_map(|parent| fs::read_dir(parent).ok())
            .flatten()
            .flatten()
            .filter(|entry| {
                // A kernfs directory's modification time is its creation
                // time: writes to its files leave it alone. (On v2, a
                // controller enabled above it later adds files and resets
                // it: reclaiming is then only put off.)
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| now.duration_since(t).is_ok_and(|d| d >= STALE_AFTER));
                old && entry.file_type().is_ok_and(|t| t.is_dir())
            })
            // Fails (EBUSY) for a group with processes or child groups.
            .filter(|entry| fs::remove_dir(entry.path()).is_ok())
            .count()
    }
}

/// The file a process writes 0 to to move itself into a group. On v1 it
/// is `tasks`, which moves the calling thread alone: between fork and exec
/// that thread is the whole process, and the kernel then skips the
/// system-wide lock that `cgroup.procs` takes, whose first taker waits for
/// an RCU grace period (5 to 15 ms on this project's 2-CPU hosts, most of
/// what starting a sandbox took). A kernel without that shortcut takes the
/// lock either way. v2 moves single threads only within a threaded subtree.
fn entry_file(unified: bool) -> &'static str {
    if unified { "cgroup.procs" } else { "tasks" }
}

/// A sandbox group's entry files, open for a process to move itself in.
#[derive(Debug)]
pub struct CgroupEntry {
    files: Vec<OwnedFd>,
}

impl CgroupEntry {
    /// The entry of the sandbox group process `pid` is in (a sandbox's
    /// init), for a process joining that sandbox; `None` if it is in none.
    pub fn of_process(pid: i32) -> Result<Option<CgroupEntry>, CgroupError> {
        let path = PathBuf::from(format!("/proc/{pid}/cgroup"));
        let text =
            fs::read_to_string(&path).map_err(|source| CgroupError::Read { path, source })?;
        let Some(hierarchy) = Hierarchy::detect() else {
            return Ok(None);
        };
        let mut files = Vec::new();
        for line in text.lines() {
            // "hierarchy-id:controllers:path", the path as seen from here.
            let mut parts = line.splitn(3, ':');
            let (Some(id), Some(ctrls), Some(group)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if !group.starts_with(&format!("/{PARENT}/")) {
                continue;
            }
            let root = match &hierarchy {
                Hierarchy::Unified(root) if id == "0" => Some(root),
                Hierarchy::Legacy { memory, pids, cpu } => ctrls.split(',').find_map(|c| match c {
                    "memory" => Some(memory),
                    "pids" => Some(pids),
                    "cpu" => cpu.as_ref(),
                    _ => None,
                }),
                Hierarchy::Unified(_) => None,
            };
            if let Some(root) = root {
                let unified = matches!(hierarchy, Hierarchy::Unified(_));
                let path = root.join(&group[1..]).join(entry_file(unified));
                let file = fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|source| CgroupError::Open { path, source })?;
                files.push(OwnedFd::from(file));
            }
        }
        Ok((!files.is_empty()).then_some(CgroupEntry { files }))
    }

    /// Moves the calling process, which must have a single thread, into
    /// the group (writing 0 moves the writer). Async-signal-safe: one write per
    /// file, no allocation. The kernel checks the move against the cgroup
    /// namespace the files were opened in (Linux 5.16 and later) or, on
    /// older kernels, the caller's: enter before creating or joining a
    /// cgroup namespace.
    pub fn enter(&self) -> io::Result<()> {
        for file in &self.files {
            rustix::io::write(file, b"0")?;
        }
        Ok(())
    }
}

impl Drop for SandboxCgroup {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers_and_bounds() {
        assert_eq!(Resources::parse_memory("64M").unwrap(), 64);
        assert_eq!(Resources::parse_memory("1.5G").unwrap(), 1536);
        assert_eq!(Resources::parse_memory("512").unwrap(), 512);
        assert!(matches!(
            Resources::parse_memory("8M"),
            Err(CgroupError::MemoryTooSmall(8))
        ));
        assert!(matches!(
            Resources::parse_memory("lots"),
            Err(CgroupError::Memory { .. })
        ));
        assert_eq!(Resources::parse_cpus("1.5").unwrap(), 1500);
        assert_eq!(Resources::parse_cpus("2").unwrap(), 2000);
        assert_eq!(Resources::parse_cpus("0.25").unwrap(), 250);
        assert_eq!(Resources::parse_cpus("0.01").unwrap(), 10);
        assert_eq!(Resources::parse_cpus("1024").unwrap(), 1_024_000);
        for bad in ["", ".5", "1.", "1.2345", "-1", "1,5", "x", "99999999999"] {
            assert!(
                matches!(Resources::parse_cpus(bad), Err(CgroupError::Cpus(_))),
                "{bad:?}"
            );
        }
        for out in ["0", "0.001", "1025"] {
            assert!(
                matches!(
                    Resources::parse_cpus(out),
                    Err(CgroupError::CpusOutOfRange(_))
                ),
                "{out:?}"
            );
        }
        assert_eq!(Resources::parse_pids("64").unwrap(), 64);
        assert!(matches!(
            Resources::parse_pids("8"),
            Err(CgroupError::PidsOutOfRange(8))
        ));
        assert!(matches!(
            Resources::parse_pids("many"),
            Err(CgroupError::PidsSyntax(_))
        ));
        Resources::default().validate().unwrap();
        let zero_cpu = Resources {
            cpus_milli: Some(0),
            ..Resources::default()
        };
        assert!(zero_cpu.validate().is_err());
        // The error text names the bound.
        let e = Resources::parse_memory("8M").unwrap_err().to_string();
        assert!(e.contains("16 MiB"), "{e}");
    }

    #[test]
    fn stale_groups_are_removed_and_young_or_busy_ones_kept() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: cgroups need root");
            return;
        }
        let Some(hierarchy) = Hierarchy::detect() else {
            eprintln!("skipped: no usable cgroup hierarchy");
            return;
        };
        let parents = hierarchy.parents();
        let pid = std::process::id();
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        let age = |dir: &Path| {
            fs::File::open(dir).unwrap().set_modified(hour_ago).unwrap();
        };
        // A running sandbox's group: old, not empty. Made first: on v2 it
        // enables the controllers, whose new files in the groups below
        // would make the stale one young again.
        let live =
            SandboxCgroup::create(&format!("live-test-{pid}"), &Resources::default()).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        live.add(child.id() as i32).unwrap();
        live.paths().iter().for_each(|p| age(p));
        // A crashed supervisor's leftover (empty, old) and a group just
        // made whose process has yet to join (empty, young), made by hand.
        let (stale, young) = (format!("stale-test-{pid}"), format!("young-test-{pid}"));
        for parent in &parents {
            fs::create_dir(parent.join(&stale)).unwrap();
            age(&parent.join(&stale));
            fs::create_dir(parent.join(&young)).unwrap();
        }

        assert!(SandboxCgroup::cleanup_stale() >= parents.len());
        for parent in &parents {
            assert!(!parent.join(&stale).exists());
            assert!(parent.join(&young).is_dir());
            fs::remove_dir(parent.join(&young)).unwrap();
        }
        assert!(live.paths().iter().all(|p| p.is_dir()));
        live.remove().unwrap();
        let _ = child.wait();
    }

    #[test]
    fn v2_groups_are_emptied_with_cgroup_kill_and_removed() {
        use std::os::unix::process::{CommandExt, ExitStatusExt};
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: cgroups need root");
            return;
        }
        // Any v2 hierarchy will do, with controllers or not.
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let Some(root) = mountinfo.lines().find_map(|l| {
            let (mount, fs) = l.split_once(" - ")?;
            let point = mount.split(' ').nth(4)?;
            fs.starts_with("cgroup2 ").then(|| PathBuf::from(point))
        }) else {
            eprintln!("skipped: no cgroup v2 hierarchy is mounted");
            return;
        };
        let mut g = SandboxCgroup {
            dirs: Vec::new(),
            unified: true,
        };
        let dir = g
            .make(
                &root.join(PARENT),
                &format!("kill-test-{}", std::process::id()),
            )
            .unwrap();
        let entry = g.entry().unwrap();
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.args(["-c", "sleep 1000 & sleep 1000"]);
        // SAFETY: the hook only writes to a descriptor opened before fork.
        unsafe { cmd.pre_exec(move || entry.enter()) };
        let mut child = cmd.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while procs(&dir).unwrap().len() < 3 {
            assert!(Instant::now() < deadline, "the sleeps did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        if !dir.join("cgroup.kill").exists() {
            eprintln!("no cgroup.kill (Linux < 5.14): killed by pid instead");
        }
        // Our child is left a zombie until we reap it: no obstacle.
        g.remove().unwrap();
        assert!(!dir.exists());
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
    }
}
