//! Builds the server from its configuration: the AES key, auth tokens, Redis password, the
//! backends (for the engine, with a degraded start; or read-only for tools), the engine and the
//! front-end, and runs tlogd until a stop signal ([`run`]). Config stays data; this is where it
//! turns into parts.

use crate::backend::local::{store_state, LocalBackend, StoreState};
use crate::backend::redis::{RedisBackend, RedisSettings};
use crate::backend::{Backend, Reopening, Unusable};
use crate::config::{BackendKind, Config, LocalConfig, NetMode};
use crate::error::{Error, IoContext, Result};
use crate::flush::Engine;
use crate::seal::{SealKey, Sealer};
use crate::session::{Auth, Session, SessionLimits};
use crate::store::BigLogOptions;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

impl From<&LocalConfig> for BigLogOptions {
    fn from(l: &LocalConfig) -> Self {
        BigLogOptions {
            segment_bytes: l.segment_bytes,
            index_capacity: l.index_capacity,
            drop_cache: l.drop_cache,
            direct_io: l.direct_io,
            zero_fill_bytes: l.zero_fill_bytes,
        }
    }
}

/// Loads the AES key: from `crypto.key_env` when that variable is set, else from the key file.
/// With `generate`, a missing default key file is created (mode 0600); returns the key and,
/// when one was generated, its path.
///
/// Errors: the variable or file does not hold 64 hex digits; the file is missing (and not the
/// default one to generate); the file is readable by group or others (its mode is named).
pub fn load_key(cfg: &Config, generate: bool) -> Result<(SealKey, Option<PathBuf>)> {
    if !cfg.crypto.key_env.is_empty() {
        if let Ok(v) = std::env::var(&cfg.crypto.key_env) {
            return Ok((SealKey::from_hex(&v).map_err(|e| Error::Config(format!("environment variable {}: {e}", cfg.crypto.key_env)))?, None));
        }
    }
    let p = cfg.key_file();
    if p.exists() || !generate || !cfg.crypto.key_file.is_empty() {
        if !p.exists() {
            return Err(Error::Config(format!(
                "AES key file {} does not exist (set crypto.key_file, {} or run tlogd once to generate one)",
                p.display(),
                cfg.crypto.key_env
            )));
        }
        check_private(&p)?;
        return Ok((SealKey::load(&p)?, None));
    }
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).ctx(|| format!("create {}", d.display()))?;
    }
    let k = SealKey::generate()?;
    k.store_new(&p)?;
    Ok((k, Some(p)))
}

/// Refuses a secret file that group or others may read.
fn check_private(p: &std::path::Path) -> Result<()> {
    let mode = std::fs::metadata(p).ctx(|| format!("stat {}", p.display()))?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(Error::Config(format!(
            "{} is readable or writable by group or others (mode {:o}): a secret must be private; chmod 600 it",
            p.display(),
            mode & 0o777
        )));
    }
    Ok(())
}

/// The accepted auth tokens. Auth is off only when neither source is configured: a configured
/// source that holds no token is an error (never "no auth").
///
/// Errors: the tokens file is missing or unreadable, or holds no token; the variable is unset
/// or holds no token.
pub fn load_auth(cfg: &Config) -> Result<Auth> {
    let s = &cfg.server;
    let mut t: Vec<String> = Vec::new();
    if !s.auth_tokens_file.is_empty() {
        let p = std::path::Path::new(&s.auth_tokens_file);
        let text = std::fs::read_to_string(p).ctx(|| format!("read server.auth_tokens_file {}", p.display()))?;
        let from_file: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect();
        if from_file.is_empty() {
            return Err(Error::Config(format!(
                "server.auth_tokens_file {} holds no token (only comments or blank lines): that would turn auth off",
                p.display()
            )));
        }
        t.extend(from_file);
    }
    if !s.auth_tokens_env.is_empty() {
        let v = std::env::var(&s.auth_tokens_env)
            .map_err(|_| Error::Config(format!("server.auth_tokens_env: environment variable {} is not set", s.auth_tokens_env)))?;
        let from_env: Vec<String> = v.split(',').map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
        if from_env.is_empty() {
            return Err(Error::Config(format!("server.auth_tokens_env: environment variable {} holds no token", s.auth_tokens_env)));
        }
        t.extend(from_env);
    }
    Ok(Auth::tokens(t.iter().map(String::as_str)))
}

/// The Redis password: from `password_env` when set, else `password`.
pub fn redis_password(cfg: &Config) -> Option<String> {
    let r = &cfg.backend.redis;
    if !r.password_env.is_empty() {
        if let Ok(v) = std::env::var(&r.password_env) {
            return Some(v);
        }
    }
    (!r.password.is_empty()).then(|| r.password.clone())
}

fn redis_backends(cfg: &Config) -> Vec<Arc<dyn Backend>> {
    let r = &cfg.backend.redis;
    r.addresses
        .iter()
        .map(|a| {
            Arc::new(RedisBackend::new(RedisSettings {
                address: a.clone(),
                db: r.db,
                password: redis_password(cfg),
                durability: r.durability,
                timeout: Duration::from_millis(r.timeout_ms),
            })) as Arc<dyn Backend>
        })
        .collect()
}

/// Opens the backends for the engine (writing). Local store directories that cannot be opened
/// are unusable: tlogd starts degraded with up to k+m - write_quorum of them (each named with
/// why, and tried again every `upkeep.reopen_interval_ms`), and refuses to start past that. On
/// a fresh data directory (no store directory exists or holds anything) every store is
/// initialized; otherwise a missing or empty one is never recreated.
pub fn open_backends(cfg: &Config) -> Result<Vec<Arc<dyn Backend>>> {
    if cfg.backend.kind == BackendKind::Redis {
        return Ok(redis_backends(cfg));
    }
    let dirs = cfg.local_dirs();
    let opts = BigLogOptions::from(&cfg.backend.local);
    let fresh = dirs.iter().all(|d| matches!(store_state(d), StoreState::Missing | StoreState::Empty));
    if fresh {
        for d in &dirs {
            LocalBackend::init(d)?;
        }
        tracing::info!(
            "initialized {} new store directories under {}",
            dirs.len(),
            dirs.first().and_then(|d| d.parent()).unwrap_or(&cfg.server.data_dir).display()
        );
    }
    let mut v: Vec<Arc<dyn Backend>> = Vec::new();
    let mut unusable = Vec::new();
    for d in dirs {
        match LocalBackend::open(&d, opts.clone()) {
            Ok(b) => v.push(Arc::new(b)),
            Err(e) => {
                let name = format!("local {}", d.display());
                let why = e.to_string();
                tracing::error!("store {} unusable: {why}", d.display());
                unusable.push(format!("{}: {why}", d.display()));
                let (dir, o) = (d.clone(), opts.clone());
                let interval = Duration::from_millis(cfg.upkeep.reopen_interval_ms);
                v.push(Arc::new(Reopening::new(name, why, interval, Box::new(move || Ok(Arc::new(LocalBackend::open(&dir, o.clone())?) as Arc<dyn Backend>)))));
            }
        }
    }
    let n = v.len();
    let allowed = n - cfg.write_quorum().min(n);
    if unusable.len() > allowed {
        return Err(Error::Config(format!(
            "{} of {n} store directories are unusable, at most {allowed} may be (k+m - write_quorum, write_quorum = {}): {}",
            unusable.len(),
            cfg.write_quorum(),
            unusable.join("; ")
        )));
    }
    if !unusable.is_empty() {
        tracing::warn!(
            "tlogd runs degraded: {} of {n} store directories unusable ({}); their shards go to the repair queue, and they are tried again every {} ms",
            unusable.len(),
            unusable.join("; "),
            cfg.upkeep.reopen_interval_ms
        );
    }
    Ok(v)
}

/// Opens the backends for reading only (restore, scrub, history while tlogd may run): a store
/// directory that cannot be opened becomes an [`Unusable`] backend carrying the real reason
/// (readers tolerate up to m), never an empty store.
pub fn open_backends_read_only(cfg: &Config) -> Vec<Arc<dyn Backend>> {
    if cfg.backend.kind == BackendKind::Redis {
        return redis_backends(cfg);
    }
    cfg.local_dirs()
        .into_iter()
        .map(|d| match LocalBackend::open_read_only(&d) {
            Ok(b) => Arc::new(b) as Arc<dyn Backend>,
            Err(e) => {
                tracing::warn!("store {} unusable ({e}): treating it as lost", d.display());
                Arc::new(Unusable::new(format!("local {}", d.display()), e.to_string())) as Arc<dyn Backend>
            }
        })
        .collect()
}

/// Opens the backends for an offline writer (`tlog repair`, `tlog scrub --repair`): like the
/// engine's, except that an unusable store is only reported (nothing reopens it).
pub fn open_backends_offline(cfg: &Config) -> Vec<Arc<dyn Backend>> {
    if cfg.backend.kind == BackendKind::Redis {
        return redis_backends(cfg);
    }
    let opts = BigLogOptions::from(&cfg.backend.local);
    cfg.local_dirs()
        .into_iter()
        .map(|d| match LocalBackend::open(&d, opts.clone()) {
            Ok(b) => Arc::new(b) as Arc<dyn Backend>,
            Err(e) => Arc::new(Unusable::new(format!("local {}", d.display()), e.to_string())) as Arc<dyn Backend>,
        })
        .collect()
}

/// What `tlogd --check-config` checks beyond parsing: the key (its file's permissions; a
/// missing default key file is fine, tlogd generates it), the auth tokens, the store
/// directories. Returns the summary line.
pub fn check(cfg: &Config) -> Result<String> {
    if cfg.net.mode == NetMode::Dpdk && !cfg!(feature = "dpdk") {
        return Err(Error::Config("net.mode = \"dpdk\": this tlogd was built without the dpdk feature (cargo build --features dpdk)".into()));
    }
    let default_key_missing = cfg.crypto.key_file.is_empty() && !cfg.key_file().exists() && std::env::var(&cfg.crypto.key_env).is_err();
    if !default_key_missing {
        load_key(cfg, false)?;
    }
    let auth = load_auth(cfg)?;
    let mut notes = Vec::new();
    if cfg.backend.kind == BackendKind::Local {
        let dirs = cfg.local_dirs();
        let fresh = dirs.iter().all(|d| matches!(store_state(d), StoreState::Missing | StoreState::Empty));
        if !fresh {
            for d in &dirs {
                match store_state(d) {
                    StoreState::Initialized | StoreState::Legacy => {}
                    s => notes.push(format!("store {} is {s:?}: unusable until `tlog store init`", d.display())),
                }
            }
        }
    }
    let mut s = format!("configuration OK: {}, auth {}", cfg.summary(), if auth.required() { "on" } else { "off" });
    for n in notes {
        s.push_str("; ");
        s.push_str(&n);
    }
    Ok(s)
}

/// Runs tlogd on `cfg` until `stop` is set: the engine and the configured front-end (with
/// `sink`, the benchmark sink on the front-end instead of storing); then a clean shutdown that
/// flushes what is buffered.
pub fn run(cfg: Config, sink: bool, stop: Arc<AtomicBool>) -> Result<()> {
    if cfg.net.mode == NetMode::Dpdk && !cfg!(feature = "dpdk") {
        return Err(Error::Config("net.mode = \"dpdk\": this tlogd was built without the dpdk feature (cargo build --features dpdk)".into()));
    }
    if sink {
        let f = crate::bench::sink_factory();
        return match cfg.net.mode {
            NetMode::Kernel => crate::bench::sink(&cfg.server.listen, stop, Duration::from_secs(100 * 365 * 86_400)),
            mode => serve_front_end(mode, f, &cfg, stop, Default::default()),
        };
    }
    std::fs::create_dir_all(&cfg.server.data_dir).ctx(|| format!("create data directory {}", cfg.server.data_dir.display()))?;
    let auth = load_auth(&cfg)?;
    let (key, generated) = load_key(&cfg, true)?;
    if let Some(p) = generated {
        tracing::warn!("generated a new AES-256 key in {} (mode 0600): keep a copy, restores need it", p.display());
        eprintln!("tlogd: generated a new AES-256 key in {} (mode 0600); keep a copy, restores need it", p.display());
    }
    let sealer = Sealer::new(key, cfg.flush.k, cfg.flush.m)?;
    let backends = open_backends(&cfg)?;
    let cfg = Arc::new(cfg);
    let engine = Engine::start(cfg.clone(), sealer, backends, crate::time::SystemClock::shared())?;
    let limits = Arc::new(SessionLimits::from_config(&cfg, auth));
    let e = engine.clone();
    let published = Arc::new(crate::net::FrontendStats::default());
    let metrics = start_metrics(&cfg, &engine, &limits, &published, stop.clone());
    let factory: crate::net::Factory = Arc::new(move |peer| Box::new(Session::new(e.clone(), limits.clone(), peer)));
    let served = serve_front_end(cfg.net.mode, factory, &cfg, stop, published);
    if let Some(h) = metrics {
        let _ = h.join();
    }
    tracing::info!("shutting down: flushing buffers");
    let clean = engine.shutdown(Duration::from_secs(30));
    if !clean {
        tracing::warn!("some blocks stayed unflushed at shutdown, or a thread did not stop; clients resend what is not flushed on reconnect");
    }
    tracing::info!("stopped");
    served
}

/// The engine and the front-end's connections, as a metrics source.
struct Live {
    engine: Arc<Engine>,
    limits: Arc<SessionLimits>,
    mode: &'static str,
    published: Arc<crate::net::FrontendStats>,
}

impl crate::metrics::Source for Live {
    fn snapshot(&self) -> crate::metrics::Snapshot {
        let (flush_latency, backend_latency) = self.engine.histograms();
        crate::metrics::Snapshot {
            engine: self.engine.metrics(),
            flush_latency,
            backend_latency,
            frontend: (self.mode.to_string(), self.limits.connections.load(std::sync::atomic::Ordering::Relaxed)),
            dpdk: self.published.dpdk.lock().ok().and_then(|d| d.clone()),
        }
    }
}

/// Serves metrics on `server.metrics_listen` unless it is empty; an address that cannot be
/// bound is logged and metrics stay off (they are not worth refusing to run for).
fn start_metrics(
    cfg: &Config,
    engine: &Arc<Engine>,
    limits: &Arc<SessionLimits>,
    published: &Arc<crate::net::FrontendStats>,
    stop: Arc<AtomicBool>,
) -> Option<std::thread::JoinHandle<()>> {
    let listen = cfg.server.metrics_listen.trim();
    if listen.is_empty() {
        return None;
    }
    let src: Arc<dyn crate::metrics::Source> =
        Arc::new(Live { engine: engine.clone(), limits: limits.clone(), mode: cfg.net.mode.as_str(), published: published.clone() });
    match crate::metrics::serve(listen, src, stop) {
        Ok((addr, h)) => {
            tracing::info!("metrics at http://{addr}/metrics");
            eprintln!("tlogd: metrics at http://{addr}/metrics");
            Some(h)
        }
        Err(e) => {
            tracing::warn!("{e}: metrics are off (set server.metrics_listen to a free address, or \"\" to turn them off)");
            eprintln!("tlogd: {e}: metrics are off");
            None
        }
    }
}

fn serve_front_end(mode: NetMode, factory: crate::net::Factory, cfg: &Config, stop: Arc<AtomicBool>, published: Arc<crate::net::FrontendStats>) -> Result<()> {
    #[cfg(not(feature = "dpdk"))]
    let _ = published;
    match mode {
        NetMode::Tap => crate::net::tap::serve(factory, cfg, stop),
        #[cfg(feature = "dpdk")]
        NetMode::Dpdk => crate::net::dpdk::serve(factory, cfg, stop, published),
        #[cfg(not(feature = "dpdk"))]
        NetMode::Dpdk => Err(Error::Config("net.mode = \"dpdk\" needs a build with the dpdk feature".into())),
        NetMode::Kernel => {
            let listener = crate::net::kernel::bind(&cfg.server.listen)?;
            let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| cfg.server.listen.clone());
            tracing::info!(
                "tlogd listening on {addr} (kernel TCP); backend {} k={} m={} write_quorum={}; data in {}",
                cfg.backend.kind.as_str(),
                cfg.flush.k,
                cfg.flush.m,
                cfg.write_quorum(),
                cfg.server.data_dir.display()
            );
            eprintln!("tlogd: listening on {addr}");
            crate::net::kernel::serve(listener, factory, crate::net::Rules::from_config(cfg), stop)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_fails_closed() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("tokens");
        std::fs::write(&f, "# only a comment\n\n   \n").unwrap();
        let mut c = Config::default();
        c.server.auth_tokens_file = f.display().to_string();
        let e = load_auth(&c).unwrap_err().to_string();
        assert!(e.contains("holds no token"), "{e}");
        std::fs::write(&f, "# ops\nt0k3n\n").unwrap();
        let a = load_auth(&c).unwrap();
        assert!(a.allows("t0k3n") && !a.allows("") && !a.allows("anything"));
        c.server.auth_tokens_file = d.path().join("missing").display().to_string();
        assert!(load_auth(&c).unwrap_err().to_string().contains("missing"));
        let mut c = Config::default();
        c.server.auth_tokens_env = "TLOG_TEST_TOKENS_UNSET_VARIABLE".into();
        assert!(load_auth(&c).unwrap_err().to_string().contains("not set"));
        assert!(!load_auth(&Config::default()).unwrap().required());
    }

    #[test]
    fn key_files_must_be_private() {
        let d = tempfile::tempdir().unwrap();
        let mut c = Config::default();
        c.server.data_dir = d.path().to_path_buf();
        c.crypto.key_env = String::new();
        let (_, p) = load_key(&c, true).unwrap();
        let p = p.unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        load_key(&c, false).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_key(&c, false).unwrap_err().to_string();
        assert!(e.contains("644") && e.contains("chmod 600"), "{e}");
        assert!(check(&c).unwrap_err().to_string().contains("chmod 600"));
    }
}
