//! Host-side boot support: everything between a kernel ELF and a running VM.
//!
//! - [`image`]: BIOS and UEFI disk images from the kernel ELF (bootloader crate).
//! - [`qemu`]: the QEMU command line, built from typed options.
//! - [`accel`]: choosing between hardware KVM and TCG.
//! - [`outcome`]: what QEMU's exit status means.
//! - [`netns`]: the network namespace and multiqueue tap behind `--net tap`.
//! - [`prereq`]: finding (or installing) QEMU, OVMF and `ip`.
//! - [`procstat`]: CPU time of QEMU's vCPU threads, as the host accounts it.
//! - [`runner`]: starting QEMU, streaming its serial console, timeouts, stop requests.
//! - [`vhost`]: whether the tap backend uses vhost-net.

pub mod accel;
pub mod image;
pub mod netns;
pub mod outcome;
pub mod prereq;
pub mod procstat;
pub mod pvh;
pub mod qemu;
pub mod runner;
pub mod vhost;

pub use kernel::abi;
