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

/// The cleaner's config: a 2 s window, small aggregations (many chunks per base), small store
/// segments (compaction has segments to free).
fn retention_config(d: &std::path::Path, retention: &str) -> std::path::PathBuf {
    let cfg = d.join(format!("retention-{retention}.toml"));
    std::fs::write(
        &cfg,
        format!("[flush]\nflush_size = 128\n[history]\nretention = \"{retention}\"\nclean_interval = \"300ms\"\n[backend.local]\nsegment_bytes = 1048576\nindex_capacity = 1024\n"),
    )
    .unwrap();
    cfg
}

/// Four images with a checkpoint after each into vdisk `v` of a tlogd armed with `failpoints`
/// (or killed `kill_after` after the imports, when given); it must die while the cleaner
/// folds, deletes or compacts. Restarted (the cleaner still on, nothing new to fold), every
/// checkpoint inside the window restores exactly (`all_kept`: every one must), later ones
/// fail only with the oldest restorable point named, the head always restores, a new import
/// restores, and every store directory verifies clean. Returns tlogd's log.
fn retention_crash(name: &str, failpoints: &str, kill_after: Option<Duration>, all_kept: bool) -> String {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let imgs: Vec<_> = (0..5)
        .map(|i| {
            let p = d.path().join(format!("i{i}.raw"));
            mixed_image(&p, 4, 40 + i);
            p
        })
        .collect();
    let env: Vec<(&str, &str)> = if failpoints.is_empty() { Vec::new() } else { vec![("FAILPOINTS", failpoints)] };
    let mut t = Tlogd::start_env(&data, Some(&retention_config(d.path(), "2s")), free_port(), &env);
    for (i, img) in imgs[..4].iter().enumerate() {
        assert_ok(&import(&t.addr(), "v", img), "import");
        assert_ok(&run(Command::new(tlog_bin()).args(["checkpoint", "--server", &t.addr(), "--vdisk", "v", &format!("c{i}")])), "checkpoint");
    }
    match kill_after {
        Some(after) => {
            std::thread::sleep(after);
            t.kill9();
        }
        None => {
            let st = t.wait_exit(Duration::from_secs(60)).unwrap_or_else(|| panic!("{name}: tlogd did not reach the fail point: {}", t.log_text()));
            assert_eq!(st.signal(), Some(6), "{name}: tlogd should have aborted at the fail point ({st:?})");
        }
    }
    t.env.clear();
    t.config = Some(retention_config(d.path(), "1h"));
    t.restart();
    // A few cleaner passes: the interrupted run is finished or removed.
    std::thread::sleep(Duration::from_millis(1500));
    let restore_at = |point: &[&str], tag: &str| {
        let out = d.path().join(format!("{tag}.img"));
        let addr = t.addr();
        let mut args = vec!["restore", "--server", &addr, "--vdisk", "v", "--output", out.to_str().unwrap()];
        args.extend_from_slice(point);
        (run(Command::new(tlog_bin()).args(&args)), out)
    };
    for (i, img) in imgs[..4].iter().enumerate() {
        let (o, out) = restore_at(&["--checkpoint", &format!("c{i}")], &format!("c{i}"));
        if o.status.success() {
            assert_same(&out, img);
        } else {
            let e = String::from_utf8_lossy(&o.stderr).to_string();
            assert!(!all_kept && i < 3, "{name}: checkpoint c{i} must restore: {e}");
            assert!(e.contains("oldest restorable point"), "{name}: c{i}: {e}");
        }
    }
    assert_ok(&import(&t.addr(), "v", &imgs[4]), "import after the restart");
    let (o, out) = restore_at(&[], "head");
    assert_ok(&o, "restore the head");
    assert_same(&out, &imgs[4]);
    let (o, out) = restore_at(&["--checkpoint", "c3"], "c3-again");
    assert_ok(&o, "restore c3 after the new import");
    assert_same(&out, &imgs[3]);
    t.stop();
    for i in 0..6 {
        let dir = data.join("store").join(i.to_string());
        assert_ok(&run(Command::new(tlog_bin()).args(["store", "verify", dir.to_str().unwrap()])), &format!("{name}: tlog store verify"));
    }
    t.log_text()
}

#[test]
fn crash_while_folding_the_first_chunk() {
    let log = retention_crash("fold_chunk", "history::fold_chunk=return(abort)", None, true);
    assert!(log.contains("an interrupted fold was rolled back"), "{log}");
}

#[test]
fn crash_while_folding_later_chunks() {
    let log = retention_crash("fold_chunk", "history::fold_chunk=3*off->return(abort)", None, true);
    assert!(log.contains("an interrupted fold was rolled back"), "{log}");
}

#[test]
fn crash_before_the_fold_commits() {
    let log = retention_crash("fold_commit", "history::fold_commit=return(abort)", None, true);
    assert!(log.contains("an interrupted fold was rolled back"), "{log}");
}

#[test]
fn crash_while_deleting_folded_history() {
    let log = retention_crash("gc", "history::gc=return(abort)", None, false);
    assert!(log.contains("folded history deleted"), "the next run deletes what the crash left: {log}");
}

#[test]
fn crash_while_compacting_before_the_key_map_is_saved() {
    retention_crash("compact_copied", "store::compact_copied=return(abort)", None, false);
}

#[test]
fn crash_while_compacting_before_the_segment_is_freed() {
    retention_crash("compact", "store::compact=2*off->return(abort)", None, false);
}

#[test]
fn timed_kills_while_the_cleaner_runs() {
    for ms in [2200, 2450, 2700] {
        retention_crash(&format!("kill after {ms} ms"), "", Some(Duration::from_millis(ms)), false);
    }
}
