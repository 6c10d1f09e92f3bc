//! The kernel's log line format: `[   12.345678] cpu3 INFO  message`.
//!
//! Seconds since kernel entry (from the TSC) with microseconds, the CPU that
//! wrote the line, the level padded to five characters. The host tools and
//! people reading a serial log rely on it, so it is fixed here and tested.

use core::fmt::{self, Write};

/// Writes the prefix of one log line.
pub fn write_prefix(out: &mut impl Write, nanos_since_entry: u64, cpu: u32, level: log::Level) -> fmt::Result {
    let secs = nanos_since_entry / 1_000_000_000;
    let micros = (nanos_since_entry % 1_000_000_000) / 1_000;
    write!(out, "[{secs:5}.{micros:06}] cpu{cpu} {:<5} ", level.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(n: u64, cpu: u32, l: log::Level) -> String {
        let mut s = String::new();
        write_prefix(&mut s, n, cpu, l).unwrap();
        s
    }

    #[test]
    fn prefix_has_time_cpu_and_level() {
        assert_eq!(prefix(0, 0, log::Level::Info), "[    0.000000] cpu0 INFO  ");
        assert_eq!(prefix(1_234_567_891, 3, log::Level::Warn), "[    1.234567] cpu3 WARN  ");
        assert_eq!(prefix(98_765 * 1_000_000_000 + 999, 12, log::Level::Error), "[98765.000000] cpu12 ERROR ");
    }

    #[test]
    fn prefix_widens_instead_of_truncating() {
        assert_eq!(prefix(123_456 * 1_000_000_000, 0, log::Level::Trace), "[123456.000000] cpu0 TRACE ");
    }
}
