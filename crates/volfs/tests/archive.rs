//! Export/import round trips, compatibility with GNU tar, and hostile
//! archives.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use msb_volfs::archive::{self, ArchiveError, ImportFailure};
use msb_volfs::{FileKind, FsError, VolumeFs};
use tar::{EntryType, Header};

const SECRET: &[u8] = b"SECRET";

struct Env {
    tmp: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        for d in ["outside", "a", "b"] {
            std::fs::create_dir(tmp.path().join(d)).unwrap();
        }
        std::fs::write(tmp.path().join("outside/secret"), SECRET).unwrap();
        Env { tmp }
    }
    fn p(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }
    fn fs(&self, rel: &str) -> VolumeFs {
        VolumeFs::open(self.p(rel)).unwrap()
    }
    fn outside_names(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.p("outside"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }
    fn assert_outside_intact(&self) {
        assert_eq!(self.outside_names(), ["secret"]);
        assert_eq!(std::fs::read(self.p("outside/secret")).unwrap(), SECRET);
    }
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> bool {
    rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty()).is_ok()
}

fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    rustix::fs::lgetxattr(path, name, &mut buf[..])
        .ok()
        .map(|n| {
            buf.truncate(n);
            buf
        })
}

/// A varied tree in `a`.
fn populate(env: &Env) -> bool {
    let fs = env.fs("a");
    fs.mkdir("etc/deep/er").unwrap();
    fs.write("etc/config", "key = value\n").unwrap();
    fs.write("empty", "").unwrap();
    fs.write("etc/deep/er/big", vec![9u8; 300_000]).unwrap();
    let long = format!("{}/{}", "d".repeat(120), "f".repeat(130));
    fs.mkdir("d".repeat(120)).unwrap();
    fs.write(&long, "long name").unwrap();
    std::fs::set_permissions(env.p("a/etc/config"), PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::set_permissions(env.p("a/etc/deep"), PermissionsExt::from_mode(0o750)).unwrap();
    fs.symlink("etc/config", "cfg").unwrap();
    fs.symlink("/etc/passwd", "abs").unwrap();
    fs.symlink("missing", "dangling").unwrap();
    fs.hard_link("etc/config", "hard").unwrap();
    set_xattr(
        &env.p("a/etc/config"),
        "user.msb.meta",
        b"record-bytes\x00\x01",
    ) && set_xattr(&env.p("a/etc"), "user.msb.meta", b"dir-record")
        && set_xattr(&env.p("a/empty"), "user.other", b"not kept")
}

fn tree(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            let desc = if m.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(e.path()).unwrap().display())
            } else if m.is_dir() {
                stack.push(r.clone());
                format!("dir {:o}", m.mode() & 0o777)
            } else {
                let data = std::fs::read(e.path()).unwrap();
                format!(
                    "file {:o} {} {} nlink={}",
                    m.mode() & 0o777,
                    data.len(),
                    data.iter().map(|&b| b as u64).sum::<u64>(),
                    m.nlink()
                )
            };
            out.push((r.display().to_string(), desc));
        }
    }
    out.sort();
    out
}

#[test]
fn export_import_round_trip() {
    let env = Env::new();
    let xattrs = populate(&env);
    let old = rustix::fs::Timespec {
        tv_sec: 1_000_000_000,
        tv_nsec: 0,
    };
    let old = rustix::fs::Timestamps {
        last_access: old,
        last_modification: old,
    };
    for p in ["a/etc", "a/cfg"] {
        rustix::fs::utimensat(
            rustix::fs::CWD,
            env.p(p),
            &old,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
    }
    let mut archive = Vec::new();
    let rep = archive::export(&env.fs("a"), &mut archive, &mut |_| {}).unwrap();
    assert!(rep.entries >= 12, "{rep:?}");
    let mut seen = 0;
    let got = archive::import(&env.fs("b"), archive.as_slice(), &mut |n| seen = n).unwrap();
    assert!(seen > 0);
    assert_eq!(got.hard_links, 1);
    assert_eq!(got.symlinks, 3);
    assert_eq!(tree(&env.p("a")), tree(&env.p("b")));
    if xattrs {
        assert_eq!(
            get_xattr(&env.p("b/etc/config"), "user.msb.meta").unwrap(),
            b"record-bytes\x00\x01"
        );
        assert_eq!(
            get_xattr(&env.p("b/etc"), "user.msb.meta").unwrap(),
            b"dir-record"
        );
        assert_eq!(get_xattr(&env.p("b/empty"), "user.other"), None);
    } else {
        eprintln!("skipping xattr checks: user xattrs unsupported here");
    }
    let mtime = |p: &str| std::fs::metadata(env.p(p)).unwrap().mtime();
    assert_eq!(mtime("a/etc/deep/er/big"), mtime("b/etc/deep/er/big"));
    assert_eq!(mtime("b/etc"), 1_000_000_000);
    let link_mtime = std::fs::symlink_metadata(env.p("b/cfg")).unwrap().mtime();
    assert_eq!(link_mtime, 1_000_000_000);
    env.assert_outside_intact();
}

fn have_gnu_tar() -> bool {
    Command::new("tar")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("GNU tar"))
}

#[test]
fn gnu_tar_reads_exports_and_writes_importable_archives() {
    if !have_gnu_tar() {
        eprintln!("skipping: GNU tar not installed");
        return;
    }
    let env = Env::new();
    let xattrs = populate(&env);
    let file = env.p("export.tar");
    archive::export(
        &env.fs("a"),
        std::fs::File::create(&file).unwrap(),
        &mut |_| {},
    )
    .unwrap();
    std::fs::create_dir(env.p("gnu")).unwrap();
    let st = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=user.*", "-xpf"])
        .arg(&file)
        .arg("-C")
        .arg(env.p("gnu"))
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(tree(&env.p("a")), tree(&env.p("gnu")));
    if xattrs {
        assert_eq!(
            get_xattr(&env.p("gnu/etc/config"), "user.msb.meta").unwrap(),
            b"record-bytes\x00\x01"
        );
    }
    // And the other way: an archive GNU tar made imports the same tree.
    let gnu_file = env.p("gnu.tar");
    let st = Command::new("tar")
        .args(["--xattrs", "-cf"])
        .arg(&gnu_file)
        .arg("-C")
        .arg(env.p("a"))
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    archive::import(
        &env.fs("b"),
        std::fs::File::open(&gnu_file).unwrap(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(tree(&env.p("a")), tree(&env.p("b")));
    if xattrs {
        assert_eq!(
            get_xattr(&env.p("b/etc/config"), "user.msb.meta").unwrap(),
            b"record-bytes\x00\x01"
        );
    }
}

/// One raw entry, with any name (the builder refuses hostile names).
enum E<'a> {
    File(&'a [u8], &'a [u8]),
    Dir(&'a [u8]),
    Symlink(&'a [u8], &'a [u8]),
    Hard(&'a [u8], &'a [u8]),
    Dev(&'a [u8], EntryType),
}

fn hostile(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = Header::new_gnu();
        h.set_mode(0o644);
        h.set_mtime(0);
        let (name, link, ty, data): (&[u8], &[u8], EntryType, &[u8]) = match e {
            E::File(n, d) => (n, b"", EntryType::Regular, d),
            E::Dir(n) => (n, b"", EntryType::Directory, b""),
            E::Symlink(n, t) => (n, t, EntryType::Symlink, b""),
            E::Hard(n, t) => (n, t, EntryType::Link, b""),
            E::Dev(n, t) => (n, b"", *t, b""),
        };
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name);
        gnu.linkname[..link.len()].copy_from_slice(link);
        h.set_entry_type(ty);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn import_into(
    env: &Env,
    data: &[u8],
) -> Result<msb_volfs::archive::ImportReport, Box<ImportFailure>> {
    archive::import(&env.fs("b"), data, &mut |_| {})
}

#[test]
fn hostile_archives_never_land_outside() {
    let env = Env::new();
    let out = env.p("outside");
    let out_b = out.as_os_str().as_encoded_bytes().to_vec();
    let abs_evil = [out_b.as_slice(), b"/evil"].concat();
    let abs_secret = [out_b.as_slice(), b"/secret"].concat();
    let escapes: Vec<(&str, Vec<E<'_>>)> = vec![
        ("dot-dot", vec![E::File(b"../outside/evil", b"x")]),
        (
            "nested dot-dot",
            vec![E::File(b"a/../../outside/evil", b"x")],
        ),
        ("absolute", vec![E::File(&abs_evil, b"x")]),
        (
            "through own symlink (absolute)",
            vec![E::Symlink(b"ln", &out_b), E::File(b"ln/evil", b"x")],
        ),
        (
            "through own symlink (relative)",
            vec![E::Symlink(b"up", b".."), E::File(b"up/outside/evil", b"x")],
        ),
        (
            "through own symlink, as a directory",
            vec![E::Symlink(b"d", b"../outside"), E::Dir(b"d/evil/")],
        ),
        (
            "hard link by dot-dot",
            vec![E::Hard(b"hl", b"../outside/secret")],
        ),
        ("hard link absolute", vec![E::Hard(b"hl", &abs_secret)]),
    ];
    for (what, entries) in escapes {
        let err = import_into(&env, &hostile(&entries)).unwrap_err();
        assert!(
            matches!(err.error, ArchiveError::Volume(FsError::PathEscape { .. })),
            "{what}: {err:?}"
        );
        env.assert_outside_intact();
    }
    // A hard link to a symlink the archive made that points outside: not a
    // file in the volume.
    let err = import_into(
        &env,
        &hostile(&[E::Symlink(b"s", &abs_secret), E::Hard(b"h", b"s")]),
    )
    .unwrap_err();
    assert!(matches!(err.error, ArchiveError::BadLink { .. }), "{err:?}");
    // Device nodes are refused.
    for t in [EntryType::Char, EntryType::Block] {
        let err = import_into(&env, &hostile(&[E::Dev(b"sda", t)])).unwrap_err();
        assert!(matches!(err.error, ArchiveError::Refused { .. }), "{err:?}");
    }
    assert!(!env.p("b/sda").exists());
    env.assert_outside_intact();
}

#[test]
fn file_entry_replaces_a_symlink_instead_of_writing_through() {
    let env = Env::new();
    let target = env.p("outside/target");
    let tb = target.as_os_str().as_encoded_bytes().to_vec();
    std::fs::write(env.p("b/victim"), "keep").unwrap();
    let data = hostile(&[
        E::Symlink(b"f", &tb),
        E::File(b"f", b"data"),
        E::Symlink(b"g", b"victim"),
        E::File(b"g", b"data"),
    ]);
    import_into(&env, &data).unwrap();
    env.assert_outside_intact();
    let fs = env.fs("b");
    assert_eq!(fs.stat("f").unwrap().kind(), FileKind::File);
    assert_eq!(fs.read("g").unwrap(), b"data");
    assert_eq!(fs.read("victim").unwrap(), b"keep");
}

#[test]
fn failed_import_reports_what_it_wrote() {
    let env = Env::new();
    let data = hostile(&[
        E::Dir(b"d/"),
        E::File(b"d/one", b"1"),
        E::File(b"two", b"22"),
        E::File(b"../evil", b"x"),
        E::File(b"never", b"x"),
    ]);
    let err = import_into(&env, &data).unwrap_err();
    assert_eq!(err.written.files, 2);
    assert_eq!(err.written.dirs, 1);
    assert_eq!(err.written.bytes, 3);
    assert_eq!(
        err.written.paths,
        [
            PathBuf::from("d"),
            PathBuf::from("d/one"),
            PathBuf::from("two")
        ]
    );
    let msg = err.to_string();
    assert!(msg.contains("2 file(s) (3 bytes)"), "{msg}");
    assert!(!env.p("b/never").exists());
}

#[test]
fn import_respects_the_quota() {
    let env = Env::new();
    let counter = env.p("usage");
    msb_quota::Budget::create(&counter, 0).unwrap();
    let budget = Arc::new(msb_quota::Budget::open(&counter, Some(1 << 20)).unwrap());
    let fs = env.fs("b").with_budget(budget.clone());
    let small = vec![1u8; 400_000];
    let big = vec![2u8; 800_000];
    let data = hostile(&[E::File(b"small", &small), E::File(b"big", &big)]);
    let err = archive::import(&fs, data.as_slice(), &mut |_| {}).unwrap_err();
    assert!(
        matches!(
            err.error,
            ArchiveError::Volume(FsError::QuotaExceeded { .. })
        ),
        "{err:?}"
    );
    assert_eq!(err.written.paths, [PathBuf::from("small")]);
    let scanned = msb_quota::scan(std::fs::File::open(env.p("b")).unwrap()).unwrap();
    assert_eq!(budget.used(), scanned);
    assert!(budget.used() <= 1 << 20);
}

#[test]
fn read_only_volume_refuses_import() {
    let env = Env::new();
    let fs = env.fs("b").read_only();
    let err =
        archive::import(&fs, hostile(&[E::File(b"x", b"1")]).as_slice(), &mut |_| {}).unwrap_err();
    assert!(matches!(
        err.error,
        ArchiveError::Volume(FsError::ReadOnly { .. })
    ));
    assert!(!env.p("b/x").exists());
}

/// A budget for the empty volume `b`, with `limit` bytes.
fn empty_budget(env: &Env, limit: u64) -> Arc<msb_quota::Budget> {
    let counter = env.p("usage");
    msb_quota::Budget::create(&counter, 0).unwrap();
    Arc::new(msb_quota::Budget::open(&counter, Some(limit)).unwrap())
}

fn scan(root: &Path) -> u64 {
    msb_quota::scan(std::fs::File::open(root).unwrap()).unwrap()
}

#[test]
fn import_into_empty_is_all_or_nothing_and_exactly_counted() {
    let env = Env::new();
    populate(&env);
    let old = rustix::fs::Timespec {
        tv_sec: 1_000_000_000,
        tv_nsec: 0,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        env.p("a/etc"),
        &rustix::fs::Timestamps {
            last_access: old,
            last_modification: old,
        },
        rustix::fs::AtFlags::empty(),
    )
    .unwrap();
    let mut whole = Vec::new();
    archive::export(&env.fs("a"), &mut whole, &mut |_| {}).unwrap();
    let budget = empty_budget(&env, 1 << 20);
    let fs = env.fs("b").with_budget(budget.clone());

    // A bad entry after good ones, the quota running out, an archive cut
    // short: each leaves the volume as it was, and the counter at zero.
    let escape = hostile(&[E::File(b"good", b"1"), E::File(b"../evil", b"2")]);
    let (small, big) = (vec![1u8; 400_000], vec![2u8; 800_000]);
    let over = hostile(&[E::File(b"small", &small), E::File(b"big", &big)]);
    let cut = &whole[..whole.len() - 1024];
    for data in [&escape[..], &over[..], cut] {
        let err = archive::import_into_empty(&fs, data, &mut |_| {}).unwrap_err();
        assert_eq!(err.written, archive::ImportReport::default());
        assert_eq!(std::fs::read_dir(env.p("b")).unwrap().count(), 0);
        assert_eq!(budget.used(), 0, "{err:?}");
    }
    assert!(matches!(
        archive::import_into_empty(&fs, cut, &mut |_| {})
            .unwrap_err()
            .error,
        ArchiveError::Truncated
    ));

    // The whole archive lands as a merge import would have put it, the
    // directories' times kept through the move, the counter exact.
    let got = archive::import_into_empty(&fs, whole.as_slice(), &mut |_| {}).unwrap();
    assert_eq!(got.hard_links, 1);
    assert_eq!(tree(&env.p("a")), tree(&env.p("b")));
    assert_eq!(
        std::fs::metadata(env.p("b/etc")).unwrap().mtime(),
        1_000_000_000
    );
    assert_eq!(budget.used(), scan(&env.p("b")));

    // Now it holds files: refused, untouched.
    let used = budget.used();
    let err = archive::import_into_empty(&fs, whole.as_slice(), &mut |_| {}).unwrap_err();
    assert!(matches!(err.error, ArchiveError::NotEmpty), "{err:?}");
    assert_eq!(tree(&env.p("a")), tree(&env.p("b")));
    assert_eq!(budget.used(), used);
    env.assert_outside_intact();
}

#[test]
fn export_to_path_replaces_the_target_only_when_complete() {
    use std::sync::atomic::AtomicBool;
    let env = Env::new();
    populate(&env);
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("a.tar");
    std::fs::write(&target, b"old").unwrap();
    let listing = || {
        let mut v: Vec<String> = std::fs::read_dir(out.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    // Stopped (as by a signal): the old file stays, no temporary is left.
    let err = archive::export_to_path(&env.fs("a"), &target, &AtomicBool::new(true), &mut |_| {})
        .unwrap_err();
    assert!(matches!(err, ArchiveError::Interrupted { .. }), "{err:?}");
    assert_eq!(std::fs::read(&target).unwrap(), b"old");
    assert_eq!(listing(), ["a.tar"]);
    // Completed: replaced by the whole archive.
    let rep = archive::export_to_path(&env.fs("a"), &target, &AtomicBool::new(false), &mut |_| {})
        .unwrap();
    assert!(rep.entries >= 12);
    assert_eq!(listing(), ["a.tar"]);
    let mut whole = Vec::new();
    archive::export(&env.fs("a"), &mut whole, &mut |_| {}).unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), whole);
}

/// Hands out an archive, and once read, runs `then` (once).
struct Then<'a, F: FnMut()> {
    data: &'a [u8],
    then: Option<F>,
}

impl<F: FnMut()> std::io::Read for Then<'_, F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = std::io::Read::read(&mut self.data, buf)?;
        if self.data.is_empty()
            && let Some(mut f) = self.then.take()
        {
            f();
        }
        Ok(n)
    }
}

#[test]
fn import_into_empty_undoes_its_moves_when_a_name_is_taken_meanwhile() {
    let env = Env::new();
    let budget = empty_budget(&env, 1 << 20);
    let fs = env.fs("b").with_budget(budget.clone());
    let data = hostile(&[E::File(b"a", b"1"), E::File(b"x", b"2")]);
    // Something else writes `x` into the volume while the import stages.
    let racer = || std::fs::write(env.p("b/x"), b"theirs").unwrap();
    let input = Then {
        data: &data,
        then: Some(racer),
    };
    let err = archive::import_into_empty(&fs, input, &mut |_| {}).unwrap_err();
    assert!(
        matches!(
            err.error,
            ArchiveError::Volume(FsError::AlreadyExists { .. })
        ),
        "{err:?}"
    );
    // `a`, moved before `x` failed, went back and was removed with the rest.
    assert_eq!(
        std::fs::read_dir(env.p("b"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect::<Vec<_>>(),
        ["x"]
    );
    assert_eq!(std::fs::read(env.p("b/x")).unwrap(), b"theirs");
    assert_eq!(budget.used(), 0);
}

#[test]
fn import_into_empty_removes_what_a_killed_import_left() {
    let env = Env::new();
    let budget = empty_budget(&env, 1 << 20);
    let fs = env.fs("b").with_budget(budget.clone());
    // A process that is gone, and the staging it would have left.
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = format!(".msb-import-{dead}-0");
    fs.mkdir(format!("{stale}/d")).unwrap();
    fs.write(format!("{stale}/d/f"), vec![1u8; 50_000]).unwrap();
    // A live import's staging (this process's) is someone's work: it counts.
    let live = format!(".msb-import-{}-7", std::process::id());
    fs.mkdir(&live).unwrap();
    let data = hostile(&[E::File(b"x", b"1")]);
    let err = archive::import_into_empty(&fs, data.as_slice(), &mut |_| {}).unwrap_err();
    assert!(matches!(err.error, ArchiveError::NotEmpty), "{err:?}");
    fs.remove(&live).unwrap();

    archive::import_into_empty(&fs, data.as_slice(), &mut |_| {}).unwrap();
    let names: Vec<String> = std::fs::read_dir(env.p("b"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["x"]);
    assert_eq!(budget.used(), scan(&env.p("b")));
}

#[test]
fn a_merging_import_and_remove_stale_staging_remove_what_a_killed_import_left() {
    let env = Env::new();
    let budget = empty_budget(&env, 1 << 20);
    let fs = env.fs("b").with_budget(budget.clone());
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = |n: u32| format!(".msb-import-{dead}-{n}");
    let live = format!(".msb-import-{}-7", std::process::id());
    fs.write("mine", b"keep").unwrap();
    fs.mkdir(&live).unwrap();
    for n in 0..2 {
        fs.mkdir(format!("{}/d", stale(n))).unwrap();
        fs.write(format!("{}/d/f", stale(n)), vec![1u8; 30_000])
            .unwrap();
    }
    // Only the dead process's staging goes; a live import's stays.
    let mut removed = archive::remove_stale_staging(&fs).unwrap();
    removed.sort();
    assert_eq!(removed, [PathBuf::from(stale(0)), PathBuf::from(stale(1))]);
    assert_eq!(budget.used(), scan(&env.p("b")));

    fs.mkdir(format!("{}/d", stale(2))).unwrap();
    let data = hostile(&[E::File(b"x", b"1")]);
    archive::import(&fs, data.as_slice(), &mut |_| {}).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(env.p("b"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, [live.clone(), "mine".into(), "x".into()]);
    assert_eq!(budget.used(), scan(&env.p("b")));
}
