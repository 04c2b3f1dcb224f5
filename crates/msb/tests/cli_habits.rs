//! The habits of the published msb that scripts written for it rely on:
//! create starts, commands need no `--`, the aliases, several names at
//! once, `ls -q`, `inspect --format`, bare labels, usage errors exiting 2.
//! The real binary against a real store in a temporary MSB_HOME.

use std::path::Path;
use std::process::{Command, Output};

/// The msb binary: the one cargo built, or `MSB_TEST_BIN` (scripts/test's
/// rootless pass runs a copy its unprivileged user can reach).
fn msb_bin() -> std::ffi::OsString {
    std::env::var_os("MSB_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_msb").into())
}

/// A temporary MSB_HOME whose running sandboxes are killed when it goes
/// away, so a failing test leaves no supervisor behind.
struct Home(tempfile::TempDir);

impl Home {
    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let Ok(dir) = std::fs::read_dir(self.path().join("run/sandboxes")) else {
            return;
        };
        for entry in dir.flatten() {
            if entry.path().extension().is_some_and(|e| e == "pid")
                && let Ok(pids) = std::fs::read_to_string(entry.path())
                && let Some(pid) = pids.split_whitespace().nth(1)
                && let Some(pid) = pid.parse().ok().and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

fn home() -> Home {
    Home(tempfile::tempdir().unwrap())
}

fn msb(home: &Path, args: &[&str]) -> Output {
    Command::new(msb_bin())
        .args(args)
        .env("MSB_HOME", home)
        .current_dir(home)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs msb and insists on success.
fn ok(home: &Path, args: &[&str]) -> String {
    let o = msb(home, args);
    assert!(o.status.success(), "msb {args:?}: {}", stderr(&o));
    stdout(&o)
}

fn json(home: &Path, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ok(home, args)).unwrap()
}

fn state(home: &Path, name: &str) -> String {
    json(home, &["inspect", name, "--format", "json"])["state"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Whether sandboxes can run here: as root, or rootless as a user the
/// kernel lets create user namespaces (printed when not).
fn root() -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    let rootless = Command::new("unshare")
        .args(["--user", "true"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !rootless {
        eprintln!("skipped: sandboxes need root or unprivileged user namespaces");
    }
    rootless
}

#[test]
fn create_starts_the_sandbox_and_no_start_only_records_it() {
    if !root() {
        return;
    }
    let home = home();
    let h = home.path();
    assert_eq!(ok(h, &["create", "web", "-e", "MODE=dev"]), "web\n");
    assert_eq!(state(h, "web"), "running");
    assert_eq!(ok(h, &["exec", "web", "sh", "-c", "echo $MODE"]), "dev\n");

    assert_eq!(ok(h, &["create", "db", "--no-start"]), "db\n");
    assert_eq!(state(h, "db"), "stopped");

    // Starting what runs already succeeds and says so.
    let o = msb(h, &["start", "web"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "web\n");
    assert!(
        stderr(&o).contains("sandbox web is already running"),
        "{}",
        stderr(&o)
    );
    assert_eq!(state(h, "web"), "running");
    ok(h, &["rm", "-f", "web", "db"]);
}

#[test]
fn the_command_needs_no_double_dash() {
    if !root() {
        return;
    }
    let home = home();
    let h = home.path();
    assert_eq!(ok(h, &["run", "echo", "hi"]), "hi\n");
    // msb's own flags before the command, the command's own after it.
    assert_eq!(
        ok(
            h,
            &["run", "-v", "x:/d", "sh", "-c", "echo hi > /d/f; cat /d/f"]
        ),
        "hi\n"
    );
    assert_eq!(
        ok(h, &["run", "printf", "%s|", "-e", "--workdir", "/x", "-v"]),
        "-e|--workdir|/x|-v|"
    );
    assert_eq!(ok(h, &["run", "--", "printf", "%s|", "-w"]), "-w|");

    ok(h, &["create", "web"]);
    let o = msb(h, &["exec", "web", "ls", "-la", "/"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("total "), "{}", stdout(&o));
    assert_eq!(
        ok(
            h,
            &[
                "exec",
                "-w",
                "/tmp",
                "web",
                "sh",
                "-c",
                "pwd; echo $0",
                "-t"
            ]
        ),
        "/tmp\n-t\n"
    );
    assert_eq!(ok(h, &["exec", "web", "--", "printf", "%s|", "-e"]), "-e|");
    ok(h, &["rm", "-f", "web"]);
}

#[test]
fn run_parses_the_command_without_running_it() {
    let home = home();
    let plan = json(
        home.path(),
        &[
            "run",
            "--dry-run",
            "-v",
            "x:/d",
            "printf",
            "%s",
            "--dry-run",
        ],
    );
    assert_eq!(
        plan["command"],
        serde_json::json!(["printf", "%s", "--dry-run"])
    );
    // The internal init flag keeps its meaning (refused outside a sandbox).
    let o = msb(home.path(), &["run", "--sandbox-init"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--sandbox-init is internal"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn aliases_work_and_are_shown_in_help() {
    let home = home();
    let h = home.path();
    let help = ok(h, &["--help"]);
    for alias in ["[alias: vol]", "[alias: list]", "[alias: remove]"] {
        assert!(help.contains(alias), "{alias} missing:\n{help}");
    }
    let help = ok(h, &["volume", "--help"]);
    for alias in ["[alias: list]", "[alias: remove]"] {
        assert!(help.contains(alias), "{alias} missing:\n{help}");
    }

    ok(h, &["vol", "create", "a"]);
    assert_eq!(ok(h, &["vol", "list", "-q"]), "a\n");
    assert_eq!(ok(h, &["volume", "remove", "a"]), "a\n");
    assert_eq!(ok(h, &["volume", "ls", "-q"]), "");

    ok(h, &["create", "web", "--no-start"]);
    assert_eq!(ok(h, &["list", "-q"]), "web\n");
    assert_eq!(ok(h, &["remove", "web"]), "web\n");
    assert_eq!(ok(h, &["ls", "-q"]), "");
}

#[test]
fn ls_quiet_prints_names_only() {
    let home = home();
    let h = home.path();
    ok(h, &["create", "a", "--no-start"]);
    ok(h, &["create", "b", "--no-start"]);
    let mut names: Vec<String> = ok(h, &["ls", "-q"]).lines().map(String::from).collect();
    names.sort();
    assert_eq!(names, ["a", "b"]);
    // -q wins over a format, as with `msb volume ls`.
    assert_eq!(
        ok(h, &["ls", "--quiet", "--format", "json"])
            .lines()
            .count(),
        2
    );
}

#[test]
fn rm_and_stop_take_several_names_and_try_them_all() {
    let home = home();
    let h = home.path();
    for name in ["a", "b", "c"] {
        ok(h, &["create", name, "--no-start"]);
    }
    let o = msb(h, &["rm", "a", "nope", "b"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "a\nb\n");
    assert!(
        stderr(&o).contains("sandbox not found: nope"),
        "{}",
        stderr(&o)
    );
    assert_eq!(ok(h, &["ls", "-q"]), "c\n");

    let o = msb(h, &["stop", "nope", "c"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "c\n");
    assert!(
        stderr(&o).contains("sandbox not found: nope"),
        "{}",
        stderr(&o)
    );
    ok(h, &["rm", "c"]);

    if !root() {
        return;
    }
    ok(h, &["create", "r1"]);
    ok(h, &["create", "r2"]);
    assert_eq!(ok(h, &["stop", "-t", "0", "r1", "r2"]), "r1\nr2\n");
    assert_eq!(state(h, "r1"), "stopped");
    assert_eq!(state(h, "r2"), "stopped");
    // A running one refused without -f does not keep the others.
    ok(h, &["start", "r1"]);
    let o = msb(h, &["rm", "r1", "r2"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "r2\n");
    assert!(
        stderr(&o).contains("sandbox r1 is running"),
        "{}",
        stderr(&o)
    );
    assert_eq!(ok(h, &["rm", "-f", "r1"]), "r1\n");
}

#[test]
fn inspect_prints_text_by_default_and_json_on_request() {
    let home = home();
    let h = home.path();
    ok(
        h,
        &[
            "create",
            "web",
            "--no-start",
            "-v",
            "data:/data",
            "-e",
            "A=1",
        ],
    );
    let text = ok(h, &["inspect", "web"]);
    for line in [
        "Name:      web",
        "State:     stopped",
        "Env:       A=1",
        "Mount:     /data <- volume data",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} missing:\n{text}");
    }
    assert_eq!(ok(h, &["inspect", "web", "--format", "table"]), text);
    let v = json(h, &["inspect", "--format", "json", "web"]);
    assert_eq!(v["name"], "web");
    assert_eq!(v["volumes"], serde_json::json!(["data"]));
    let o = msb(h, &["inspect", "web", "--format", "yaml"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn a_bare_label_has_an_empty_value() {
    let home = home();
    let h = home.path();
    ok(
        h,
        &["volume", "create", "a", "--label", "team", "--label", "k=v"],
    );
    let v = json(h, &["volume", "inspect", "a", "--format", "json"]);
    assert_eq!(v[0]["labels"], serde_json::json!({"team": "", "k": "v"}));
    assert_eq!(
        ok(h, &["volume", "ls", "-q", "--filter", "label=team="]),
        "a\n"
    );
}

#[test]
fn usage_errors_exit_2() {
    let home = home();
    let h = home.path();
    for args in [
        ["volume", "create", "a", "--label", "=x"].as_slice(),
        &["volume", "create", "a", "--label", "k=\u{1}"],
        &["volume", "create", "a", "--label", ""],
        &["rm"],
        &["stop"],
        &["remove"],
        &["ls", "--format", "yaml"],
        &["run"],
        &["exec"],
        // A mistyped flag of msb's is not taken for the command.
        &["run", "--bogus", "echo"],
        &["exec", "web", "--bogus", "sh"],
        &["no-such-command"],
    ] {
        let o = msb(h, args);
        assert_eq!(o.status.code(), Some(2), "msb {args:?}: {}", stderr(&o));
        assert!(stderr(&o).starts_with("error: "), "{}", stderr(&o));
    }
    // The refused labels created nothing.
    assert_eq!(ok(h, &["volume", "ls", "-q"]), "");
}
