//! tlogd: the tlog server.
//!
//! `tlogd` with no arguments runs on embedded defaults: kernel TCP on 127.0.0.1:11211, the
//! local store under ./tlog-data, k=4, m=2; on first start it generates an AES-256 key in the
//! data directory (mode 0600) and says where.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tlog::config::Config;
use tlog::flush::Sealer;
use tlog::namespace::{Engine, EngineConfig};

/// The tlog server: receives block writes, seals them into aggregations, stores k+m shards.
#[derive(Parser, Debug)]
#[command(name = "tlogd", version, about)]
struct Args {
    /// Configuration file (TOML); embedded defaults when absent.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Overrides server.data_dir.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Overrides server.listen (IP:port).
    #[arg(long)]
    listen: Option<String>,
    /// Validate the configuration, print a summary and exit (0 when valid).
    #[arg(long)]
    check_config: bool,
    /// Serve the benchmark sink on the configured front-end instead of storing: handshake,
    /// every frame parsed and hash-checked, each batch acked received and flushed at once,
    /// nothing kept (the ceiling of a path for `tlog bench`; scripts/bench.sh uses it for the
    /// tap and dpdk rows). In kernel mode it is `tlog bench --sink --listen`.
    #[arg(long)]
    sink: bool,
}

fn load(args: &Args) -> tlog::Result<Config> {
    let mut c = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(d) = &args.data_dir {
        c.server.data_dir = d.clone();
    }
    if let Some(l) = &args.listen {
        c.server.listen = l.clone();
    }
    c.net.sink = args.sink;
    c.validate()?;
    Ok(c)
}

fn run(args: Args) -> tlog::Result<()> {
    let cfg = load(&args)?;
    if args.check_config {
        println!(
            "configuration OK: net.mode {}, listen {}, data_dir {}, backend {} k={} m={} write_quorum={}, flush_size {} blocks, flush_time {} ms",
            cfg.net.mode,
            cfg.server.listen,
            cfg.server.data_dir.display(),
            cfg.backend.kind,
            cfg.flush.k,
            cfg.flush.m,
            cfg.write_quorum(),
            cfg.flush.flush_size,
            cfg.flush.flush_time_ms
        );
        return Ok(());
    }
    if cfg.net.mode == "dpdk" && !cfg!(feature = "dpdk") {
        return Err(tlog::Error::Config("net.mode = \"dpdk\": this tlogd was built without the dpdk feature (cargo build --features dpdk)".into()));
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).map_err(|e| tlog::Error::io("install signal handler", e))?;
    }
    if args.sink && cfg.net.mode == "kernel" {
        return tlog::bench::sink(&cfg.server.listen, stop, Duration::from_secs(100 * 365 * 86_400));
    }
    #[cfg(feature = "dpdk")]
    if cfg.net.mode == "dpdk" {
        // Before any thread starts: only the poll loops take DPDK's SIGIO (net/dpdk/signals.rs).
        tlog::net::dpdk::signals::block_sigio()?;
    }
    std::fs::create_dir_all(&cfg.server.data_dir).map_err(|e| tlog::Error::io(format!("create data directory {}", cfg.server.data_dir.display()), e))?;
    let (key, generated) = cfg.load_key(true)?;
    if let Some(p) = generated {
        tracing::warn!("generated a new AES-256 key in {} (mode 0600): keep a copy, restores need it", p.display());
        eprintln!("tlogd: generated a new AES-256 key in {} (mode 0600); keep a copy, restores need it", p.display());
    }
    let sealer = Sealer::new(key, cfg.flush.k, cfg.flush.m)?;
    let backends = cfg.open_backends()?;
    let ecfg = EngineConfig::from_config(&cfg)?;
    let engine = Engine::start(ecfg, sealer, backends)?;
    if cfg.net.mode == "tap" {
        tlog::net::tap::serve(engine.clone(), &cfg, stop)?;
        return finish(&engine);
    }
    #[cfg(feature = "dpdk")]
    if cfg.net.mode == "dpdk" {
        tlog::net::dpdk::serve(engine.clone(), &cfg, stop)?;
        return finish(&engine);
    }
    let listener = tlog::net::kernel::bind(&cfg.server.listen)?;
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| cfg.server.listen.clone());
    tracing::info!(
        "tlogd listening on {addr} (kernel TCP); backend {} k={} m={} write_quorum={}; data in {}",
        cfg.backend.kind,
        cfg.flush.k,
        cfg.flush.m,
        cfg.write_quorum(),
        cfg.server.data_dir.display()
    );
    eprintln!("tlogd: listening on {addr}");
    tlog::net::kernel::serve(engine.clone(), listener, cfg.server.max_connections, stop)?;
    finish(&engine)
}

fn finish(engine: &Engine) -> tlog::Result<()> {
    tracing::info!("shutting down: flushing buffers");
    let clean = engine.shutdown(Duration::from_secs(30));
    if !clean {
        tracing::warn!("some blocks stayed unflushed at shutdown; clients resend them on reconnect");
    }
    tracing::info!("stopped");
    Ok(())
}

fn main() -> ExitCode {
    tlog::logging::init("info");
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tlogd: error: {e}");
            ExitCode::from(2)
        }
    }
}
