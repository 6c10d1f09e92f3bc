//! Receive interrupt moderation, decided by the driver each time its vCPU
//! goes idle.
//!
//! A virtio device has no interrupt timer of its own: with EVENT_IDX the
//! driver says after how many more used buffers it wants the next
//! interrupt (`used_event`), and must look again by itself (a timer) in
//! case fewer come. Under QEMU every interrupt is an exit, a wake-up of a
//! halted vCPU thread and a round of the stack, and every round that
//! receives data sends an ACK (a notification, another exit). Measured on
//! 2 vCPUs with 2 queue pairs under TCG, host→guest iperf3 with 512-byte
//! writes, 2 sessions: a vCPU woke for 3–4 frames at a time, 190 interrupts
//! and 155 notifications per MB, against 64 and 78 when one queue carried
//! both sessions, and multiqueue ran at 0.80 of single queue.
//!
//! A fixed threshold does not fit every flow: a TCP sender sends only what
//! our last ACK let it send, so asking for more frames than that burst
//! stalls the flow until the timer (measured: 8–32 frames with a 0.2–1 ms
//! timer halved throughput in half the runs). [`Adaptive`](RxModeration::Adaptive)
//! asks for as many frames as the last busy period received: a stream's
//! bursts are alike from one ACK to the next, so the interrupt comes with
//! the burst's last frame and the vCPU wakes once per burst; a burst that
//! shrinks costs one short timer wait, after which the threshold is the
//! new burst size; request/response traffic (one frame per wake-up) gets
//! an interrupt per frame, as without moderation.
//!
//! Measured side by side (same plan, TCG, 512-byte host→guest, 2/4/8
//! sessions, medians of 3): 2 queue pairs went from 453/444 Mbit/s
//! (`off`) to 648/542/542, with 38–45 instead of 165–188 interrupts and
//! 56–71 instead of 136–155 notifications per MB; one pair from 567/511 to
//! 854/670/1117. Request/response latency did not suffer with an earlier
//! version of this policy (a fixed 100 µs wait; 1-byte RR, 4 vCPUs: p50
//! 146/265/421 µs at 1/4/16 connections, against 179/292/519 with `off`);
//! one frame per wake-up, as for a single connection, sets no timer at all.

/// How a receive queue asks for interrupts when its vCPU goes idle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxModeration {
    /// An interrupt for the first frame (`rx-coalesce=off`).
    Off,
    /// After `frames` frames, or `us` µs at the latest (`rx-coalesce=N/US`).
    Fixed { frames: u16, us: u32 },
    /// After as many frames as the last period (from one idle to the
    /// next) received, at most `max`; at the latest after twice that
    /// period's length, clamped to `min_us..=max_us` (`rx-coalesce=auto`,
    /// the default).
    Adaptive { max: u16, min_us: u32, max_us: u32 },
}

impl RxModeration {
    /// The default: adaptive, up to 64 frames, between 100 and 250 µs
    /// (measured: with up to 1 ms, senders that wait for our ACK stalled
    /// more often, and throughput fell while the host CPUs idled).
    pub const DEFAULT: RxModeration = RxModeration::Adaptive { max: 64, min_us: 100, max_us: 250 };
}

/// One receive queue's moderation state.
#[derive(Clone, Debug)]
pub struct Moderator {
    mode: RxModeration,
    /// The queue's frame count when its vCPU last went idle.
    mark: u64,
    /// And the time then, in µs.
    since: u64,
}

impl Moderator {
    pub fn new(mode: RxModeration) -> Moderator {
        Moderator { mode, mark: 0, since: 0 }
    }

    /// The vCPU goes idle at `now_us` and the queue has received `frames`
    /// frames so far (a running count). Returns how many more frames should
    /// raise the interrupt and after how many µs to look anyway; `None` for
    /// an interrupt on the next frame and no timer.
    ///
    /// The adaptive wait is twice the last period: at the same rate the
    /// frames come well before it, and the timer fires only when the rate
    /// halved (a sender that waits for our ACK, or a stream that ends).
    /// A fixed short wait would fire first at any rate under `n` frames
    /// per wait, and each wake-up by the timer costs what an interrupt does.
    pub fn on_idle(&mut self, frames: u64, now_us: u64) -> Option<(u16, u32)> {
        let got = frames.wrapping_sub(self.mark);
        let period = now_us.saturating_sub(self.since);
        (self.mark, self.since) = (frames, now_us);
        let (n, us) = match self.mode {
            RxModeration::Off => return None,
            RxModeration::Fixed { frames, us } => (frames, us),
            RxModeration::Adaptive { max, min_us, max_us } => {
                let n = got.min(u64::from(max)) as u16;
                (n, period.saturating_mul(2).clamp(u64::from(min_us), u64::from(max_us.max(min_us))) as u32)
            }
        };
        (n > 1).then_some((n, us))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_always_asks_for_the_next_frame() {
        let mut m = Moderator::new(RxModeration::Off);
        assert_eq!(m.on_idle(0, 10), None);
        assert_eq!(m.on_idle(500, 20), None);
    }

    #[test]
    fn fixed_asks_for_the_same_count_every_time() {
        let mut m = Moderator::new(RxModeration::Fixed { frames: 8, us: 200 });
        assert_eq!(m.on_idle(1, 10), Some((8, 200)));
        assert_eq!(m.on_idle(100, 5000), Some((8, 200)));
        assert_eq!(m.on_idle(100, 5001), Some((8, 200)));
        // 1 is the same as no moderation.
        assert_eq!(Moderator::new(RxModeration::Fixed { frames: 1, us: 200 }).on_idle(5, 10), None);
    }

    #[test]
    fn adaptive_follows_the_size_and_length_of_the_last_period() {
        let mut m = Moderator::new(RxModeration::DEFAULT);
        // Nothing yet, or a frame per wake-up (ping, request/response): an
        // interrupt per frame, no timer.
        assert_eq!(m.on_idle(0, 1_000), None);
        assert_eq!(m.on_idle(1, 1_200), None);
        assert_eq!(m.on_idle(2, 1_400), None);
        // A stream's bursts: wait for a burst as big as the last, at most
        // twice as long as it took (at least 100 µs).
        assert_eq!(m.on_idle(14, 1_700), Some((12, 250)));
        assert_eq!(m.on_idle(26, 1_720), Some((12, 100)));
        // It grew: so does the threshold, up to the cap; the wait stops at
        // 250 µs.
        assert_eq!(m.on_idle(46, 2_120), Some((20, 250)));
        assert_eq!(m.on_idle(1046, 12_120), Some((64, 250)));
        // A shorter burst (the timer ended the wait): the new size.
        assert_eq!(m.on_idle(1051, 13_120), Some((5, 250)));
        // The stream stopped: back to an interrupt per frame.
        assert_eq!(m.on_idle(1051, 14_120), None);
        // The frame count wraps (it never does in practice: 64 bits), and a
        // clock that did not move gives the shortest wait.
        let mut w = Moderator::new(RxModeration::DEFAULT);
        (w.mark, w.since) = (u64::MAX - 1, 50);
        assert_eq!(w.on_idle(8, 50), Some((10, 100)));
    }
}
