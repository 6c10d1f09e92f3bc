//! Failures provoked on purpose (boot option `fault=`), so the boot tests can
//! check that they are reported and end QEMU with a failure status.

use core::hint::black_box;

use kernel::cmdline::Fault;
use log::warn;

pub fn provoke(fault: Fault) {
    warn!("fault={}: provoking it on purpose", fault.name());
    match fault {
        Fault::Panic => panic!("provoked by boot option fault=panic"),
        // Each arm below deliberately raises a CPU exception, whose handler
        // reports it and never returns; nothing is corrupted because the
        // faulting access or instruction does not complete.
        // SAFETY: as just said, the exception handler never returns here.
        Fault::PageFault => unsafe {
            // Canonical, but nothing is mapped at 4 TiB - 4 KiB.
            let p = black_box(0x3ff_ffff_f000u64) as *const u64;
            black_box(core::ptr::read_volatile(p));
        },
        // SAFETY: as above, the exception handler never returns here.
        Fault::GeneralProtection => unsafe {
            // A non-canonical address raises #GP rather than #PF.
            let p = black_box(0x8000_0000_0000_0000u64) as *const u64;
            black_box(core::ptr::read_volatile(p));
        },
        // SAFETY: as above, the exception handler never returns here.
        Fault::InvalidOpcode => unsafe { core::arch::asm!("ud2") },
        // SAFETY: as above, the exception handler never returns here.
        Fault::DivideError => unsafe {
            core::arch::asm!("xor edx, edx", "xor ecx, ecx", "mov eax, 1", "div ecx", out("eax") _, out("ecx") _, out("edx") _)
        },
        // SAFETY: as above, the exception handler never returns here.
        Fault::Breakpoint => unsafe { core::arch::asm!("int3") },
        Fault::StackOverflow => {
            black_box(recurse(black_box(1)));
        }
    }
    warn!("fault={} did not stop the kernel", fault.name());
}

#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let pad = black_box([depth; 64]);
    recurse(depth + 1) + pad[black_box(3)]
}
