//! `msb volume` as users run it: the real binary, real processes, a real store.

use std::path::Path;
use std::process::{Command, Output};

/// The msb binary: the one cargo built, or `MSB_TEST_BIN` (scripts/test's
/// rootless pass runs a copy its unprivileged user can reach).
fn msb_bin() -> std::ffi::OsString {
    std::env::var_os("MSB_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_msb").into())
}

fn msb(home: &Path, args: &[&str]) -> Output {
    Command::new(msb_bin())
        .args(args)
        .env("MSB_HOME", home)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn create_prints_name_and_ls_lists_it() {
    let home = tempfile::tempdir().unwrap();
    let o = msb(home.path(), &["volume", "create", "data"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "data\n");
    let o = msb(home.path(), &["volume", "create", "quiet", "-q"]);
    assert_eq!(stdout(&o), "");
    let o = msb(home.path(), &["volume", "ls", "-q"]);
    assert_eq!(stdout(&o), "quiet\ndata\n");
    let o = msb(home.path(), &["volume", "ls"]);
    assert!(stdout(&o).starts_with("NAME"), "{}", stdout(&o));
}

#[test]
fn empty_list() {
    let home = tempfile::tempdir().unwrap();
    let o = msb(home.path(), &["volume", "ls"]);
    assert!(o.status.success());
    assert_eq!(stdout(&o), "");
    assert!(stderr(&o).contains("no volumes"));
    let o = msb(home.path(), &["volume", "ls", "--format", "json"]);
    assert_eq!(stdout(&o).trim(), "[]");
}

#[test]
fn json_has_exactly_the_documented_keys() {
    let home = tempfile::tempdir().unwrap();
    assert!(
        msb(
            home.path(),
            &["volume", "create", "d", "--kind", "disk", "--size", "1G"]
        )
        .status
        .success()
    );
    let o = msb(
        home.path(),
        &[
            "volume", "create", "q", "--quota", "1.5G", "--label", "env=prod", "--label", "t=x=y",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = msb(home.path(), &["volume", "ls", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 2);
    let mut keys: Vec<_> = arr[0].as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "capacity_bytes",
            "created_at",
            "disk_format",
            "disk_fstype",
            "kind",
            "labels",
            "name",
            "path",
            "quota_mib",
            "used_bytes"
        ]
    );
    let q = &arr[0];
    assert_eq!(q["name"], "q");
    assert_eq!(q["kind"], "dir");
    assert_eq!(q["quota_mib"], 1536);
    assert_eq!(q["labels"]["env"], "prod");
    assert_eq!(q["labels"]["t"], "x=y");
    assert!(q["capacity_bytes"].is_null() && q["disk_format"].is_null());
    let d = &arr[1];
    assert_eq!(d["kind"], "disk");
    assert_eq!(d["capacity_bytes"], 1u64 << 30);
    assert_eq!(d["disk_format"], "raw");
    assert_eq!(d["disk_fstype"], "ext4");
    assert!(d["quota_mib"].is_null());
    assert!(d["used_bytes"].as_u64().unwrap() < 1 << 20);
    let created = d["created_at"].as_str().unwrap();
    assert!(created.ends_with('Z') && created.len() == 20, "{created}");

    let o = msb(
        home.path(),
        &["volume", "inspect", "d", "q", "--format", "json"],
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    let o = msb(
        home.path(),
        &[
            "volume",
            "ls",
            "--format",
            "json",
            "--filter",
            "label=env=prod",
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
}

#[test]
fn errors_and_exit_codes() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    assert!(msb(h, &["volume", "create", "a"]).status.success());
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["volume", "create", "a"],
            1,
            "error: volume already exists: a",
        ),
        (
            &["volume", "inspect", "nope"],
            1,
            "error: volume not found: nope",
        ),
        (&["volume", "create", "-bad"], 2, "error:"),
        (
            &["volume", "create", ".bad"],
            2,
            "name must start with a letter or digit",
        ),
        (&["volume", "create", "a/b"], 2, "only ASCII letters"),
        (
            &["volume", "create", &"x".repeat(129)],
            2,
            "the limit is 128",
        ),
        (
            &["volume", "create", "s", "--kind", "disk"],
            2,
            "a disk volume needs --size",
        ),
        (
            &["volume", "create", "s", "--kind", "disk", "--size", "8M"],
            2,
            "16 MiB to 16777215 MiB",
        ),
        (
            &[
                "volume", "create", "s", "--kind", "disk", "--size", "1G", "--quota", "1G",
            ],
            2,
            "--quota is for directory volumes",
        ),
        (
            &["volume", "create", "s", "--size", "1G"],
            2,
            "--size is for disk volumes (--kind disk); limit a directory volume with --quota",
        ),
        (&["volume", "create", "s", "--quota", "0"], 2, "is zero"),
        (
            &["volume", "create", "s", "--quota", "ten"],
            2,
            "accepted forms",
        ),
        (
            &["volume", "create", "s", "--kind", "zfs"],
            2,
            "unknown volume kind",
        ),
        (
            &["volume", "create", "s", "--label", "=novalue"],
            2,
            "label key is empty",
        ),
        (
            &["volume", "ls", "--filter", "dangling=true"],
            2,
            "use label=KEY",
        ),
        (&["volume", "ls", "--filter", "kind=zfs"], 2, "dir or disk"),
        (&["volume", "frobnicate"], 2, "error:"),
        (
            &["volume", "prune", "--filter", "dangling=true"],
            2,
            "filter \"dangling=true\" is not supported",
        ),
        (
            &["volume", "prune", "--filter", "until=yesterday"],
            2,
            "filter \"until=yesterday\"",
        ),
        (
            &["volume", "prune", "--filter", "kind=zfs"],
            2,
            "dir or disk",
        ),
    ];
    for (args, code, msg) in cases {
        let o = msb(h, args);
        assert_eq!(o.status.code(), Some(*code), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(msg), "{args:?}: {}", stderr(&o));
    }
    // Nothing was created by any failing command.
    assert_eq!(stdout(&msb(h, &["volume", "ls", "-q"])), "a\n");
    let entries: Vec<_> = std::fs::read_dir(h.join("volumes"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries.len(), 3, "{entries:?}"); // a, .staging, .trash
}

#[test]
fn rm_continues_past_failures() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    for n in ["a", "b"] {
        assert!(msb(h, &["volume", "create", n]).status.success());
    }
    let o = msb(h, &["volume", "rm", "a", "missing", "b", "bad/name"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "a\nb\n");
    assert!(
        stderr(&o).contains("volume not found: missing"),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("invalid volume name \"bad/name\""),
        "{}",
        stderr(&o)
    );
    assert_eq!(stdout(&msb(h, &["volume", "ls", "-q"])), "");
}

#[test]
fn prune_removes_matching_volumes() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    assert!(
        msb(h, &["volume", "create", "keep", "--label", "keep=1"])
            .status
            .success()
    );
    assert!(
        msb(h, &["volume", "create", "tmp1", "--label", "tmp=1"])
            .status
            .success()
    );
    assert!(
        msb(h, &["volume", "create", "tmp2", "--label", "tmp=1"])
            .status
            .success()
    );
    let o = msb(h, &["volume", "prune", "-f", "--filter", "label=tmp"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "tmp2\ntmp1\n");
    assert_eq!(stdout(&msb(h, &["volume", "ls", "-q"])), "keep\n");
}

fn msb_stdin(home: &Path, args: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(msb_bin())
        .args(args)
        .env("MSB_HOME", home)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn prune_asks_listing_kind_and_usage_and_no_is_not_an_error() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    assert!(msb(h, &["volume", "create", "big"]).status.success());
    std::fs::write(h.join("volumes/big/f"), vec![1u8; 3 << 20]).unwrap();
    for input in [&b"n\n"[..], b""] {
        let o = msb_stdin(h, &["volume", "prune"], input);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains("big   dir"), "{err}");
        assert!(err.contains("3.0 MiB"), "{err}");
        assert!(err.contains("[y/N]"), "{err}");
        assert!(err.contains("nothing removed"), "{err}");
        assert_eq!(stdout(&o), "");
        assert_eq!(stdout(&msb(h, &["volume", "ls", "-q"])), "big\n");
    }
    let o = msb_stdin(h, &["volume", "prune"], b"y\n");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "big\n");
    assert!(
        stderr(&o).contains("removed 1 volume, freed 3.0 MiB"),
        "{}",
        stderr(&o)
    );
    assert_eq!(stdout(&msb(h, &["volume", "ls", "-q"])), "");
}

#[test]
fn ls_filters_as_prune_does() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    for args in [
        &["volume", "create", "old-a", "--label", "tmp=1"][..],
        &["volume", "create", "old-b", "--label", "tmp=2"],
        &[
            "volume", "create", "disk-c", "--kind", "disk", "--size", "32M",
        ],
    ] {
        assert!(msb(h, args).status.success());
    }
    let ls = |filters: &[&str]| {
        let mut args = vec!["volume", "ls", "-q"];
        for f in filters {
            args.extend(["--filter", f]);
        }
        let o = msb(h, &args);
        assert!(o.status.success(), "{filters:?}: {}", stderr(&o));
        stdout(&o)
    };
    assert_eq!(ls(&[]), "disk-c\nold-b\nold-a\n");
    assert_eq!(ls(&["label=tmp"]), "old-b\nold-a\n");
    assert_eq!(ls(&["label=tmp=1"]), "old-a\n");
    assert_eq!(ls(&["label!=tmp=1"]), "disk-c\nold-b\n");
    assert_eq!(ls(&["name=old", "label!=tmp=1"]), "old-b\n");
    // Several names: any of them.
    assert_eq!(ls(&["name=-a", "name=disk"]), "disk-c\nold-a\n");
    assert_eq!(ls(&["kind=disk"]), "disk-c\n");
    assert_eq!(ls(&["kind=dir", "kind=disk"]), "disk-c\nold-b\nold-a\n");
    // Created just now: none before an hour ago, all before the far future.
    assert_eq!(ls(&["until=1h"]), "");
    assert_eq!(
        ls(&["until=2999-01-01T00:00:00Z", "kind=dir"]),
        "old-b\nold-a\n"
    );
    // The table and json take the same filters.
    let o = msb(
        h,
        &["volume", "ls", "--format", "json", "--filter", "kind=disk"],
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["name"], "disk-c");
}

#[test]
fn prune_filters_as_docker_does() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    for args in [
        &["volume", "create", "old-a", "--label", "tmp=1"][..],
        &["volume", "create", "old-b", "--label", "tmp=2"],
        &[
            "volume", "create", "disk-c", "--kind", "disk", "--size", "32M",
        ],
    ] {
        assert!(msb(h, args).status.success());
    }
    let prune = |filters: &[&str]| {
        let mut args = vec!["volume", "prune", "-f"];
        for f in filters {
            args.extend(["--filter", f]);
        }
        let o = msb(h, &args);
        assert!(o.status.success(), "{filters:?}: {}", stderr(&o));
        stdout(&o)
    };
    // Created just now: nothing is older than an hour.
    assert_eq!(prune(&["until=1h"]), "");
    assert_eq!(prune(&["until=2000-01-01T00:00:00Z"]), "");
    assert_eq!(prune(&["kind=disk", "label=tmp"]), "");
    assert_eq!(prune(&["label!=tmp=1", "name=old"]), "old-b\n");
    assert_eq!(
        prune(&["kind=disk", "until=2999-01-01T00:00:00Z"]),
        "disk-c\n"
    );
    assert_eq!(prune(&["label!=tmp"]), "");
    assert_eq!(prune(&[]), "old-a\n");
}

#[test]
fn inspect_counts_files_written_on_the_host() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    assert!(msb(h, &["volume", "create", "v"]).status.success());
    std::fs::write(h.join("volumes/v/f"), vec![1u8; 5 << 20]).unwrap();
    let used = |args: &[&str]| -> u64 {
        let o = msb(h, args);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let v = if v.is_array() { v[0].clone() } else { v };
        v["used_bytes"].as_u64().unwrap()
    };
    // The listing reads the counter, which did not see the host write.
    assert_eq!(used(&["volume", "ls", "--format", "json"]), 0);
    let now = used(&["volume", "inspect", "v", "--format", "json"]);
    assert!(now >= 5 << 20, "{now}");
    let o = msb(h, &["volume", "inspect", "v"]);
    assert!(stdout(&o).contains("Used:      5.0 MiB"), "{}", stdout(&o));
    // And the counter caught up, for listings and writers.
    assert_eq!(used(&["volume", "ls", "--format", "json"]), now);
}

#[test]
fn concurrent_creates_of_one_name_exactly_one_wins() {
    let home = tempfile::tempdir().unwrap();
    for round in 0..3 {
        let name = format!("race{round}");
        let children: Vec<_> = (0..10)
            .map(|_| {
                Command::new(msb_bin())
                    .args(["volume", "create", &name])
                    .env("MSB_HOME", home.path())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let outputs: Vec<_> = children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        let wins = outputs.iter().filter(|o| o.status.success()).count();
        assert_eq!(wins, 1, "round {round}");
        for o in outputs.iter().filter(|o| !o.status.success()) {
            assert_eq!(
                stderr(o).trim(),
                format!("error: volume already exists: {name}")
            );
        }
    }
}

#[test]
fn many_processes_at_once_never_see_a_locked_database() {
    let home = tempfile::tempdir().unwrap();
    let script = format!(
        "for i in $(seq 1 15); do {msb} volume create v$1-$i -q || exit 1; {msb} volume ls -q >/dev/null || exit 1; \
         {msb} volume rm v$1-$i -q || exit 1; done",
        msb = msb_bin().to_string_lossy()
    );
    let children: Vec<_> = (0..8)
        .map(|w| {
            Command::new("sh")
                .args(["-c", &script, "sh", &w.to_string()])
                .env("MSB_HOME", home.path())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(!stderr(&o).contains("locked"), "{}", stderr(&o));
    }
    assert_eq!(stdout(&msb(home.path(), &["volume", "ls", "-q"])), "");
}

/// No byte that a terminal takes as a command: ESC, BEL, CR.
fn assert_inert(what: &str, bytes: &[u8]) {
    for bad in [b'\x1b', b'\x07', b'\r'] {
        assert!(
            !bytes.contains(&bad),
            "{what} holds {bad:#x}: {}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn paths_with_control_characters_are_escaped_but_json_stays_json() {
    let tmp = tempfile::tempdir().unwrap();
    let h = tmp.path().join("home\x1b]0;pwned\x07");
    let o = msb(&h, &["volume", "create", "v", "--label", "team=ci", "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = msb(&h, &["volume", "inspect", "v"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_inert("inspect", &o.stdout);
    let text = stdout(&o);
    let escaped = format!("{}/home\\x1b]0;pwned\\x07/volumes/v", tmp.path().display());
    assert!(text.contains(&format!("Path:      {escaped}\n")), "{text}");
    assert!(
        text.contains("Name:      v\n") && text.contains("Label:     team=ci\n"),
        "{text}"
    );
    // JSON escapes in its own way and reads back as the real path.
    for args in [
        &["volume", "inspect", "v", "--format", "json"][..],
        &["volume", "ls", "--format", "json"],
    ] {
        let o = msb(&h, args);
        assert_inert("json", &o.stdout);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(
            v[0]["path"].as_str().unwrap(),
            h.join("volumes/v").to_str().unwrap()
        );
        assert!(
            stdout(&o).contains("\\u001b]0;pwned\\u0007"),
            "{}",
            stdout(&o)
        );
    }
    // Whatever else lands in volumes/ is named by doctor, escaped.
    std::fs::create_dir(h.join("volumes/stray\x1b[2J")).unwrap();
    let o = msb(&h, &["volume", "doctor"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_inert("doctor", &o.stdout);
    assert!(
        stdout(&o).contains("/volumes/stray\\x1b[2J is not a volume msb knows"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn doctor_says_how_to_give_an_old_volume_to_the_sandboxes() {
    use std::os::unix::fs::MetadataExt;
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipping: making a volume owned by host root needs root");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    assert!(msb(h, &["volume", "create", "old", "-q"]).status.success());
    let o = msb(h, &["volume", "doctor"]);
    assert_eq!(stdout(&o), "store is consistent\n");
    // As volumes were made before they were given to the sandboxes.
    let root = h.join("volumes/old");
    std::os::unix::fs::chown(&root, Some(0), Some(0)).unwrap();
    let o = msb(h, &["volume", "doctor"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stdout(&o),
        format!(
            "owner: volume old's root is owned by host root, so sandboxes (host uid 1878982656) \
             cannot write to it; left as is. To fix: chown -R --from=0 1878982656:1878982656 {}\n",
            root.display()
        )
    );
    assert_eq!(
        std::fs::metadata(&root).unwrap().uid(),
        0,
        "doctor changed nothing"
    );
    // The fix it prints works.
    let fix = std::process::Command::new("chown")
        .args(["-R", "--from=0", "1878982656:1878982656"])
        .arg(&root)
        .status()
        .unwrap();
    assert!(fix.success());
    assert_eq!(
        stdout(&msb(h, &["volume", "doctor"])),
        "store is consistent\n"
    );
}
