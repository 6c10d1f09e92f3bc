//! The contract between the kernel and the host tools.
//!
//! The host side (`boot`, `xtask`) depends on this crate as a library, so a
//! change here changes both ends at once.

/// I/O port of QEMU's `isa-debug-exit` device.
pub const DEBUG_EXIT_IOBASE: u16 = 0xf4;
/// Width of the `isa-debug-exit` register in bytes.
pub const DEBUG_EXIT_IOSIZE: u16 = 0x04;
/// Value the kernel writes to report success.
pub const DEBUG_EXIT_SUCCESS: u32 = 0x10;
/// Value the kernel writes to report a failure (panic, CPU exception).
pub const DEBUG_EXIT_FAILURE: u32 = 0x11;

/// QEMU exits with `(value << 1) | 1` after a write to `isa-debug-exit`.
pub const fn qemu_exit_status(value: u32) -> i32 {
    ((value << 1) | 1) as i32
}

/// fw_cfg file that carries the kernel's boot options (see [`crate::cmdline`]).
pub const FW_CFG_CMDLINE: &str = "opt/mqnet/cmdline";

/// First words of the boot banner line.
pub const BANNER: &str = "mqnet kernel";
/// Line printed once the kernel has finished booting; the boot time follows.
pub const READY: &str = "boot complete:";
/// Prefix of a CPU exception report.
pub const EXCEPTION: &str = "CPU EXCEPTION";
/// Prefix of a panic report.
pub const PANIC: &str = "KERNEL PANIC";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_match_qemu_debug_exit_encoding() {
        assert_eq!(qemu_exit_status(DEBUG_EXIT_SUCCESS), 33);
        assert_eq!(qemu_exit_status(DEBUG_EXIT_FAILURE), 35);
    }
}
