//! Local APIC register encodings and timer arithmetic (the register access
//! itself is in the kernel's `arch::apic`).

/// Which register interface the local APIC uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicMode {
    /// Memory-mapped registers, 8-bit APIC ids.
    XApic,
    /// MSR registers, 32-bit APIC ids.
    X2Apic,
}

/// Interrupt command register delivery modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    Fixed(u8),
    Nmi,
    Init,
    /// Start-up at physical page `vector << 12`.
    Startup(u8),
}

/// Destination shorthands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// Physical destination: one APIC id.
    Apic(u32),
    AllExcludingSelf,
}

/// Encodes the 64-bit ICR value. In xAPIC mode the destination sits in
/// bits 56..64 (the high register's top byte); in x2APIC mode in 32..64.
/// `None` when the APIC id cannot be addressed in `mode`.
pub fn icr(mode: ApicMode, delivery: Delivery, dest: Dest) -> Option<u64> {
    let (vector, dm): (u8, u64) = match delivery {
        Delivery::Fixed(v) => (v, 0b000),
        Delivery::Nmi => (0, 0b100),
        Delivery::Init => (0, 0b101),
        Delivery::Startup(page) => (page, 0b110),
    };
    // Level = assert (bit 14); edge triggered; physical destination mode.
    let mut v = u64::from(vector) | (dm << 8) | (1 << 14);
    match dest {
        Dest::AllExcludingSelf => v |= 0b11 << 18,
        Dest::Apic(id) => match mode {
            ApicMode::XApic if id > 0xff => return None,
            ApicMode::XApic => v |= u64::from(id) << 56,
            ApicMode::X2Apic => v |= u64::from(id) << 32,
        },
    }
    Some(v)
}

/// The local APIC id from the ID register value.
pub fn id_from_register(mode: ApicMode, raw: u32) -> u32 {
    match mode {
        ApicMode::XApic => raw >> 24,
        ApicMode::X2Apic => raw,
    }
}

/// APIC timer ticks per second from a count measured over `tsc_ticks` of a
/// TSC running at `tsc_hz`.
pub fn timer_hz(apic_ticks: u64, tsc_ticks: u64, tsc_hz: u64) -> Option<u64> {
    if apic_ticks == 0 || tsc_ticks == 0 {
        return None;
    }
    u64::try_from(apic_ticks as u128 * tsc_hz as u128 / tsc_ticks as u128).ok()
}

/// Initial count for a one-shot timer that should fire `tsc_ticks` from now,
/// rounded up (a timer must never fire early) and clamped to the register.
pub fn one_shot_count(tsc_ticks: u64, tsc_hz: u64, timer_hz: u64) -> u32 {
    if tsc_hz == 0 {
        return u32::MAX;
    }
    let count = (tsc_ticks as u128 * timer_hz as u128).div_ceil(tsc_hz as u128);
    count.clamp(1, u32::MAX as u128) as u32
}

/// What a CPU's timer was last armed with. A halt whose deadline is the
/// one already armed, and whose interrupt has not come yet, need not write
/// it again: each write (the LVT and the deadline MSR, or the initial count)
/// is a trapped access, an exit to the hypervisor, on every halt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArmedTimer {
    /// The deadline (None: disarmed) and the CPU's count of timer
    /// interrupts when it was written.
    last: Option<(Option<u64>, u64)>,
}

impl ArmedTimer {
    /// Whether the timer must be written to fire at `deadline` (None:
    /// disarmed), `fired` being how many timer interrupts the CPU has taken
    /// so far; if so, records it as armed. Once the armed deadline's
    /// interrupt has come, the count differs and the timer is written again.
    pub fn needs_write(&mut self, deadline: Option<u64>, fired: u64) -> bool {
        let now = Some((deadline, fired));
        if self.last == now {
            return false;
        }
        self.last = now;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unchanged_deadline_that_has_not_fired_is_not_written_again() {
        let mut t = ArmedTimer::default();
        assert!(t.needs_write(Some(1_000), 0), "first arming");
        assert!(!t.needs_write(Some(1_000), 0), "same deadline, no interrupt since");
        assert!(t.needs_write(Some(2_000), 0), "a new deadline");
        assert!(t.needs_write(Some(2_000), 1), "it fired: the timer is spent");
        assert!(!t.needs_write(Some(2_000), 1));
        assert!(t.needs_write(None, 1), "disarm");
        assert!(!t.needs_write(None, 1));
        assert!(t.needs_write(Some(2_000), 1), "armed again after a disarm");
    }

    #[test]
    fn icr_encoding_xapic_puts_the_id_in_the_top_byte() {
        assert_eq!(icr(ApicMode::XApic, Delivery::Fixed(0x31), Dest::Apic(3)), Some((3u64 << 56) | 0x4031));
        assert_eq!(icr(ApicMode::XApic, Delivery::Init, Dest::Apic(1)), Some((1u64 << 56) | 0x4500));
        assert_eq!(icr(ApicMode::XApic, Delivery::Startup(0x08), Dest::Apic(2)), Some((2u64 << 56) | 0x4608));
        assert_eq!(icr(ApicMode::XApic, Delivery::Fixed(1), Dest::Apic(256)), None);
    }

    #[test]
    fn icr_encoding_x2apic_and_shorthands() {
        assert_eq!(icr(ApicMode::X2Apic, Delivery::Fixed(0x31), Dest::Apic(300)), Some((300u64 << 32) | 0x4031));
        assert_eq!(icr(ApicMode::X2Apic, Delivery::Nmi, Dest::AllExcludingSelf), Some(0xc4400));
        assert_eq!(icr(ApicMode::XApic, Delivery::Nmi, Dest::AllExcludingSelf), Some(0xc4400));
    }

    #[test]
    fn apic_ids() {
        assert_eq!(id_from_register(ApicMode::XApic, 0x0300_0000), 3);
        assert_eq!(id_from_register(ApicMode::X2Apic, 300), 300);
    }

    #[test]
    fn timer_arithmetic() {
        // QEMU's APIC timer: 1 GHz bus / 16 = 62.5 MHz; 10 ms of a 2.6 GHz TSC.
        assert_eq!(timer_hz(625_000, 26_000_000, 2_600_000_000), Some(62_500_000));
        assert_eq!(timer_hz(0, 1, 1), None);
        // 1 ms at 62.5 MHz = 62500 counts.
        assert_eq!(one_shot_count(2_600_000, 2_600_000_000, 62_500_000), 62_500);
        // Rounded up, never zero, clamped.
        assert_eq!(one_shot_count(1, 2_600_000_000, 62_500_000), 1);
        assert_eq!(one_shot_count(0, 2_600_000_000, 62_500_000), 1);
        assert_eq!(one_shot_count(u64::MAX, 1, 62_500_000), u32::MAX);
    }
}
