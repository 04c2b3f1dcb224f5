//! In-process API: median time of `VolumeStore::create` of a directory volume
//! (store already open), and of `get`. Run with `cargo bench -p msb --bench api_create`.

use std::time::{Duration, Instant};

use msb::VolumeStore;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let home = tempfile::tempdir_in("/var/tmp").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = VolumeStore::open(home.path()).unwrap();
        let (mut create, mut get) = (Vec::new(), Vec::new());
        for i in 0..500 {
            let config = store.builder(format!("v{i}")).build().unwrap();
            let t = Instant::now();
            store.create(config).await.unwrap();
            create.push(t.elapsed());
            let t = Instant::now();
            store.get(&format!("v{i}")).await.unwrap();
            get.push(t.elapsed());
        }
        println!(
            "create (dir) median: {:?} over {} runs",
            median(create),
            500
        );
        println!("get median:          {:?} over {} runs", median(get), 500);
    });
}
