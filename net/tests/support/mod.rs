//! Test code shared by the simulation and the unit tests of `net` (which
//! include this module from `src/lib.rs` with `#[path]`).

pub mod client;
pub mod frames;
