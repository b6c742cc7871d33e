//! Running as a service (DESIGN.md §15): `config/tlogd.service` passes `systemd-analyze verify`
//! (with the unit's binary path pointed at the built tlogd when none is installed there), its
//! `ExecStartPre` (`tlogd --check-config` on the shipped config) succeeds, SIGTERM stops tlogd
//! cleanly after a flush, and `TLOG_LOG_FORMAT=json` makes every log line a JSON object.

mod common;
use common::*;
use std::process::Command;

#[test]
fn the_unit_verifies_and_its_start_check_passes() {
    if !have("systemd-analyze") {
        skip("systemd-analyze missing (apt-get install systemd)");
        return;
    }
    let unit = repo().join("config/tlogd.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    for want in [
        "ProtectSystem=strict",
        "ReadWritePaths=",
        "NoNewPrivileges=yes",
        "ExecStartPre=/usr/local/bin/tlogd --config /etc/tlog/tlogd.toml --check-config",
        "KillSignal=SIGTERM",
    ] {
        assert!(text.contains(want), "the unit lacks {want}");
    }
    let d = tempfile::tempdir().unwrap();
    let path = if std::path::Path::new("/usr/local/bin/tlogd").exists() {
        unit.clone()
    } else {
        let p = d.path().join("tlogd.service");
        std::fs::write(&p, text.replace("/usr/local/bin/tlogd", tlogd_bin().to_str().unwrap())).unwrap();
        p
    };
    let o = run(Command::new("systemd-analyze").arg("verify").arg(&path));
    assert_ok(&o, "systemd-analyze verify");
    assert!(o.stderr.is_empty(), "systemd-analyze verify warned: {}", String::from_utf8_lossy(&o.stderr));
    // ExecStartPre on the shipped config, from the unit's working directory.
    let o = run(Command::new(tlogd_bin()).arg("--config").arg(repo().join("config/tlogd.toml")).arg("--check-config").current_dir(d.path()));
    assert_ok(&o, "tlogd --check-config on config/tlogd.toml");
}

#[test]
fn json_logs_and_a_clean_stop_on_sigterm() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("tlogd.toml");
    std::fs::write(&cfg, "[server]\nmetrics_listen = \"\"\n").unwrap();
    let mut t = Tlogd::start_env(&d.path().join("data"), Some(&cfg), free_port(), &[("TLOG_LOG_FORMAT", "json")]);
    let img = d.path().join("a.raw");
    mixed_image(&img, 2, 5);
    assert_ok(&import(&t.addr(), "j", &img), "import");
    t.stop();
    let log = t.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| l.starts_with('{')).collect();
    assert!(lines.len() >= 3, "no JSON log lines: {log}");
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string() && v["fields"]["message"].is_string(), "{l}");
    }
    assert!(lines.iter().any(|l| l.contains("stopped")), "no clean stop in the log: {log}");
}
