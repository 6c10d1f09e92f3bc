//! The panic handler: report, then leave QEMU with a failure status.

use core::panic::PanicInfo;

use kernel::abi;

use crate::arch;
use crate::arch::smp::{self, StopRole};

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    x86_64::instructions::interrupts::disable();
    let (stopped, asked) = match smp::begin_stop() {
        StopRole::Reporter { stopped, asked } => (stopped, asked),
        // A panic while reporting a failure: say nothing more.
        StopRole::Nested => arch::qemu::exit(arch::qemu::ExitCode::Failure),
        // Another CPU is already reporting its failure.
        StopRole::Bystander => smp::halt_stopped(),
    };
    let cpu = arch::current_cpu();
    crate::serial::emergency(|w| {
        let _ = write!(w, "{} on cpu{cpu}: {}", abi::PANIC, info.message());
        if let Some(loc) = info.location() {
            let _ = write!(w, " at {}:{}:{}", loc.file(), loc.line(), loc.column());
        }
        let _ = writeln!(w);
        let _ = writeln!(w, "  stopped {stopped} of {asked} other CPUs");
    });
    arch::qemu::exit(arch::qemu::ExitCode::Failure)
}
