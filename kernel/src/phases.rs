//! Where boot time goes: the TSC at the end of each boot phase, and the
//! breakdown line the kernel prints once its services listen.
//!
//! The TSC counts from the VM's start (QEMU's TCG, and KVM, start it at 0),
//! so the time before the kernel's first instruction is the TSC at entry:
//! QEMU's own set-up is not in it, everything from the reset vector on
//! (firmware, loader) is.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU64, Ordering};

use crate::time::{Millis, TscClock, MAX_PLAUSIBLE_PRE_KERNEL_SECS};

/// The phases, in boot order; each ends where the next begins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Reset vector to the kernel's first instruction (firmware, loader).
    Firmware,
    /// TSC frequency (CPUID, hypervisor, or the PIT).
    Clock,
    /// Boot options, frames, heap, page tables, GDT, IDT.
    Memory,
    /// ACPI tables: the MADT's processors, the MCFG.
    Acpi,
    /// The local APIC and its timer.
    Apic,
    /// Application processors started and online.
    Cpus,
    /// PCI scan and the NIC's queues, vectors and steering.
    Nic,
    /// Every vCPU's stack made and its TCP services listening.
    Services,
}

impl Phase {
    pub const ALL: [Phase; 8] = [
        Phase::Firmware,
        Phase::Clock,
        Phase::Memory,
        Phase::Acpi,
        Phase::Apic,
        Phase::Cpus,
        Phase::Nic,
        Phase::Services,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Phase::Firmware => "firmware",
            Phase::Clock => "clock",
            Phase::Memory => "memory",
            Phase::Acpi => "acpi",
            Phase::Apic => "apic",
            Phase::Cpus => "cpus",
            Phase::Nic => "nic",
            Phase::Services => "services",
        }
    }
}

/// First words of the breakdown line.
pub const LINE: &str = "boot phases:";

/// The TSC at the end of each phase (0: not reached).
pub struct Phases {
    ends: [AtomicU64; Phase::ALL.len()],
}

impl Default for Phases {
    fn default() -> Self {
        Self::new()
    }
}

impl Phases {
    pub const fn new() -> Phases {
        Phases { ends: [const { AtomicU64::new(0) }; Phase::ALL.len()] }
    }

    /// `phase` ended at TSC `tsc` (the first mark stands).
    pub fn mark(&self, phase: Phase, tsc: u64) {
        let _ = self.ends[phase as usize].compare_exchange(0, tsc.max(1), Ordering::AcqRel, Ordering::Acquire);
    }

    /// The breakdown: each phase reached, in milliseconds, then the total
    /// since the VM started, e.g. `boot phases: firmware 8.2 ms, clock
    /// 30.1 ms, ..., services 2.5 ms; services ready 74.0 ms after power-on`.
    /// Phases not reached are left out; the total is up to the last one.
    pub fn write(&self, clock: TscClock, out: &mut impl Write) -> fmt::Result {
        write!(out, "{LINE}")?;
        // A TSC that did not start at power-on (some hypervisors pass the
        // host's through) says nothing of the time before the kernel.
        let entry = self.ends[Phase::Firmware as usize].load(Ordering::Acquire);
        let from_power_on = clock.ticks_to_nanos(entry) <= MAX_PLAUSIBLE_PRE_KERNEL_SECS * 1_000_000_000;
        let (mut prev, mut last) = (if from_power_on { 0 } else { entry }, None);
        for phase in Phase::ALL {
            let end = self.ends[phase as usize].load(Ordering::Acquire);
            if end == 0 || (phase == Phase::Firmware && !from_power_on) {
                continue;
            }
            let sep = if last.is_some() { "," } else { "" };
            write!(out, "{sep} {} {}", phase.name(), Millis(clock.ticks_to_nanos(end.saturating_sub(prev))))?;
            prev = end;
            last = Some(phase);
        }
        let total = Millis(clock.ticks_to_nanos(if from_power_on { prev } else { prev - entry }));
        let since = if from_power_on { "power-on" } else { "kernel entry" };
        match last {
            Some(Phase::Services) => write!(out, "; services ready {total} after {since}"),
            Some(p) => write!(out, "; {} done {total} after {since}", p.name()),
            None => write!(out, " none"),
        }
    }
}

/// The breakdown parsed back (for the tests and the host tools): each
/// phase's name and milliseconds, in the order printed, and the total.
pub fn parse(line: &str) -> Option<(alloc::vec::Vec<(&str, f64)>, f64)> {
    let rest = &line[line.find(LINE)? + LINE.len()..];
    let (list, total) = rest.split_once(';')?;
    let mut phases = alloc::vec::Vec::new();
    for item in list.split(',') {
        let mut words = item.split_whitespace();
        let (name, ms, unit) = (words.next()?, words.next()?, words.next()?);
        if unit != "ms" || words.next().is_some() {
            return None;
        }
        phases.push((name, ms.parse().ok()?));
    }
    let total = total.split_whitespace().find_map(|w| w.parse::<f64>().ok())?;
    Some((phases, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;

    #[test]
    fn the_line_lists_the_phases_reached_in_order_and_parses_back() {
        let clock = TscClock::new(1_000_000_000);
        let p = Phases::new();
        p.mark(Phase::Firmware, 8_000_000);
        p.mark(Phase::Clock, 38_000_000);
        p.mark(Phase::Memory, 39_500_000);
        p.mark(Phase::Acpi, 40_000_000);
        p.mark(Phase::Apic, 41_000_000);
        p.mark(Phase::Cpus, 45_000_000);
        p.mark(Phase::Nic, 60_000_000);
        p.mark(Phase::Services, 74_000_000);
        p.mark(Phase::Services, 99_000_000); // the first mark stands
        let mut s = String::new();
        p.write(clock, &mut s).unwrap();
        assert_eq!(
            s,
            "boot phases: firmware 8.000 ms, clock 30.000 ms, memory 1.500 ms, acpi 0.500 ms, apic 1.000 ms, \
             cpus 4.000 ms, nic 15.000 ms, services 14.000 ms; services ready 74.000 ms after power-on"
        );
        let (phases, total) = parse(&s).unwrap();
        let names: alloc::vec::Vec<&str> = phases.iter().map(|p| p.0).collect();
        assert_eq!(names, ["firmware", "clock", "memory", "acpi", "apic", "cpus", "nic", "services"]);
        assert_eq!((phases[1].1, total), (30.0, 74.0));
    }

    #[test]
    fn a_boot_without_services_ends_at_its_last_phase() {
        let clock = TscClock::new(2_000_000_000);
        let p = Phases::new();
        p.mark(Phase::Firmware, 20_000_000);
        p.mark(Phase::Nic, 60_000_000);
        let mut s = String::new();
        p.write(clock, &mut s).unwrap();
        assert_eq!(s, "boot phases: firmware 10.000 ms, nic 20.000 ms; nic done 30.000 ms after power-on");
        assert_eq!(parse(&s).unwrap().1, 30.0);
        assert!(parse("boot phases: firmware 1 s; x").is_none());
    }

    #[test]
    fn a_tsc_that_did_not_start_at_power_on_leaves_the_firmware_out() {
        let clock = TscClock::new(1_000_000_000);
        let p = Phases::new();
        let entry = 50_000 * 1_000_000_000;
        p.mark(Phase::Firmware, entry);
        p.mark(Phase::Clock, entry + 7_000_000);
        p.mark(Phase::Services, entry + 9_000_000);
        let mut s = String::new();
        p.write(clock, &mut s).unwrap();
        assert_eq!(s, "boot phases: clock 7.000 ms, services 2.000 ms; services ready 9.000 ms after kernel entry");
    }
}
