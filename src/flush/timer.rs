//! The flush timer: queues every current buffer whose oldest block has waited `flush_time`.
//! [`tick`] takes the time as an argument (the thread reads the engine's clock), so tests with a
//! manual clock drive it deterministically.

use super::{lock, Shared};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Queues the buffers due at monotonic time `now`.
pub(crate) fn tick(sh: &Shared, now: Duration) {
    for vd in sh.loaded() {
        let rotated = {
            let mut ns = lock(&vd.ns);
            ns.due(now, sh.limits.flush_time) && ns.rotate()
        };
        if rotated {
            sh.queue_flush(&vd);
        }
    }
}

/// The timer thread's body: ticks every quarter of `flush_time` (1 to 50 ms) until closed.
pub(crate) fn run(sh: Arc<Shared>) {
    let period = (sh.limits.flush_time / 4).clamp(Duration::from_millis(1), Duration::from_millis(50));
    while !sh.closed.load(Ordering::SeqCst) {
        std::thread::sleep(period);
        tick(&sh, sh.clock.monotonic());
    }
}
