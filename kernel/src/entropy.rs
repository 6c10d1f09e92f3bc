//! Seeds for the per-CPU network stacks.
//!
//! Each stack needs its own unpredictable seed (TCP initial sequence
//! numbers and local ports come from it). The bare-metal side reads RDSEED
//! or RDRAND where the CPU has them; without either it samples the TSC
//! around small amounts of work, whose low bits jitter (interrupts, caches,
//! the hypervisor), and this module folds those samples and the CPU index
//! into a seed. That fallback is weak entropy, and the kernel says so.

/// Where a seed came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Rdseed,
    Rdrand,
    /// TSC jitter: not a cryptographic source.
    TscJitter,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Rdseed => "RDSEED",
            Source::Rdrand => "RDRAND",
            Source::TscJitter => "TSC jitter (no RDSEED/RDRAND: weak)",
        }
    }
}

/// splitmix64's finaliser: a bijection that spreads every input bit.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Folds `samples` (hardware random words or TSC readings) and the CPU
/// index into one seed. Different CPUs get different seeds from the same
/// samples, and every sample bit affects the result.
pub fn fold(cpu: u32, samples: impl IntoIterator<Item = u64>) -> u64 {
    let mut acc = mix64(0x6d71_6e65_7400_0000 ^ u64::from(cpu));
    for s in samples {
        acc = mix64(acc ^ s).rotate_left(17);
    }
    mix64(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus_and_samples_both_matter() {
        let samples = [1u64, 2, 3];
        assert_ne!(fold(0, samples), fold(1, samples), "same samples, different CPUs");
        assert_ne!(fold(0, samples), fold(0, [1u64, 2, 4]), "one bit of one sample");
        assert_eq!(fold(3, samples), fold(3, samples), "a pure function");
        let seeds: std::collections::BTreeSet<u64> = (0..256).map(|c| fold(c, [42u64])).collect();
        assert_eq!(seeds.len(), 256);
    }

    #[test]
    fn mixing_spreads_a_one_bit_change() {
        let a = mix64(0x1000);
        let b = mix64(0x1001);
        assert!((a ^ b).count_ones() > 16, "{a:x} vs {b:x}");
    }
}
