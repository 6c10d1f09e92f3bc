//! Hardware random numbers: RDSEED and RDRAND, with a TSC-jitter fallback.

use core::arch::x86_64::__cpuid_count;

use kernel::entropy::{self, Source};

use super::time::rdtsc;

/// Tries per instruction: both may transiently fail (CF = 0) under load.
const TRIES: usize = 16;
/// TSC samples for the fallback.
const JITTER_SAMPLES: usize = 64;

fn has_rdrand() -> bool {
    // SAFETY: CPUID leaf 1 exists on every x86_64 CPU.
    #[allow(unused_unsafe)]
    let ecx = unsafe { __cpuid_count(1, 0).ecx };
    ecx & (1 << 30) != 0
}

fn has_rdseed() -> bool {
    // SAFETY: leaf 0 exists on every x86_64 CPU and says whether leaf 7 does.
    #[allow(unused_unsafe)]
    let max = unsafe { __cpuid_count(0, 0).eax };
    // SAFETY: leaf 7 exists (checked above).
    #[allow(unused_unsafe)]
    let ebx = if max >= 7 { unsafe { __cpuid_count(7, 0).ebx } } else { 0 };
    ebx & (1 << 18) != 0
}

/// `step` (one RDSEED or RDRAND: the value and the carry flag) until it
/// succeeds, at most [`TRIES`] times.
fn retry(step: impl Fn() -> (u64, u8)) -> Option<u64> {
    (0..TRIES).find_map(|_| match step() {
        (v, 1) => Some(v),
        _ => None,
    })
}

fn rdseed() -> Option<u64> {
    retry(|| {
        let (v, ok): (u64, u8);
        // SAFETY: only called when CPUID reports RDSEED; it writes the two
        // named registers and the flags, touches no memory.
        unsafe {
            core::arch::asm!("rdseed {v}", "setc {ok}", v = out(reg) v, ok = out(reg_byte) ok, options(nomem, nostack))
        };
        (v, ok)
    })
}

fn rdrand() -> Option<u64> {
    retry(|| {
        let (v, ok): (u64, u8);
        // SAFETY: only called when CPUID reports RDRAND; as for RDSEED.
        unsafe {
            core::arch::asm!("rdrand {v}", "setc {ok}", v = out(reg) v, ok = out(reg_byte) ok, options(nomem, nostack))
        };
        (v, ok)
    })
}

/// A seed for CPU `cpu`'s network stack, and where it came from.
pub fn stack_seed(cpu: u32) -> (u64, Source) {
    let tsc = rdtsc();
    if has_rdseed() {
        if let (Some(a), Some(b)) = (rdseed(), rdseed()) {
            return (entropy::fold(cpu, [a, b, tsc]), Source::Rdseed);
        }
    }
    if has_rdrand() {
        if let (Some(a), Some(b)) = (rdrand(), rdrand()) {
            return (entropy::fold(cpu, [a, b, tsc]), Source::Rdrand);
        }
    }
    let mut last = tsc;
    let samples = (0..JITTER_SAMPLES).map(|i| {
        // A little work of varying length between readings.
        let mut x = last ^ i as u64;
        for _ in 0..(last & 31) {
            x = entropy::mix64(x);
        }
        let now = rdtsc();
        let delta = now.wrapping_sub(last) ^ x;
        last = now;
        delta
    });
    (entropy::fold(cpu, samples), Source::TscJitter)
}
