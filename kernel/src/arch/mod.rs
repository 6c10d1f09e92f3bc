//! x86_64 specifics. Every `unsafe` operation of the kernel on the CPU or on
//! I/O ports lives in this module, in small wrappers that say why it is sound.

pub mod acpi;
pub mod apic;
pub mod fwcfg;
pub mod gdt;
pub mod idt;
pub mod mmio;
pub mod paging;
pub mod pci;
pub mod percpu;
pub mod pic;
pub mod pvh;
pub mod qemu;
pub mod random;
pub mod smp;
pub mod time;

/// The index of the CPU executing this, as shown in log lines (0 is the
/// boot CPU).
pub fn current_cpu() -> u32 {
    percpu::current_index()
}

/// Stops this CPU for good: interrupts off, then `hlt` in a loop (an NMI
/// could still wake it).
pub fn halt_forever() -> ! {
    x86_64::instructions::interrupts::disable();
    loop {
        x86_64::instructions::hlt();
    }
}
