//! Per-CPU data: one block per CPU, reached through the GS base.
//!
//! A block's owner writes its counters; other CPUs only read them (relaxed
//! atomics) or post to its mailbox, so nothing here takes a lock.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};

use spin::Once;
use x86_64::registers::model_specific::GsBase;
use x86_64::VirtAddr;

/// Counters a CPU keeps about itself.
pub struct CpuStats {
    pub loop_iterations: AtomicU64,
    pub interrupts: AtomicU64,
    pub timer_interrupts: AtomicU64,
    pub wake_ipis: AtomicU64,
    pub apic_errors: AtomicU64,
    /// Every error bit the local APIC reported.
    pub apic_error_bits: AtomicU32,
    /// Interrupts taken per NIC queue index (queue q's vector is 0x40 + q).
    pub queue_irqs: [AtomicU64; 64],
    pub spurious: AtomicU64,
    /// TSC ticks spent halted vs running.
    pub halted_tsc: AtomicU64,
    pub busy_tsc: AtomicU64,
    /// Halts that wrote the timer, and halts that found it already armed
    /// for their deadline (see `kernel::apic::ArmedTimer`).
    pub timer_writes: AtomicU64,
    pub timer_unchanged: AtomicU64,
}

impl Default for CpuStats {
    fn default() -> Self {
        CpuStats {
            loop_iterations: AtomicU64::new(0),
            interrupts: AtomicU64::new(0),
            timer_interrupts: AtomicU64::new(0),
            wake_ipis: AtomicU64::new(0),
            apic_errors: AtomicU64::new(0),
            apic_error_bits: AtomicU32::new(0),
            queue_irqs: core::array::from_fn(|_| AtomicU64::new(0)),
            spurious: AtomicU64::new(0),
            halted_tsc: AtomicU64::new(0),
            busy_tsc: AtomicU64::new(0),
            timer_writes: AtomicU64::new(0),
            timer_unchanged: AtomicU64::new(0),
        }
    }
}

impl CpuStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        // Only the owner writes, so a plain load+store is race-free.
        counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
    }
}

/// Messages other CPUs leave for this one (then they send a wake IPI).
#[derive(Default)]
pub struct Mailbox {
    /// Ping request: the sender's CPU index + 1 (0 = none).
    pub ping_from: AtomicU32,
    /// Answer to this CPU's last ping: the responder's index + 1.
    pub pong_from: AtomicU32,
    /// The responder's TSC when it answered (to check the clocks agree).
    pub pong_tsc: AtomicU64,
}

/// A CPU's timer self-test result, in nanoseconds.
#[derive(Default)]
pub struct TimerReport {
    pub done: AtomicBool,
    pub firings: AtomicU32,
    pub median_ns: AtomicU64,
    pub min_ns: AtomicU64,
    pub max_ns: AtomicU64,
    pub max_late_ns: AtomicU64,
}

#[repr(C)]
pub struct PerCpu {
    /// Must stay first: `current()` finds the block through GS:0.
    self_ptr: AtomicU64,
    pub index: u32,
    pub apic_id: u32,
    pub online: AtomicBool,
    /// Another CPU left work for this one (set before the wake IPI).
    pub wake_pending: AtomicBool,
    /// Set when another CPU stopped this one (panic elsewhere).
    pub stopped: AtomicBool,
    pub stats: CpuStats,
    pub mailbox: Mailbox,
    pub timer_report: TimerReport,
}

static CPUS: Once<&'static [PerCpu]> = Once::new();

/// Creates the blocks for the CPUs that will run (index i ↔ `apic_ids[i]`).
pub fn init(apic_ids: &[u32]) -> &'static [PerCpu] {
    CPUS.call_once(|| {
        let v: Vec<PerCpu> = apic_ids
            .iter()
            .enumerate()
            .map(|(i, &apic_id)| PerCpu {
                self_ptr: AtomicU64::new(0),
                index: i as u32,
                apic_id,
                online: AtomicBool::new(false),
                wake_pending: AtomicBool::new(false),
                stopped: AtomicBool::new(false),
                stats: CpuStats::default(),
                mailbox: Mailbox::default(),
                timer_report: TimerReport::default(),
            })
            .collect();
        let cpus: &'static [PerCpu] = v.leak();
        for c in cpus {
            c.self_ptr.store(c as *const PerCpu as u64, Relaxed);
        }
        cpus
    })
}

pub fn all() -> &'static [PerCpu] {
    CPUS.get().copied().unwrap_or(&[])
}

/// The CPUs that came online.
pub fn online() -> impl Iterator<Item = &'static PerCpu> {
    all().iter().filter(|c| c.online.load(core::sync::atomic::Ordering::Acquire))
}

/// Points this CPU's GS base at its block.
pub fn install(cpu: &'static PerCpu) {
    GsBase::write(VirtAddr::from_ptr(cpu as *const PerCpu));
}

impl PerCpu {
    /// Wakes this CPU so its loop polls its work again.
    pub fn wake(&self) {
        self.wake_pending.store(true, core::sync::atomic::Ordering::Release);
        let _ = super::apic::send(
            kernel::apic::Delivery::Fixed(super::apic::WAKE_VECTOR),
            kernel::apic::Dest::Apic(self.apic_id),
        );
    }
}

/// This CPU's block, once installed.
pub fn current() -> Option<&'static PerCpu> {
    let base = GsBase::read().as_u64();
    let cpus = all();
    let first = cpus.as_ptr() as u64;
    let size = core::mem::size_of::<PerCpu>() as u64;
    if base < first || base >= first + size * cpus.len() as u64 || !(base - first).is_multiple_of(size) {
        return None;
    }
    cpus.get(((base - first) / size) as usize)
}

/// The index of the running CPU (0 before per-CPU data exists: only the
/// boot CPU runs then).
pub fn current_index() -> u32 {
    current().map_or(0, |c| c.index)
}
