//! Time-stamp-counter arithmetic: calibration against a reference clock and
//! conversion of TSC ticks to nanoseconds.

/// Input clock of the 8254 PIT in Hz.
pub const PIT_HZ: u64 = 1_193_182;

/// Frequency implied by `tsc_ticks` elapsed while the PIT counted
/// `pit_ticks`. `None` when the measurement is unusable (nothing counted).
pub fn tsc_hz_from_pit(tsc_ticks: u64, pit_ticks: u64) -> Option<u64> {
    if tsc_ticks == 0 || pit_ticks == 0 {
        return None;
    }
    u64::try_from(tsc_ticks as u128 * PIT_HZ as u128 / pit_ticks as u128).ok()
}

/// Where the TSC's frequency came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TscSource {
    /// CPUID leaf 0x15: the TSC/crystal ratio and the crystal's frequency.
    Cpuid15,
    /// The hypervisor's timing leaf 0x40000010 (TSC kHz).
    HypervisorLeaf,
    /// KVM's paravirtual clock: the multiplier it converts TSC ticks with.
    Kvmclock,
    /// CPUID leaf 0x16: the processor's base frequency (which an invariant
    /// TSC runs at), when leaf 0x15 gives no crystal frequency.
    Cpuid16,
    /// Counted against the 8254 PIT.
    Pit,
}

impl TscSource {
    pub const fn name(self) -> &'static str {
        match self {
            TscSource::Cpuid15 => "CPUID leaf 0x15",
            TscSource::HypervisorLeaf => "the hypervisor's leaf 0x40000010",
            TscSource::Kvmclock => "kvmclock",
            TscSource::Cpuid16 => "CPUID leaf 0x16",
            TscSource::Pit => "the PIT",
        }
    }
}

/// TSC Hz from CPUID leaf 0x15: `ebx / eax` TSC ticks per crystal tick
/// of `ecx` Hz. `None` when a field is 0 (not enumerated).
pub fn tsc_hz_from_cpuid15(eax: u32, ebx: u32, ecx: u32) -> Option<u64> {
    if eax == 0 || ebx == 0 || ecx == 0 {
        return None;
    }
    Some(u64::from(ecx) * u64::from(ebx) / u64::from(eax))
}

/// TSC Hz from a pvclock (kvmclock) page's conversion: nanoseconds =
/// ((ticks shifted left by `shift`, right when negative) · `mul`) >> 32.
/// `None` for a multiplier of 0 or a shift beyond ±31.
pub fn tsc_hz_from_pvclock(mul: u32, shift: i8) -> Option<u64> {
    if mul == 0 || !(-31..=31).contains(&shift) {
        return None;
    }
    // Hz = 10^9 · 2^32 / (mul · 2^shift).
    let num = 1_000_000_000u128 << 32;
    let hz = if shift >= 0 { num / (u128::from(mul) << shift) } else { (num << -shift) / u128::from(mul) };
    u64::try_from(hz).ok().filter(|&hz| hz > 0)
}

/// How far apart two frequencies are, in parts per million of `reference`.
pub fn ppm_apart(hz: u64, reference: u64) -> u64 {
    if reference == 0 {
        return u64::MAX;
    }
    (u128::from(hz.abs_diff(reference)) * 1_000_000 / u128::from(reference)) as u64
}

/// The median of a few calibration runs, so one run disturbed by the host
/// (a preempted vCPU) does not skew the clock. Sorts `samples` in place.
pub fn median(samples: &mut [u64]) -> Option<u64> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    Some(samples[samples.len() / 2])
}

/// `x · a / b` for one fixed ratio, with no division per use: the ratio is
/// kept as its integer part and a 64-bit binary fraction, so a conversion
/// is two 64×64→128-bit multiplications. (A `u128` division is a library
/// call of a few dozen instructions, on the path of every `now()`.) The
/// fraction is rounded up, so an exact result (whole seconds) stays exact;
/// any other result is the exact floor or, within 1 of the next integer,
/// one more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ratio {
    int: u64,
    /// The fractional part · 2^64, rounded up.
    frac: u64,
}

impl Ratio {
    /// `b` must be non-zero.
    const fn new(a: u64, b: u64) -> Ratio {
        let rem = a % b;
        // rem < b, so the quotient is at most 2^64 - 1 (rounded up too).
        Ratio { int: a / b, frac: ((rem as u128) << 64).div_ceil(b as u128) as u64 }
    }

    /// `x · a / b`, saturating at `u64::MAX`.
    const fn apply(self, x: u64) -> u64 {
        let v = x as u128 * self.int as u128 + ((x as u128 * self.frac as u128) >> 64);
        if v > u64::MAX as u128 {
            u64::MAX
        } else {
            v as u64
        }
    }
}

/// A calibrated TSC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TscClock {
    hz: u64,
    to_nanos: Ratio,
    to_ticks: Ratio,
}

impl TscClock {
    /// `hz` must be non-zero; zero is replaced by 1 GHz so the clock still
    /// runs (the kernel logs a warning when calibration failed).
    pub const fn new(hz: u64) -> Self {
        let hz = if hz == 0 { 1_000_000_000 } else { hz };
        TscClock { hz, to_nanos: Ratio::new(1_000_000_000, hz), to_ticks: Ratio::new(hz, 1_000_000_000) }
    }

    pub const fn hz(&self) -> u64 {
        self.hz
    }

    /// Ticks to nanoseconds (saturating), within 1 ns of the exact floor.
    pub const fn ticks_to_nanos(&self, ticks: u64) -> u64 {
        self.to_nanos.apply(ticks)
    }

    /// Nanoseconds to ticks (saturating), within 1 tick of the exact floor.
    pub const fn nanos_to_ticks(&self, nanos: u64) -> u64 {
        self.to_ticks.apply(nanos)
    }
}

/// A point in time: a TSC reading. The TSC is the clock every CPU shares
/// (the SMP self-test checks that the CPUs' counters agree), so instants
/// taken on different CPUs compare meaningfully.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    pub const fn from_tsc(tsc: u64) -> Instant {
        Instant(tsc)
    }

    pub const fn tsc(self) -> u64 {
        self.0
    }

    /// Nanoseconds from `earlier` to `self` (0 if `earlier` is later).
    pub const fn nanos_since(self, earlier: Instant, clock: TscClock) -> u64 {
        clock.ticks_to_nanos(self.0.saturating_sub(earlier.0))
    }

    pub const fn plus_nanos(self, nanos: u64, clock: TscClock) -> Instant {
        Instant(self.0.saturating_add(clock.nanos_to_ticks(nanos)))
    }
}

/// A duration in nanoseconds, shown as milliseconds with microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Millis(pub u64);

impl core::fmt::Display for Millis {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}.{:03} ms", self.0 / 1_000_000, self.0 / 1_000 % 1_000)
    }
}

/// A TSC value at kernel entry above this many seconds means the TSC did not
/// start at power-on (some hypervisors pass the host's counter through), so
/// it says nothing about how long firmware and bootloader took.
pub const MAX_PLAUSIBLE_PRE_KERNEL_SECS: u64 = 600;

/// How long booting took: in the kernel, and before it when the TSC tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootTimes {
    pub in_kernel: Millis,
    /// Power-on to now, if the TSC started at power-on.
    pub since_power_on: Option<Millis>,
}

impl BootTimes {
    pub fn measure(clock: TscClock, entry_tsc: u64, now_tsc: u64) -> BootTimes {
        let in_kernel = Millis(clock.ticks_to_nanos(now_tsc.wrapping_sub(entry_tsc)));
        let plausible = clock.ticks_to_nanos(entry_tsc) <= MAX_PLAUSIBLE_PRE_KERNEL_SECS * 1_000_000_000;
        BootTimes { in_kernel, since_power_on: plausible.then(|| Millis(clock.ticks_to_nanos(now_tsc))) }
    }
}

impl core::fmt::Display for BootTimes {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} in the kernel, ", self.in_kernel)?;
        match self.since_power_on {
            Some(t) => write!(f, "{t} since power-on"),
            None => f.write_str("time since power-on unknown (the TSC did not start at zero)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact floor, for comparison.
    fn exact(x: u64, a: u64, b: u64) -> u64 {
        u64::try_from(x as u128 * a as u128 / b as u128).unwrap_or(u64::MAX)
    }

    #[test]
    fn conversions_match_the_exact_division_within_one() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for hz in
            [1, 7, 999_999_999, 1_000_000_000, 1_000_000_001, 2_603_000_017, 3_000_000_000, 5_999_999_999, u64::MAX]
        {
            let c = TscClock::new(hz);
            let mut values =
                vec![0, 1, 2, hz - 1, hz, hz.saturating_add(1), 1 << 32, u64::MAX / hz, u64::MAX / 2, u64::MAX];
            for _ in 0..2000 {
                // xorshift: values of every magnitude.
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                values.push(x >> (x % 64));
            }
            for v in values {
                let (ns, want) = (c.ticks_to_nanos(v), exact(v, 1_000_000_000, hz));
                assert!(ns.abs_diff(want) <= 1, "{v} ticks at {hz} Hz: {ns} ns, exactly {want}");
                // Exact results stay exact.
                if (v as u128 * 1_000_000_000).is_multiple_of(hz as u128) {
                    assert_eq!(ns, want, "{v} ticks at {hz} Hz");
                }
                let (t, want) = (c.nanos_to_ticks(v), exact(v, hz, 1_000_000_000));
                assert!(t.abs_diff(want) <= 1, "{v} ns at {hz} Hz: {t} ticks, exactly {want}");
            }
        }
        // Whole seconds stay whole; a zero frequency falls back to 1 GHz.
        let c = TscClock::new(2_603_000_000);
        assert_eq!(c.ticks_to_nanos(2_603_000_000 * 3600), 3600 * 1_000_000_000);
        assert_eq!(c.nanos_to_ticks(1_000_000_000), 2_603_000_000);
        assert_eq!(TscClock::new(0).ticks_to_nanos(5), 5);
    }

    #[test]
    fn conversions_never_go_backwards() {
        let c = TscClock::new(2_603_123_457);
        let mut last = (0, 0);
        for t in (0..50_000_000u64).step_by(997) {
            let now = (c.ticks_to_nanos(t), c.nanos_to_ticks(t));
            assert!(now.0 >= last.0 && now.1 >= last.1, "at {t}");
            last = now;
        }
    }

    #[test]
    fn frequencies_the_cpu_or_hypervisor_states() {
        // An Intel part: 25 MHz crystal, TSC at 88/2 of it.
        assert_eq!(tsc_hz_from_cpuid15(2, 88, 25_000_000), Some(1_100_000_000));
        assert_eq!(tsc_hz_from_cpuid15(2, 216, 24_000_000), Some(2_592_000_000));
        for (eax, ebx, ecx) in [(0, 88, 25_000_000), (2, 0, 25_000_000), (2, 88, 0)] {
            assert_eq!(tsc_hz_from_cpuid15(eax, ebx, ecx), None, "{eax} {ebx} {ecx}");
        }
        // kvmclock for a 2.6 GHz TSC: Linux's pvclock picks the shift that
        // keeps the multiplier in 32 bits; both round trips agree within
        // the multiplier's resolution.
        for hz in [2_600_000_000u64, 1_000_000_000, 3_999_999_000, 100_000_000] {
            for shift in -3i8..=2 {
                let scaled = if shift >= 0 { (hz as u128) << shift } else { (hz as u128) >> -shift };
                let mul = ((1_000_000_000u128 << 32) / scaled) as u64;
                let Ok(mul) = u32::try_from(mul) else { continue };
                let got = tsc_hz_from_pvclock(mul, shift).unwrap();
                assert!(ppm_apart(got, hz) < 10, "{hz} Hz, shift {shift}: {got}");
            }
        }
        assert_eq!(tsc_hz_from_pvclock(0, 0), None);
        assert_eq!(tsc_hz_from_pvclock(1 << 31, 40), None);
        assert_eq!((ppm_apart(1_000_100, 1_000_000), ppm_apart(999_900, 1_000_000)), (100, 100));
    }

    #[test]
    fn pit_calibration_arithmetic() {
        // 10 ms of PIT (11932 ticks) during which a 3 GHz TSC advanced 30 M ticks.
        let hz = tsc_hz_from_pit(30_000_000, 11_932).unwrap();
        assert!((2_999_000_000..=3_001_000_000).contains(&hz), "{hz}");
        assert_eq!(tsc_hz_from_pit(0, 11_932), None);
        assert_eq!(tsc_hz_from_pit(5, 0), None);
        assert_eq!(tsc_hz_from_pit(u64::MAX, 1), None, "overflow is not a frequency");
    }

    #[test]
    fn boot_times_distrust_a_tsc_that_did_not_start_at_zero() {
        let c = TscClock::new(1_000_000_000);
        let t = BootTimes::measure(c, 900_000_000, 939_500_000);
        assert_eq!(t.to_string(), "39.500 ms in the kernel, 939.500 ms since power-on");
        let t = BootTimes::measure(c, 1_637_000_000_000, 1_637_089_000_000);
        assert_eq!(t.since_power_on, None);
        assert_eq!(
            t.to_string(),
            "89.000 ms in the kernel, time since power-on unknown (the TSC did not start at zero)"
        );
    }

    #[test]
    fn instants_order_and_measure() {
        let c = TscClock::new(2_000_000_000);
        let a = Instant::from_tsc(1_000);
        let b = a.plus_nanos(1_000, c);
        assert_eq!(b.tsc(), 3_000);
        assert!(b > a);
        assert_eq!(b.nanos_since(a, c), 1_000);
        assert_eq!(a.nanos_since(b, c), 0, "never negative");
        assert_eq!(Instant::from_tsc(u64::MAX).plus_nanos(5, c).tsc(), u64::MAX);
    }

    #[test]
    fn median_ignores_one_outlier() {
        assert_eq!(median(&mut [3_000, 9_000_000, 3_001]), Some(3_001));
        assert_eq!(median(&mut []), None);
    }

    #[test]
    fn tick_conversion_is_exact_and_does_not_overflow() {
        let c = TscClock::new(2_500_000_000);
        assert_eq!(c.ticks_to_nanos(2_500_000_000), 1_000_000_000);
        assert_eq!(c.ticks_to_nanos(5), 2);
        assert_eq!(c.nanos_to_ticks(1_000), 2_500);
        // ~234 years of ticks at 2.5 GHz still converts.
        assert_eq!(c.ticks_to_nanos(u64::MAX), 7_378_697_629_483_820_646);
        assert_eq!(TscClock::new(0).hz(), 1_000_000_000);
        assert_eq!(TscClock::new(1).nanos_to_ticks(u64::MAX), u64::MAX / 1_000_000_000);
    }
}
