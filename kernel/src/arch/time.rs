//! The clock: the TSC, calibrated once at boot against the 8254 PIT.

use kernel::time::{self, Instant, TscClock, PIT_HZ};
use spin::Once;
use x86_64::instructions::port::Port;

static CLOCK: Once<TscClock> = Once::new();
/// TSC at kernel entry: log timestamps count from here.
static ENTRY_TSC: Once<u64> = Once::new();

/// Frequency assumed when calibration fails.
const FALLBACK_HZ: u64 = 1_000_000_000;
/// One calibration window: 10 ms of PIT ticks.
const PIT_WINDOW_TICKS: u16 = (PIT_HZ / 100) as u16;
const RUNS: usize = 3;
/// Bound on how long one window may take, in polls of port 0x61.
const MAX_POLLS: u32 = 50_000_000;

pub fn rdtsc() -> u64 {
    #[allow(unused_unsafe)]
    // SAFETY: RDTSC only reads the time-stamp counter.
    unsafe {
        core::arch::x86_64::_rdtsc()
    }
}

/// Now, on the clock all CPUs share.
pub fn now() -> Instant {
    Instant::from_tsc(rdtsc())
}

/// Calibrates the TSC; `entry_tsc` (read first thing at kernel entry) becomes
/// time zero. `Ok(hz)` when calibrated, `Err(fallback_hz)` when the PIT did
/// not behave and the fallback is in use.
pub fn init(entry_tsc: u64) -> Result<u64, u64> {
    ENTRY_TSC.call_once(|| entry_tsc);
    let mut samples = [0u64; RUNS];
    let mut n = 0;
    for _ in 0..RUNS {
        if let Some(hz) = measure_window() {
            samples[n] = hz;
            n += 1;
        }
    }
    let result = time::median(&mut samples[..n]).ok_or(FALLBACK_HZ);
    let hz = result.unwrap_or_else(|fallback| fallback);
    CLOCK.call_once(|| TscClock::new(hz));
    result
}

/// The calibrated clock (or a 1 GHz guess before calibration).
pub fn clock() -> TscClock {
    CLOCK.get().copied().unwrap_or(TscClock::new(FALLBACK_HZ))
}

/// Nanoseconds since kernel entry (0 before calibration).
pub fn nanos_since_entry() -> u64 {
    match (CLOCK.get(), ENTRY_TSC.get()) {
        (Some(c), Some(&entry)) => c.ticks_to_nanos(rdtsc().wrapping_sub(entry)),
        _ => 0,
    }
}

/// Counts TSC ticks across one PIT channel-2 countdown.
fn measure_window() -> Option<u64> {
    let mut gate = Port::<u8>::new(0x61);
    let mut command = Port::<u8>::new(0x43);
    let mut channel2 = Port::<u8>::new(0x42);
    // SAFETY: ports 0x42/0x43/0x61 are the PIT's channel 2 and its gate (the
    // PC speaker's, with the speaker output kept off). Programming channel 2
    // affects nothing else: channel 0 (the legacy timer IRQ) is untouched.
    unsafe {
        let g = gate.read();
        gate.write((g & !0x02) | 0x01); // speaker off, gate on
        command.write(0b1011_0000); // channel 2, lo/hi byte, mode 0, binary
        channel2.write(PIT_WINDOW_TICKS as u8);
        channel2.write((PIT_WINDOW_TICKS >> 8) as u8);
        // Restart the count with a rising edge on the gate.
        let g = gate.read();
        gate.write(g & !0x01);
        gate.write(g | 0x01);
        let start = rdtsc();
        let mut polls = 0;
        while gate.read() & 0x20 == 0 {
            polls += 1;
            if polls > MAX_POLLS {
                return None;
            }
        }
        let end = rdtsc();
        time::tsc_hz_from_pit(end.wrapping_sub(start), PIT_WINDOW_TICKS as u64)
    }
}
