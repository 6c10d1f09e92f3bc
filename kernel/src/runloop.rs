//! The per-CPU event loop that all later work plugs into.
//!
//! Each CPU runs its own loop: poll its registered work, run its expired
//! timers, and when nothing is left, arm the local APIC timer for the next
//! deadline and halt with interrupts enabled until an interrupt (timer, wake
//! IPI, device) arrives. Busy and halted time are measured with the TSC so a
//! utilisation figure per CPU can be reported. Nothing here allocates or
//! takes a lock shared with another CPU.

use core::sync::atomic::Ordering;

use kernel::apic::ArmedTimer;
use kernel::timers::{Expired, TimerId, TimerQueue};
use x86_64::instructions::interrupts;

use crate::arch::apic::{self, TimerKind};
use crate::arch::percpu::{CpuStats, PerCpu};
use crate::arch::time::rdtsc;

const MAX_TIMERS: usize = 16;
const MAX_WORK: usize = 8;

/// What a work function did in one poll.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Poll {
    /// Nothing to do right now.
    Idle,
    /// Did something; poll everything again before halting.
    Busy,
    /// Finished for good: unregister.
    Done,
}

pub type WorkFn<S> = fn(&mut Local<S>) -> Poll;
pub type TimerFn<S> = fn(&mut Local<S>, Expired);

/// State owned by one CPU's loop (never touched by another CPU). `S` is
/// what the loop's clients keep per CPU; `main.rs` composes it, so this
/// loop knows none of them.
pub struct Local<S> {
    pub cpu: &'static PerCpu,
    pub timer_kind: TimerKind,
    pub tsc_hz: u64,
    timers: TimerQueue<MAX_TIMERS>,
    timer_fns: [Option<TimerFn<S>>; MAX_TIMERS],
    work: [Option<WorkFn<S>>; MAX_WORK],
    /// Keep polling instead of halting for this many TSC ticks after the
    /// last busy round (0: halt at once). See [`Local::set_halt_poll`].
    halt_poll: u64,
    /// Set by the loop before each round: whether an idle round is followed
    /// by a halt (false while the halt-poll window is open). Work that
    /// re-arms interrupts before a halt does so only when this is true.
    pub halts_when_idle: bool,
    /// What the APIC timer was last armed with.
    armed: ArmedTimer,
    pub state: S,
}

impl<S> Local<S> {
    pub fn new(cpu: &'static PerCpu, timer_kind: TimerKind, tsc_hz: u64, state: S) -> Local<S> {
        Local {
            cpu,
            timer_kind,
            tsc_hz,
            timers: TimerQueue::new(),
            timer_fns: [None; MAX_TIMERS],
            work: [None; MAX_WORK],
            halt_poll: 0,
            halts_when_idle: true,
            armed: ArmedTimer::default(),
            state,
        }
    }

    /// Polls on for `ticks` TSC ticks after the last round that did work
    /// before halting (the haltpoll idea): work that comes back within that
    /// time is found without a halt, an interrupt and a wake-up.
    pub fn set_halt_poll(&mut self, ticks: u64) {
        self.halt_poll = ticks;
    }

    pub fn add_work(&mut self, f: WorkFn<S>) {
        let slot = self.work.iter_mut().find(|w| w.is_none()).expect("too many work functions on one CPU");
        *slot = Some(f);
    }

    /// Arms timer `id` (an index below 16, chosen by its owner) to call `f`
    /// at TSC `deadline`, then every `period` ticks unless `period` is 0.
    pub fn add_timer(&mut self, id: TimerId, deadline: u64, period: u64, f: TimerFn<S>) {
        self.timers.cancel(id);
        self.timers.add(id, deadline, period).expect("timer queue full");
        self.timer_fns[id as usize] = Some(f);
    }

    pub fn cancel_timer(&mut self, id: TimerId) {
        self.timers.cancel(id);
        self.timer_fns[id as usize] = None;
    }
}

/// Runs `local`'s CPU forever.
pub fn run<S>(mut local: Local<S>) -> ! {
    let stats = &local.cpu.stats;
    let mut last_busy = 0u64;
    loop {
        let start = rdtsc();
        local.halts_when_idle = local.halt_poll == 0 || start.wrapping_sub(last_busy) >= local.halt_poll;
        CpuStats::add(&stats.loop_iterations, 1);
        local.cpu.wake_pending.store(false, Ordering::Release);
        let mut busy = false;
        let work = local.work;
        for (i, w) in work.iter().enumerate() {
            if let Some(f) = w {
                match f(&mut local) {
                    Poll::Idle => {}
                    Poll::Busy => busy = true,
                    Poll::Done => local.work[i] = None,
                }
            }
        }
        let now = rdtsc();
        while let Some(expired) = local.timers.pop_expired(now) {
            if let Some(f) = local.timer_fns[expired.id as usize] {
                f(&mut local, expired);
            }
            busy = true;
        }
        let end = rdtsc();
        CpuStats::add(&stats.busy_tsc, end.wrapping_sub(start));
        if busy {
            last_busy = end;
            continue;
        }
        if !local.halts_when_idle {
            // Inside the halt-poll window: look again (the queues' interrupts
            // stay off meanwhile); the round after the window closes
            // prepares the halt.
            core::hint::spin_loop();
            continue;
        }
        halt_until_interrupt(&mut local);
    }
}

/// Arms the timer for the next deadline (unless it is armed for it already)
/// and halts. Interrupts are disabled across the last check so a wake-up
/// that arrives after it is not lost: the pending interrupt ends the `hlt`
/// that `sti` enables.
fn halt_until_interrupt<S>(local: &mut Local<S>) {
    interrupts::disable();
    let stats = &local.cpu.stats;
    let deadline = local.timers.next_deadline();
    if local.armed.needs_write(deadline, stats.timer_interrupts.load(Ordering::Relaxed)) {
        apic::arm_timer(local.timer_kind, deadline, local.tsc_hz);
        CpuStats::add(&stats.timer_writes, 1);
    } else {
        CpuStats::add(&stats.timer_unchanged, 1);
    }
    if local.cpu.wake_pending.load(Ordering::Acquire) {
        interrupts::enable();
        return;
    }
    let before = rdtsc();
    interrupts::enable_and_hlt();
    CpuStats::add(&local.cpu.stats.halted_tsc, rdtsc().wrapping_sub(before));
}
