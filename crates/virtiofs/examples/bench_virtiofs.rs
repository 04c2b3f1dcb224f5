//! Benchmark of the virtio-fs server against virtiofsd: the same guest
//! (QEMU command line, kernel, initramfs) runs the same workloads once on
//! a share served by msb-virtiofs (the seed's defaults: strict stat
//! virtualization, private host permissions, no quota) and once on one
//! served by virtiofsd, and prints each result and the ratio (of the
//! medians, and the median of each round's ratio).
//!
//! Usage: bench VIRTIOFSD [CACHE] (run by scripts/bench-virtiofs).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use msb_fsserver::{HostPerms, IdMap, ServeConfig, StatVirt, open_root};

/// Worker threads of our server (BENCH_THREADS overrides).
const THREADS: usize = 4;

/// The guest's workloads; each prints `MSB-T name seconds` (guest clock,
/// /proc/uptime, 10 ms steps).
const SCRIPT: &str = r#"
now() { cut -d' ' -f1 /proc/uptime; }
t() { n=$1; shift; a=$(now); "$@"; b=$(now); echo "MSB-T $n $(echo "$b - $a" | bc)"; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
small() { mkdir /mnt/s/small; cd /mnt/s/small; i=0
  while [ $i -lt 10000 ]; do echo "file $i" > f$i; i=$((i+1)); done
  stat -c %s f* > /dev/null; cd /; }
want() { [ -z "$ONLY" ] || case " $ONLY " in *" $1 "*) true ;; *) false ;; esac; }
cd /mnt/s
if want write || want read; then
  t write dd if=/dev/zero of=/mnt/s/big bs=1M count=1024 conv=fsync 2>/dev/null
  drop
  want read && t read dd if=/mnt/s/big of=/dev/null bs=1M 2>/dev/null
  rm /mnt/s/big
fi
if want small || want ls-lR; then
  t small small
  r=0
  while [ $r -lt $LS_REPEAT ]; do
    drop
    t ls-lR sh -c 'ls -lR /mnt/s/small > /dev/null'
    r=$((r+1))
  done
fi
cd /
"#;

fn run_guest(kernel: &common::Kernel, initrd: &Path, socket: &Path) -> Vec<(String, f64)> {
    let share = common::Share {
        tag: "s".into(),
        socket: socket.into(),
    };
    let cmd = common::qemu_command(kernel, initrd, std::slice::from_ref(&share), 1024);
    let console = common::run(cmd, Duration::from_secs(1800)).expect("the guest ran");
    let (_, failed) = common::results(&console);
    assert!(failed.is_empty(), "guest failures: {failed:?}\n{console}");
    console
        .lines()
        .filter_map(|l| l.strip_prefix("MSB-T "))
        .filter_map(|l| {
            let (name, secs) = l.split_once(' ')?;
            Some((name.to_string(), secs.trim().parse().ok()?))
        })
        .collect()
}

/// CPU seconds (user + system) this process used so far.
fn own_cpu() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    cpu_of(&ru)
}

fn cpu_of(ru: &libc::rusage) -> f64 {
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// CPU seconds (user + system) a child used: read from /proc before it
/// is reaped (a zombie keeps its final times there).
fn child_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime,
    // stime, cutime and cstime are the 14th to 17th of the line (virtiofsd
    // serves from a child process in its sandbox).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .filter_map(|x| x.parse().ok())
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    f.iter().sum::<f64>() / hz
}

/// The host's 1, 5 and 15 minute load averages.
fn load_average() -> String {
    let l = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// Each workload's results over the rounds.
#[derive(Default)]
struct Samples(BTreeMap<String, Vec<f64>>);

impl Samples {
    fn add(&mut self, times: Vec<(String, f64)>) {
        for (name, t) in times {
            self.0.entry(name).or_default().push(t);
        }
    }

    fn medians(mut self) -> BTreeMap<String, f64> {
        self.0
            .iter_mut()
            .map(|(name, v)| {
                v.sort_by(f64::total_cmp);
                (name.clone(), v[v.len() / 2])
            })
            .collect()
    }
}

/// Per workload, the median over rounds of virtiofsd's time divided by
/// ours in the same round (the two runs of a round are next to each
/// other, so a change in the host's load between rounds cancels out):
/// above 1.0 we are faster, for throughput too.
fn paired_ratios(ours: &Samples, theirs: &Samples) -> BTreeMap<String, f64> {
    ours.0
        .iter()
        .filter_map(|(name, a)| {
            let b = theirs.0.get(name)?;
            let mut r: Vec<f64> = a.iter().zip(b).map(|(a, b)| b / a.max(0.01)).collect();
            r.sort_by(f64::total_cmp);
            Some((name.clone(), *r.get(r.len() / 2)?))
        })
        .collect()
}

/// Whether a child has exited (is a zombie), without reaping it.
fn child_exited(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .map(|(_, r)| r.trim_start())
        .unwrap_or("");
    state.starts_with('Z') || state.is_empty()
}

fn wait_for_socket(path: &Path) {
    let end = Instant::now() + Duration::from_secs(10);
    while !path.exists() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One guest run on msb-virtiofs; adds the server's CPU seconds.
fn run_ours(
    kernel: &common::Kernel,
    initrd: &Path,
    tmp: &Path,
    round: usize,
    threads: usize,
) -> Vec<(String, f64)> {
    let dir = tmp.join(format!("ours-{round}"));
    std::fs::create_dir(&dir).unwrap();
    let cfg = ServeConfig {
        readonly: false,
        stat_virt: StatVirt::Strict,
        host_perms: HostPerms::Private,
        budget: None,
        owner: (0, 0),
        // SAFETY: geteuid has no preconditions.
        id_map: IdMap::single(unsafe { libc::geteuid() }),
        // SAFETY: getegid has no preconditions.
        gid_map: IdMap::single(unsafe { libc::getegid() }),
    };
    let fs = msb_virtiofs::policy_fs(open_root(&dir, false).unwrap(), cfg).unwrap();
    let socket = tmp.join("ours.sock");
    let cpu = own_cpu();
    let server = msb_virtiofs::Server::start(&socket, fs, threads).unwrap();
    let mut times = run_guest(kernel, initrd, &socket);
    server.wait().unwrap();
    times.push(("cpu".into(), own_cpu() - cpu));
    times
}

/// One guest run on virtiofsd; adds its CPU seconds.
fn run_virtiofsd(
    kernel: &common::Kernel,
    initrd: &Path,
    tmp: &Path,
    round: usize,
    virtiofsd: &str,
    cache: &str,
) -> Vec<(String, f64)> {
    let dir = tmp.join(format!("theirs-{round}"));
    std::fs::create_dir(&dir).unwrap();
    // A socket of its own each round: virtiofsd leaves its socket behind,
    // and QEMU must not find the last round's before this one listens.
    let socket = tmp.join(format!("virtiofsd-{round}.sock"));
    let mut daemon = Command::new(virtiofsd)
        .arg("--socket-path")
        .arg(&socket)
        .arg("--shared-dir")
        .arg(&dir)
        .arg(format!("--cache={cache}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start virtiofsd");
    wait_for_socket(&socket);
    let mut times = run_guest(kernel, initrd, &socket);
    // virtiofsd ends with its frontend; give it a moment.
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end && !child_exited(daemon.id()) {
        std::thread::sleep(Duration::from_millis(20));
    }
    times.push(("cpu".into(), child_cpu(daemon.id())));
    let _ = daemon.kill();
    let _ = daemon.wait();
    times
}

fn main() {
    let mut args = std::env::args().skip(1);
    let virtiofsd = args.next().expect("usage: bench VIRTIOFSD [CACHE]");
    let cache = args.next().unwrap_or_else(|| "auto".into());
    if let Some(why) = common::missing_qemu() {
        panic!("{why}");
    }
    let kernel = common::kernel().expect("a guest kernel");
    // Kept until the end: deleting many files first would slow down the
    // next run's creations on some file systems (ext4 reusing inodes).
    let base = std::env::var_os("BENCH_DIR").unwrap_or_else(|| "/var/tmp".into());
    let tmp = tempfile::tempdir_in(base).unwrap();
    let initrd = tmp.path().join("initrd");
    // BENCH_ONLY: a subset of the workloads (write read small ls-lR).
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    // BENCH_LS_REPEAT: `ls -lR` runs per round (each a sample): it takes a
    // second or two, so one run says little on a noisy host.
    let ls_repeat: u32 = std::env::var("BENCH_LS_REPEAT")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let script = format!("ONLY='{only}'\nLS_REPEAT={ls_repeat}\n{SCRIPT}");
    std::fs::write(&initrd, common::initramfs(kernel, &["s"], &script, |_| {})).unwrap();

    // ROUNDS (default 3) interleaves ours and virtiofsd, so drift in the
    // machine's load hits both alike; medians are printed.
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let threads = std::env::var("BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(THREADS);
    let load_before = load_average();
    let (mut ours, mut theirs) = (Samples::default(), Samples::default());
    for round in 0..rounds {
        // Who goes first alternates, so the order favours neither.
        if round % 2 == 0 {
            ours.add(run_ours(kernel, &initrd, tmp.path(), round, threads));
            theirs.add(run_virtiofsd(
                kernel,
                &initrd,
                tmp.path(),
                round,
                &virtiofsd,
                &cache,
            ));
        } else {
            theirs.add(run_virtiofsd(
                kernel,
                &initrd,
                tmp.path(),
                round,
                &virtiofsd,
                &cache,
            ));
            ours.add(run_ours(kernel, &initrd, tmp.path(), round, threads));
        }
    }
    for (who, samples) in [("msb-virtiofs", &ours), ("virtiofsd", &theirs)] {
        for (name, v) in &samples.0 {
            let v: Vec<String> = v.iter().map(|t| format!("{t:.2}")).collect();
            println!("# {who} {name} seconds per run: {}", v.join(" "));
        }
    }
    let paired = paired_ratios(&ours, &theirs);
    let (ours, theirs) = (ours.medians(), theirs.medians());
    // The host's load during the runs: results from a busy host are noisy.
    println!(
        "# load average before: {load_before}, after: {}",
        load_average()
    );

    println!(
        "virtio-fs under TCG, same QEMU/kernel/initramfs; virtiofsd --cache={cache}; \
         {threads} workers; medians of {rounds} round(s)"
    );
    println!(
        "{:<8} {:>14} {:>14} {:>8} {:>8}",
        "workload", "msb-virtiofs", "virtiofsd", "ratio", "paired"
    );
    for name in ["write", "read", "small", "ls-lR", "cpu"] {
        let (Some(&a), Some(&b)) = (ours.get(name), theirs.get(name)) else {
            println!("{name:<8} missing");
            continue;
        };
        let pair = paired.get(name).copied().unwrap_or(f64::NAN);
        if matches!(name, "write" | "read") {
            // Throughput: ours / theirs, higher is better.
            let (ma, mb) = (1024.0 / a.max(0.01), 1024.0 / b.max(0.01));
            println!(
                "{name:<8} {:>10.1} MB/s {:>10.1} MB/s {:>7.2}x {:>7.2}x",
                ma,
                mb,
                ma / mb,
                pair
            );
        } else {
            // Time (server CPU seconds for cpu): theirs / ours, so above
            // 1.0 means we are faster.
            println!(
                "{name:<8} {:>12.2} s {:>12.2} s {:>7.2}x {:>7.2}x",
                a,
                b,
                b / a.max(0.01),
                pair
            );
        }
    }
}
