//! The network side of the mqnet kernel, host-testable: the glue between a
//! virtio-net queue pair and a smoltcp interface, and one stack per CPU.
//! (Flow steering and the guest services come with later issues.)
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

extern crate alloc;

pub use smoltcp;

pub mod device;
pub mod stack;
