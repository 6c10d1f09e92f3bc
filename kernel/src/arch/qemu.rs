//! Leaving QEMU with a status through the `isa-debug-exit` device.

use kernel::abi;
use x86_64::instructions::port::Port;

#[derive(Clone, Copy, Debug)]
pub enum ExitCode {
    Success,
    Failure,
}

/// Asks QEMU to exit with `code`. Without the debug-exit device (real
/// hardware, or QEMU started without it) the write does nothing and the CPU
/// halts instead.
pub fn exit(code: ExitCode) -> ! {
    let value = match code {
        ExitCode::Success => abi::DEBUG_EXIT_SUCCESS,
        ExitCode::Failure => abi::DEBUG_EXIT_FAILURE,
    };
    // SAFETY: port 0xf4 is either QEMU's isa-debug-exit (which ends the VM)
    // or unclaimed, in which case the write is ignored; no memory is touched.
    unsafe { Port::<u32>::new(abi::DEBUG_EXIT_IOBASE).write(value) };
    super::halt_forever()
}
