//! The clock: the TSC, its frequency taken once at boot from what the CPU
//! or the hypervisor states (CPUID leaf 0x15, the hypervisor's timing leaf
//! 0x40000010, kvmclock, CPUID leaf 0x16), or else counted against the
//! 8254 PIT (three 10 ms windows: 30 ms, the boot's longest wait under
//! TCG, whose CPUs state nothing).

use core::arch::x86_64::__cpuid_count;

use kernel::time::{self, Instant, TscClock, TscSource, PIT_HZ};
use spin::Once;
use x86_64::instructions::port::Port;
use x86_64::registers::model_specific::Msr;

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

/// Sets up the clock; `entry_tsc` (read first thing at kernel entry)
/// becomes time zero. `to_phys` turns a kernel virtual address into a
/// physical one (for kvmclock's page). `Ok` with the frequency and its
/// source, or `Err(fallback_hz)` when no source worked.
pub fn init(entry_tsc: u64, to_phys: &dyn Fn(u64) -> Option<u64>) -> Result<(u64, TscSource), u64> {
    ENTRY_TSC.call_once(|| entry_tsc);
    let result = stated_hz(to_phys).or_else(|| pit_hz().map(|hz| (hz, TscSource::Pit))).ok_or(FALLBACK_HZ);
    let hz = result.map_or_else(|fallback| fallback, |(hz, _)| hz);
    CLOCK.call_once(|| TscClock::new(hz));
    result
}

/// The TSC frequency counted against the PIT: the median of three
/// windows. `None` when the PIT does not count.
pub fn pit_hz() -> Option<u64> {
    let mut samples = [0u64; RUNS];
    let mut n = 0;
    for _ in 0..RUNS {
        if let Some(hz) = measure_window() {
            samples[n] = hz;
            n += 1;
        }
    }
    time::median(&mut samples[..n])
}

/// CPUID (safe: it only reads identification data; an unsupported leaf
/// returns zeros or the highest leaf's data, which the callers check the
/// maximum leaf against).
fn cpuid(leaf: u32) -> (u32, u32, u32, u32) {
    let r = __cpuid_count(leaf, 0);
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// Whether the CPU says it is virtual (CPUID.1:ECX bit 31).
pub fn hypervisor() -> bool {
    cpuid(1).2 & (1 << 31) != 0
}

/// The frequency the CPU or hypervisor states, by the first source that
/// has one.
fn stated_hz(to_phys: &dyn Fn(u64) -> Option<u64>) -> Option<(u64, TscSource)> {
    let max_leaf = cpuid(0).0;
    let leaf15 = (max_leaf >= 0x15).then(|| cpuid(0x15));
    if let Some(hz) = leaf15.and_then(|(a, b, c, _)| time::tsc_hz_from_cpuid15(a, b, c)) {
        return Some((hz, TscSource::Cpuid15));
    }
    if hypervisor() {
        let (max_hv, b, c, d) = cpuid(0x4000_0000);
        if max_hv >= 0x4000_0010 {
            let khz = u64::from(cpuid(0x4000_0010).0);
            if khz > 0 {
                return Some((khz * 1000, TscSource::HypervisorLeaf));
            }
        }
        // "KVMKVMKVM\0\0\0" (no heap yet to compare it as a string).
        let kvm = [b, c, d] == [*b"KVMK", *b"VMKV", *b"M\0\0\0"].map(u32::from_le_bytes);
        // KVM_FEATURE_CLOCKSOURCE2: the MSRs at 0x4b564d00.
        if kvm && max_hv >= 0x4000_0001 && cpuid(0x4000_0001).0 & (1 << 3) != 0 {
            if let Some(hz) = kvmclock_hz(to_phys) {
                return Some((hz, TscSource::Kvmclock));
            }
        }
    }
    // Leaf 0x15 with a ratio but no crystal: the base frequency.
    let base_mhz = if max_leaf >= 0x16 { cpuid(0x16).0 & 0xffff } else { 0 };
    (leaf15.is_some_and(|(a, b, _, _)| a != 0 && b != 0) && base_mhz > 0)
        .then(|| (u64::from(base_mhz) * 1_000_000, TscSource::Cpuid16))
}

/// kvmclock's `pvclock_vcpu_time_info`.
#[repr(C, align(32))]
struct PvClock {
    version: u32,
    pad0: u32,
    tsc_timestamp: u64,
    system_time: u64,
    tsc_to_system_mul: u32,
    tsc_shift: i8,
    flags: u8,
    pad: [u8; 2],
}

static mut PVCLOCK: PvClock = PvClock {
    version: 0,
    pad0: 0,
    tsc_timestamp: 0,
    system_time: 0,
    tsc_to_system_mul: 0,
    tsc_shift: 0,
    flags: 0,
    pad: [0; 2],
};

/// MSR_KVM_SYSTEM_TIME_NEW.
const KVM_SYSTEM_TIME: u32 = 0x4b56_4d01;

/// Asks KVM for the boot CPU's pvclock page once, takes the TSC frequency
/// from its multiplier, and turns the page off again.
fn kvmclock_hz(to_phys: &dyn Fn(u64) -> Option<u64>) -> Option<u64> {
    let virt = core::ptr::addr_of!(PVCLOCK) as u64;
    let phys = to_phys(virt)?;
    let mut msr = Msr::new(KVM_SYSTEM_TIME);
    // SAFETY: the MSR exists (KVM_FEATURE_CLOCKSOURCE2 was checked); KVM
    // writes the 32-byte structure at `phys`, which is PVCLOCK's frame (the
    // caller translated its address) and nothing else's; it is turned off
    // again below, before anything else could read the static. Only the
    // boot CPU runs.
    unsafe { msr.write(phys | 1) };
    let mut hz = None;
    for _ in 0..100 {
        // SAFETY: as above; volatile reads of what the hypervisor writes.
        let (v1, mul, shift, v2) = unsafe {
            let p = core::ptr::addr_of!(PVCLOCK);
            let v1 = core::ptr::addr_of!((*p).version).read_volatile();
            let mul = core::ptr::addr_of!((*p).tsc_to_system_mul).read_volatile();
            let shift = core::ptr::addr_of!((*p).tsc_shift).read_volatile();
            let v2 = core::ptr::addr_of!((*p).version).read_volatile();
            (v1, mul, shift, v2)
        };
        // An odd version: KVM is updating it.
        if v1 == v2 && v1 % 2 == 0 && mul != 0 {
            hz = time::tsc_hz_from_pvclock(mul, shift);
            break;
        }
        core::hint::spin_loop();
    }
    // SAFETY: bit 0 clear turns the page off; KVM stops writing it.
    unsafe { msr.write(0) };
    hz
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
