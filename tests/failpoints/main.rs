//! Crash tests at fail points (built with `--features failpoints`, run by scripts/test.sh):
//! tlogd is armed through `FAILPOINTS` to abort at the backend write, the store sync or the
//! epoch write after a number of passes, mid-import; it is started again without the fail
//! point, the client's reconnect and resend finish the import, and the restore is exact. A
//! fail point on the directory fsync shows that the epoch write includes it.

#[path = "../common/mod.rs"]
mod common;
use common::*;
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Imports an image with tlogd armed with `failpoints`; it must abort there; restarted clean,
/// the import completes and the restore equals the image.
fn crash_at(name: &str, failpoints: &str) {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let img = d.path().join("a.raw");
    mixed_image(&img, 16, 21);
    // Small aggregations: many writes before the import ends, so the crash falls mid-stream.
    let cfg = d.path().join("t.toml");
    std::fs::write(&cfg, "[flush]\nflush_size = 64\n").unwrap();
    let mut t = Tlogd::start_env(&data, Some(&cfg), free_port(), &[("FAILPOINTS", failpoints)]);
    let imp = Command::new(tlog_bin())
        .args(["import", "--reconnect-timeout", "60", "--server", &t.addr(), "--vdisk", "fp"])
        .arg(&img)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let st = t.wait_exit(Duration::from_secs(60)).unwrap_or_else(|| panic!("{name}: tlogd did not reach the fail point: {}", t.log_text()));
    assert_eq!(st.signal(), Some(6), "{name}: tlogd should have aborted at the fail point ({st:?})");
    t.env.clear();
    t.restart();
    let out = imp.wait_with_output().unwrap();
    assert_ok(&out, &format!("{name}: import across the crash"));
    t.stop();
    let r = d.path().join("r.img");
    assert_ok(&restore(Some(&cfg), &data, "fp", &r), "restore");
    assert_same(&img, &r);
}

#[test]
fn crash_at_the_backend_write() {
    crash_at("backend::put_batch", "backend::put_batch=60*off->return(abort)");
}

#[test]
fn crash_at_the_store_sync() {
    crash_at("store::sync", "store::sync=45*off->return(abort)");
}

#[test]
fn crash_at_the_epoch_write_of_a_takeover() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let (a, b) = (d.path().join("a.raw"), d.path().join("b.raw"));
    mixed_image(&a, 4, 1);
    mixed_image(&b, 4, 2);
    let mut t = Tlogd::start_env(&data, None, free_port(), &[("FAILPOINTS", "flush::persist_epoch=1*off->return(abort)")]);
    assert_ok(&import(&t.addr(), "fp", &a), "first import (first epoch)");
    let imp = Command::new(tlog_bin())
        .args(["import", "--reconnect-timeout", "60", "--server", &t.addr(), "--vdisk", "fp"])
        .arg(&b)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let st = t.wait_exit(Duration::from_secs(30)).expect("tlogd aborts at the second epoch write");
    assert_eq!(st.signal(), Some(6), "{st:?}");
    t.env.clear();
    t.restart();
    assert_ok(&imp.wait_with_output().unwrap(), "second import across the crash");
    t.stop();
    let r = d.path().join("r.img");
    assert_ok(&restore(None, &data, "fp", &r), "restore");
    assert_same(&b, &r);
}

/// The epoch is written with the one durable-file helper: write, fsync, rename and an fsync of
/// the directory (without it a power cut can bring back an older epoch). A failure of that last
/// step fails the attach instead of answering with an epoch that may not last.
#[test]
fn the_epoch_write_fsyncs_its_directory() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let port = free_port();
    let mut t = Tlogd::start(&data, None, port);
    t.stop();
    let t = Tlogd::start_env(&data, None, port, &[("FAILPOINTS", "fs::sync_dir=return(error)")]);
    let mut s = std::net::TcpStream::connect(t.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&tlog::wire::encode_handshake_request(&tlog::wire::HandshakeRequest {
        version: tlog::wire::PROTOCOL_VERSION,
        vdisk_id: "ep".into(),
        first_sequence: 1,
        token: String::new(),
        reset_first_sequence: false,
        resume_epoch: 0,
        kind: Default::default(),
    }))
    .unwrap();
    let mut dec = tlog::wire::FrameDecoder::new(1 << 20);
    let mut buf = [0u8; 4096];
    let f = loop {
        if let Some(f) = dec.next_frame().unwrap() {
            break f;
        }
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        dec.push(&buf[..n]);
    };
    let r = tlog::wire::decode_handshake_response(&f).unwrap();
    assert_eq!(r.status, tlog::wire::HandshakeStatus::InternalError, "{r:?}");
    assert!(r.message.contains("epoch"), "{}", r.message);
}
