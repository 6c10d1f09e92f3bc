//! The network side of the mqnet kernel, host-testable: per-CPU smoltcp
//! stacks, flow steering (Toeplitz hash, indirection table, port choice) and
//! the protocol logic of the guest services (filled in by later issues).
#![no_std]
#![deny(unsafe_code)]
