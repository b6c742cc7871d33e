//! `tlog bench`: a load generator (N connections, one vdisk each, synthetic blocks of a chosen
//! lz4 compressibility) and a raw sink that speaks the protocol and acks as tlogd would, so a
//! path's ceiling is measured with the same client.

use crate::client::{Client, ClientConfig};
use crate::error::{Error, IoContext, Result};
use crate::session::{Progress, Protocol};
use crate::wire::{
    decode_client_message, decode_handshake_request, encode_handshake_response, encode_server_message, ClientMessage, FrameDecoder, HandshakeResponse,
    HandshakeStatus, ServerMessage, PROTOCOL_VERSION,
};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One connection's result: blocks, bytes, received and flushed latencies (ns), errors.
type ConnResult = (u64, u64, Vec<u64>, Vec<u64>, u64);

/// Which ack ends a block's life in the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckLevel {
    /// In the server's memory.
    Received,
    /// Durable.
    Flushed,
}

/// Load generator settings.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Server address.
    pub server: String,
    /// Connections (one vdisk each).
    pub vdisks: usize,
    /// Bytes per block.
    pub block_size: usize,
    /// lz4 compressibility: 0 = random, 0.5 ≈ 2:1.
    pub compressibility: f64,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Or after this many blocks per vdisk.
    pub blocks: Option<u64>,
    /// The ack level that counts.
    pub ack: AckLevel,
    /// Vdisk id prefix.
    pub prefix: String,
    /// Print a progress line each second to stderr.
    pub progress: bool,
    /// Blocks each connection keeps in flight (sent, not yet flushed) at most, like a block
    /// server's queue depth (`--window-blocks`, default [`DEFAULT_WINDOW_BLOCKS`]).
    pub window_blocks: usize,
}

/// `tlog bench`'s default window: two aggregations of the default flush_size (1024), one
/// filling while the one before it is written. A deeper window adds latency (Little's law:
/// window / throughput) and memory on both sides, not throughput; measured on 8 vdisks x 4 KiB
/// (README "Performance").
pub const DEFAULT_WINDOW_BLOCKS: usize = 2048;

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
}

/// What a run measured.
#[derive(Clone, Debug, Default)]
pub struct BenchReport {
    /// Blocks acked at the chosen level.
    pub blocks: u64,
    /// Payload bytes.
    pub bytes: u64,
    /// Seconds from the first send to the last ack.
    pub seconds: f64,
    /// Received-ack latency.
    pub received: Percentiles,
    /// Flushed-ack latency (empty in received mode).
    pub flushed: Percentiles,
    /// Server errors and failed connections.
    pub errors: u64,
}

impl BenchReport {
    /// Blocks per second.
    pub fn blocks_per_sec(&self) -> f64 {
        self.blocks as f64 / self.seconds.max(1e-9)
    }

    /// MiB per second.
    pub fn mib_per_sec(&self) -> f64 {
        self.bytes as f64 / 1048576.0 / self.seconds.max(1e-9)
    }

    /// One JSON object.
    pub fn json(&self) -> String {
        let p = |x: &Percentiles| format!("{{\"p50\":{:.1},\"p99\":{:.1},\"p99_9\":{:.1}}}", x.p50, x.p99, x.p999);
        format!(
            "{{\"blocks\":{},\"bytes\":{},\"seconds\":{:.3},\"blocks_per_sec\":{:.1},\"mib_per_sec\":{:.2},\"received_latency_us\":{},\"flushed_latency_us\":{},\"errors\":{}}}",
            self.blocks,
            self.bytes,
            self.seconds,
            self.blocks_per_sec(),
            self.mib_per_sec(),
            p(&self.received),
            p(&self.flushed),
            self.errors
        )
    }

    /// Human-readable lines.
    pub fn text(&self) -> String {
        format!(
            "blocks {} bytes {} in {:.3} s: {:.0} blocks/s, {:.1} MiB/s\nreceived ack latency us: p50 {:.1} p99 {:.1} p99.9 {:.1}\nflushed ack latency us:  p50 {:.1} p99 {:.1} p99.9 {:.1}\nerrors {}",
            self.blocks,
            self.bytes,
            self.seconds,
            self.blocks_per_sec(),
            self.mib_per_sec(),
            self.received.p50,
            self.received.p99,
            self.received.p999,
            self.flushed.p50,
            self.flushed.p99,
            self.flushed.p999,
            self.errors
        )
    }
}

fn percentiles(mut v: Vec<u64>) -> Percentiles {
    if v.is_empty() {
        return Percentiles::default();
    }
    v.sort_unstable();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize] as f64 / 1000.0;
    Percentiles { p50: at(0.5), p99: at(0.99), p999: at(0.999) }
}

/// Synthetic block payloads whose lz4 compressibility is about `r`: a random prefix of
/// `(1 - r) * size` bytes and a run of one byte value for the rest (lz4 shrinks the run to a
/// few bytes, so 0.5 gives about 2:1). `count` distinct payloads, from a fixed seed.
pub fn payloads(size: usize, r: f64, count: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let random = ((1.0 - r.clamp(0.0, 1.0)) * size as f64) as usize;
    (0..count)
        .map(|i| {
            let mut v = vec![(i % 251) as u8 | 1; size];
            for b in v[..random].chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let n = b.len();
                b.copy_from_slice(&x.to_le_bytes()[..n]);
            }
            v
        })
        .collect()
}

/// Runs the load generator. Bounded by `duration` or `blocks` (one must be set).
pub fn run(cfg: &BenchConfig) -> Result<BenchReport> {
    if cfg.duration.is_none() && cfg.blocks.is_none() {
        return Err(Error::InvalidArgument("give --duration or --blocks".into()));
    }
    if cfg.window_blocks == 0 {
        return Err(Error::InvalidArgument("--window-blocks 0: at least 1".into()));
    }
    if cfg.block_size == 0 || !cfg.block_size.is_multiple_of(512) {
        return Err(Error::InvalidArgument(format!("--block-size {}: a positive multiple of 512", cfg.block_size)));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = cfg.duration.map(|d| start + d);
    let mut handles = Vec::new();
    for v in 0..cfg.vdisks {
        let cfg = cfg.clone();
        let stop = stop.clone();
        let sent = sent.clone();
        handles.push(std::thread::spawn(move || -> Result<ConnResult> {
            let mut cc = ClientConfig::new(&cfg.server, &format!("{}{v}", cfg.prefix));
            cc.reconnect_timeout = Duration::from_secs(10);
            // A server that stops flushing (a full disk, a lost quorum) ends the run with
            // errors within a minute instead of holding it.
            cc.send_timeout = Duration::from_secs(60);
            cc.flush_timeout = Duration::from_secs(60);
            cc.window_bytes = 64 << 20;
            cc.window_blocks = cfg.window_blocks;
            let client = Client::connect(cc)?;
            client.record_latencies();
            let data = payloads(cfg.block_size, cfg.compressibility, 64, v as u64 + 1);
            let sectors = (cfg.block_size / 512) as u64;
            let mut n = 0u64;
            loop {
                if cfg.blocks.map(|b| n >= b).unwrap_or(false) || stop.load(Ordering::Relaxed) || deadline.map(|d| Instant::now() >= d).unwrap_or(false) {
                    break;
                }
                client.write((n % 262_144) * sectors, data[(n % 64) as usize].clone())?;
                n += 1;
                sent.fetch_add(1, Ordering::Relaxed);
            }
            match cfg.ack {
                AckLevel::Received => client.wait_received(Duration::from_secs(120))?,
                AckLevel::Flushed => client.flush()?,
            }
            let lat = client.take_latencies();
            let errors = client.errors();
            let _ = client.close();
            Ok((n, n * cfg.block_size as u64, lat.received, lat.flushed, errors))
        }));
    }
    let progress = cfg.progress && std::io::stderr().is_terminal();
    let mut last = (Instant::now(), 0u64);
    while handles.iter().any(|h| !h.is_finished()) {
        std::thread::sleep(Duration::from_millis(100));
        if progress && last.0.elapsed() >= Duration::from_secs(1) {
            let s = sent.load(Ordering::Relaxed);
            let rate = (s - last.1) as f64 / last.0.elapsed().as_secs_f64();
            eprint!(
                "\r{:>6.1} s  {:>10} blocks sent  {:>9.0} blocks/s  {:>8.1} MiB/s   ",
                start.elapsed().as_secs_f64(),
                s,
                rate,
                rate * cfg.block_size as f64 / 1048576.0
            );
            last = (Instant::now(), s);
        }
        if deadline.map(|d| Instant::now() > d + Duration::from_secs(300)).unwrap_or(false) {
            stop.store(true, Ordering::SeqCst);
        }
    }
    if progress {
        eprintln!();
    }
    let seconds = start.elapsed().as_secs_f64();
    let mut rep = BenchReport { seconds, ..Default::default() };
    let (mut rl, mut fl) = (Vec::new(), Vec::new());
    for h in handles {
        match h.join() {
            Ok(Ok((n, b, r, f, e))) => {
                rep.blocks += n;
                rep.bytes += b;
                rl.extend(r);
                fl.extend(f);
                rep.errors += e;
            }
            Ok(Err(e)) => {
                tracing::error!("bench connection failed: {e}");
                rep.errors += 1;
            }
            Err(_) => rep.errors += 1,
        }
    }
    rep.received = percentiles(rl);
    rep.flushed = percentiles(fl);
    Ok(rep)
}

/// The sink: speaks the handshake, parses every frame and discards it, acking each read batch
/// as received and flushed at once, served by the kernel front-end's loop. Serves until `stop`
/// is set or `max` has passed.
pub fn sink(listen: &str, stop: Arc<AtomicBool>, max: Duration) -> Result<()> {
    let l = crate::net::kernel::bind(listen)?;
    eprintln!("tlog bench sink: listening on {}", l.local_addr().map(|a| a.to_string()).unwrap_or_default());
    let st = stop.clone();
    std::thread::Builder::new()
        .name("sink-timer".into())
        .spawn(move || {
            let end = Instant::now() + max;
            while !st.load(Ordering::SeqCst) && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(50));
            }
            st.store(true, Ordering::SeqCst);
        })
        .ctx(|| "spawn sink timer".into())?;
    let rules = crate::net::Rules { max_connections: 4096, handshake_timeout: Duration::from_secs(60), idle_timeout: None };
    crate::net::kernel::serve(l, sink_factory(), rules, stop)
}

/// Makes a [`SinkSession`] per connection (for a front-end's serve loop, e.g. `tlogd --sink`).
pub fn sink_factory() -> crate::net::Factory {
    Arc::new(|_peer: String| Box::new(SinkSession::new()) as Box<dyn Protocol>)
}

/// The sink's protocol side, sans-IO (driven by the kernel sink above and by the userspace
/// stack under `tlogd --sink`): answers the handshake, parses every frame, checks each
/// block's BLAKE3 hash and acks every batch of bytes fed to it as received and flushed at
/// once. Nothing is kept.
#[derive(Default)]
pub struct SinkSession {
    dec: Option<FrameDecoder>,
    attached: bool,
    out: Vec<u8>,
}

impl SinkSession {
    /// A session before its handshake.
    pub fn new() -> SinkSession {
        SinkSession { dec: Some(FrameDecoder::new(64 << 20)), attached: false, out: Vec::new() }
    }

    fn decoder(&mut self) -> &mut FrameDecoder {
        self.dec.get_or_insert_with(|| FrameDecoder::new(64 << 20))
    }

    /// Feeds received bytes. Errors: a frame that does not parse (the connection should close).
    pub fn on_bytes(&mut self, data: &[u8]) -> Result<()> {
        self.decoder().push(data);
        self.process()
    }

    fn process(&mut self) -> Result<()> {
        let dec = self.dec.get_or_insert_with(|| FrameDecoder::new(64 << 20));
        let mut run: Option<(u64, u64)> = None;
        while let Some(f) = dec.next_frame_ref()? {
            if !self.attached {
                decode_handshake_request(f)?;
                self.out.extend_from_slice(&encode_handshake_response(&HandshakeResponse {
                    version: PROTOCOL_VERSION,
                    status: HandshakeStatus::Ok,
                    last_flushed_sequence: 0,
                    has_flushed: false,
                    message: "sink".into(),
                    epoch: 1,
                }));
                self.attached = true;
                continue;
            }
            match decode_client_message(f)? {
                ClientMessage::Block(b) => {
                    if blake3::hash(&b.data).as_bytes() == &b.hash {
                        run = Some(run.map(|(f, _)| (f, b.sequence)).unwrap_or((b.sequence, b.sequence)));
                    }
                }
                ClientMessage::ForceFlush => self.out.extend_from_slice(&encode_server_message(&ServerMessage::ForceFlushReceived)),
                ClientMessage::Disconnect | ClientMessage::Fetch(_) => {}
            }
        }
        if let Some((f, l)) = run {
            self.out.extend_from_slice(&encode_server_message(&ServerMessage::Received(f, l)));
            self.out.extend_from_slice(&encode_server_message(&ServerMessage::Flushed(f, l)));
        }
        Ok(())
    }
}

impl Protocol for SinkSession {
    fn receive_buffer(&mut self, min: usize) -> &mut [u8] {
        self.decoder().receive_buffer(min)
    }

    fn on_received(&mut self, n: usize) -> Progress {
        self.decoder().commit(n);
        match self.process() {
            Ok(()) => Progress::Ready,
            Err(e) => {
                tracing::debug!("sink connection: {e}");
                Progress::Close
            }
        }
    }

    fn resume(&mut self) -> Progress {
        Progress::Ready
    }

    fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    fn take_acks(&mut self) -> Option<crossbeam_channel::Receiver<crate::flush::Ack>> {
        None
    }

    fn wait(&self, timeout: Duration) {
        std::thread::sleep(timeout.min(Duration::from_millis(1)));
    }

    fn attached(&self) -> bool {
        self.attached
    }

    fn close(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Protocol;
    use crate::wire::{decode_handshake_response, decode_server_message, encode_client_message, encode_handshake_request, Block, HandshakeRequest, Operation};

    fn frames(bytes: &[u8]) -> Vec<crate::wire::Frame> {
        let mut d = FrameDecoder::new(1 << 20);
        d.push(bytes);
        let mut v = Vec::new();
        while let Some(f) = d.next_frame().unwrap() {
            v.push(f);
        }
        v
    }

    #[test]
    fn sink_session_answers_the_handshake_and_acks_good_blocks_only() {
        let mut s = SinkSession::new();
        let hs = encode_handshake_request(&HandshakeRequest {
            version: PROTOCOL_VERSION,
            vdisk_id: "v".into(),
            first_sequence: 1,
            token: String::new(),
            reset_first_sequence: false,
            resume_epoch: 0,
            kind: Default::default(),
        });
        // Fed in two pieces: a frame split across reads still parses.
        s.on_bytes(&hs[..3]).unwrap();
        assert!(!s.has_output());
        s.on_bytes(&hs[3..]).unwrap();
        let f = frames(&s.take_output());
        assert_eq!(decode_handshake_response(&f[0]).unwrap().status, HandshakeStatus::Ok);
        let mut bytes = Vec::new();
        for i in 1..=3u64 {
            let mut b = Block::new(i, i, Operation::Write, vec![i as u8; 4096], 4096, 0);
            if i == 3 {
                b.hash[0] ^= 1; // a bad hash is not acked
            }
            bytes.extend_from_slice(&encode_client_message(&ClientMessage::Block(b)));
        }
        s.on_bytes(&bytes).unwrap();
        let acks: Vec<ServerMessage> = frames(&s.take_output()).iter().map(|f| decode_server_message(f).unwrap()).collect();
        assert_eq!(acks, vec![ServerMessage::Received(1, 2), ServerMessage::Flushed(1, 2)]);
        assert!(s.on_bytes(&[0xff; 64]).is_err(), "garbage is an error, so the connection closes");
    }
}
