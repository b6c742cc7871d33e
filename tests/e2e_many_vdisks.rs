//! Acceptance: eight vdisks imported at once through one tlogd, each restored exactly.

mod common;
use common::*;

#[test]
fn eight_vdisks_at_once() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let mut imgs = Vec::new();
    for i in 0..8u64 {
        let p = d.path().join(format!("img{i}.raw"));
        mixed_image(&p, 6 + i as usize, i + 1);
        imgs.push(p);
    }
    let mut t = Tlogd::start(&data, None, free_port());
    let addr = t.addr();
    let hs: Vec<_> = imgs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (a, p) = (addr.clone(), p.clone());
            std::thread::spawn(move || import(&a, &format!("vd{i}"), &p))
        })
        .collect();
    for h in hs {
        assert_ok(&h.join().unwrap(), "concurrent import");
    }
    t.stop();
    for (i, p) in imgs.iter().enumerate() {
        let out = d.path().join(format!("out{i}.raw"));
        assert_ok(&restore(None, &data, &format!("vd{i}"), &out), "restore");
        assert_same(p, &out);
    }
}
