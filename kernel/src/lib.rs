//! Portable part of the mqnet kernel.
//!
//! Everything here is a pure function of bytes or state, so it builds and is
//! unit-tested on the host; the bare-metal glue in `main.rs` calls into it.
//! [`abi`] is the contract between the kernel and the host tools (`boot`,
//! `xtask`): exit codes, fw_cfg names and the lines the boot tests look for.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

pub mod abi;
pub mod apic;
pub mod cmdline;
pub mod directmap;
pub mod entropy;
pub mod exceptions;
pub mod frames;
pub mod fwcfg;
pub mod logfmt;
pub mod madt;
pub mod phases;
pub mod pvh;
pub mod raw;
pub mod time;
pub mod timers;
