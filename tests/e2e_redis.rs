//! Acceptance: k=4, m=2 on six real redis-server processes; import a real ext4 image; the
//! restore runs with two of the servers stopped and is byte-identical.

mod common;
use common::*;

#[test]
fn ext4_image_roundtrip_redis_with_two_down() {
    if !have("redis-server") {
        skip("redis-server missing (apt-get install redis-server)");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let Some(img) = ext4_image(&d.path().join("disk.img"), 64) else { return };
    let mut redis = Redis::start(6, d.path());
    let data = d.path().join("data");
    let cfg = d.path().join("tlogd.toml");
    std::fs::write(&cfg, redis.config(&data, 4, 2)).unwrap();
    let mut t = Tlogd::start(&data, Some(&cfg), free_port());
    assert_ok(&import(&t.addr(), "rvd", &img), "tlog import");
    t.stop();
    redis.stop(0);
    redis.stop(5);
    let out = d.path().join("restored.img");
    assert_ok(&restore(Some(&cfg), &data, "rvd", &out), "tlog restore with 2 redis down");
    assert_same(&img, &out);
    assert_fsck(&out);
}
