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
use tlog::config::Config;

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
    /// Validate the configuration (and the key file's permissions, the auth tokens, the store
    /// directories), print a summary and exit (0 when valid).
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
    c.validate()?;
    Ok(c)
}

fn run(args: Args) -> tlog::Result<()> {
    let cfg = load(&args)?;
    if args.check_config {
        println!("{}", tlog::server::check(&cfg)?);
        return Ok(());
    }
    #[cfg(feature = "dpdk")]
    if cfg.net.mode == tlog::config::NetMode::Dpdk {
        // Before any thread starts: only the poll loops take DPDK's SIGIO (sys/dpdk/signals.rs).
        tlog::sys::dpdk::signals::block_sigio()?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).map_err(|e| tlog::Error::io("install signal handler", e))?;
    }
    tlog::server::run(cfg, args.sink, stop)
}

fn main() -> ExitCode {
    tlog::logging::init("info");
    // Test builds only: fail points armed from the FAILPOINTS environment variable.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tlogd: error: {e}");
            ExitCode::from(2)
        }
    }
}
