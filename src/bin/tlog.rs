//! tlog: the command-line tool (import, restore, bench, repair, scrub, store inspect/verify/init).

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;
use tlog::client::{Client, ClientConfig, NoticeHandler};
use tlog::config::Config;
use tlog::history::playback::spec;
use tlog::history::points::Point;
use tlog::history::restore::{restore, RestoreOptions};
use tlog::history::scrub::{scrub, ScrubOptions};
use tlog::history::History;
use tlog::seal::Sealer;
use tlog::store::BigLog;
use tlog::wire::{ControlRequest, ControlResponse, PlaybackRequest, PointSpec};

/// tlog command-line tool.
#[derive(Parser, Debug)]
#[command(name = "tlog", version, about)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Where a tool finds the backends and the key: a tlogd configuration and its data directory.
#[derive(clap::Args, Debug, Clone)]
struct Store {
    /// tlogd configuration (backends, key); embedded defaults when absent.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Overrides server.data_dir (where the local store and the key live).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl Store {
    fn load(&self) -> tlog::Result<Config> {
        let mut cfg = match &self.config {
            Some(p) => Config::load(p)?,
            None => Config::default(),
        };
        if let Some(d) = &self.data_dir {
            cfg.server.data_dir = d.clone();
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn sealer(cfg: &Config) -> tlog::Result<Sealer> {
        let (key, _) = tlog::server::load_key(cfg, false)?;
        Sealer::new(key, cfg.flush.k, cfg.flush.m)
    }
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Stream an image file to tlogd as write blocks (all-zero blocks as write_zeroes) and wait
    /// until every block is flushed. The blocks continue the vdisk's history (sequences after
    /// its last flushed one).
    Import {
        /// tlogd address (host:port); several, comma-separated, are tlogd hosts on the same
        /// backends: the client fails over to the next when one is unreachable, refuses, or
        /// stays silent for --failover-timeout-ms.
        #[arg(long, value_delimiter = ',', required = true)]
        server: Vec<String>,
        /// The vdisk to write.
        #[arg(long)]
        vdisk: String,
        /// Bytes per block (a multiple of 512).
        #[arg(long, default_value_t = 4096)]
        block_size: u64,
        /// Auth token.
        #[arg(long, default_value = "")]
        token: String,
        /// Give up when the server stays unreachable this long (seconds).
        #[arg(long, default_value_t = 120)]
        reconnect_timeout: u64,
        /// With several --server addresses: give a server up for the next when it answered
        /// nothing for this long while blocks wait (ms).
        #[arg(long, default_value_t = 1000)]
        failover_timeout_ms: u64,
        /// The image file.
        image: PathBuf,
    },
    /// Restore a vdisk into a raw image at a point: from the backends (tlogd need not run; stores
    /// are opened read-only, so it may), or through a running tlogd with --server.
    Restore {
        #[command(flatten)]
        store: Store,
        /// Restore through this tlogd (playback) instead of reading the backends.
        #[arg(long)]
        server: Option<String>,
        /// Auth token (with --server).
        #[arg(long, default_value = "")]
        token: String,
        /// The vdisk.
        #[arg(long)]
        vdisk: String,
        /// Output image (created or truncated; sparse).
        #[arg(long)]
        output: PathBuf,
        /// Restore the image after the block with this sequence.
        #[arg(long)]
        to_sequence: Option<u64>,
        /// Restore the image of this time: after the last block stamped at or before it (RFC 3339
        /// with up to nanoseconds, e.g. 2026-12-01T08:00:00.5Z, or ns since the Unix epoch).
        #[arg(long)]
        to_time: Option<String>,
        /// Restore the image at this checkpoint.
        #[arg(long)]
        checkpoint: Option<String>,
    },
    /// Load generator (N connections, one vdisk each), or with --sink a raw protocol sink.
    Bench {
        /// tlogd (or sink) address.
        #[arg(long, required_unless_present = "sink")]
        server: Option<String>,
        /// Connections, one vdisk each.
        #[arg(long, default_value_t = 1)]
        vdisks: usize,
        /// Bytes per block.
        #[arg(long, default_value_t = 4096)]
        block_size: usize,
        /// lz4 compressibility of the data: 0 = random, 0.5 = about 2:1.
        #[arg(long, default_value_t = 0.0)]
        compressibility: f64,
        /// Run this many seconds.
        #[arg(long, conflicts_with = "blocks")]
        duration: Option<f64>,
        /// Or send this many blocks per vdisk.
        #[arg(long)]
        blocks: Option<u64>,
        /// The ack that completes a block: received or flushed.
        #[arg(long, default_value = "flushed", value_parser = ["received", "flushed"])]
        ack: String,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Vdisk id prefix (vdisks are <prefix>0, <prefix>1, ...).
        #[arg(long, default_value = "bench")]
        prefix: String,
        /// Blocks each connection keeps in flight (sent, not yet flushed) at most. Keep it at
        /// least twice the server's flush_size, or aggregations wait for flush_time.
        #[arg(long, default_value_t = tlog::bench::DEFAULT_WINDOW_BLOCKS)]
        window_blocks: usize,
        /// Run a sink instead: speak the handshake, parse frames, discard them, ack at once.
        #[arg(long)]
        sink: bool,
        /// Sink listen address.
        #[arg(long, default_value = "127.0.0.1:11311")]
        listen: String,
        /// The sink stops by itself after this many seconds.
        #[arg(long, default_value_t = 3600)]
        max_seconds: u64,
    },
    /// Checkpoint vdisks: make every block received so far durable and record NAME at each
    /// vdisk's last flushed sequence. Several vdisks form a consistency group: tlogd holds their
    /// intake for the instant it takes, so the marks correspond to one instant.
    Checkpoint {
        /// tlogd address.
        #[arg(long)]
        server: String,
        /// Auth token.
        #[arg(long, default_value = "")]
        token: String,
        /// The vdisks (repeat for a consistency group).
        #[arg(long, required = true)]
        vdisk: Vec<String>,
        /// The checkpoint's name (1 to 64 of A-Z a-z 0-9 . _ -).
        name: String,
    },
    /// A vdisk's history: sequence and time range, aggregations, bytes, checkpoints, its parent,
    /// fork point and forks, the retention window and base; with --tree, every vdisk as a tree.
    History {
        #[command(flatten)]
        store: Store,
        /// Ask this tlogd instead of reading the backends.
        #[arg(long)]
        server: Option<String>,
        /// Auth token (with --server).
        #[arg(long, default_value = "")]
        token: String,
        /// The vdisk.
        #[arg(long, required_unless_present = "tree", conflicts_with = "tree")]
        vdisk: Option<String>,
        /// List every vdisk as a tree of forks instead.
        #[arg(long)]
        tree: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Every vdisk as a tree of forks (the same as `tlog history --tree`).
    Vdisks {
        #[command(flatten)]
        store: Store,
        /// Ask this tlogd instead of reading the backends.
        #[arg(long)]
        server: Option<String>,
        /// Auth token (with --server).
        #[arg(long, default_value = "")]
        token: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Fork a vdisk at a point into a new vdisk, in O(1): only a fork record is written. The
    /// fork is readable and writable at once (its sequences continue after the cut); the parent
    /// goes on unaffected. No point: the parent's newest flushed block.
    Fork {
        /// tlogd address.
        #[arg(long)]
        server: String,
        /// Auth token.
        #[arg(long, default_value = "")]
        token: String,
        /// The parent vdisk.
        #[arg(long)]
        vdisk: String,
        /// The new vdisk.
        #[arg(long)]
        new: String,
        /// Fork after the block with this sequence (it may fall inside an aggregation).
        #[arg(long)]
        to_sequence: Option<u64>,
        /// Fork after the last block stamped at or before this time (RFC 3339 or ns).
        #[arg(long)]
        to_time: Option<String>,
        /// Fork at this checkpoint.
        #[arg(long)]
        checkpoint: Option<String>,
    },
    /// Replay a fork's own writes on top of its parent at a newer point (default: the parent's
    /// head). The fork's state before stays restorable as the checkpoint printed
    /// (pre-rebase-N). Refused while a writer is attached to the fork.
    Rebase {
        /// tlogd address.
        #[arg(long)]
        server: String,
        /// Auth token.
        #[arg(long, default_value = "")]
        token: String,
        /// The fork.
        #[arg(long)]
        vdisk: String,
        /// Its parent.
        #[arg(long)]
        onto: String,
        /// The parent's point: after the block with this sequence.
        #[arg(long)]
        to_sequence: Option<u64>,
        /// The parent's point: the last block stamped at or before this time.
        #[arg(long)]
        to_time: Option<String>,
        /// The parent's point: this checkpoint.
        #[arg(long)]
        checkpoint: Option<String>,
    },
    /// An NBD server whose every write, trim and zero is logged through tlogd and applied to a
    /// local image (the primary copy reads are served from). A flush is answered once tlogd
    /// flushed everything before it and the image is fdatasync'd. On start the image is brought
    /// up to tlogd's history (built from it when missing). With --read-only and a point, it
    /// exports the vdisk as of that point straight from the log (no restore first; writes get
    /// EPERM); with --fork NEW and a point, it forks the vdisk there and exports the fork
    /// writable. Stops on SIGINT/SIGTERM after a final flush.
    Nbd {
        /// tlogd address(es), comma-separated: the first that answers is used.
        #[arg(long, value_delimiter = ',', required = true)]
        server: Vec<String>,
        /// Auth token.
        #[arg(long, default_value = "")]
        token: String,
        /// The vdisk.
        #[arg(long)]
        vdisk: String,
        /// The local image (created when missing); not used by --read-only and --fork exports.
        #[arg(long, required_unless_present_any = ["read_only", "fork"])]
        image: Option<PathBuf>,
        /// Export the vdisk as of a point (--to-sequence, --to-time, --checkpoint; none: its
        /// newest flushed block) straight from the log, read-only.
        #[arg(long, conflicts_with_all = ["image", "fork"])]
        read_only: bool,
        /// Fork the vdisk at the point into this new vdisk (or take the existing fork of that
        /// name) and export the fork writable; the vdisk itself is not touched.
        #[arg(long, conflicts_with = "image")]
        fork: Option<String>,
        /// The point of a --read-only or --fork export: after the block with this sequence.
        #[arg(long, conflicts_with_all = ["to_time", "checkpoint"])]
        to_sequence: Option<u64>,
        /// The point: the last block stamped at or before this time (RFC 3339 or ns).
        #[arg(long, conflicts_with = "checkpoint")]
        to_time: Option<String>,
        /// The point: this checkpoint.
        #[arg(long)]
        checkpoint: Option<String>,
        /// Bytes of fetched aggregations a --read-only or --fork export caches.
        #[arg(long, default_value_t = tlog::nbd::DEFAULT_CACHE_BYTES)]
        cache_bytes: u64,
        /// Export size in bytes for a new image (a multiple of 512); a larger one grows it. For a
        /// past export: default the extent of the image at the point.
        #[arg(long)]
        size: Option<u64>,
        /// Listen on this TCP address (port 0: any free port, printed).
        #[arg(long, conflicts_with = "socket")]
        listen: Option<String>,
        /// Listen on this Unix socket instead.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Seconds to keep reconnecting to tlogd before writes fail.
        #[arg(long, default_value_t = 600)]
        reconnect_timeout: u64,
    },
    /// What a running tlogd is doing: its vdisks (throughput over --interval-ms, buffered
    /// bytes, the age of the oldest unflushed block), its backends (degraded, errors, queue)
    /// and the repair backlog; the numbers its /metrics serves.
    Status {
        /// tlogd address.
        #[arg(long, required_unless_present = "metrics", conflicts_with = "metrics")]
        server: Option<String>,
        /// Read tlogd's /metrics instead (e.g. http://127.0.0.1:9464/metrics).
        #[arg(long)]
        metrics: Option<String>,
        /// Auth token.
        #[arg(long, default_value = "")]
        token: String,
        /// Milliseconds between the two samples throughput is measured over.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a vdisk's history and give its space back. A vdisk with forks is refused unless
    /// --force; its forks keep the prefix they stand on.
    Delete {
        /// tlogd address.
        #[arg(long)]
        server: String,
        /// Auth token.
        #[arg(long, default_value = "")]
        token: String,
        /// The vdisk.
        #[arg(long)]
        vdisk: String,
        /// Delete even when the vdisk has forks.
        #[arg(long)]
        force: bool,
    },
    /// The byte extents written or zeroed between two points (what an incremental backup needs).
    Changed {
        #[command(flatten)]
        store: Store,
        /// Read through this tlogd instead of the backends.
        #[arg(long)]
        server: Option<String>,
        /// Auth token (with --server).
        #[arg(long, default_value = "")]
        token: String,
        /// The vdisk.
        #[arg(long)]
        vdisk: String,
        /// From after this sequence (default: the first point).
        #[arg(long)]
        from_sequence: Option<u64>,
        /// From this time.
        #[arg(long)]
        from_time: Option<String>,
        /// From this checkpoint.
        #[arg(long)]
        from_checkpoint: Option<String>,
        /// Up to this sequence (default: the newest point).
        #[arg(long)]
        to_sequence: Option<u64>,
        /// Up to this time.
        #[arg(long)]
        to_time: Option<String>,
        /// Up to this checkpoint.
        #[arg(long)]
        to_checkpoint: Option<String>,
        /// Print {"extents": [{"offset", "length", "kind"}]}.
        #[arg(long)]
        json: bool,
    },
    /// Keep a standby image in sync with a vdisk (follow-mode playback), resumable from its
    /// state file; with --delay a delayed replica; with --once catch up to the head and exit.
    Replicate {
        /// tlogd address.
        #[arg(long)]
        server: String,
        /// Auth token.
        #[arg(long, default_value = "")]
        token: String,
        /// The vdisk.
        #[arg(long)]
        vdisk: String,
        /// The standby image.
        #[arg(long)]
        output: PathBuf,
        /// The state file (last applied sequence; default <output>.state).
        #[arg(long)]
        state: Option<PathBuf>,
        /// Apply a block only once it is this old (e.g. 10m).
        #[arg(long)]
        delay: Option<String>,
        /// Catch up to the current head, then exit.
        #[arg(long)]
        once: bool,
    },
    /// Repair offline what the repair queue (`<data_dir>/repair.log`) holds: rebuild each
    /// missing shard from k good ones and write it (tlogd must not run on a local store).
    Repair {
        #[command(flatten)]
        store: Store,
    },
    /// Read and check every shard and head record of every vdisk (or one); with --repair,
    /// rewrite what is bad or missing. Exit 1 when problems remain.
    Scrub {
        #[command(flatten)]
        store: Store,
        /// Only this vdisk.
        #[arg(long)]
        vdisk: Option<String>,
        /// Rewrite bad or missing shards and heads (tlogd must not run on a local store).
        #[arg(long)]
        repair: bool,
        /// Shard bytes read per second at most, MiB.
        #[arg(long, default_value_t = 256)]
        rate_mib: u64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Operator commands for a store directory.
    Store {
        #[command(subcommand)]
        cmd: StoreCmd,
    },
}

#[derive(Subcommand, Debug)]
enum StoreCmd {
    /// Segments, entry counts, time range and sizes.
    Inspect {
        /// Store directory.
        dir: PathBuf,
    },
    /// Check every entry; print each problem with segment and offset; exit 1 when any.
    Verify {
        /// Store directory.
        dir: PathBuf,
    },
    /// Make DIR (created if missing) an empty store directory. tlogd never recreates a missing
    /// or empty store directory by itself (it may be a disk that failed to mount).
    Init {
        /// Store directory.
        dir: PathBuf,
    },
}

fn import(
    servers: Vec<String>,
    vdisk: String,
    block_size: u64,
    token: String,
    reconnect_timeout: u64,
    failover_timeout_ms: u64,
    image: PathBuf,
) -> tlog::Result<()> {
    let f = std::fs::File::open(&image).map_err(|e| tlog::Error::io(format!("open image {}", image.display()), e))?;
    let Some((server, failover)) = servers.split_first() else {
        return Err(tlog::Error::InvalidArgument("give --server ADDR".into()));
    };
    let mut cfg = ClientConfig::new(server, &vdisk);
    cfg.failover = failover.to_vec();
    cfg.failover_timeout = std::time::Duration::from_millis(failover_timeout_ms.max(1));
    cfg.token = token;
    cfg.reconnect_timeout = std::time::Duration::from_secs(reconnect_timeout);
    cfg.on_notice = Some(NoticeHandler(Arc::new(|n: &tlog::wire::Notice| match n.kind {
        tlog::wire::NoticeKind::Waiting => eprintln!("tlog import: waiting: tlogd cannot make blocks durable yet: {}", n.message),
        tlog::wire::NoticeKind::Resumed => eprintln!("tlog import: tlogd makes blocks durable again"),
    })));
    let start = Instant::now();
    let client = Client::connect(cfg)?;
    let r = tlog::client::import(&client, std::io::BufReader::with_capacity(1 << 20, f), block_size)?;
    client.flush()?;
    let secs = start.elapsed().as_secs_f64();
    let reconnects = client.reconnects();
    client.close()?;
    println!(
        "imported {} blocks, {} bytes in {secs:.3} seconds ({:.1} MiB/s) to vdisk {vdisk}{}",
        r.blocks,
        r.bytes,
        r.bytes as f64 / 1048576.0 / secs.max(1e-9),
        if reconnects > 0 { format!(" ({reconnects} reconnects)") } else { String::new() }
    );
    Ok(())
}

/// RFC 3339 with nanoseconds, UTC.
fn fmt_ts(ns: u64) -> String {
    tlog::time::format_time(ns)
}

fn run(args: Args) -> tlog::Result<ExitCode> {
    match args.cmd {
        Cmd::Import { server, vdisk, block_size, token, reconnect_timeout, failover_timeout_ms, image } => {
            import(server, vdisk, block_size, token, reconnect_timeout, failover_timeout_ms, image).map(|_| ExitCode::SUCCESS)
        }
        Cmd::Restore { store: _, server: Some(server), token, vdisk, output, to_sequence, to_time, checkpoint } => {
            let to = Point::from_args(to_sequence, to_time.as_deref(), checkpoint.as_deref())?;
            let start = Instant::now();
            let s = restore_remote(&server, &token, &vdisk, &output, to)?;
            for (seq, why) in &s.bad_blocks {
                eprintln!("tlog restore: block {seq} skipped: {why}");
            }
            println!(
                "restored vdisk {vdisk} to {} through {server}: {} blocks, {} bytes written, image {} bytes, last sequence {}, {:.3} seconds",
                output.display(),
                s.blocks,
                s.bytes,
                s.image_bytes,
                s.last_sequence.map(|x| x.to_string()).unwrap_or_else(|| "-".into()),
                start.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Restore { store, server: None, token: _, vdisk, output, to_sequence, to_time, checkpoint } => {
            let to = Point::from_args(to_sequence, to_time.as_deref(), checkpoint.as_deref())?;
            let cfg = store.load()?;
            let sealer = Arc::new(Store::sealer(&cfg)?);
            let backends = tlog::server::open_backends_read_only(&cfg);
            let start = Instant::now();
            let h = History::load(backends, sealer, &vdisk)?;
            let opts = RestoreOptions { to, max_image_bytes: cfg.server.max_vdisk_bytes, ..Default::default() };
            let s = restore(&h, &output, &opts)?;
            for (seq, why) in &s.bad_blocks {
                eprintln!("tlog restore: block {seq} skipped: {why}");
            }
            println!(
                "restored vdisk {vdisk} to {}: {} aggregations, {} blocks, {} bytes written, image {} bytes, last sequence {}, {:.3} seconds{}",
                output.display(),
                s.aggregations,
                s.blocks,
                s.bytes,
                s.image_bytes,
                s.last_sequence.map(|x| x.to_string()).unwrap_or_else(|| "-".into()),
                start.elapsed().as_secs_f64(),
                if s.bad_blocks.is_empty() { String::new() } else { format!(", {} bad blocks skipped", s.bad_blocks.len()) }
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench { server, vdisks, block_size, compressibility, duration, blocks, ack, json, prefix, window_blocks, sink, listen, max_seconds } => {
            if sink {
                let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
                for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                    signal_hook::flag::register(sig, stop.clone()).map_err(|e| tlog::Error::io("install signal handler", e))?;
                }
                tlog::bench::sink(&listen, stop, std::time::Duration::from_secs(max_seconds))?;
                return Ok(ExitCode::SUCCESS);
            }
            if duration.is_none() && blocks.is_none() {
                return Err(tlog::Error::InvalidArgument("give --duration SECS or --blocks COUNT".into()));
            }
            let cfg = tlog::bench::BenchConfig {
                server: server.unwrap_or_default(),
                vdisks,
                block_size,
                compressibility,
                duration: duration.map(std::time::Duration::from_secs_f64),
                blocks,
                ack: if ack == "received" { tlog::bench::AckLevel::Received } else { tlog::bench::AckLevel::Flushed },
                prefix,
                progress: !json,
                window_blocks,
            };
            let r = tlog::bench::run(&cfg)?;
            if json {
                println!("{}", r.json());
            } else {
                println!("{}", r.text());
            }
            Ok(if r.errors == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Cmd::Checkpoint { server, token, vdisk, name } => {
            match tlog::client::remote::control(&server, &token, ControlRequest::Checkpoint { name: name.clone(), vdisks: vdisk })? {
                ControlResponse::Checkpoint(marks) => {
                    for m in marks {
                        println!(
                            "checkpoint {name}: vdisk {} at sequence {} ({})",
                            m.vdisk,
                            m.sequence.map(|s| s.to_string()).unwrap_or_else(|| "- (no block yet)".into()),
                            tlog::time::format_time(m.time)
                        );
                    }
                    Ok(ExitCode::SUCCESS)
                }
                other => Err(tlog::Error::Protocol(format!("unexpected answer {other:?}"))),
            }
        }
        Cmd::History { store, server, token, vdisk: None, tree: _, json } | Cmd::Vdisks { store, server, token, json } => {
            let forest: serde_json::Value = match server {
                Some(server) => match tlog::client::remote::control(&server, &token, ControlRequest::Tree)? {
                    ControlResponse::Done(j) => serde_json::from_str(&j).map_err(|e| tlog::Error::Protocol(format!("tree JSON: {e}")))?,
                    other => return Err(tlog::Error::Protocol(format!("unexpected answer {other:?}"))),
                },
                None => {
                    let cfg = store.load()?;
                    let sealer = Store::sealer(&cfg)?;
                    let t = tlog::history::tree::tree(&tlog::server::open_backends_read_only(&cfg), &tlog::history::index::IndexCodec::new(sealer.key()))?;
                    serde_json::to_value(t).map_err(|e| tlog::Error::InvalidArgument(format!("json: {e}")))?
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&forest).unwrap_or_default());
            } else {
                let roots = forest.as_array().cloned().unwrap_or_default();
                if roots.is_empty() {
                    println!("no vdisk");
                }
                for r in &roots {
                    print_tree(r, 0);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::History { store, server, token, vdisk: Some(vdisk), tree: _, json } => {
            let summary: serde_json::Value = match server {
                Some(server) => match tlog::client::remote::control(&server, &token, ControlRequest::History { vdisk: vdisk.clone() })? {
                    ControlResponse::History(j) => serde_json::from_str(&j).map_err(|e| tlog::Error::Protocol(format!("history JSON: {e}")))?,
                    other => return Err(tlog::Error::Protocol(format!("unexpected answer {other:?}"))),
                },
                None => {
                    let cfg = store.load()?;
                    let h = History::load(tlog::server::open_backends_read_only(&cfg), Arc::new(Store::sealer(&cfg)?), &vdisk)?;
                    serde_json::to_value(h.summary()).map_err(|e| tlog::Error::InvalidArgument(format!("json: {e}")))?
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&summary).unwrap_or_default());
            } else {
                print_history(&summary);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Fork { server, token, vdisk, new, to_sequence, to_time, checkpoint } => {
            let at = spec(Point::from_args(to_sequence, to_time.as_deref(), checkpoint.as_deref())?.as_ref());
            let j = done(tlog::client::remote::control(&server, &token, ControlRequest::Fork { vdisk, new, at })?)?;
            println!(
                "fork {}: of vdisk {} at sequence {} ({})",
                j["vdisk"].as_str().unwrap_or("?"),
                j["parent"].as_str().unwrap_or("?"),
                j["cut"],
                j["cut_time"].as_str().unwrap_or("?")
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Rebase { server, token, vdisk, onto, to_sequence, to_time, checkpoint } => {
            let at = spec(Point::from_args(to_sequence, to_time.as_deref(), checkpoint.as_deref())?.as_ref());
            let start = Instant::now();
            let j = done(tlog::client::remote::control(&server, &token, ControlRequest::Rebase { vdisk, onto, at })?)?;
            println!(
                "rebased {} onto {} at sequence {}: {} blocks of the parent, {} own blocks replayed, head at sequence {} ({:.3} s); the state before is checkpoint {}",
                j["vdisk"].as_str().unwrap_or("?"),
                j["onto"].as_str().unwrap_or("?"),
                j["onto_point"],
                j["parent_blocks"],
                j["own_blocks"],
                j["head"],
                start.elapsed().as_secs_f64(),
                j["checkpoint"].as_str().unwrap_or("?")
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Nbd { server, token, vdisk, image, read_only, fork, to_sequence, to_time, checkpoint, cache_bytes, size, listen, socket, reconnect_timeout } => {
            let at = Point::from_args(to_sequence, to_time.as_deref(), checkpoint.as_deref())?;
            if at.is_some() && !read_only && fork.is_none() {
                return Err(tlog::Error::InvalidArgument("a point (--to-sequence, --to-time, --checkpoint) is for --read-only or --fork exports".into()));
            }
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                signal_hook::flag::register(sig, stop.clone()).map_err(|e| tlog::Error::io("install signal handler", e))?;
            }
            let listen = match (listen, socket) {
                (_, Some(p)) => tlog::nbd::Listen::Unix(p),
                (Some(a), None) => tlog::nbd::Listen::Tcp(a),
                (None, None) => tlog::nbd::Listen::Tcp("127.0.0.1:10809".into()),
            };
            let name = vdisk.clone();
            let cfg = tlog::nbd::GatewayConfig {
                servers: server,
                vdisk,
                token,
                image,
                size,
                listen,
                reconnect_timeout: std::time::Duration::from_secs(reconnect_timeout),
                read_only,
                at,
                fork: fork.clone(),
                cache_bytes,
            };
            let first_read = |d: std::time::Duration| {
                println!("tlog nbd: first read answered {:.1} ms after start", d.as_secs_f64() * 1e3);
                use std::io::Write as _;
                let _ = std::io::stdout().flush();
            };
            tlog::nbd::run(
                cfg,
                stop,
                |r| {
                    let what = match r.mode {
                        tlog::nbd::Mode::Head => format!("vdisk {name} ({} bytes) at sequence {}", r.size, r.head),
                        tlog::nbd::Mode::ReadOnly => format!(
                            "vdisk {name} ({} bytes) as of sequence {}, read-only from the log",
                            r.size,
                            r.point.map(|p| p.to_string()).unwrap_or("none".into())
                        ),
                        tlog::nbd::Mode::Fork => format!(
                            "fork {} of vdisk {name} ({} bytes) from sequence {}, writable",
                            fork.as_deref().unwrap_or(""),
                            r.size,
                            r.point.map(|p| p.to_string()).unwrap_or("none".into())
                        ),
                    };
                    println!(
                        "tlog nbd: {}{}; serving on {} (ready in {:.3} s)",
                        what,
                        if r.built {
                            format!(", image built from tlogd ({} blocks)", r.caught_up_blocks)
                        } else if r.caught_up_blocks > 0 {
                            format!(", image caught up by {} blocks", r.caught_up_blocks)
                        } else {
                            String::new()
                        },
                        r.address,
                        r.elapsed.as_secs_f64()
                    );
                    use std::io::Write as _;
                    let _ = std::io::stdout().flush();
                },
                first_read,
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status { server, metrics, token, interval_ms, json } => {
            let sample = || -> tlog::Result<serde_json::Value> {
                match (&server, &metrics) {
                    (Some(s), _) => done(tlog::client::remote::control(s, &token, ControlRequest::Status)?),
                    (None, Some(url)) => tlog::metrics::status_from_url(url),
                    (None, None) => Err(tlog::Error::InvalidArgument("give --server ADDR or --metrics URL".into())),
                }
            };
            let server = server.clone().or(metrics.clone()).unwrap_or_default();
            let a = sample()?;
            let t0 = std::time::Instant::now();
            std::thread::sleep(std::time::Duration::from_millis(interval_ms.max(1)));
            let b = sample()?;
            let secs = t0.elapsed().as_secs_f64();
            let rate = |v: &serde_json::Value, field: &str| -> f64 {
                let before = a["vdisks"].as_array().and_then(|l| l.iter().find(|x| x["name"] == v["name"])).and_then(|x| x[field].as_u64()).unwrap_or(0);
                v[field].as_u64().unwrap_or(0).saturating_sub(before) as f64 / secs
            };
            let mut vdisks = Vec::new();
            for v in b["vdisks"].as_array().cloned().unwrap_or_default() {
                let mut v = v.clone();
                v["received_bytes_per_second"] = serde_json::json!(rate(&v, "received_bytes"));
                v["flushed_bytes_per_second"] = serde_json::json!(rate(&v, "flushed_bytes"));
                vdisks.push(v);
            }
            if json {
                let mut out = b.clone();
                out["vdisks"] = serde_json::Value::Array(vdisks);
                out["server"] = serde_json::json!(server);
                out["interval_seconds"] = serde_json::json!(secs);
                println!("{}", serde_json::to_string_pretty(&out).map_err(|e| tlog::Error::InvalidArgument(format!("json: {e}")))?);
                return Ok(ExitCode::SUCCESS);
            }
            let mib = |x: f64| x / 1048576.0;
            let backends = b["backends"].as_array().cloned().unwrap_or_default();
            let degraded = backends.iter().filter(|x| x["degraded"].as_bool() == Some(true)).count();
            println!(
                "tlogd at {server}: {} vdisks loaded, {} backends ({degraded} degraded), {:.1} MiB buffered, {} aggregations flushed, repair backlog {} shards",
                vdisks.len(),
                backends.len(),
                mib(b["buffered_bytes"].as_f64().unwrap_or(0.0)),
                b["flushed_aggregations"],
                b["repair_backlog"]
            );
            if !vdisks.is_empty() {
                println!();
                println!(
                    "{:<24} {:>8} {:>14} {:>11} {:>11} {:>11} {:>13}",
                    "vdisk", "writer", "last flushed", "in MiB/s", "out MiB/s", "buffered", "unflushed age"
                );
                for v in &vdisks {
                    println!(
                        "{:<24} {:>8} {:>14} {:>11.1} {:>11.1} {:>9.1}Mi {:>12.3}s",
                        v["name"].as_str().unwrap_or("?"),
                        if v["attached"].as_bool() == Some(true) { format!("epoch {}", v["epoch"]) } else { "-".into() },
                        v["last_flushed"].as_u64().map(|x| x.to_string()).unwrap_or("none".into()),
                        mib(v["received_bytes_per_second"].as_f64().unwrap_or(0.0)),
                        mib(v["flushed_bytes_per_second"].as_f64().unwrap_or(0.0)),
                        mib(v["buffered_bytes"].as_f64().unwrap_or(0.0)),
                        v["unflushed_age_seconds"].as_f64().unwrap_or(0.0)
                    );
                }
            }
            println!();
            println!("{:<40} {:>9} {:>8} {:>12}", "backend", "state", "errors", "queued");
            for x in &backends {
                println!(
                    "{:<40} {:>9} {:>8} {:>10.1}Mi",
                    x["name"].as_str().unwrap_or("?"),
                    if x["degraded"].as_bool() == Some(true) { "DEGRADED" } else { "ok" },
                    x["errors"],
                    mib(x["queued_bytes"].as_f64().unwrap_or(0.0))
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Delete { server, token, vdisk, force } => {
            let j = done(tlog::client::remote::control(&server, &token, ControlRequest::Delete { vdisk, force })?)?;
            let kept = &j["kept_for_forks"];
            println!(
                "deleted vdisk {}: {} aggregations, {} bytes given back{}",
                j["vdisk"].as_str().unwrap_or("?"),
                j["deleted_aggregations"],
                j["bytes_freed"],
                if kept.is_null() { String::new() } else { format!("; kept up to sequence {kept} for its forks") }
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Changed { store, server, token, vdisk, from_sequence, from_time, from_checkpoint, to_sequence, to_time, to_checkpoint, json } => {
            let from = Point::from_args(from_sequence, from_time.as_deref(), from_checkpoint.as_deref())?;
            let to = Point::from_args(to_sequence, to_time.as_deref(), to_checkpoint.as_deref())?;
            let x = match server {
                Some(server) => {
                    let req = PlaybackRequest { from: spec(from.as_ref()), to: spec(to.as_ref()), follow: false };
                    let mut pb = tlog::client::remote::Playback::open(&server, &token, &vdisk, req)?;
                    let mut x = tlog::history::changed::Extents::default();
                    while let Some(item) = pb.next_item()? {
                        if let tlog::client::remote::Item::Block(b) = item {
                            x.block(&b)?;
                        }
                    }
                    x
                }
                None => {
                    let cfg = store.load()?;
                    let h = History::load(tlog::server::open_backends_read_only(&cfg), Arc::new(Store::sealer(&cfg)?), &vdisk)?;
                    tlog::history::changed::changed(&h, from.as_ref(), to.as_ref())?
                }
            };
            let extents = x.list();
            if json {
                println!("{}", serde_json::json!({ "extents": extents }));
            } else {
                for e in &extents {
                    println!("{:>16} {:>12} {}", e.offset, e.length, if e.kind == tlog::history::changed::Kind::Write { "write" } else { "zero" });
                }
                println!("{} extents, {} bytes", extents.len(), extents.iter().map(|e| e.length).sum::<u64>());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Replicate { server, token, vdisk, output, state, delay, once } => {
            let delay = match delay {
                Some(d) => {
                    humantime::parse_duration(&d).map_err(|e| tlog::Error::InvalidArgument(format!("--delay {d:?}: {e} (a duration like 10m or 2s)")))?
                }
                None => std::time::Duration::ZERO,
            };
            let state = state.unwrap_or_else(|| PathBuf::from(format!("{}.state", output.display())));
            let o = tlog::client::replicate::ReplicateOptions {
                server,
                token,
                vdisk: vdisk.clone(),
                output,
                state,
                delay,
                once,
                max_image_bytes: 64 << 40,
                sync_every: std::time::Duration::from_millis(500),
                reconnect_timeout: std::time::Duration::from_secs(120),
            };
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                signal_hook::flag::register(sig, stop.clone()).map_err(|e| tlog::Error::io("install signal handler", e))?;
            }
            let mut report = |p: &tlog::client::replicate::Progress| {
                let caught_up = matches!((p.applied, p.head), (Some(a), Some(h)) if a >= h);
                let lag_seq = match (p.applied, p.head) {
                    (Some(a), Some(h)) => h.saturating_sub(a),
                    (None, Some(h)) => h,
                    _ => 0,
                };
                let lag_s = if caught_up { 0.0 } else { p.lag_ns as f64 / 1e9 };
                eprintln!(
                    "tlog replicate: vdisk {vdisk}: applied {}, lag {lag_seq} sequences, {lag_s:.1} s",
                    p.applied.map(|a| a.to_string()).unwrap_or_else(|| "-".into())
                );
            };
            let p = tlog::client::replicate::replicate(&o, &stop, &mut report)?;
            println!(
                "replicated vdisk {vdisk} to {}: applied up to sequence {}",
                o.output.display(),
                p.applied.map(|a| a.to_string()).unwrap_or_else(|| "-".into())
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Repair { store } => {
            let cfg = store.load()?;
            let sealer = Store::sealer(&cfg)?;
            let backends = tlog::server::open_backends_offline(&cfg);
            let queue = tlog::flush::repair::Queue::open(&cfg.server.data_dir.join("repair.log"))?;
            let waiting = queue.backlog();
            let r = tlog::flush::repair::repair_all(&backends, &sealer, &queue)?;
            for (v, k, i) in &r.fixed {
                println!("repaired shard {i} of aggregation {} of vdisk {v} on {}", hex::encode(k), backends[*i].name());
            }
            for (v, k, i) in &r.abandoned {
                println!("cannot rebuild aggregation {} of vdisk {v} (shard {i} given up; run tlog scrub)", hex::encode(k));
            }
            for (v, k, i, why) in &r.failed {
                println!("not repaired: shard {i} of aggregation {} of vdisk {v}: {why}", hex::encode(k));
            }
            println!("repair: {waiting} shards queued, {} repaired, {} failed (still queued), {} given up", r.fixed.len(), r.failed.len(), r.abandoned.len());
            Ok(if r.failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Cmd::Scrub { store, vdisk, repair, rate_mib, json } => {
            let cfg = store.load()?;
            let sealer = Store::sealer(&cfg)?;
            let backends = if repair { tlog::server::open_backends_offline(&cfg) } else { tlog::server::open_backends_read_only(&cfg) };
            let start = Instant::now();
            let r = scrub(&backends, &sealer, &ScrubOptions { vdisk, repair, rate_mib, stop: None })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r).map_err(|e| tlog::Error::InvalidArgument(format!("json: {e}")))?);
            } else {
                for f in &r.findings {
                    println!(
                        "{:?} vdisk {}{}{}: {}{}",
                        f.kind,
                        f.vdisk,
                        f.key.as_ref().map(|k| format!(" aggregation {k}")).unwrap_or_default(),
                        f.backend.map(|b| format!(" on {}", backends[b].name())).unwrap_or_default(),
                        f.detail,
                        if f.repaired { " (repaired)" } else { "" }
                    );
                }
                println!(
                    "scrub: {} vdisks, {} aggregations, {} shards ({:.1} MiB) in {:.1} s; {} problems, {} repaired",
                    r.vdisks,
                    r.aggregations,
                    r.shards,
                    r.bytes as f64 / 1048576.0,
                    start.elapsed().as_secs_f64(),
                    r.findings.len(),
                    r.findings.len() - r.unrepaired()
                );
            }
            Ok(if r.unrepaired() == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Cmd::Store { cmd: StoreCmd::Inspect { dir } } => {
            let log = BigLog::open_read_only(&dir)?;
            println!("store {}: offsets {}..{}", dir.display(), log.first_offset()?, log.next_offset()?);
            println!("{:<22} {:>10} {:>10} {:>14} {:>12}  time range", "segment", "entries", "offsets", "data bytes", "index bytes");
            for s in log.segments()? {
                let tr = s.time_range.map(|(a, b)| format!("{} .. {}", fmt_ts(a), fmt_ts(b))).unwrap_or_else(|| "-".into());
                println!(
                    "{:020}   {:>10} {:>10} {:>14} {:>12}  {tr}{}",
                    s.base,
                    s.entries,
                    s.offsets,
                    s.data_bytes,
                    s.index_bytes,
                    s.damage.map(|d| format!("  DAMAGED at offset {}: {}", d.offset, d.detail)).unwrap_or_default()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Store { cmd: StoreCmd::Verify { dir } } => {
            let log = BigLog::open_read_only(&dir)?;
            let problems = tlog::store::verify(&log)?;
            for p in &problems {
                println!("{p}");
            }
            if problems.is_empty() {
                println!("store {}: every entry intact", dir.display());
                Ok(ExitCode::SUCCESS)
            } else {
                println!("store {}: {} problem(s)", dir.display(), problems.len());
                Ok(ExitCode::from(1))
            }
        }
        Cmd::Store { cmd: StoreCmd::Init { dir } } => {
            tlog::backend::local::LocalBackend::init(&dir)?;
            println!("store {}: initialized (empty)", dir.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Restores through tlogd's playback into `output`; no file is left behind on failure.
fn restore_remote(server: &str, token: &str, vdisk: &str, output: &std::path::Path, to: Option<Point>) -> tlog::Result<tlog::history::restore::RestoreStats> {
    let req = PlaybackRequest { from: PointSpec::None, to: spec(to.as_ref()), follow: false };
    let mut pb = tlog::client::remote::Playback::open(server, token, vdisk, req)?;
    let first = pb.next_item()?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(output)
        .map_err(|e| tlog::Error::io(format!("create {}", output.display()), e))?;
    let r = (|| {
        let mut w = tlog::history::restore::ImageWriter::new(&f, output, 64 << 40);
        let bar = tlog::history::restore::progress_bar(None, "restoring");
        let mut item = first;
        while let Some(i) = item {
            match i {
                tlog::client::remote::Item::Block(b) => {
                    w.apply(&b, vdisk)?;
                    if let Some(p) = &bar {
                        p.inc(b.size);
                    }
                }
                tlog::client::remote::Item::End(_) => break,
                tlog::client::remote::Item::Head(_) => {}
            }
            item = pb.next_item()?;
        }
        w.finish()?;
        if let Some(p) = bar {
            p.finish_and_clear();
        }
        Ok(w.stats.clone())
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(output);
    }
    r
}

/// The JSON of a fork, rebase, delete or tree answer.
fn done(r: ControlResponse) -> tlog::Result<serde_json::Value> {
    match r {
        ControlResponse::Done(j) => serde_json::from_str(&j).map_err(|e| tlog::Error::Protocol(format!("answer JSON: {e}"))),
        ControlResponse::Error(e) => Err(tlog::Error::InvalidArgument(e)),
        other => Err(tlog::Error::Protocol(format!("unexpected answer {other:?}"))),
    }
}

fn print_tree(n: &serde_json::Value, depth: usize) {
    let name = n["vdisk"].as_str().unwrap_or("?");
    let mut line = format!("{}{name}", "  ".repeat(depth));
    if let Some(p) = n["parent"].as_array() {
        line += &format!("  (fork of {} at sequence {})", p.first().and_then(|x| x.as_str()).unwrap_or("?"), p.get(1).cloned().unwrap_or_default());
    }
    if n["deleted"].as_bool().unwrap_or(false) {
        line += "  [deleted, kept for its forks]";
    }
    println!("{line}");
    for c in n["children"].as_array().cloned().unwrap_or_default() {
        print_tree(&c, depth + 1);
    }
}

fn print_history(s: &serde_json::Value) {
    let v = |k: &str| s.get(k).cloned().unwrap_or(serde_json::Value::Null);
    println!("vdisk {}", v("vdisk").as_str().unwrap_or("?"));
    match (v("sequences").as_array(), v("times_rfc3339").as_array()) {
        (Some(seq), Some(t)) => {
            println!("  sequences {} .. {}", seq[0], seq[1]);
            println!("  blocks stamped {} .. {}", t[0].as_str().unwrap_or("?"), t[1].as_str().unwrap_or("?"));
        }
        _ => println!("  no block"),
    }
    println!("  {} aggregations, {} blocks, {} bytes of data, epoch {}", v("aggregations"), v("blocks"), v("data_bytes"), v("epoch"));
    let cps = v("checkpoints");
    let cps = cps.as_array().cloned().unwrap_or_default();
    if cps.is_empty() {
        println!("  no checkpoint");
    }
    for c in cps {
        let seq = c.get("sequence").map(|x| if x.is_null() { "-".to_string() } else { x.to_string() }).unwrap_or_default();
        let t = c.get("time").and_then(|t| t.as_u64()).map(tlog::time::format_time).unwrap_or_default();
        println!("  checkpoint {} at sequence {seq} ({t})", c.get("name").and_then(|n| n.as_str()).unwrap_or("?"));
    }
    if let Some(p) = v("parent").as_str() {
        println!("  fork of {p} at sequence {}", v("fork_point"));
    }
    if let Some(r) = v("rebase").as_object() {
        println!(
            "  rebased {} times onto {} at sequence {}; the state before the last is checkpoint {}",
            r.get("rebases").cloned().unwrap_or_default(),
            r.get("onto").and_then(|x| x.as_str()).unwrap_or("?"),
            r.get("onto_point").cloned().unwrap_or_default(),
            r.get("checkpoint").and_then(|x| x.as_str()).unwrap_or("?")
        );
    }
    for c in v("children").as_array().cloned().unwrap_or_default() {
        println!("  forked into {} at sequence {}", c.get("vdisk").and_then(|x| x.as_str()).unwrap_or("?"), c.get("cut").cloned().unwrap_or_default());
    }
    match v("window_start").as_array() {
        Some(w) if w.len() == 2 => {
            println!("  restorable from sequence {} ({}); the base holds {} chunks", w[0], w[1].as_str().unwrap_or("?"), v("base_chunks"))
        }
        _ => println!("  restorable from its first block (nothing folded)"),
    }
}

fn main() -> ExitCode {
    tlog::sys::process::default_sigpipe();
    tlog::logging::init("warn");
    match run(Args::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tlog: error: {e}");
            ExitCode::from(2)
        }
    }
}
