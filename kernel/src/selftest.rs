//! SMP self-tests (boot option `selftest=smp`): every CPU's timer fires at
//! the requested interval, and IPIs make a round trip between CPUs through
//! their event loops (which also shows a halted CPU being woken).

use alloc::vec::Vec;
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use kernel::timers::Expired;
use log::info;

use crate::arch::percpu;
use crate::arch::time::rdtsc;
use crate::runloop::{Local, Poll};

/// Per-CPU state that carries the self-test's (composed in `main.rs`).
pub trait HasSelfTest: AsMut<SelfTest> + AsRef<SelfTest> {}
impl<S: AsMut<SelfTest> + AsRef<SelfTest>> HasSelfTest for S {}

/// The timer test's interval and number of measured intervals.
pub const TIMER_INTERVAL_NS: u64 = 10_000_000;
pub const TIMER_INTERVALS: usize = 10;
/// Round trips per target CPU in the IPI test.
const IPI_ROUNDS: usize = 5;
/// Pause between round trips so the target is halted when pinged.
const IPI_GAP_NS: u64 = 2_000_000;

const TIMER_TEST_ID: u32 = 0;
const IPI_GAP_ID: u32 = 1;

#[derive(Default)]
pub struct SelfTest {
    last_fire: u64,
    intervals: [u64; TIMER_INTERVALS],
    measured: usize,
    max_late: u64,
    ipi: Option<IpiTest>,
}

struct IpiTest {
    target: usize,
    round: usize,
    sent_at: Option<u64>,
    pausing: bool,
    /// Round-trip TSC ticks, per target CPU.
    rtts: Vec<Vec<u64>>,
    /// Per target: rounds in which its TSC reading fell inside our
    /// send..receive window (the clocks agree to within a round trip).
    clock_agreed: Vec<usize>,
}

/// Starts the timer test on this CPU.
pub fn start_timer_test<S: HasSelfTest>(local: &mut Local<S>) {
    let period = crate::arch::time::clock().nanos_to_ticks(TIMER_INTERVAL_NS);
    local.add_timer(TIMER_TEST_ID, rdtsc() + period, period, on_test_timer);
}

fn on_test_timer<S: HasSelfTest>(local: &mut Local<S>, e: Expired) {
    let now = rdtsc();
    let t = local.state.as_mut();
    t.max_late = t.max_late.max(now.saturating_sub(e.deadline));
    if t.last_fire != 0 {
        t.intervals[t.measured] = now - t.last_fire;
        t.measured += 1;
    }
    t.last_fire = now;
    if t.measured == TIMER_INTERVALS {
        local.cancel_timer(TIMER_TEST_ID);
        let clock = crate::arch::time::clock();
        let t = local.state.as_mut();
        t.intervals.sort_unstable();
        let r = &local.cpu.timer_report;
        r.firings.store(TIMER_INTERVALS as u32 + 1, Relaxed);
        r.min_ns.store(clock.ticks_to_nanos(t.intervals[0]), Relaxed);
        r.median_ns.store(clock.ticks_to_nanos(t.intervals[TIMER_INTERVALS / 2]), Relaxed);
        r.max_ns.store(clock.ticks_to_nanos(t.intervals[TIMER_INTERVALS - 1]), Relaxed);
        r.max_late_ns.store(clock.ticks_to_nanos(t.max_late), Relaxed);
        r.done.store(true, Release);
        // The boot CPU's monitor may be halted waiting for this.
        if let Some(boot_cpu) = percpu::all().first() {
            boot_cpu.wake();
        }
    }
}

/// Every CPU answers pings left in its mailbox.
pub fn answer_pings<S: HasSelfTest>(local: &mut Local<S>) -> Poll {
    let from = local.cpu.mailbox.ping_from.swap(0, Acquire);
    if from == 0 {
        return Poll::Idle;
    }
    if let Some(sender) = percpu::all().get(from as usize - 1) {
        sender.mailbox.pong_tsc.store(rdtsc(), Relaxed);
        sender.mailbox.pong_from.store(local.cpu.index + 1, Release);
        sender.wake();
    }
    Poll::Busy
}

/// Starts the IPI test on the boot CPU (a no-op with one CPU).
pub fn start_ipi_test<S: HasSelfTest>(local: &mut Local<S>) {
    // Indexed by CPU index; CPUs that failed to start stay empty.
    let n = percpu::all().len();
    local.state.as_mut().ipi = Some(IpiTest {
        target: 1,
        round: 0,
        sent_at: None,
        pausing: false,
        rtts: (0..n).map(|_| Vec::with_capacity(IPI_ROUNDS)).collect(),
        clock_agreed: alloc::vec![0; n],
    });
    local.add_work(ipi_test_step);
}

fn ipi_test_step<S: HasSelfTest>(local: &mut Local<S>) -> Poll {
    let Some(t) = local.state.as_mut().ipi.as_mut() else { return Poll::Done };
    let all = percpu::all();
    if t.target >= all.len() {
        return Poll::Done;
    }
    if t.pausing {
        return Poll::Idle;
    }
    match t.sent_at {
        None => {
            let target = &all[t.target];
            if !target.online.load(Acquire) {
                t.target += 1;
                return Poll::Busy;
            }
            t.sent_at = Some(rdtsc());
            target.mailbox.ping_from.store(local.cpu.index + 1, Release);
            target.wake();
            Poll::Busy
        }
        Some(sent) => {
            let from = local.cpu.mailbox.pong_from.swap(0, Acquire);
            if from as usize != t.target + 1 {
                return Poll::Idle;
            }
            let received = rdtsc();
            let remote = local.cpu.mailbox.pong_tsc.load(Relaxed);
            t.rtts[t.target].push(received - sent);
            if (sent..=received).contains(&remote) {
                t.clock_agreed[t.target] += 1;
            }
            t.sent_at = None;
            t.round += 1;
            if t.round == IPI_ROUNDS {
                t.round = 0;
                t.target += 1;
            }
            t.pausing = true;
            let gap = crate::arch::time::clock().nanos_to_ticks(IPI_GAP_NS);
            local.add_timer(IPI_GAP_ID, rdtsc() + gap, 0, |l, _| {
                if let Some(t) = l.state.as_mut().ipi.as_mut() {
                    t.pausing = false;
                }
            });
            Poll::Busy
        }
    }
}

/// Whether every online CPU finished its timer test and the IPI test is over.
pub fn finished<S: HasSelfTest>(local: &Local<S>) -> bool {
    let ipi_done = local.state.as_ref().ipi.as_ref().is_none_or(|t| t.target >= percpu::all().len());
    ipi_done && percpu::online().all(|c| c.timer_report.done.load(Acquire))
}

/// Logs the results, one line per CPU and per IPI target.
pub fn report<S: HasSelfTest>(local: &Local<S>) {
    for c in percpu::online() {
        let r = &c.timer_report;
        if !r.done.load(Acquire) {
            info!("selftest: cpu{} timer: did not finish", c.index);
            continue;
        }
        info!(
            "selftest: cpu{} timer: {} intervals of {}: median {}, min {}, max {}, at most {} late",
            c.index,
            TIMER_INTERVALS,
            kernel::time::Millis(TIMER_INTERVAL_NS),
            kernel::time::Millis(r.median_ns.load(Relaxed)),
            kernel::time::Millis(r.min_ns.load(Relaxed)),
            kernel::time::Millis(r.max_ns.load(Relaxed)),
            kernel::time::Millis(r.max_late_ns.load(Relaxed)),
        );
    }
    let clock = crate::arch::time::clock();
    if let Some(t) = &local.state.as_ref().ipi {
        for (target, rtts) in t.rtts.iter().enumerate().skip(1) {
            if rtts.is_empty() {
                continue;
            }
            let mut v = rtts.clone();
            v.sort_unstable();
            info!(
                "selftest: ipi cpu{me} -> cpu{target} -> cpu{me}: {} round trips, median {}, max {}; \
                 cpu{target}'s clock inside the round trip in {} of {}",
                v.len(),
                kernel::time::Millis(clock.ticks_to_nanos(v[v.len() / 2])),
                kernel::time::Millis(clock.ticks_to_nanos(v[v.len() - 1])),
                t.clock_agreed[target],
                v.len(),
                me = local.cpu.index,
            );
        }
    }
}
