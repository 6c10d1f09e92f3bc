//! The network side of the mqnet kernel, host-testable: the glue between a
//! virtio-net queue pair and a smoltcp interface, one stack per CPU, and the
//! neighbour information the stacks share. (Flow steering and the guest
//! services come with later issues.)
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

pub use smoltcp;

pub mod device;
pub mod neighbours;
pub mod stack;
