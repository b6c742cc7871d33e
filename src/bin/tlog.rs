//! tlog: the command-line tool (import, restore, bench, repair, scrub, store inspect/verify/init).

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;
use tlog::client::{Client, ClientConfig, NoticeHandler};
use tlog::config::Config;
use tlog::history::points::Point;
use tlog::history::restore::{restore, RestoreOptions};
use tlog::history::scrub::{scrub, ScrubOptions};
use tlog::history::History;
use tlog::seal::Sealer;
use tlog::store::BigLog;

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
        /// tlogd address (host:port).
        #[arg(long)]
        server: String,
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
        /// The image file.
        image: PathBuf,
    },
    /// Restore a vdisk from the backends into a raw image (tlogd need not run; stores are
    /// opened read-only, so it may).
    Restore {
        #[command(flatten)]
        store: Store,
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

fn import(server: String, vdisk: String, block_size: u64, token: String, reconnect_timeout: u64, image: PathBuf) -> tlog::Result<()> {
    let f = std::fs::File::open(&image).map_err(|e| tlog::Error::io(format!("open image {}", image.display()), e))?;
    let mut cfg = ClientConfig::new(&server, &vdisk);
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
        Cmd::Import { server, vdisk, block_size, token, reconnect_timeout, image } => {
            import(server, vdisk, block_size, token, reconnect_timeout, image).map(|_| ExitCode::SUCCESS)
        }
        Cmd::Restore { store, vdisk, output, to_sequence, to_time, checkpoint } => {
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

fn main() -> ExitCode {
    tlog::logging::init("warn");
    match run(Args::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tlog: error: {e}");
            ExitCode::from(2)
        }
    }
}
