//! The network side of the mqnet kernel, host-testable: the glue between a
//! virtio-net queue pair and a smoltcp interface, one stack per vCPU, flow
//! steering between the vCPUs, and the in-kernel services.
//!
//! No `unsafe` here: the frames that cross between vCPUs travel through
//! atomics (`inbox`), and everything that touches the device is in
//! `drivers`.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

pub use smoltcp;

pub mod cpu;
pub mod device;
pub mod inbox;
pub mod neighbours;
pub mod raw;
pub mod segment;
pub mod services;
pub mod stack;
pub mod steer;
pub mod zerowin;

/// Test code shared with the simulation in tests/sim.rs.
#[cfg(test)]
#[path = "../tests/support/mod.rs"]
mod test_support;
