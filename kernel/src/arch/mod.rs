//! x86_64 specifics. Every `unsafe` operation of the kernel on the CPU or on
//! I/O ports lives in this module, in small wrappers that say why it is sound.

pub mod fwcfg;
pub mod gdt;
pub mod idt;
pub mod pic;
pub mod qemu;
pub mod time;

use core::arch::x86_64::__cpuid;

/// The number of the CPU executing this, as shown in log lines.
///
/// Until per-CPU state exists this is the initial APIC id from CPUID, which
/// is 0 on the boot CPU.
pub fn current_cpu() -> u32 {
    #[allow(unused_unsafe)]
    // SAFETY: CPUID leaf 1 exists on every x86_64 CPU and has no side effects.
    let leaf1 = unsafe { __cpuid(1) };
    leaf1.ebx >> 24
}

/// Stops this CPU for good: interrupts off, then `hlt` in a loop (an NMI
/// could still wake it).
pub fn halt_forever() -> ! {
    x86_64::instructions::interrupts::disable();
    loop {
        x86_64::instructions::hlt();
    }
}
