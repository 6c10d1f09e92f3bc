//! Device drivers of the mqnet kernel, written to be unit-tested on the host:
//! PCI configuration access and capabilities, MSI-X, the virtio-pci modern
//! transport and (next) the multiqueue virtio-net device.
//!
//! Nothing here touches hardware directly: configuration space and register
//! blocks are reached through traits the kernel implements (port I/O, ECAM,
//! MMIO) and the tests implement in memory.
#![cfg_attr(not(any(test, feature = "fake")), no_std)]
// `unsafe` is allowed only in `dma`, the memory shared with devices.
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

pub mod dma;
pub mod msix;
pub mod pci;
pub mod regs;
pub mod virtio;
