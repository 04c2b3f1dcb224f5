//! The namespace backend's resource limits on cgroup v2 with its
//! controllers, which this CI host lacks (v1 controllers, an empty unified
//! hierarchy): msb runs namespace sandboxes inside a microVM whose kernel
//! (Debian's cloud kernel) has cgroup2 with memory, pids and cpu, mounted
//! there alone, as on most hosts. The guest's msb is the binary under test,
//! shared read-only; the guest's root runs it. One boot for every check:
//! under TCG a boot takes seconds.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

/// Where the guest sees the msb under test.
const GUEST_MSB: &str = "/opt/msb/msb";

fn assets() -> PathBuf {
    std::env::var_os("MSB_VM_ASSETS").map_or_else(
        || Path::new(env!("CARGO_TARGET_TMPDIR")).join("vm-assets"),
        PathBuf::from,
    )
}

fn bin() -> PathBuf {
    std::env::var_os("MSB_TEST_BIN").map_or_else(|| env!("CARGO_BIN_EXE_msb").into(), Into::into)
}

fn msb(home: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("MSB_HOME", home)
        .env("MSB_VM_ASSETS", assets())
        .current_dir(home)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The VM sandbox that holds the guest, removed when dropped (a failed
/// assertion included).
struct Guest<'a> {
    home: &'a Path,
}

impl Guest<'_> {
    /// Runs `script` with `sh -e` as the guest's root, with the guest msb's
    /// home in the guest's /tmp, and returns its output, asserting status 0.
    fn sh(&self, what: &str, script: &str) -> String {
        let started = Instant::now();
        let full = format!("set -eu; export MSB_HOME=/tmp/msb-home M={GUEST_MSB}\n{script}");
        let o = msb(self.home, &["exec", "guest", "sh", "-c", &full]);
        let out = text(&o.stdout);
        eprintln!(
            "{what}: {:?}, exit {:?}\n{out}{}",
            started.elapsed(),
            o.status.code(),
            text(&o.stderr)
        );
        assert!(o.status.success(), "{what} failed");
        out
    }
}

impl Drop for Guest<'_> {
    fn drop(&mut self) {
        let _ = msb(self.home, &["rm", "-f", "guest"]);
    }
}

/// The value of `key=value` lines a guest script printed.
fn value<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in:\n{out}"))
}

fn number(out: &str, key: &str) -> u64 {
    let v = value(out, key);
    v.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{key}={v} is not a number"))
}

/// Prints, once sandbox `$run` (a background `msb run`) has a process in
/// its group: `group=`, the limit files, and then, until the run ends, the
/// last `nr_throttled`; then `status=` of the run and `left=` whether its
/// group is still there.
const WATCH_RUN: &str = r#"
g=
while [ -z "$g" ]; do
    for d in /sys/fs/cgroup/msb/*/; do
        # (kernfs files have no size: read them)
        if [ -n "$(cat "$d/cgroup.procs" 2>/dev/null)" ]; then g=${d%/}; fi
    done
    kill -0 $run 2>/dev/null || break
    sleep 0.05
done
echo "group=$g"
for f in memory.max memory.swap.max pids.max cpu.max; do echo "$f=$(cat $g/$f)"; done
throttled=0
while kill -0 $run 2>/dev/null; do
    t=$(sed -n 's/^nr_throttled //p' $g/cpu.stat 2>/dev/null) && [ -n "$t" ] && throttled=$t
    sleep 0.1
done
echo "throttled=$throttled"
status=0; wait $run || status=$?
echo "status=$status"
if [ -e "$g" ]; then echo left=yes; else echo left=no; fi
"#;

#[test]
fn namespace_sandbox_limits_on_cgroup_v2_in_a_microvm() {
    let qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !qemu {
        eprintln!("skipped: qemu-system-x86_64 is not installed (scripts/setup installs it)");
        return;
    }
    let started = Instant::now();
    let home = tempfile::tempdir().unwrap();
    // The binary alone in a directory: a microVM takes directories.
    let share = tempfile::tempdir().unwrap();
    std::fs::copy(bin(), share.path().join("msb")).unwrap();
    let bind = format!("{}:/opt/msb:ro", share.path().display());
    let o = msb(
        home.path(),
        &[
            "create",
            "guest",
            "--backend",
            "vm",
            // The guest's root mounts cgroup2 and makes namespaces.
            "--security",
            "privileged",
            "-v",
            &bind,
        ],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let guest = Guest { home: home.path() };
    eprintln!("booted in {:?}", started.elapsed());

    // The guest kernel's own unified hierarchy, with the controllers,
    // mounted as systemd mounts it.
    let out = guest.sh(
        "mount cgroup2",
        "mount -t cgroup2 -o nsdelegate,memory_recursiveprot none /sys/fs/cgroup
         mkdir -p $MSB_HOME
         echo v1=$(grep -c ' - cgroup ' /proc/self/mountinfo || true)
         echo v2=$(sed -n 's/.* - cgroup2 none //p' /proc/self/mountinfo)
         echo controllers=$(cat /sys/fs/cgroup/cgroup.controllers)",
    );
    assert_eq!(number(&out, "v1"), 0);
    assert!(value(&out, "v2").contains("nsdelegate"), "{out}");
    let controllers: Vec<&str> = value(&out, "controllers").split(' ').collect();
    for c in ["memory", "pids", "cpu"] {
        assert!(controllers.contains(&c), "{out}");
    }

    // The limits land in the sandbox's group; the sandbox cannot mount a
    // cgroupfs to change them; a tenth of a CPU throttles a busy loop (even
    // when QEMU gets little of the host's); the status comes back; the
    // group goes with the sandbox.
    let out = guest.sh(
        "limits",
        &format!(
            "$M run --memory 64M --pids-limit 50 --cpus 0.1 -- sh -c '
                 if mount -t cgroup2 none /tmp 2>/dev/null; then echo cgroupfs=mounted; else echo cgroupfs=denied; fi
                 timeout 3 sh -c \"while :; do :; done\"; exit 7' &
             run=$!
             {WATCH_RUN}"
        ),
    );
    assert_eq!(value(&out, "cgroupfs"), "denied");
    assert!(value(&out, "group").starts_with("/sys/fs/cgroup/msb/"));
    assert_eq!(number(&out, "memory.max"), 64 << 20);
    assert_eq!(number(&out, "memory.swap.max"), 0);
    assert_eq!(number(&out, "pids.max"), 50);
    assert_eq!(value(&out, "cpu.max"), "10000 100000");
    // 3 s busy: most 100 ms periods run out.
    assert!(number(&out, "throttled") >= 3, "{out}");
    assert_eq!(number(&out, "status"), 7);
    assert_eq!(value(&out, "left"), "no");

    // A fork bomb stops at the process limit: each started job leaves a
    // line; the shell gives up at the first failed fork (dash) or goes
    // on; either way the sandbox's end takes the jobs with it.
    let out = guest.sh(
        "fork bomb",
        "started=$(date +%s)
         status=0
         $M run --pids-limit 50 -- sh -c 'i=0; while [ $i -lt 200 ]; do sleep 600 >/dev/null 2>&1 3>&- & echo $! >&3; i=$((i+1)); done 3>&1 >&2' \
             >/tmp/jobs 2>/tmp/err || status=$?
         echo status=$status
         echo seconds=$(( $(date +%s) - started ))
         echo jobs=$(wc -l </tmp/jobs)
         grep -qi fork /tmp/err && echo said=fork
         cat /tmp/err >&2
         echo groups=$(find /sys/fs/cgroup/msb -mindepth 1 -type d | wc -l)",
    );
    // The sandbox's init and the shell are two of the 50.
    let jobs = number(&out, "jobs");
    assert!((40..=48).contains(&jobs), "{jobs} jobs started");
    assert_eq!(value(&out, "said"), "fork");
    assert!(
        number(&out, "seconds") < 120,
        "the jobs outlived the sandbox"
    );
    assert_eq!(number(&out, "groups"), 0);

    // An allocation above the memory limit is killed by the kernel's OOM
    // killer in the group (counted by the parent's hierarchical
    // memory.events), and the status says SIGKILL.
    let out = guest.sh(
        "out of memory",
        "oom() { sed -n 's/^oom_kill //p' /sys/fs/cgroup/msb/memory.events; }
         echo before=$(oom)
         status=0
         $M run --memory 64M -- tail -n 1 /dev/zero || status=$?
         echo status=$status
         echo after=$(oom)
         echo groups=$(find /sys/fs/cgroup/msb -mindepth 1 -type d | wc -l)",
    );
    assert_eq!(number(&out, "status"), 128 + 9);
    assert!(number(&out, "after") > number(&out, "before"), "{out}");
    assert_eq!(number(&out, "groups"), 0);

    // A named sandbox: `msb exec` joins its group (the root of the cgroup
    // namespace it sees); at stop, the group is emptied, even of a process
    // outside the sandbox's pid namespace (only the group reaches it:
    // cgroup.kill), and removed.
    let out = guest.sh(
        "named sandbox",
        "$M create box --memory 64M --pids-limit 40 >/dev/null
         g=$(echo /sys/fs/cgroup/msb/*box*)
         echo pids.max=$(cat $g/pids.max)
         echo kill_file=$(test -e $g/cgroup.kill && echo yes)
         echo exec=$($M exec box cat /proc/self/cgroup)
         sleep 600 & outsider=$!
         echo $outsider >$g/cgroup.procs
         echo members=$(wc -l <$g/cgroup.procs)
         $M stop box >/dev/null
         status=0; wait $outsider || status=$?
         echo outsider=$status
         if [ -e $g ]; then echo left=yes; else echo left=no; fi",
    );
    assert_eq!(number(&out, "pids.max"), 40);
    assert_eq!(value(&out, "kill_file"), "yes");
    assert_eq!(value(&out, "exec"), "0::/");
    // The sandbox's init and the outsider at least.
    assert!(number(&out, "members") >= 2, "{out}");
    assert_eq!(number(&out, "outsider"), 128 + 9);
    assert_eq!(value(&out, "left"), "no");

    // What a crashed supervisor left (an empty group, old) goes at the next
    // start; a group just made stays.
    let out = guest.sh(
        "stale groups",
        "mkdir /sys/fs/cgroup/msb/stale /sys/fs/cgroup/msb/young
         touch -d '2000-01-01' /sys/fs/cgroup/msb/stale
         $M run true
         for d in stale young; do
             if [ -e /sys/fs/cgroup/msb/$d ]; then echo $d=kept; else echo $d=removed; fi
         done
         rmdir /sys/fs/cgroup/msb/young",
    );
    assert_eq!(value(&out, "stale"), "removed");
    assert_eq!(value(&out, "young"), "kept");

    // As in a container with a cgroup namespace of its own: the root msb
    // sees holds processes, which a v2 group whose children get
    // controllers may not (the hierarchy's real root alone is exempt).
    // msb refuses with the reason and leaves no group behind.
    let out = guest.sh(
        "processes in the namespace root",
        r#"mkdir /sys/fs/cgroup/ctr
         status=0
         sh -c 'echo $$ >/sys/fs/cgroup/ctr/cgroup.procs
             exec unshare -C -m sh -c "umount /sys/fs/cgroup; mount -t cgroup2 none /sys/fs/cgroup; exec $M run true"' \
             2>/tmp/err || status=$?
         echo status=$status
         echo "said=$(cat /tmp/err)"
         rmdir /sys/fs/cgroup/ctr"#,
    );
    assert_eq!(number(&out, "status"), 1);
    let said = value(&out, "said");
    assert!(
        said.contains("cannot enable the memory controller under /sys/fs/cgroup:")
            && said.contains("holds processes"),
        "{said}"
    );
    // This guest's kernel (6.1) cannot idmap tmpfs (6.3 can): a bind of a
    // tmpfs directory is served by the filesystem server, which maps the
    // ids itself, and what the sandbox writes is still stored as the
    // volume owner's range, not as the sandbox's own.
    let out = guest.sh(
        "a bind whose filesystem cannot be idmapped",
        r#"mkdir /tmp/shared && chown 1878982656:1878982656 /tmp/shared
         $M run --mount-dir /tmp/shared:/s -- sh -c 'echo "fs=$(stat -f -c %T /s)"; echo x > /s/f'
         echo "owner=$(stat -c %u:%g /tmp/shared/f)""#,
    );
    assert_eq!(value(&out, "fs"), "fuseblk", "{out}");
    assert_eq!(value(&out, "owner"), "1878982656:1878982656", "{out}");
    drop(guest);
    eprintln!("all checks in {:?}", started.elapsed());
}
