//! The local APIC: x2APIC (MSRs) where the CPU offers it, xAPIC (MMIO)
//! otherwise. Every CPU programs its own; the mode and the MMIO mapping are
//! shared.
//!
//! Not the `x2apic` crate: in xAPIC mode it puts the IPI destination in the
//! wrong ICR bits and it has no TSC-deadline support.

use core::arch::x86_64::__cpuid;

use kernel::apic::{self as enc, ApicMode, Delivery, Dest};
use spin::Once;
use x86_64::registers::model_specific::Msr;

use super::mmio::Mmio;

pub const TIMER_VECTOR: u8 = 0x30;
pub const WAKE_VECTOR: u8 = 0x31;
pub const ERROR_VECTOR: u8 = 0xfe;
pub const SPURIOUS_VECTOR: u8 = 0xff;

const IA32_APIC_BASE: u32 = 0x1b;
const IA32_TSC_DEADLINE: u32 = 0x6e0;

const ID: u32 = 0x20;
const TPR: u32 = 0x80;
const EOI: u32 = 0xb0;
const SVR: u32 = 0xf0;
const ESR: u32 = 0x280;
const ICR_LOW: u32 = 0x300;
const ICR_HIGH: u32 = 0x310;
const LVT_TIMER: u32 = 0x320;
const LVT_LINT0: u32 = 0x350;
const LVT_LINT1: u32 = 0x360;
const LVT_ERROR: u32 = 0x370;
const TIMER_INITIAL: u32 = 0x380;
const TIMER_CURRENT: u32 = 0x390;
const TIMER_DIVIDE: u32 = 0x3e0;

const MASKED: u32 = 1 << 16;
const TIMER_TSC_DEADLINE: u32 = 0b10 << 17;
/// Divide configuration 0b0011: divide by 16.
const DIVIDE_BY_16: u32 = 0b0011;

struct Apic {
    mode: ApicMode,
    mmio: Option<Mmio>,
    tsc_deadline: bool,
}

static APIC: Once<Apic> = Once::new();

fn cpuid1_ecx() -> u32 {
    #[allow(unused_unsafe)]
    // SAFETY: CPUID leaf 1 exists on every x86_64 CPU.
    unsafe {
        __cpuid(1).ecx
    }
}

/// Chooses the mode (once, on the boot CPU) and maps the xAPIC registers
/// when needed. `physical_base` comes from the MADT.
pub fn init_global(physical_base: u64) -> Result<(ApicMode, bool), &'static str> {
    let ecx = cpuid1_ecx();
    let x2 = ecx & (1 << 21) != 0;
    let deadline = ecx & (1 << 24) != 0;
    let apic = APIC.try_call_once(|| -> Result<Apic, &'static str> {
        if x2 {
            Ok(Apic { mode: ApicMode::X2Apic, mmio: None, tsc_deadline: deadline })
        } else {
            let virt = super::paging::map_mmio(physical_base, 4096)?;
            // SAFETY: just mapped uncached, for good.
            let mmio = unsafe { Mmio::new(virt, 4096) };
            Ok(Apic { mode: ApicMode::XApic, mmio: Some(mmio), tsc_deadline: deadline })
        }
    })?;
    Ok((apic.mode, apic.tsc_deadline))
}

fn apic() -> &'static Apic {
    APIC.get().expect("apic::init_global not called")
}

fn read(reg: u32) -> u32 {
    let a = apic();
    match a.mmio {
        Some(m) => m.read32(reg as u64),
        // SAFETY: x2APIC mode is enabled on this CPU before any register
        // access (enable_this_cpu), and reading an APIC MSR has no side effects
        // beyond the register's own semantics.
        None => unsafe { Msr::new(0x800 + (reg >> 4)).read() as u32 },
    }
}

fn write(reg: u32, value: u32) {
    let a = apic();
    match a.mmio {
        Some(m) => m.write32(reg as u64, value),
        // SAFETY: as in `read`; the values written are valid for the register.
        None => unsafe { Msr::new(0x800 + (reg >> 4)).write(value as u64) },
    }
}

/// Turns on this CPU's local APIC: enabled (x2APIC mode when chosen), task
/// priority 0, LINT0/LINT1 masked (no 8259, NMIs come as IPIs), error and
/// spurious vectors set, timer masked until armed.
pub fn enable_this_cpu() {
    let a = apic();
    let mut base = Msr::new(IA32_APIC_BASE);
    // SAFETY: setting the global-enable (and x2APIC-enable) bits of
    // IA32_APIC_BASE keeps the base address and is what the SDM prescribes.
    unsafe {
        let mut v = base.read() | (1 << 11);
        if a.mode == ApicMode::X2Apic {
            v |= 1 << 10;
        }
        base.write(v);
    }
    write(TPR, 0);
    write(LVT_LINT0, MASKED);
    write(LVT_LINT1, MASKED);
    write(LVT_ERROR, ERROR_VECTOR as u32);
    write(TIMER_DIVIDE, DIVIDE_BY_16);
    write(LVT_TIMER, MASKED | TIMER_VECTOR as u32);
    write(SVR, (1 << 8) | SPURIOUS_VECTOR as u32);
    // Clear any error latched while the APIC was being set up.
    write(ESR, 0);
}

pub fn id() -> u32 {
    enc::id_from_register(apic().mode, read(ID))
}

pub fn end_of_interrupt() {
    write(EOI, 0);
}

/// Reads and clears the error status register.
pub fn take_errors() -> u32 {
    write(ESR, 0);
    read(ESR)
}

/// Sends an interrupt command; waits (bounded) until an xAPIC accepted it.
pub fn send(delivery: Delivery, dest: Dest) -> Result<(), &'static str> {
    let a = apic();
    let icr = enc::icr(a.mode, delivery, dest).ok_or("APIC id not addressable in xAPIC mode")?;
    match a.mmio {
        Some(_) => {
            write(ICR_HIGH, (icr >> 32) as u32);
            write(ICR_LOW, icr as u32);
            for _ in 0..1_000_000 {
                if read(ICR_LOW) & (1 << 12) == 0 {
                    return Ok(());
                }
                core::hint::spin_loop();
            }
            Err("IPI not accepted (delivery status stuck)")
        }
        None => {
            // SAFETY: writing the x2APIC ICR MSR sends the IPI; the value was
            // encoded for x2APIC mode.
            unsafe { Msr::new(0x830).write(icr) };
            Ok(())
        }
    }
}

/// Timer programming for one CPU.
#[derive(Clone, Copy, Debug)]
pub enum TimerKind {
    /// Write the TSC deadline to IA32_TSC_DEADLINE.
    TscDeadline,
    /// One-shot countdown at this many ticks per second.
    OneShot { hz: u64 },
}

/// Measures the APIC timer's rate against the TSC over `window_tsc` ticks.
pub fn calibrate_timer(window_tsc: u64, tsc_hz: u64) -> Option<u64> {
    write(LVT_TIMER, MASKED | TIMER_VECTOR as u32);
    write(TIMER_DIVIDE, DIVIDE_BY_16);
    write(TIMER_INITIAL, u32::MAX);
    let start = super::time::rdtsc();
    while super::time::rdtsc().wrapping_sub(start) < window_tsc {
        core::hint::spin_loop();
    }
    let remaining = read(TIMER_CURRENT);
    let elapsed = super::time::rdtsc().wrapping_sub(start);
    write(TIMER_INITIAL, 0);
    enc::timer_hz(u64::from(u32::MAX - remaining), elapsed, tsc_hz)
}

/// Arms this CPU's timer to interrupt at TSC value `deadline` (or soon, if
/// it has passed). `None` disarms it.
pub fn arm_timer(kind: TimerKind, deadline: Option<u64>, tsc_hz: u64) {
    match (kind, deadline) {
        (TimerKind::TscDeadline, d) => {
            write(LVT_TIMER, TIMER_TSC_DEADLINE | TIMER_VECTOR as u32);
            // SAFETY: IA32_TSC_DEADLINE exists (CPUID checked); 0 disarms.
            unsafe { Msr::new(IA32_TSC_DEADLINE).write(d.unwrap_or(0)) };
        }
        (TimerKind::OneShot { .. }, None) => {
            write(LVT_TIMER, MASKED | TIMER_VECTOR as u32);
            write(TIMER_INITIAL, 0);
        }
        (TimerKind::OneShot { hz }, Some(d)) => {
            let now = super::time::rdtsc();
            let count = enc::one_shot_count(d.saturating_sub(now), tsc_hz, hz);
            write(LVT_TIMER, TIMER_VECTOR as u32);
            write(TIMER_INITIAL, count);
        }
    }
}
