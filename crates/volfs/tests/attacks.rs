//! Every attack path against every operation, with both resolvers, and the
//! same paths against plain `std::fs` to show each attack is real.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use msb_volfs::{FileKind, FsError, Resolver, VolumeFs};

const SECRET: &[u8] = b"SECRET outside the volume";

/// A volume next to an `outside` directory holding the canary.
struct Env {
    tmp: tempfile::TempDir,
    /// Keeps an fd on `outside` open for the `/proc/self/fd/N` cases.
    outside_fd: std::fs::File,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        let outside = t.join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("secret"), SECRET).unwrap();
        let vol = t.join("vol");
        std::fs::create_dir(&vol).unwrap();
        std::fs::write(vol.join("inside.txt"), b"hello").unwrap();
        std::fs::create_dir(vol.join("a")).unwrap();
        std::fs::create_dir(vol.join("sub")).unwrap();
        let link = |target: &Path, name: &str| std::os::unix::fs::symlink(target, vol.join(name));
        link(Path::new("/"), "toroot").unwrap();
        link(Path::new("../.."), "up").unwrap();
        link(&outside.join("newfile"), "dangling").unwrap();
        link(Path::new("../outside/newfile"), "dangling_rel").unwrap();
        link(Path::new("c2"), "c1").unwrap();
        link(Path::new("sub/../c3"), "c2").unwrap();
        link(Path::new("../outside"), "c3").unwrap();
        link(Path::new("l2"), "l1").unwrap();
        link(Path::new("l1"), "l2").unwrap();
        link(&outside, "outdir").unwrap();
        let outside_fd = std::fs::File::open(&outside).unwrap();
        link(
            Path::new(&format!("/proc/self/fd/{}", outside_fd.as_raw_fd())),
            "procfd",
        )
        .unwrap();
        Env { tmp, outside_fd }
    }

    fn vol(&self) -> PathBuf {
        self.tmp.path().join("vol")
    }

    fn outside(&self) -> PathBuf {
        self.tmp.path().join("outside")
    }

    /// Names and contents of everything outside the volume we own.
    fn canary(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        for e in std::fs::read_dir(self.outside()).unwrap() {
            let e = e.unwrap();
            let data = std::fs::read(e.path()).unwrap_or_default();
            out.insert(e.path(), data);
        }
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Every operation fails with PathEscape.
    Escape,
    /// The last component is a symlink leading outside: operations that
    /// follow it fail with PathEscape, the others act on the link itself.
    FinalLinkOut,
    Loop,
    Invalid,
}

/// (path relative to the volume, expectation, std shows the escape by
/// reading the secret through `root.join(path)`/`secret` suffix)
fn cases(env: &Env) -> Vec<(String, Expect)> {
    let out = env.outside();
    let tmpname = env
        .tmp
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    vec![
        (format!("{}/secret", out.display()), Expect::Escape),
        ("../outside/secret".into(), Expect::Escape),
        ("a/../../outside/secret".into(), Expect::Escape),
        ("..".into(), Expect::Escape),
        (format!("toroot{}/secret", out.display()), Expect::Escape),
        (format!("up/{tmpname}/outside/secret"), Expect::Escape),
        ("c1/secret".into(), Expect::Escape),
        ("outdir/secret".into(), Expect::Escape),
        ("procfd/secret".into(), Expect::Escape),
        (
            format!("/proc/self/fd/{}/secret", env.outside_fd.as_raw_fd()),
            Expect::Escape,
        ),
        ("dangling".into(), Expect::FinalLinkOut),
        ("dangling_rel".into(), Expect::FinalLinkOut),
        ("c1".into(), Expect::FinalLinkOut),
        ("outdir".into(), Expect::FinalLinkOut),
        ("procfd".into(), Expect::FinalLinkOut),
        ("l1".into(), Expect::Loop),
        ("l1/x".into(), Expect::Loop),
        ("a\0b".into(), Expect::Invalid),
        (format!("a/{}", "x".repeat(256)), Expect::Invalid),
    ]
}

#[derive(Clone, Copy, PartialEq)]
enum Follows {
    Yes,
    No,
}

type OpFn = fn(&VolumeFs, &Path) -> Result<(), FsError>;

fn ops() -> Vec<(&'static str, Follows, OpFn)> {
    vec![
        ("read", Follows::Yes, |fs, p| fs.read(p).map(drop)),
        ("read_to_string", Follows::Yes, |fs, p| {
            fs.read_to_string(p).map(drop)
        }),
        ("open_file", Follows::Yes, |fs, p| fs.open_file(p).map(drop)),
        ("write", Follows::Yes, |fs, p| fs.write(p, b"pwned")),
        ("create", Follows::Yes, |fs, p| {
            let mut w = fs.create(p)?;
            w.write_all(b"pwned").unwrap();
            w.finish()
        }),
        ("exists", Follows::Yes, |fs, p| fs.exists(p).map(drop)),
        ("list", Follows::Yes, |fs, p| fs.list(p).map(drop)),
        ("mkdir", Follows::Yes, |fs, p| fs.mkdir(p)),
        ("copy_from", Follows::Yes, |fs, p| {
            fs.copy(p, "copied").map(drop)
        }),
        ("copy_to", Follows::Yes, |fs, p| {
            fs.copy("inside.txt", p).map(drop)
        }),
        ("stat", Follows::No, |fs, p| fs.stat(p).map(drop)),
        ("remove", Follows::No, |fs, p| fs.remove(p)),
        ("remove_all", Follows::No, |fs, p| fs.remove_all(p)),
        ("read_link", Follows::No, |fs, p| fs.read_link(p).map(drop)),
        ("rename_from", Follows::No, |fs, p| fs.rename(p, "moved")),
        ("rename_to", Follows::No, |fs, p| fs.rename("inside.txt", p)),
        ("symlink_at", Follows::No, |fs, p| {
            fs.symlink("inside.txt", p)
        }),
        ("hard_link_to", Follows::No, |fs, p| {
            fs.hard_link("inside.txt", p)
        }),
        ("hard_link_from", Follows::No, |fs, p| {
            fs.hard_link(p, "linked")
        }),
    ]
}

/// Shows the attack works without confinement: through plain std::fs the
/// path reaches the secret, or a write through it lands outside.
fn std_escapes(env: &Env, path: &str) -> bool {
    let full = env.vol().join(path);
    if std::fs::read(&full).is_ok_and(|d| d == SECRET) {
        return true;
    }
    // A link to the outside directory: std lists the secret.
    if std::fs::read_dir(&full)
        .is_ok_and(|mut d| d.any(|e| e.is_ok_and(|e| e.file_name() == "secret")))
    {
        return true;
    }
    let before = env.canary();
    let wrote = std::fs::write(&full, b"std wrote this").is_ok();
    let after = env.canary();
    let escaped = wrote && after != before;
    // Undo it so the canary is clean for the next step.
    for p in after.keys().filter(|p| !before.contains_key(*p)) {
        std::fs::remove_file(p).unwrap();
    }
    escaped
}

fn run_table(resolver: Resolver) {
    let probe = Env::new();
    let mut checked = 0;
    for (path, expect) in cases(&probe) {
        if matches!(expect, Expect::Escape | Expect::FinalLinkOut) && path != ".." {
            let env = Env::new();
            let path = path.replace(
                probe.tmp.path().to_str().unwrap(),
                env.tmp.path().to_str().unwrap(),
            );
            let path = path.replace(
                probe.tmp.path().file_name().unwrap().to_str().unwrap(),
                env.tmp.path().file_name().unwrap().to_str().unwrap(),
            );
            let path = fix_fd(&path, &probe, &env);
            assert!(
                std_escapes(&env, &path),
                "attack {path:?} does not escape through std::fs"
            );
        }
        for (name, follows, op) in ops() {
            let env = Env::new();
            let path = path
                .replace(
                    probe.tmp.path().to_str().unwrap(),
                    env.tmp.path().to_str().unwrap(),
                )
                .replace(
                    probe.tmp.path().file_name().unwrap().to_str().unwrap(),
                    env.tmp.path().file_name().unwrap().to_str().unwrap(),
                );
            let path = fix_fd(&path, &probe, &env);
            let fs = VolumeFs::open(env.vol()).unwrap().with_resolver(resolver);
            let before = env.canary();
            let r = op(&fs, Path::new(&path));
            let ctx = format!("{name}({path:?}) with {resolver:?}: {r:?}");
            match (expect, follows) {
                (Expect::Escape, _) | (Expect::FinalLinkOut, Follows::Yes) => {
                    assert!(
                        matches!(r, Err(FsError::PathEscape { .. })),
                        "expected escape: {ctx}"
                    )
                }
                (Expect::FinalLinkOut, Follows::No) => {
                    assert!(
                        !matches!(r, Err(FsError::PathEscape { .. })),
                        "acts on the link itself: {ctx}"
                    );
                }
                (Expect::Loop, _) => {
                    // `l1` itself can be stat'ed, removed... as a link.
                    if follows == Follows::Yes || path.contains('/') {
                        assert!(
                            matches!(r, Err(FsError::SymlinkLoop { .. })),
                            "expected loop: {ctx}"
                        );
                    }
                }
                (Expect::Invalid, _) => {
                    assert!(
                        matches!(r, Err(FsError::InvalidPath { .. })),
                        "expected invalid: {ctx}"
                    );
                }
            }
            assert_eq!(env.canary(), before, "outside changed: {ctx}");
            assert_eq!(
                std::fs::read(env.outside().join("secret")).unwrap(),
                SECRET,
                "{ctx}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 19 * 19, "ran {checked}");
}

/// The `/proc/self/fd/N` case names the probe env's descriptor number.
fn fix_fd(path: &str, probe: &Env, env: &Env) -> String {
    path.replace(
        &format!("/proc/self/fd/{}/", probe.outside_fd.as_raw_fd()),
        &format!("/proc/self/fd/{}/", env.outside_fd.as_raw_fd()),
    )
}

#[test]
fn attack_table_openat2() {
    run_table(Resolver::Auto);
}

#[test]
fn attack_table_walk() {
    run_table(Resolver::Walk);
}

#[test]
fn final_symlink_ops_act_on_the_link() {
    for resolver in [Resolver::Auto, Resolver::Walk] {
        let env = Env::new();
        let fs = VolumeFs::open(env.vol()).unwrap().with_resolver(resolver);
        assert_eq!(fs.stat("dangling").unwrap().kind(), FileKind::Symlink);
        assert_eq!(
            fs.read_link("dangling").unwrap(),
            env.outside().join("newfile")
        );
        fs.remove("dangling").unwrap();
        assert!(!fs.exists("dangling").unwrap());
        assert!(
            fs.symlink("x", "c1")
                .unwrap_err()
                .to_string()
                .contains("already exists")
        );
        assert!(!env.outside().join("newfile").exists());
    }
}

#[test]
fn symlinks_inside_are_followed() {
    for resolver in [Resolver::Auto, Resolver::Walk] {
        let env = Env::new();
        let fs = VolumeFs::open(env.vol()).unwrap().with_resolver(resolver);
        fs.symlink("sub/../inside.txt", "alias").unwrap();
        fs.symlink("../sub", "a/tosub").unwrap();
        fs.symlink("target.txt", "sub/dangling_in").unwrap();
        assert_eq!(fs.read("alias").unwrap(), b"hello");
        fs.write("a/tosub/new.txt", "via link").unwrap();
        assert_eq!(
            std::fs::read(env.vol().join("sub/new.txt")).unwrap(),
            b"via link"
        );
        // A write through a dangling link inside creates its target inside.
        fs.write("sub/dangling_in", "made").unwrap();
        assert_eq!(fs.read("sub/target.txt").unwrap(), b"made");
        assert_eq!(fs.list("a/tosub").unwrap().len(), 3);
        assert!(fs.exists("a/tosub/new.txt").unwrap());
        // Its `..` is taken after the symlinks on the way, as the kernel
        // takes it (`a/tosub` is `sub`), through a chain of dangling links.
        fs.symlink("../hop", "sub/up").unwrap();
        fs.symlink("top.txt", "hop").unwrap();
        fs.write("a/tosub/up", "up").unwrap();
        assert_eq!(std::fs::read(env.vol().join("top.txt")).unwrap(), b"up");
        assert!(!env.vol().join("a/top.txt").exists());
        // One ending in a directory cannot be made a file.
        fs.symlink("newdir/", "sub/todir").unwrap();
        assert!(matches!(
            fs.write("sub/todir", "x").unwrap_err(),
            FsError::IsADirectory { .. }
        ));
    }
}

#[test]
fn root_replaced_by_symlink_is_refused() {
    let env = Env::new();
    let vol = env.vol();
    // std follows the replaced root straight to the secret.
    std::fs::rename(&vol, env.tmp.path().join("vol.real")).unwrap();
    std::os::unix::fs::symlink(env.outside(), &vol).unwrap();
    assert_eq!(std::fs::read(vol.join("secret")).unwrap(), SECRET);
    let err = VolumeFs::open(&vol).unwrap_err();
    assert!(matches!(err, FsError::RootIsSymlink { .. }), "{err}");
}

#[test]
fn root_moved_after_open_keeps_the_volume() {
    let env = Env::new();
    let vol = env.vol();
    let fs = VolumeFs::open(&vol).unwrap();
    std::fs::rename(&vol, env.tmp.path().join("vol.real")).unwrap();
    std::os::unix::fs::symlink(env.outside(), &vol).unwrap();
    // Every operation still targets the directory that was opened.
    assert_eq!(fs.read("inside.txt").unwrap(), b"hello");
    assert!(fs.read("secret").unwrap_err().is_not_found());
    fs.write("after.txt", "x").unwrap();
    assert!(env.tmp.path().join("vol.real/after.txt").exists());
    assert!(!env.outside().join("after.txt").exists());
}

#[test]
fn planted_hard_link_is_not_written_through() {
    let env = Env::new();
    let secret = env.outside().join("secret");
    std::fs::hard_link(&secret, env.vol().join("hl")).unwrap();
    // std writes through the link and changes the outside file.
    let probe = env.vol().join("probe");
    std::fs::hard_link(&secret, &probe).unwrap();
    std::fs::write(&probe, b"changed").unwrap();
    assert_eq!(std::fs::read(&secret).unwrap(), b"changed");
    std::fs::write(&secret, SECRET).unwrap();
    std::fs::remove_file(&probe).unwrap();

    let fs = VolumeFs::open(env.vol()).unwrap();
    let err = fs.write("hl", "pwned").unwrap_err();
    assert!(matches!(err, FsError::HardLinked { links: 2, .. }), "{err}");
    assert!(matches!(
        fs.create("hl").unwrap_err(),
        FsError::HardLinked { .. }
    ));
    assert!(matches!(
        fs.copy("inside.txt", "hl").unwrap_err(),
        FsError::HardLinked { .. }
    ));
    assert_eq!(std::fs::read(&secret).unwrap(), SECRET);
    // Documented: reading is allowed, the bytes are stored in the volume.
    assert_eq!(fs.read("hl").unwrap(), SECRET);
    assert_eq!(fs.stat("hl").unwrap().nlink(), 2);
    // Removing drops only the name inside; writing again makes a new file.
    fs.remove("hl").unwrap();
    fs.write("hl", "fresh").unwrap();
    assert_eq!(std::fs::read(&secret).unwrap(), SECRET);
    assert_eq!(fs.read("hl").unwrap(), b"fresh");
}

#[test]
fn special_files_are_not_opened_for_data() {
    let env = Env::new();
    let fifo = env.vol().join("fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let fs = VolumeFs::open(env.vol()).unwrap();
    // Would block forever without O_NONBLOCK; refused instead.
    assert!(matches!(
        fs.read("fifo").unwrap_err(),
        FsError::NotAFile { .. }
    ));
    let w = fs.write("fifo", "x").unwrap_err();
    // A FIFO with no reader cannot even be opened for writing non-blocking.
    assert!(
        matches!(w, FsError::NotAFile { .. } | FsError::Io { .. }),
        "{w}"
    );
    assert_eq!(fs.stat("fifo").unwrap().kind(), FileKind::Fifo);
}

#[test]
fn lexical_rules() {
    let env = Env::new();
    let fs = VolumeFs::open(env.vol()).unwrap();
    assert_eq!(fs.read("a/../inside.txt").unwrap(), b"hello");
    assert_eq!(fs.read("./sub/../inside.txt").unwrap(), b"hello");
    let e = fs.read("a/../../x").unwrap_err();
    assert_eq!(e.to_string(), "path escapes volume root: a/../../x");
    let long = "x".repeat(255);
    fs.write(&long, "ok").unwrap();
    let e = fs.write("x".repeat(256), "no").unwrap_err();
    assert!(e.to_string().contains("longer than 255 bytes"), "{e}");
    let nul = std::ffi::OsStr::from_bytes(b"a\0b");
    assert!(matches!(
        fs.read(nul).unwrap_err(),
        FsError::InvalidPath { .. }
    ));
}

#[test]
fn root_is_never_removed_or_moved() {
    let env = Env::new();
    let fs = VolumeFs::open(env.vol()).unwrap();
    for p in ["", ".", "a/..", "./"] {
        assert!(matches!(
            fs.remove_all(p).unwrap_err(),
            FsError::IsRoot { .. }
        ));
        assert!(matches!(fs.remove(p).unwrap_err(), FsError::IsRoot { .. }));
        assert!(matches!(
            fs.rename(p, "x").unwrap_err(),
            FsError::IsRoot { .. }
        ));
    }
    assert!(env.vol().join("inside.txt").exists());
}

#[test]
fn remove_all_does_not_follow_symlinks() {
    let env = Env::new();
    let fs = VolumeFs::open(env.vol()).unwrap();
    fs.mkdir("tree/deep/er").unwrap();
    fs.write("tree/deep/er/f", "x").unwrap();
    fs.symlink(env.outside(), "tree/out").unwrap();
    fs.symlink("../../outside", "tree/deep/rel").unwrap();
    let before = env.canary();
    fs.remove_all("tree").unwrap();
    assert!(!fs.exists("tree").unwrap());
    assert_eq!(env.canary(), before);
    // remove_all of a symlink to a directory removes the link only.
    fs.remove_all("outdir").unwrap();
    assert_eq!(env.canary(), before);
    assert!(env.outside().is_dir());
}

#[test]
fn read_only_refuses_every_change() {
    let env = Env::new();
    let fs = VolumeFs::open(env.vol()).unwrap().read_only();
    assert_eq!(fs.read("inside.txt").unwrap(), b"hello");
    for (name, _, op) in ops() {
        if [
            "read",
            "read_to_string",
            "open_file",
            "exists",
            "list",
            "stat",
            "read_link",
        ]
        .contains(&name)
        {
            continue;
        }
        let r = op(&fs, Path::new("sub/newthing"));
        assert!(matches!(r, Err(FsError::ReadOnly { .. })), "{name}: {r:?}");
    }
    assert!(
        std::fs::read_dir(env.vol().join("sub"))
            .unwrap()
            .next()
            .is_none()
    );
}
