//! Metrics and status (DESIGN.md §15): `/metrics` on `server.metrics_listen` passes
//! `promtool check metrics`; after an import the vdisk's flushed-bytes counter equals the
//! image's non-zero bytes (zero blocks go as write_zeroes, which count nothing); `tlog status`
//! shows the vdisk and the backends; a stopped redis-server shows as degraded.

mod common;
use common::*;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `GET /metrics` on 127.0.0.1:`port`: (status line, body).
fn scrape(port: u16) -> (String, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    let (head, body) = r.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap_or("").to_string(), body.to_string())
}

fn value(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(series).and_then(|r| r.trim().parse().ok()))
}

fn promtool_ok(body: &str) {
    let mut c = Command::new("promtool").args(["check", "metrics"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    c.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success(), "promtool check metrics: {}{}\n{body}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
}

#[test]
fn metrics_count_what_was_flushed_and_show_a_stopped_redis_as_degraded() {
    if !have("promtool") {
        skip("promtool missing (apt-get install prometheus)");
        return;
    }
    if !have("redis-server") {
        skip("redis-server missing");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let redis = Redis::start(6, d.path());
    let data = d.path().join("data");
    let mport = free_port();
    let cfg = d.path().join("tlogd.toml");
    let conf = redis.config(&data, 4, 2).replacen("[server]\n", &format!("[server]\nmetrics_listen = \"127.0.0.1:{mport}\"\n"), 1)
        + "[upkeep]\nscrub_interval = \"2s\"\n";
    std::fs::write(&cfg, conf).unwrap();
    let t = Tlogd::start(&data, Some(&cfg), free_port());
    let img = d.path().join("a.raw");
    mixed_image(&img, 12, 3);
    assert_ok(&import(&t.addr(), "mv", &img), "import");
    let bytes = std::fs::read(&img).unwrap();
    let nonzero: u64 = bytes.chunks(4096).filter(|c| c.iter().any(|b| *b != 0)).map(|c| c.len() as u64).sum();
    let (status, body) = scrape(mport);
    assert!(status.contains("200"), "{status}");
    promtool_ok(&body);
    assert_eq!(value(&body, "tlog_vdisk_flushed_bytes_total{vdisk=\"mv\"}"), Some(nonzero as f64), "{body}");
    assert_eq!(value(&body, "tlog_vdisk_received_blocks_total{vdisk=\"mv\"}"), value(&body, "tlog_vdisk_flushed_blocks_total{vdisk=\"mv\"}"));
    assert_eq!(value(&body, "tlog_vdisk_buffered_bytes{vdisk=\"mv\"}"), Some(0.0));
    assert!(body.contains("tlog_flush_latency_seconds_count") && body.contains("tlog_backend_write_latency_seconds_bucket{backend="), "{body}");
    let o = run(Command::new(tlog_bin()).args(["status", "--server", &t.addr(), "--interval-ms", "100", "--json"]));
    assert_ok(&o, "tlog status --json");
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let v = j["vdisks"].as_array().unwrap().iter().find(|v| v["name"] == "mv").cloned().unwrap();
    assert_eq!(v["flushed_bytes"].as_u64(), Some(nonzero));
    assert_eq!(j["backends"].as_array().unwrap().len(), 6);
    let url = format!("http://127.0.0.1:{mport}/metrics");
    let o = run(Command::new(tlog_bin()).args(["status", "--metrics", &url, "--interval-ms", "100", "--json"]));
    assert_ok(&o, "tlog status --metrics --json");
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let v = j["vdisks"].as_array().unwrap().iter().find(|v| v["name"] == "mv").cloned().unwrap_or_default();
    assert_eq!((v["flushed_bytes"].as_u64(), j["backends"].as_array().map(|b| b.len())), (Some(nonzero), Some(6)), "{j}");
    let o = run(Command::new(tlog_bin()).args(["status", "--server", &t.addr(), "--interval-ms", "100"]));
    assert_ok(&o, "tlog status");
    assert!(text(&o).contains("mv") && text(&o).contains("redis 127.0.0.1"), "{}", text(&o));

    // A replication follows the vdisk: one playback, caught up (lag 0); gone when it stops.
    let standby = d.path().join("standby.raw");
    let mut rep = Command::new(tlog_bin())
        .args(["replicate", "--server", &t.addr(), "--vdisk", "mv", "--output", standby.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = scrape(mport);
        if value(&body, "tlog_playbacks{vdisk=\"mv\"}") == Some(1.0) && value(&body, "tlog_playback_lag_blocks{vdisk=\"mv\"}") == Some(0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "no caught-up playback of mv: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = rep.kill();
    let _ = rep.wait();
    let deadline = Instant::now() + Duration::from_secs(20);
    while value(&scrape(mport).1, "tlog_playbacks{vdisk=\"mv\"}").is_some() {
        assert!(Instant::now() < deadline, "the playback record outlived its client");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The scheduled scrub (every 2 s here) reports its passes.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = scrape(mport);
        if value(&body, "tlog_scrub_passes_total").unwrap_or(0.0) >= 1.0 {
            assert!(value(&body, "tlog_scrub_last_aggregations").unwrap_or(0.0) >= 1.0, "{body}");
            assert_eq!(value(&body, "tlog_scrub_last_unrepaired"), Some(0.0));
            break;
        }
        assert!(Instant::now() < deadline, "no scrub pass in the metrics: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // A stopped redis-server: its writes fail and it shows as degraded.
    redis.signal(2, "STOP");
    let img2 = d.path().join("b.raw");
    mixed_image(&img2, 2, 4);
    assert_ok(&import(&t.addr(), "mv2", &img2), "import with a backend stopped");
    let series = format!("tlog_backend_degraded{{backend=\"redis 127.0.0.1:{}\"}}", redis.ports[2]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = scrape(mport);
        if value(&body, &series) == Some(1.0) {
            promtool_ok(&body);
            assert!(value(&body, "tlog_backend_errors_total{backend=\"redis 127.0.0.1:").is_none());
            break;
        }
        assert!(Instant::now() < deadline, "{series} not 1: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let o = run(Command::new(tlog_bin()).args(["status", "--server", &t.addr(), "--interval-ms", "100"]));
    assert!(text(&o).contains("DEGRADED"), "{}", text(&o));
    redis.signal(2, "CONT");
}

/// `server.metrics_listen = ""` turns the endpoint off, and an address in use leaves tlogd
/// running without it.
#[test]
fn metrics_off_or_address_in_use_keeps_tlogd_running() {
    let d = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let cfg = d.path().join("tlogd.toml");
    std::fs::write(&cfg, format!("[server]\nmetrics_listen = \"127.0.0.1:{port}\"\n")).unwrap();
    let t = Tlogd::start(&d.path().join("data"), Some(&cfg), free_port());
    let img = d.path().join("a.raw");
    mixed_image(&img, 1, 1);
    assert_ok(&import(&t.addr(), "x", &img), "import with metrics unavailable");
    assert!(t.log_text().contains("metrics are off"), "{}", t.log_text());
    std::fs::write(&cfg, "[server]\nmetrics_listen = \"\"\n").unwrap();
    let t2 = Tlogd::start(&d.path().join("data2"), Some(&cfg), free_port());
    assert_ok(&import(&t2.addr(), "x", &img), "import with metrics off");
    assert!(!t2.log_text().contains("metrics at"), "{}", t2.log_text());
}
