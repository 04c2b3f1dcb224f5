//! Benchmarks for the two targets, printed as ratios measured in
//! this one run:
//!
//! 1. 4 KiB write then read of the same file through `VolumeFs` vs plain
//!    `std::fs` (target: at most 2x the time). Rounds alternate between the
//!    two; the median of the per-round ratios is reported.
//! 2. Export and import of a 1 GiB volume of mixed files vs GNU tar
//!    (`tar -cf` / `tar -xf`) on the same data (target: at least 0.5x the
//!    speed).
//!
//! `cargo bench -p msb-volfs --bench volfs [-- --size-mib N --dir DIR]`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use msb_volfs::VolumeFs;
use msb_volfs::archive;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn small_io(dir: &Path) {
    let root = dir.join("small");
    std::fs::create_dir_all(&root).unwrap();
    let fs = VolumeFs::open(&root).unwrap();
    let counter = dir.join("usage");
    msb_quota::Budget::create(&counter, 0).unwrap();
    let budget = Arc::new(msb_quota::Budget::open(&counter, Some(1 << 30)).unwrap());
    let fs_quota = VolumeFs::open(&root).unwrap().with_budget(budget);
    let data = vec![0x5au8; 4096];
    let file = root.join("f");
    const OPS: usize = 2000;
    const ROUNDS: usize = 21;
    let round = |f: &dyn Fn()| {
        let t = Instant::now();
        for _ in 0..OPS {
            f();
        }
        t.elapsed()
    };
    let std_op = || {
        std::fs::write(&file, &data).unwrap();
        assert_eq!(std::fs::read(&file).unwrap().len(), 4096);
    };
    let vfs_op = || {
        fs.write("f", &data).unwrap();
        assert_eq!(fs.read("f").unwrap().len(), 4096);
    };
    let quota_op = || {
        fs_quota.write("f", &data).unwrap();
        assert_eq!(fs_quota.read("f").unwrap().len(), 4096);
    };
    // Warm up the file, the dentry cache and the branch predictors.
    round(&std_op);
    round(&vfs_op);
    let (mut ratios, mut q_ratios, mut std_t, mut vfs_t) = (vec![], vec![], vec![], vec![]);
    for _ in 0..ROUNDS {
        let s = round(&std_op);
        let v = round(&vfs_op);
        let q = round(&quota_op);
        ratios.push(v.as_secs_f64() / s.as_secs_f64());
        q_ratios.push(q.as_secs_f64() / s.as_secs_f64());
        std_t.push(s.as_secs_f64() / OPS as f64 * 1e6);
        vfs_t.push(v.as_secs_f64() / OPS as f64 * 1e6);
    }
    println!(
        "4 KiB write+read: std::fs {:.2} us/op, VolumeFs {:.2} us/op (median of {ROUNDS} rounds x {OPS})",
        median(std_t),
        median(vfs_t)
    );
    println!(
        "4 KiB write+read: VolumeFs/std time ratio median {:.2}x (target <= 2x); with quota budget {:.2}x",
        median(ratios),
        median(q_ratios)
    );
}

/// A small deterministic generator so file contents are not all zeros.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// About `total` bytes: half in 32 MiB files, a quarter in 128 KiB files,
/// a quarter in 1-16 KiB files, over nested directories, plus symlinks.
fn make_tree(root: &Path, total: u64) -> (u64, u64) {
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let mut buf = vec![0u8; 32 << 20];
    rng.fill(&mut buf);
    let (mut files, mut bytes) = (0u64, 0u64);
    let mut write = |rel: String, len: usize, rng: &mut Rng| {
        let p = root.join(&rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let off = (rng.next() % 4096) as usize;
        std::fs::write(&p, &buf[off..off + len.min(buf.len() - off)]).unwrap();
        files += 1;
        bytes += len as u64;
    };
    let mut i = 0;
    while (i as u64) * (32 << 20) < total / 2 {
        write(format!("big/{i}.bin"), (32 << 20) - 4096, &mut rng);
        i += 1;
    }
    let quarter = total / 4;
    let mut done = 0;
    i = 0;
    while done < quarter {
        write(format!("mid/{}/{i}.dat", i % 16), 128 << 10, &mut rng);
        done += 128 << 10;
        i += 1;
    }
    done = 0;
    i = 0;
    while done < quarter {
        let len = 1024 + (rng.next() % (15 * 1024)) as usize;
        write(format!("small/{}/{}/{i}.txt", i % 32, i % 7), len, &mut rng);
        done += len as u64;
        i += 1;
    }
    for j in 0..100 {
        std::os::unix::fs::symlink(format!("../mid/{j}"), root.join(format!("big/link{j}")))
            .unwrap();
    }
    (files, bytes)
}

fn time(f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

fn sync() {
    rustix::fs::sync();
}

fn run(cmd: &mut Command) {
    let st = cmd.status().unwrap();
    assert!(st.success(), "{cmd:?} failed");
}

fn archive_bench(dir: &Path, size_mib: u64) {
    if !Command::new("tar")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("GNU tar"))
    {
        println!("export/import: skipped, GNU tar not installed");
        return;
    }
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let (files, bytes) = make_tree(&src, size_mib << 20);
    println!(
        "export/import data: {files} files, {:.0} MiB, 100 symlinks",
        bytes as f64 / 1048576.0
    );
    let fs_src = VolumeFs::open(&src).unwrap();
    let (ours_tar, gnu_tar) = (dir.join("ours.tar"), dir.join("gnu.tar"));
    let mut export = (vec![], vec![]);
    let mut import = (vec![], vec![]);
    for round in 0..3 {
        for p in [&ours_tar, &gnu_tar] {
            let _ = std::fs::remove_file(p);
        }
        sync();
        export.0.push(time(|| {
            let out = std::fs::File::create(&ours_tar).unwrap();
            archive::export(&fs_src, out, &mut |_| {}).unwrap();
        }));
        sync();
        export.1.push(time(|| {
            run(Command::new("tar")
                .arg("-cf")
                .arg(&gnu_tar)
                .arg("-C")
                .arg(&src)
                .arg("."));
        }));
        let (d1, d2) = (
            dir.join(format!("dst-ours-{round}")),
            dir.join(format!("dst-gnu-{round}")),
        );
        std::fs::create_dir_all(&d1).unwrap();
        std::fs::create_dir_all(&d2).unwrap();
        sync();
        let fs_dst = VolumeFs::open(&d1).unwrap();
        import.0.push(time(|| {
            let input = std::fs::File::open(&ours_tar).unwrap();
            archive::import(&fs_dst, input, &mut |_| {}).unwrap();
        }));
        sync();
        import.1.push(time(|| {
            run(Command::new("tar")
                .arg("-xf")
                .arg(&gnu_tar)
                .arg("-C")
                .arg(&d2));
        }));
        sync();
        std::fs::remove_dir_all(&d1).unwrap();
        std::fs::remove_dir_all(&d2).unwrap();
    }
    let secs = |v: &Vec<Duration>| median(v.iter().map(Duration::as_secs_f64).collect());
    let mib = bytes as f64 / 1048576.0;
    let (eo, eg, io, ig) = (
        secs(&export.0),
        secs(&export.1),
        secs(&import.0),
        secs(&import.1),
    );
    println!(
        "export: msb {eo:.2}s ({:.0} MiB/s), GNU tar -cf {eg:.2}s ({:.0} MiB/s): speed ratio {:.2}x (target >= 0.5x)",
        mib / eo,
        mib / eg,
        eg / eo
    );
    println!(
        "import: msb {io:.2}s ({:.0} MiB/s), GNU tar -xf {ig:.2}s ({:.0} MiB/s): speed ratio {:.2}x (target >= 0.5x)",
        mib / io,
        mib / ig,
        ig / io
    );
    println!(
        "export+import: msb {:.2}s, GNU tar {:.2}s: speed ratio {:.2}x (medians of 3)",
        eo + io,
        eg + ig,
        (eg + ig) / (eo + io)
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut size_mib = 1024;
    let mut base: Option<PathBuf> = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--size-mib" => size_mib = args.next().unwrap().parse().unwrap(),
            "--dir" => base = Some(args.next().unwrap().into()),
            // cargo bench passes --bench.
            _ => {}
        }
    }
    let tmp = match &base {
        Some(b) => tempfile::tempdir_in(b).unwrap(),
        None => tempfile::tempdir_in("/var/tmp").unwrap(),
    };
    println!("bench dir: {}", tmp.path().display());
    small_io(tmp.path());
    archive_bench(tmp.path(), size_mib);
}
