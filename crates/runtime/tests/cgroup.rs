//! Sandbox cgroups on this host's real hierarchy (v2, or v1 where v2 lacks
//! the controllers) with real processes. Needs root and a usable hierarchy;
//! skips with the reason otherwise.

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use msb_runtime::{CgroupError, Resources, SandboxCgroup};

/// Creates the group `test-<name>-<pid>`, or says why the test cannot run.
fn group(name: &str, r: Resources) -> Option<SandboxCgroup> {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: cgroups need root");
        return None;
    }
    match SandboxCgroup::create(&format!("test-{name}-{}", std::process::id()), &r) {
        Ok(g) => Some(g),
        Err(e @ (CgroupError::NoHierarchy | CgroupError::MissingController(_))) => {
            eprintln!("skipped: {e}");
            None
        }
        Err(e) => panic!("{e}: {:?}", std::error::Error::source(&e)),
    }
}

/// Starts `script` in a shell that waits for a line on its input, moves it
/// into `g`, then lets it go: everything it starts is born in the group.
fn start_in(g: &SandboxCgroup, script: &str) -> Child {
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("read go; {script}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    g.add(child.id() as i32).unwrap();
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    child
}

/// The file `name` in whichever of the group's directories has it.
fn read(g: &SandboxCgroup, name: &str) -> Option<String> {
    g.paths()
        .iter()
        .find_map(|d| std::fs::read_to_string(d.join(name)).ok())
}

/// The value of `key` in a flat keyed file such as cpu.stat.
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

#[test]
fn the_process_limit_stops_forks() {
    let limits = Resources {
        pids: 32,
        ..Resources::default()
    };
    let Some(g) = group("pids", limits) else {
        return;
    };
    assert_eq!(read(&g, "pids.max").unwrap().trim(), "32");
    // Each started job leaves a line; the shell stops at the first failed
    // fork (dash) or goes on (others): the count of lines is what matters.
    let out = start_in(
        &g,
        "i=0; while [ $i -lt 100 ]; do sleep 5 >/dev/null 2>&1 3>&- & echo $! >&3; i=$((i+1)); done 3>&1 >&2",
    )
    .wait_with_output()
    .unwrap();
    let started = out
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "started {started} of 100 jobs; the shell said: {}",
        stderr.trim()
    );
    // The shell is one of the 32.
    assert!(started <= 31, "started {started}");
    assert!(started >= 16, "started only {started}");
    assert!(stderr.contains("fork"), "{stderr}");
    let paths = g.paths().to_vec();
    g.remove().unwrap();
    assert!(paths.iter().all(|p| !p.exists()));
}

#[test]
fn the_memory_limit_stops_a_big_allocation() {
    let limits = Resources {
        memory_mib: 64,
        ..Resources::default()
    };
    let Some(g) = group("memory", limits) else {
        return;
    };
    let limit = read(&g, "memory.max").or_else(|| read(&g, "memory.limit_in_bytes"));
    assert_eq!(limit.unwrap().trim(), (64u64 << 20).to_string());
    // tail holds a line until its end; this one is 300 MiB long.
    let out = start_in(&g, "head -c 300M /dev/zero | tail -n 1 >/dev/null")
        .wait_with_output()
        .unwrap();
    eprintln!("{:?} {}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "the allocation succeeded: {out:?}");
    // memory.events (v2) or memory.oom_control (v1) counts the kills.
    let events = read(&g, "memory.events")
        .or_else(|| read(&g, "memory.oom_control"))
        .unwrap();
    eprintln!("{events}");
    assert!(keyed(&events, "oom_kill").unwrap() >= 1, "{events}");
}

#[test]
fn the_cpu_limit_is_a_quota_and_throttles() {
    // A twentieth of a CPU: a busy loop exceeds it even on a host so busy
    // that the loop gets far less than half a CPU.
    let limits = Resources {
        cpus_milli: Some(50),
        ..Resources::default()
    };
    let Some(g) = group("cpu", limits) else {
        return;
    };
    match read(&g, "cpu.max") {
        Some(max) => assert_eq!(max.trim(), "5000 100000"),
        None => {
            assert_eq!(read(&g, "cpu.cfs_quota_us").unwrap().trim(), "5000");
            assert_eq!(read(&g, "cpu.cfs_period_us").unwrap().trim(), "100000");
        }
    }
    // Busy for a second: most 100 ms periods run out.
    let out = start_in(&g, "timeout 1 sh -c 'while :; do :; done'; true")
        .wait_with_output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stat = read(&g, "cpu.stat").unwrap();
    eprintln!("{stat}");
    assert!(keyed(&stat, "nr_throttled").unwrap() >= 3, "{stat}");
}

#[test]
fn dropping_the_group_kills_everything_in_it_and_removes_it() {
    let Some(g) = group("drop", Resources::default()) else {
        return;
    };
    let mut child = start_in(&g, "sleep 1000 & sleep 1000 & sleep 1000");
    // The shell and its three sleeps.
    let deadline = Instant::now() + Duration::from_secs(10);
    let count = |g: &SandboxCgroup| read(g, "cgroup.procs").unwrap().lines().count();
    while count(&g) < 4 {
        assert!(Instant::now() < deadline, "the sleeps did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let paths = g.paths().to_vec();
    let started = Instant::now();
    drop(g);
    eprintln!("emptied and removed in {:?}", started.elapsed());
    assert!(paths.iter().all(|p| !Path::new(p).exists()), "{paths:?}");
    assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
}

#[test]
fn ids_must_be_plain_names() {
    for id in ["", ".", "..", "../x", "a/b", ".hidden", "-x", "a b", "a\nb"] {
        assert!(
            matches!(
                SandboxCgroup::create(id, &Resources::default()),
                Err(CgroupError::Id(_))
            ),
            "{id:?}"
        );
    }
}

/// Runs `cat /proc/self/cgroup` in a child that enters `g` between fork
/// and exec, creating a cgroup namespace before or after.
fn cgroup_seen_by_child(g: &SandboxCgroup, namespace_first: bool) -> String {
    use std::os::unix::process::CommandExt;
    let entry = g.entry().unwrap();
    let mut cmd = Command::new("cat");
    cmd.arg("/proc/self/cgroup");
    let unshare = || {
        // SAFETY: a plain unshare(2).
        if unsafe { libc::unshare(libc::CLONE_NEWCGROUP) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the hook only makes system calls (write, unshare) on
    // descriptors opened before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if namespace_first {
                unshare()?;
                entry.enter()
            } else {
                entry.enter()?;
                unshare()
            }
        });
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The lines of /proc/self/cgroup for the hierarchies a group spans:
/// v2's "0::PATH" (a group of one directory), or v1's "N:memory:PATH" and
/// "N:pids:PATH".
fn group_lines<'a>(g: &SandboxCgroup, seen: &'a str) -> Vec<&'a str> {
    let unified = g.paths().len() == 1;
    seen.lines()
        .filter(|l| match unified {
            true => l.starts_with("0::"),
            false => l.contains(":memory:") || l.contains(":pids:"),
        })
        .collect()
}

#[test]
fn a_child_enters_the_group_between_fork_and_exec() {
    let Some(g) = group("entry", Resources::default()) else {
        return;
    };
    // Entered first, then a namespace: the group is the namespace's root.
    let seen = cgroup_seen_by_child(&g, false);
    eprintln!("enter, then unshare:\n{seen}");
    let lines = group_lines(&g, &seen);
    assert!(
        lines.len() == g.paths().len() && lines.iter().all(|l| l.ends_with(":/")),
        "{seen}"
    );
    // A namespace first, then entered: allowed too (the files were opened
    // outside it), the group seen from the old root.
    let seen = cgroup_seen_by_child(&g, true);
    eprintln!("unshare, then enter:\n{seen}");
    let id = format!("msb/test-entry-{}", std::process::id());
    let lines = group_lines(&g, &seen);
    assert!(
        lines.len() == g.paths().len() && lines.iter().all(|l| l.ends_with(&id)),
        "{seen}"
    );
}
