//! Shared helpers for the integration tests: real tlogd and redis-server processes on
//! loopback, real ext4 images, skip handling (`TLOG_REQUIRE_ALL=1` turns a skip into a
//! failure). Processes are stopped by their PID when the helper is dropped.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn tlogd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tlogd"))
}

pub fn tlog_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tlog"))
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Prints `SKIP: reason` and returns true, or panics when TLOG_REQUIRE_ALL=1.
pub fn skip(reason: &str) -> bool {
    if std::env::var("TLOG_REQUIRE_ALL").map(|v| v == "1").unwrap_or(false) {
        panic!("TLOG_REQUIRE_ALL=1 and this test would skip: {reason}");
    }
    println!("SKIP: {reason}");
    true
}

pub fn have(cmd: &str) -> bool {
    let path = std::env::var("PATH").unwrap_or_default() + ":/usr/sbin:/sbin";
    path.split(':').any(|d| Path::new(d).join(cmd).is_file())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free loopback port")
}

pub fn wait_port(port: u16, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if TcpStream::connect_timeout(&format!("127.0.0.1:{port}").parse().unwrap(), Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A running tlogd.
pub struct Tlogd {
    pub child: Option<Child>,
    pub port: u16,
    pub data: PathBuf,
    pub config: Option<PathBuf>,
    /// Extra environment of the process (e.g. FAILPOINTS).
    pub env: Vec<(String, String)>,
    log: PathBuf,
}

impl Tlogd {
    pub fn start(data: &Path, config: Option<&Path>, port: u16) -> Tlogd {
        Self::start_env(data, config, port, &[])
    }

    /// [`Tlogd::start`] with extra environment variables.
    pub fn start_env(data: &Path, config: Option<&Path>, port: u16, env: &[(&str, &str)]) -> Tlogd {
        let mut t = Tlogd {
            child: None,
            port,
            data: data.to_path_buf(),
            config: config.map(Path::to_path_buf),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            log: data.with_extension("tlogd.log"),
        };
        t.spawn();
        t
    }

    /// Waits (at most `timeout`) for the process to exit by itself; returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    self.child = None;
                    return Some(st);
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    fn spawn(&mut self) {
        let mut c = Command::new(tlogd_bin());
        if let Some(cfg) = &self.config {
            c.arg("--config").arg(cfg);
        }
        c.arg("--data-dir").arg(&self.data).arg("--listen").arg(format!("127.0.0.1:{}", self.port));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("tlogd log file");
        c.stdout(Stdio::null()).stderr(log).env("TLOG_LOG", "info");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        let child = c.spawn().expect("spawn tlogd");
        self.child = Some(child);
        assert!(wait_port(self.port, Duration::from_secs(20)), "tlogd did not listen on {} (log: {})", self.port, self.log_text());
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM (clean shutdown), waits at most 40 s.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let end = Instant::now() + Duration::from_secs(40);
            loop {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                if Instant::now() > end {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!("tlogd did not stop on SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.spawn();
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for Tlogd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Real redis-server processes on loopback ports, durable (appendfsync always).
pub struct Redis {
    pub ports: Vec<u16>,
    children: Vec<Option<Child>>,
}

impl Redis {
    pub fn start(n: usize, dir: &Path) -> Redis {
        let mut r = Redis { ports: Vec::new(), children: Vec::new() };
        for i in 0..n {
            let port = free_port();
            let d = dir.join(format!("redis{i}"));
            std::fs::create_dir_all(&d).unwrap();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--dir"])
                .arg(&d)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server");
            r.ports.push(port);
            r.children.push(Some(child));
        }
        for &p in &r.ports {
            assert!(wait_port(p, Duration::from_secs(20)), "redis-server on {p} did not start");
        }
        r
    }

    /// Sends `signal` (e.g. "STOP", "CONT") to server `i`, by its PID.
    pub fn signal(&self, i: usize, signal: &str) {
        if let Some(c) = &self.children[i] {
            let st = Command::new("kill").arg(format!("-{signal}")).arg(c.id().to_string()).status().expect("run kill");
            assert!(st.success(), "kill -{signal} redis-server {i}");
        }
    }

    /// Keys in server `i` (`redis-cli DBSIZE`).
    pub fn dbsize(&self, i: usize) -> u64 {
        let o = Command::new("redis-cli").args(["-p", &self.ports[i].to_string(), "dbsize"]).output().expect("run redis-cli");
        String::from_utf8_lossy(&o.stdout).trim().parse().unwrap_or(0)
    }

    pub fn stop(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn config(&self, data: &Path, k: usize, m: usize) -> String {
        let addrs: Vec<String> = self.ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
        format!(
            "[server]\ndata_dir = \"{}\"\n[flush]\nk = {k}\nm = {m}\n[backend]\nkind = \"redis\"\n[backend.redis]\naddresses = [{}]\ndurability = \"appendfsync-always\"\ntimeout_ms = 1000\n",
            data.display(),
            addrs.join(", ")
        )
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.stop(i);
        }
    }
}

/// Builds a real ext4 image with scripts/make-test-image.sh; None (after skip) when the tools
/// are missing.
pub fn ext4_image(path: &Path, mib: u64) -> Option<PathBuf> {
    if !have("mkfs.ext4") || !have("e2fsck") {
        skip("mkfs.ext4/e2fsck missing (apt-get install e2fsprogs)");
        return None;
    }
    let out = Command::new("bash").arg(repo().join("scripts/make-test-image.sh")).arg(path).arg(mib.to_string()).output().expect("run make-test-image.sh");
    assert!(out.status.success(), "make-test-image.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    Some(path.to_path_buf())
}

/// A file of `mib` MiB mixing pseudo-random data and zero runs, seeded.
pub fn mixed_image(path: &Path, mib: usize, seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = vec![0u8; mib << 20];
    for (i, chunk) in v.chunks_mut(4096).enumerate() {
        if i % 5 == 3 {
            continue; // zero block
        }
        for b in chunk.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = b.len();
            b.copy_from_slice(&x.to_le_bytes()[..n]);
        }
        if i % 7 == 0 {
            // compressible block
            for b in chunk.iter_mut().skip(1024) {
                *b = (i % 251) as u8;
            }
        }
    }
    std::fs::write(path, v).unwrap();
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run command")
}

pub fn import(addr: &str, vdisk: &str, image: &Path) -> Output {
    run(Command::new(tlog_bin()).args(["import", "--server", addr, "--vdisk", vdisk]).arg(image))
}

pub fn restore(config: Option<&Path>, data: &Path, vdisk: &str, out: &Path) -> Output {
    let mut c = Command::new(tlog_bin());
    c.arg("restore");
    if let Some(cfg) = config {
        c.arg("--config").arg(cfg);
    }
    c.arg("--data-dir").arg(data).args(["--vdisk", vdisk, "--output"]).arg(out);
    run(&mut c)
}

pub fn assert_ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

pub fn assert_same(a: &Path, b: &Path) {
    let o = run(Command::new("cmp").arg(a).arg(b));
    assert!(o.status.success(), "restored image differs: {}", String::from_utf8_lossy(&o.stdout));
}

pub fn assert_fsck(img: &Path) {
    let o = run(Command::new(if Path::new("/usr/sbin/e2fsck").exists() { "/usr/sbin/e2fsck" } else { "e2fsck" }).arg("-fn").arg(img));
    assert!(o.status.success(), "e2fsck -fn failed: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
}

/// A directory of `files` pseudo-random files of `kib` KiB each (seeded: different seeds give
/// different content in every file block).
pub fn random_tree(dir: &Path, files: usize, kib: usize, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let mut x = seed | 1;
    for i in 0..files {
        let mut v = vec![0u8; kib << 10];
        for b in v.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
        }
        std::fs::write(dir.join(format!("f{i:03}.bin")), v).unwrap();
    }
}

/// An ext4 image of `mib` MiB at `out` (scripts/make-test-image.sh), holding a copy of `src`
/// when given; false (after skip) when the tools are missing.
pub fn ext4_from(out: &Path, mib: u64, src: Option<&Path>) -> bool {
    if !have("mkfs.ext4") || !have("e2fsck") {
        skip("mkfs.ext4/e2fsck missing (apt-get install e2fsprogs)");
        return false;
    }
    let mut c = Command::new("bash");
    c.arg(repo().join("scripts/make-test-image.sh")).arg(out).arg(mib.to_string());
    if let Some(s) = src {
        c.arg(s);
    }
    let o = run(&mut c);
    assert_ok(&o, "make-test-image.sh");
    true
}

/// Runs `tlog` with `args`.
pub fn tlog(args: &[&str]) -> Output {
    run(Command::new(tlog_bin()).args(args))
}

/// A command's stdout and stderr, as text.
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}
