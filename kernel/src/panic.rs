//! The panic handler: report, then leave QEMU with a failure status.

use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, Ordering};

use kernel::abi;

use crate::arch;

static PANICKING: AtomicBool = AtomicBool::new(false);

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    x86_64::instructions::interrupts::disable();
    if PANICKING.swap(true, Ordering::SeqCst) {
        // A panic while reporting a panic: say nothing more.
        arch::qemu::exit(arch::qemu::ExitCode::Failure);
    }
    let cpu = arch::current_cpu();
    crate::serial::emergency(|w| {
        let _ = write!(w, "{} on cpu{cpu}: {}", abi::PANIC, info.message());
        if let Some(loc) = info.location() {
            let _ = write!(w, " at {}:{}:{}", loc.file(), loc.line(), loc.column());
        }
        let _ = writeln!(w);
    });
    arch::qemu::exit(arch::qemu::ExitCode::Failure)
}
