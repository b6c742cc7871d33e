//! Metrics (DESIGN.md §15): what tlogd is doing, as Prometheus text at `GET /metrics` on
//! `server.metrics_listen` (default `127.0.0.1:9464`, "" turns it off), encoded by the
//! `prometheus` crate (the Prometheus text format 0.0.4, which `promtool check metrics` lints
//! clean) and served by `tiny_http`.
//!
//! Each scrape reads the engine's counters ([`crate::flush::EngineMetrics`]) and latency
//! histograms, and the front-end's open connections; nothing on the write path does more than
//! an atomic add per block and one histogram observation per aggregation and per backend batch.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `tlog_vdisk_received_blocks_total`, `_received_bytes_total` | vdisk | blocks and bytes of data received |
//! | `tlog_vdisk_flushed_blocks_total`, `_flushed_bytes_total` | vdisk | in durable aggregations (bytes of written data; zeroed ranges count nothing) |
//! | `tlog_vdisk_aggregations_total` | vdisk | durable aggregations |
//! | `tlog_vdisk_buffered_bytes` | vdisk | received, not yet flushed |
//! | `tlog_vdisk_unflushed_age_seconds` | vdisk | age of the oldest block not yet flushed (0: none): the RPO a crash would cost |
//! | `tlog_vdisk_last_flushed_sequence`, `tlog_vdisk_epoch`, `tlog_vdisk_attached` | vdisk | the durable head, the writer epoch, a writer attached (1/0) |
//! | `tlog_flush_latency_seconds` | | histogram, seal to write quorum |
//! | `tlog_backend_write_latency_seconds` | backend | histogram, one batch write |
//! | `tlog_backend_errors_total`, `tlog_backend_queued_bytes`, `tlog_backend_degraded` | backend | failed batch writes, bytes queued, degraded (queue past `backend.queue_bytes` or last write failed) |
//! | `tlog_connections` | frontend | connections open |
//! | `tlog_aggregations_flushed_total`, `tlog_write_retries_total`, `tlog_repairs_queued_total`, `tlog_repair_backlog`, `tlog_buffered_bytes` | | engine-wide |
//! | `tlog_playbacks`, `tlog_playback_lag_blocks` | vdisk | playbacks running (follows, replications), and the furthest one's lag in flushed blocks |
//! | `tlog_dpdk_port_{rx,tx}_{packets,bytes}_total`, `_missed_total`, `_{rx,tx}_errors_total`, `_rx_nombuf_total` | port | dpdk mode: the PMD's port counters |
//! | `tlog_dpdk_queue_{rx,tx}_{packets,bytes}_total`, `_tx_drops_total`, `_alloc_failures_total`, `_oversize_drops_total` | queue | dpdk mode: each poll loop's |
//! | `tlog_scrub_passes_total`, `tlog_scrub_findings_total`, `tlog_scrub_last_aggregations`, `tlog_scrub_last_unrepaired`, `tlog_scrub_last_completed_timestamp_seconds` | | the scheduled scrub's progress |

use crate::error::{Error, Result};
use crate::flush::{EngineMetrics, VdiskMetrics};
use prometheus::core::Collector;
use prometheus::{Gauge, GaugeVec, Histogram, IntCounter, IntCounterVec, Opts, Registry};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What one scrape shows.
#[derive(Debug)]
pub struct Snapshot {
    /// The engine's counters.
    pub engine: EngineMetrics,
    /// Seal-to-quorum latency.
    pub flush_latency: Histogram,
    /// Per backend batch write latency (each labelled with its backend).
    pub backend_latency: Vec<Histogram>,
    /// The front-end (`kernel`, `tap`, `dpdk`) and its open connections.
    pub frontend: (String, u64),
    /// In dpdk mode: the port's and each queue's counters.
    pub dpdk: Option<(crate::net::PortCounters, Vec<crate::net::QueueCounters>)>,
}

/// Where a scrape's numbers come from.
pub trait Source: Send + Sync + 'static {
    /// The numbers now.
    fn snapshot(&self) -> Snapshot;
}

fn m(e: prometheus::Error) -> Error {
    Error::Protocol(format!("metrics: {e}"))
}

fn add(r: &Registry, c: impl Collector + 'static) -> Result<()> {
    r.register(Box::new(c)).map_err(m)
}

fn counters(r: &Registry, name: &str, help: &str, label: &str, rows: &[(String, u64)]) -> Result<()> {
    let c = IntCounterVec::new(Opts::new(name, help), &[label]).map_err(m)?;
    for (l, v) in rows {
        c.with_label_values(&[l.as_str()]).inc_by(*v);
    }
    add(r, c)
}

fn gauges(r: &Registry, name: &str, help: &str, label: &str, rows: &[(String, f64)]) -> Result<()> {
    let g = GaugeVec::new(Opts::new(name, help), &[label]).map_err(m)?;
    for (l, v) in rows {
        g.with_label_values(&[l.as_str()]).set(*v);
    }
    add(r, g)
}

fn per_vdisk<T>(vs: &[VdiskMetrics], f: impl Fn(&VdiskMetrics) -> T) -> Vec<(String, T)> {
    vs.iter().map(|v| (v.name.clone(), f(v))).collect()
}

/// The metrics text (Prometheus text format 0.0.4) of `s`. Errors: encoding (not expected).
pub fn render(s: &Snapshot) -> Result<String> {
    let r = Registry::new();
    let vs = &s.engine.vdisks;
    counters(&r, "tlog_vdisk_received_blocks_total", "Blocks received.", "vdisk", &per_vdisk(vs, |v| v.received_blocks))?;
    counters(&r, "tlog_vdisk_received_bytes_total", "Bytes of block data received.", "vdisk", &per_vdisk(vs, |v| v.received_bytes))?;
    counters(&r, "tlog_vdisk_flushed_blocks_total", "Blocks in durable aggregations.", "vdisk", &per_vdisk(vs, |v| v.flushed_blocks))?;
    counters(&r, "tlog_vdisk_flushed_bytes_total", "Bytes of written data in durable aggregations.", "vdisk", &per_vdisk(vs, |v| v.flushed_bytes))?;
    counters(&r, "tlog_vdisk_aggregations_total", "Durable aggregations.", "vdisk", &per_vdisk(vs, |v| v.aggregations))?;
    gauges(&r, "tlog_vdisk_buffered_bytes", "Bytes received and not yet flushed.", "vdisk", &per_vdisk(vs, |v| v.buffered_bytes as f64))?;
    gauges(&r, "tlog_vdisk_unflushed_age_seconds", "Age of the oldest block not yet flushed (0: none).", "vdisk", &per_vdisk(vs, |v| v.unflushed_age_seconds))?;
    let last = per_vdisk(vs, |v| v.last_flushed.map(|l| l as f64).unwrap_or(-1.0));
    gauges(&r, "tlog_vdisk_last_flushed_sequence", "The last flushed sequence (-1: none).", "vdisk", &last)?;
    gauges(&r, "tlog_vdisk_epoch", "The writer epoch.", "vdisk", &per_vdisk(vs, |v| v.epoch as f64))?;
    gauges(&r, "tlog_vdisk_attached", "A writer is attached (1) or not (0).", "vdisk", &per_vdisk(vs, |v| if v.attached { 1.0 } else { 0.0 }))?;
    add(&r, s.flush_latency.clone())?;
    // The backends' histograms share one family: their descriptors differ only in the label.
    for h in &s.backend_latency {
        add(&r, h.clone())?;
    }
    let bs = &s.engine.backends;
    counters(
        &r,
        "tlog_backend_errors_total",
        "Batch writes to the backend that failed.",
        "backend",
        &bs.iter().map(|b| (b.name.clone(), b.errors)).collect::<Vec<_>>(),
    )?;
    gauges(
        &r,
        "tlog_backend_queued_bytes",
        "Bytes of shards queued for the backend.",
        "backend",
        &bs.iter().map(|b| (b.name.clone(), b.queued_bytes as f64)).collect::<Vec<_>>(),
    )?;
    let degraded: Vec<(String, f64)> = bs.iter().map(|b| (b.name.clone(), if b.degraded { 1.0 } else { 0.0 })).collect();
    gauges(&r, "tlog_backend_degraded", "The backend is degraded: its queue passed backend.queue_bytes or its last write failed.", "backend", &degraded)?;
    gauges(&r, "tlog_connections", "Connections open.", "frontend", &[(s.frontend.0.clone(), s.frontend.1 as f64)])?;
    let en = &s.engine;
    for (name, help, v) in [
        ("tlog_aggregations_flushed_total", "Aggregations acknowledged flushed.", en.flushed_aggregations),
        ("tlog_write_retries_total", "Shard writes retried because the write quorum was not reached.", en.retries),
        ("tlog_repairs_queued_total", "Shards recorded for repair.", en.repairs_queued),
    ] {
        let c = IntCounter::new(name, help).map_err(m)?;
        c.inc_by(v);
        add(&r, c)?;
    }
    let pb: Vec<(String, f64)> = en.playbacks.iter().map(|(v, n, _)| (v.clone(), *n as f64)).collect();
    gauges(&r, "tlog_playbacks", "Playbacks running (follows and replications among them).", "vdisk", &pb)?;
    let lag: Vec<(String, f64)> = en.playbacks.iter().map(|(v, _, b)| (v.clone(), *b as f64)).collect();
    gauges(&r, "tlog_playback_lag_blocks", "Flushed blocks the furthest-behind playback of the vdisk has yet to stream (a replication's lag).", "vdisk", &lag)?;
    let (passes, aggs, found, unrepaired, at) = en.scrub;
    for (name, help, v) in
        [("tlog_scrub_passes_total", "Scheduled scrub passes completed.", passes), ("tlog_scrub_findings_total", "Problems the scrub passes found.", found)]
    {
        let c = IntCounter::new(name, help).map_err(m)?;
        c.inc_by(v);
        add(&r, c)?;
    }
    for (name, help, v) in [
        ("tlog_repair_backlog", "Shards waiting for repair.", en.repair_backlog),
        ("tlog_buffered_bytes", "Bytes buffered by all vdisks.", en.buffered_bytes),
        ("tlog_scrub_last_aggregations", "Aggregations the last scrub pass checked.", aggs),
        ("tlog_scrub_last_unrepaired", "Problems the last scrub pass could not repair.", unrepaired),
        ("tlog_scrub_last_completed_timestamp_seconds", "When the last scrub pass ended (0: none yet).", at),
    ] {
        let g = Gauge::new(name, help).map_err(m)?;
        g.set(v as f64);
        add(&r, g)?;
    }
    if let Some((p, qs)) = &s.dpdk {
        let name = p.port.to_string();
        let one = |v: u64| -> Vec<(String, u64)> { vec![(name.clone(), v)] };
        for (name, help, v) in [
            ("tlog_dpdk_port_rx_packets_total", "Frames the DPDK port received.", p.rx_packets),
            ("tlog_dpdk_port_rx_bytes_total", "Bytes the DPDK port received.", p.rx_bytes),
            ("tlog_dpdk_port_tx_packets_total", "Frames the DPDK port sent.", p.tx_packets),
            ("tlog_dpdk_port_tx_bytes_total", "Bytes the DPDK port sent.", p.tx_bytes),
            ("tlog_dpdk_port_missed_total", "Frames the DPDK port dropped for want of room on a receive queue.", p.missed),
            ("tlog_dpdk_port_rx_errors_total", "Receive errors of the DPDK port.", p.rx_errors),
            ("tlog_dpdk_port_tx_errors_total", "Transmit errors of the DPDK port.", p.tx_errors),
            ("tlog_dpdk_port_rx_nombuf_total", "Receive mbuf allocation failures of the DPDK port.", p.rx_nombuf),
        ] {
            counters(&r, name, help, "port", &one(v))?;
        }
        let per_q =
            |f: &dyn Fn(&crate::net::QueueCounters) -> u64| -> Vec<(String, u64)> { qs.iter().enumerate().map(|(i, q)| (i.to_string(), f(q))).collect() };
        counters(&r, "tlog_dpdk_queue_rx_packets_total", "Frames a DPDK queue received.", "queue", &per_q(&|q| q.rx_packets))?;
        counters(&r, "tlog_dpdk_queue_rx_bytes_total", "Bytes a DPDK queue received.", "queue", &per_q(&|q| q.rx_bytes))?;
        counters(&r, "tlog_dpdk_queue_tx_packets_total", "Frames a DPDK queue sent.", "queue", &per_q(&|q| q.tx_packets))?;
        counters(&r, "tlog_dpdk_queue_tx_bytes_total", "Bytes a DPDK queue sent.", "queue", &per_q(&|q| q.tx_bytes))?;
        counters(&r, "tlog_dpdk_queue_tx_drops_total", "Frames a DPDK queue's port did not take.", "queue", &per_q(&|q| q.tx_drops))?;
        counters(&r, "tlog_dpdk_queue_alloc_failures_total", "Transmit mbuf allocation failures of a DPDK queue.", "queue", &per_q(&|q| q.alloc_failures))?;
        counters(
            &r,
            "tlog_dpdk_queue_oversize_drops_total",
            "Frames longer than the MTU a DPDK queue could not segment.",
            "queue",
            &per_q(&|q| q.oversize_drops),
        )?;
    }
    prometheus::TextEncoder::new().encode_to_string(&r.gather()).map_err(m)
}

/// What `tlog status --metrics URL` shows: `GET` of a tlogd's `/metrics` (`http://HOST:PORT/PATH`,
/// 10 s bound), read back into the JSON shape of the `status` control answer (vdisks, backends,
/// engine-wide numbers). Errors: a bad URL, the server unreachable or not answering 200, text
/// that is not this module's.
pub fn status_from_url(url: &str) -> Result<serde_json::Value> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").ok_or_else(|| Error::InvalidArgument(format!("--metrics {url}: an http:// URL")))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/metrics"),
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(host)
        .map_err(|e| Error::io(format!("resolve {host}"), e))?
        .next()
        .ok_or_else(|| Error::NotFound(format!("address {host}")))?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10)).map_err(|e| Error::io(format!("connect to {host}"), e))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| Error::io("set read timeout", e))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes()).map_err(|e| Error::io(format!("send to {host}"), e))?;
    let mut r = String::new();
    s.read_to_string(&mut r).map_err(|e| Error::io(format!("read from {host}"), e))?;
    let (head, body) = r.split_once("\r\n\r\n").ok_or_else(|| Error::Protocol(format!("{url}: not an HTTP answer")))?;
    if !head.lines().next().unwrap_or("").contains(" 200") {
        return Err(Error::Protocol(format!("{url}: {}", head.lines().next().unwrap_or(""))));
    }
    Ok(parse_status(body))
}

/// The `status` JSON shape from metrics text (series this module renders).
fn parse_status(body: &str) -> serde_json::Value {
    use std::collections::BTreeMap;
    let mut vd: BTreeMap<String, serde_json::Map<String, serde_json::Value>> = BTreeMap::new();
    let mut be: BTreeMap<String, serde_json::Map<String, serde_json::Value>> = BTreeMap::new();
    let mut top = serde_json::Map::new();
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Ok(v) = value.parse::<f64>() else { continue };
        let (name, label) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}').split_once("=\"").map(|(k, v)| (k.to_string(), v.trim_end_matches('"').to_string()))),
            None => (series, None),
        };
        let num = |v: f64| serde_json::json!(v as u64);
        match (name, label) {
            (n, Some((k, l))) if k == "vdisk" && n.starts_with("tlog_vdisk_") => {
                let e = vd.entry(l.clone()).or_default();
                e.insert("name".into(), serde_json::json!(l));
                let field = n.trim_start_matches("tlog_vdisk_").trim_end_matches("_total");
                let j = match field {
                    "unflushed_age_seconds" => serde_json::json!(v),
                    "attached" => serde_json::json!(v == 1.0),
                    "last_flushed_sequence" => {
                        e.insert("last_flushed".into(), if v < 0.0 { serde_json::Value::Null } else { num(v) });
                        continue;
                    }
                    _ => num(v),
                };
                e.insert(field.into(), j);
            }
            (n, Some((k, l))) if k == "backend" && !n.ends_with("_bucket") && !n.ends_with("_sum") && !n.ends_with("_count") => {
                let e = be.entry(l.clone()).or_default();
                e.insert("name".into(), serde_json::json!(l));
                match n {
                    "tlog_backend_degraded" => e.insert("degraded".into(), serde_json::json!(v == 1.0)),
                    "tlog_backend_errors_total" => e.insert("errors".into(), num(v)),
                    "tlog_backend_queued_bytes" => e.insert("queued_bytes".into(), num(v)),
                    _ => None,
                };
            }
            ("tlog_aggregations_flushed_total", None) => {
                top.insert("flushed_aggregations".into(), num(v));
            }
            ("tlog_repair_backlog", None) => {
                top.insert("repair_backlog".into(), num(v));
            }
            ("tlog_buffered_bytes", None) => {
                top.insert("buffered_bytes".into(), num(v));
            }
            _ => {}
        }
    }
    top.insert("vdisks".into(), serde_json::Value::Array(vd.into_values().map(serde_json::Value::Object).collect()));
    top.insert("backends".into(), serde_json::Value::Array(be.into_values().map(serde_json::Value::Object).collect()));
    serde_json::Value::Object(top)
}

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `GET /metrics` on `listen` until `stop`, on its own thread; returns the address bound.
/// Errors: the address cannot be bound.
pub fn serve(listen: &str, source: Arc<dyn Source>, stop: Arc<AtomicBool>) -> Result<(String, std::thread::JoinHandle<()>)> {
    let server = tiny_http::Server::http(listen).map_err(|e| Error::io(format!("metrics: listen on {listen}"), std::io::Error::other(e.to_string())))?;
    let addr = server.server_addr().to_ip().map(|a| a.to_string()).unwrap_or_else(|| listen.to_string());
    let h = std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let req = match server.recv_timeout(Duration::from_millis(200)) {
                    Ok(Some(r)) => r,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!("metrics: {e}");
                        std::thread::sleep(Duration::from_millis(200));
                        continue;
                    }
                };
                let path = req.url().split('?').next().unwrap_or("");
                let resp = if *req.method() != tiny_http::Method::Get {
                    tiny_http::Response::from_string("only GET\n").with_status_code(405)
                } else if path == "/metrics" {
                    match render(&source.snapshot()) {
                        Ok(t) => {
                            let mut r = tiny_http::Response::from_string(t);
                            if let Ok(h) = tiny_http::Header::from_bytes("Content-Type", CONTENT_TYPE) {
                                r.add_header(h);
                            }
                            r
                        }
                        Err(e) => tiny_http::Response::from_string(format!("{e}\n")).with_status_code(500),
                    }
                } else {
                    tiny_http::Response::from_string("tlogd metrics are at /metrics\n").with_status_code(404)
                };
                if let Err(e) = req.respond(resp) {
                    tracing::debug!("metrics: reply: {e}");
                }
            }
        })
        .map_err(|e| Error::io("spawn the metrics thread", e))?;
    Ok((addr, h))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flush::{latency_histogram, BackendMetrics};

    #[test]
    fn a_snapshot_renders_every_family_once() {
        let mut engine = EngineMetrics::default();
        engine.vdisks.push(VdiskMetrics { name: "a".into(), flushed_bytes: 4096, ..Default::default() });
        engine.backends = (0..2).map(|i| BackendMetrics { name: format!("local /d/{i}"), degraded: i == 1, ..Default::default() }).collect();
        let s = Snapshot {
            engine,
            flush_latency: crate::flush::Stats::default().flush_latency,
            backend_latency: (0..2)
                .map(|i| {
                    latency_histogram("tlog_backend_write_latency_seconds", "Seconds per batch write to the backend.", &[("backend", &format!("local /d/{i}"))])
                })
                .collect(),
            frontend: ("kernel".into(), 3),
            dpdk: Some((
                crate::net::PortCounters { port: 0, rx_packets: 7, ..Default::default() },
                vec![Default::default(), crate::net::QueueCounters { tx_packets: 5, ..Default::default() }],
            )),
        };
        s.backend_latency[0].observe(0.002);
        let t = render(&s).unwrap();
        assert!(!t.contains("tlog_unnamed"), "a histogram fell back: {t}");
        assert!(t.contains("tlog_vdisk_flushed_bytes_total{vdisk=\"a\"} 4096"), "{t}");
        assert!(t.contains("tlog_backend_degraded{backend=\"local /d/1\"} 1"), "{t}");
        assert!(t.contains("tlog_backend_write_latency_seconds_count{backend=\"local /d/0\"} 1"), "{t}");
        assert!(t.contains("tlog_connections{frontend=\"kernel\"} 3"), "{t}");
        assert_eq!(t.matches("# TYPE tlog_backend_write_latency_seconds histogram").count(), 1, "{t}");
        assert!(t.contains("tlog_dpdk_port_rx_packets_total{port=\"0\"} 7") && t.contains("tlog_dpdk_queue_tx_packets_total{queue=\"1\"} 5"), "{t}");
    }
}
