//! tlog: the command-line tool (import, restore, store inspect/verify).

use clap::{Parser, Subcommand};
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;
use tlog::client::{Client, ClientConfig};
use tlog::config::Config;
use tlog::flush::Sealer;
use tlog::replay::{restore, RestoreOptions};
use tlog::store::BigLog;

/// tlog command-line tool.
#[derive(Parser, Debug)]
#[command(name = "tlog", version, about)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Stream an image file to tlogd as write blocks (all-zero blocks as write_zeroes) and wait
    /// until every block is flushed.
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
    /// Restore a vdisk from the backends into a raw image (tlogd need not run).
    Restore {
        /// tlogd configuration (backends, key); embedded defaults when absent.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Overrides server.data_dir (where the local store and the key live).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The vdisk.
        #[arg(long)]
        vdisk: String,
        /// Output image (created or truncated; sparse).
        #[arg(long)]
        output: PathBuf,
        /// Apply blocks up to this sequence (inclusive).
        #[arg(long)]
        to_sequence: Option<u64>,
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
}

/// RFC 3339 with nanoseconds, UTC.
fn fmt_ts(ns: u64) -> String {
    humantime::format_rfc3339_nanos(std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns)).to_string()
}

fn import(server: String, vdisk: String, block_size: u64, token: String, reconnect_timeout: u64, image: PathBuf) -> tlog::Result<()> {
    if block_size == 0 || block_size % 512 != 0 || block_size > 4 << 20 {
        return Err(tlog::Error::InvalidArgument(format!("--block-size {block_size}: a multiple of 512 up to 4194304")));
    }
    let mut f = std::fs::File::open(&image).map_err(|e| tlog::Error::io(format!("open image {}", image.display()), e))?;
    let mut cfg = ClientConfig::new(&server, &vdisk);
    cfg.token = token;
    cfg.reconnect_timeout = std::time::Duration::from_secs(reconnect_timeout);
    let start = Instant::now();
    let client = Client::connect(cfg)?;
    let mut blocks = 0u64;
    let mut bytes = 0u64;
    let mut offset = 0u64;
    let mut buf = vec![0u8; block_size as usize];
    loop {
        let mut n = 0usize;
        while n < buf.len() {
            let r = f.read(&mut buf[n..]).map_err(|e| tlog::Error::io(format!("read image {}", image.display()), e))?;
            if r == 0 {
                break;
            }
            n += r;
        }
        if n == 0 {
            break;
        }
        // Blocks start on sector boundaries (block_size is a multiple of 512); a short last
        // block keeps its exact length so the restored image has the same size.
        let lba = offset / 512;
        if buf[..n].iter().all(|b| *b == 0) {
            client.write_zeroes(lba, n as u64)?;
        } else {
            client.write(lba, buf[..n].to_vec())?;
        }
        blocks += 1;
        bytes += n as u64;
        offset += n as u64;
        if (n as u64) < block_size {
            break;
        }
    }
    client.flush()?;
    let secs = start.elapsed().as_secs_f64();
    let reconnects = client.reconnects();
    client.close()?;
    println!(
        "imported {blocks} blocks, {bytes} bytes in {secs:.3} seconds ({:.1} MiB/s) to vdisk {vdisk}{}",
        bytes as f64 / 1048576.0 / secs.max(1e-9),
        if reconnects > 0 { format!(" ({reconnects} reconnects)") } else { String::new() }
    );
    Ok(())
}

fn run(args: Args) -> tlog::Result<ExitCode> {
    match args.cmd {
        Cmd::Import { server, vdisk, block_size, token, reconnect_timeout, image } => {
            import(server, vdisk, block_size, token, reconnect_timeout, image).map(|_| ExitCode::SUCCESS)
        }
        Cmd::Restore { config, data_dir, vdisk, output, to_sequence } => {
            let mut cfg = match &config {
                Some(p) => Config::load(p)?,
                None => Config::default(),
            };
            if let Some(d) = data_dir {
                cfg.server.data_dir = d;
            }
            cfg.validate()?;
            if cfg.backend.kind == "local" {
                for d in cfg.local_dirs() {
                    if !d.is_dir() {
                        tracing::warn!("store directory {} is missing: treating that backend as lost", d.display());
                    }
                }
            }
            let (key, _) = cfg.load_key(false)?;
            let sealer = Sealer::new(key, cfg.flush.k, cfg.flush.m)?;
            let backends = open_backends_for_restore(&cfg)?;
            let start = Instant::now();
            let s = restore(&backends, &sealer, &vdisk, &output, &RestoreOptions { to_sequence, ..Default::default() })?;
            println!(
                "restored vdisk {vdisk} to {}: {} aggregations, {} blocks, {} bytes written, image {} bytes, last sequence {}, {:.3} seconds",
                output.display(),
                s.aggregations,
                s.blocks,
                s.bytes,
                s.image_bytes,
                s.last_sequence.map(|x| x.to_string()).unwrap_or_else(|| "-".into()),
                start.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench { server, vdisks, block_size, compressibility, duration, blocks, ack, json, prefix, window_blocks, sink, listen, max_seconds } => {
            if sink {
                let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
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
                    s.damage.map(|d| format!("  DAMAGED at offset {}", d.offset)).unwrap_or_default()
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
    }
}

/// Opens backends for restore: a local store directory that is missing or cannot be opened is
/// a lost backend (restore tolerates up to m), not an error.
fn open_backends_for_restore(cfg: &Config) -> tlog::Result<Vec<std::sync::Arc<dyn tlog::backend::Backend>>> {
    if cfg.backend.kind != "local" {
        return cfg.open_backends();
    }
    let opts = tlog::store::BigLogOptions {
        segment_bytes: cfg.backend.local.segment_bytes,
        index_capacity: cfg.backend.local.index_capacity,
        drop_cache: cfg.backend.local.drop_cache,
        direct_io: cfg.backend.local.direct_io,
    };
    let mut v: Vec<std::sync::Arc<dyn tlog::backend::Backend>> = Vec::new();
    for d in cfg.local_dirs() {
        let b: std::sync::Arc<dyn tlog::backend::Backend> = if d.is_dir() {
            match tlog::backend::local::LocalBackend::open(&d, opts.clone()) {
                Ok(b) => std::sync::Arc::new(b),
                Err(e) => {
                    tracing::warn!("store {} unusable ({e}): treating it as lost", d.display());
                    std::sync::Arc::new(Lost(d.display().to_string()))
                }
            }
        } else {
            std::sync::Arc::new(Lost(d.display().to_string()))
        };
        v.push(b);
    }
    Ok(v)
}

/// A backend that is gone: every call fails.
struct Lost(String);

impl tlog::backend::Backend for Lost {
    fn name(&self) -> String {
        format!("local {} (missing)", self.0)
    }
    fn put_batch(&self, _: &[(&tlog::backend::Key, &[u8])], _: &[(&str, &[u8])]) -> tlog::Result<()> {
        Err(tlog::Error::Backend { backend: self.name(), detail: "store directory missing".into() })
    }
    fn get(&self, _: &tlog::backend::Key) -> tlog::Result<Option<Vec<u8>>> {
        Err(tlog::Error::Backend { backend: self.name(), detail: "store directory missing".into() })
    }
    fn delete(&self, _: &tlog::backend::Key) -> tlog::Result<()> {
        Err(tlog::Error::Backend { backend: self.name(), detail: "store directory missing".into() })
    }
    fn get_head(&self, _: &str) -> tlog::Result<Option<Vec<u8>>> {
        Err(tlog::Error::Backend { backend: self.name(), detail: "store directory missing".into() })
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
