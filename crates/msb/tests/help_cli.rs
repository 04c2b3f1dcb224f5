//! Help that lives outside `--help`: shell completions and manual pages,
//! both generated from the command definitions; and what a user sharing a
//! home with the published microsandbox is told. The real binary; the bash
//! script is loaded into a real bash and asked to complete; the other
//! installation's database is a real SQLite file shaped like theirs.

use std::process::{Command, Output};

fn msb(args: &[&str]) -> Output {
    let home = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_msb"))
        .args(args)
        .env("MSB_HOME", home.path())
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let o = msb(args);
    assert!(
        o.status.success(),
        "msb {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// Loads the generated script into bash and completes `msb <words> <cur>`,
/// returning the candidates bash would offer.
fn bash_complete(script: &str, words: &[&str]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("msb.bash");
    std::fs::write(&path, script).unwrap();
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let prog = format!(
        "source '{}'\nCOMP_WORDS=(msb {})\nCOMP_CWORD={}\n_msb msb '{}' '{}'\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        path.display(),
        quoted.join(" "),
        words.len(),
        words.last().unwrap(),
        if words.len() > 1 {
            words[words.len() - 2]
        } else {
            "msb"
        },
    );
    let out = Command::new("bash").arg("-c").arg(prog).output().unwrap();
    assert!(
        out.status.success(),
        "bash: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completion_offers_subcommands_and_flags() {
    let script = ok(&["completion", "bash"]);
    let top = bash_complete(&script, &[""]);
    for sub in ["volume", "run", "create", "cp", "exec", "completion", "man"] {
        assert!(top.iter().any(|c| c == sub), "{sub} not in {top:?}");
    }
    let vol = bash_complete(&script, &["volume", "pr"]);
    assert_eq!(vol, ["prune"], "volume pr<TAB>");
    let flags = bash_complete(&script, &["volume", "create", "--"]);
    assert!(flags.iter().any(|c| c == "--quota"), "{flags:?}");
}

#[test]
fn zsh_and_fish_completions_name_the_commands() {
    let zsh = ok(&["completion", "zsh"]);
    assert!(zsh.starts_with("#compdef msb"), "{}", &zsh[..40]);
    let fish = ok(&["completion", "fish"]);
    for text in [&zsh, &fish] {
        for sub in ["volume", "prune", "import", "cp"] {
            assert!(text.contains(sub), "{sub} missing");
        }
    }
    assert!(fish.contains("complete -c msb"));
}

#[test]
fn unknown_shell_is_a_usage_error() {
    let o = msb(&["completion", "tcsh"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("bash"));
}

#[test]
fn man_page_renders_with_the_subcommands() {
    let page = ok(&["man"]);
    assert!(page.contains(".TH msb 1"), "{}", &page[..200]);
    for sub in ["msb\\-volume(1)", "msb\\-cp(1)", "msb\\-run(1)"] {
        assert!(page.contains(sub), "{sub} missing from the page");
    }
    let groff = Command::new("sh")
        .arg("-c")
        .arg("command -v groff")
        .output()
        .unwrap();
    if !groff.status.success() {
        eprintln!("skipped rendering: groff is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("msb.1"), &page).unwrap();
    let out = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-P-cbou"])
        .arg(dir.path().join("msb.1"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "groff warns: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SUBCOMMANDS") && text.contains("Manage named volumes"));
}

#[test]
fn man_dir_writes_a_page_per_command() {
    let dir = tempfile::tempdir().unwrap();
    ok(&["man", "--dir", dir.path().to_str().unwrap()]);
    for page in [
        "msb.1",
        "msb-volume.1",
        "msb-volume-create.1",
        "msb-volume-fs-cp.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
        assert!(text.contains(".TH"), "{page}");
    }
    let create = std::fs::read_to_string(dir.path().join("msb-volume-create.1")).unwrap();
    assert!(
        create.contains("quota"),
        "volume create's page lacks its flags"
    );

    let o = msb(&["man", "--dir", "/nonexistent/msb-man"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("/nonexistent/msb-man") && err.contains("No such file"),
        "{err}"
    );
}

#[test]
fn generated_text_to_a_full_disk_fails_with_its_reason() {
    let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
        eprintln!("skipped: no /dev/full");
        return;
    };
    let o = Command::new(env!("CARGO_BIN_EXE_msb"))
        .args(["completion", "bash"])
        .stdout(full)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("standard output") && err.contains("No space"),
        "{err}"
    );
}

/// Lays out a home as the published microsandbox leaves it: its WAL-mode
/// `db/msb.db` with sea-orm's migration table and its own `sandbox` and
/// `volume` tables, commits still in the WAL.
fn peer_home() -> (tempfile::TempDir, rusqlite::Connection) {
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join("db")).unwrap();
    let conn = rusqlite::Connection::open(home.path().join("db/msb.db")).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.execute_batch(
        "CREATE TABLE seaql_migrations (version TEXT PRIMARY KEY NOT NULL, applied_at BIGINT NOT NULL);
         INSERT INTO seaql_migrations VALUES ('m20250101_000001_create_sandbox', 1735689600);
         CREATE TABLE sandbox (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE,
                               config TEXT NOT NULL, status TEXT NOT NULL);
         CREATE TABLE volume (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE,
                              quota_mib INTEGER, size_bytes BIGINT, labels TEXT,
                              created_at DATETIME, updated_at DATETIME);
         INSERT INTO volume (name, quota_mib) VALUES ('theirs', 64);",
    )
    .unwrap();
    (home, conn)
}

/// The database files, without SQLite's shared-memory index (which any
/// reader may update).
fn db_files(home: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(home.join("db"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| !e.file_name().to_string_lossy().ends_with("-shm"))
        .map(|e| {
            let name = e.file_name().into_string().unwrap();
            (name, std::fs::read(e.path()).unwrap())
        })
        .collect();
    files.sort();
    files
}

#[test]
fn a_home_shared_with_the_published_msb_is_named_as_such() {
    // The peer keeps its connection open, as a running msb of theirs does.
    let (home, _peer) = peer_home();
    let before = db_files(home.path());
    for args in [
        &["volume", "ls"][..],
        &["volume", "create", "mine"],
        &["ls"],
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_msb"))
            .args(args)
            .env("MSB_HOME", home.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "msb {args:?}: {err}");
        assert!(
            err.contains("another microsandbox installation")
                && err.contains("left untouched")
                && err.contains("MSB_HOME="),
            "msb {args:?}: {err}"
        );
        assert!(!err.contains("not made by msb"), "{err}");
    }
    assert!(db_files(home.path()) == before, "their database changed");
    let names: Vec<_> = std::fs::read_dir(home.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["db"], "msb wrote into their home");

    // What the message suggests works: a separate home beside theirs.
    let own = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_msb"))
        .args(["volume", "create", "mine"])
        .env("MSB_HOME", own.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn only_msb_itself_has_a_version() {
    assert_eq!(
        ok(&["--version"]),
        format!("msb {}\n", env!("CARGO_PKG_VERSION"))
    );
    for args in [&["volume", "create", "-V"][..], &["cp", "--version"]] {
        let o = msb(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {o:?}");
        assert!(o.stdout.is_empty(), "{args:?}: {o:?}");
    }
    let help = ok(&["volume", "create", "--help"]);
    assert!(!help.contains("--version"), "{help}");
}

/// Arguments and options in `help`'s text that come without a description.
fn undescribed(help: &str) -> Vec<String> {
    let lines: Vec<&str> = help.lines().collect();
    let mut missing = Vec::new();
    let mut in_list = false;
    for (i, line) in lines.iter().enumerate() {
        if matches!(*line, "Arguments:" | "Options:") {
            in_list = true;
            continue;
        }
        if !line.starts_with(' ') {
            in_list = false;
        }
        let entry = line.strip_prefix("  ").filter(|l| !l.starts_with(' '));
        if let (true, Some(entry)) = (in_list, entry) {
            // The description follows on the line (short form) or on the
            // next, indented further (long form).
            let inline = entry.trim_end().contains("  ");
            let below = lines
                .get(i + 1)
                .is_some_and(|n| n.starts_with("          ") && !n.trim().is_empty());
            if !inline && !below {
                missing.push(entry.trim().to_string());
            }
        }
    }
    missing
}

#[test]
fn every_argument_and_option_is_described() {
    let dir = tempfile::tempdir().unwrap();
    ok(&["man", "--dir", dir.path().to_str().unwrap()]);
    let mut pages: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    pages.sort();
    assert!(pages.len() > 25, "{pages:?}");
    let mut missing = Vec::new();
    for page in &pages {
        let path: Vec<&str> = page.trim_end_matches(".1").split('-').skip(1).collect();
        let mut args = vec!["help"];
        args.extend(&path);
        let help = ok(&args);
        assert!(help.contains("Usage: msb"), "{args:?}: {help}");
        for m in undescribed(&help) {
            missing.push(format!("msb {}: {m}", path.join(" ")));
        }
    }
    assert!(
        missing.is_empty(),
        "without a description:\n{}",
        missing.join("\n")
    );
}
