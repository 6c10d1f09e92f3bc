//! The ACPI MADT ("APIC" table): which processors exist, their local APIC
//! ids and states, the I/O APICs and interrupt source overrides; and the plan
//! of which processors the kernel starts.
//!
//! The `acpi` crate finds and checksums the table; this module interprets its
//! bytes, so it can be tested against tables recorded from QEMU. Malformed
//! entries end parsing with an error instead of being trusted.

use alloc::vec::Vec;
use core::fmt;

/// Size of the standard ACPI table header.
pub const SDT_HEADER_LEN: usize = 36;
/// MADT fields after the header: local APIC address (u32) and flags (u32).
const MADT_FIXED_LEN: usize = SDT_HEADER_LEN + 8;

/// A processor's state as the firmware reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessorState {
    /// Present and usable.
    Enabled,
    /// Not enabled now, but could be brought online (hot-plug slot).
    OnlineCapable,
    /// Present in the table but not usable.
    Disabled,
}

impl ProcessorState {
    fn from_flags(flags: u32) -> Self {
        if flags & 1 != 0 {
            ProcessorState::Enabled
        } else if flags & 2 != 0 {
            ProcessorState::OnlineCapable
        } else {
            ProcessorState::Disabled
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Processor {
    pub uid: u32,
    pub apic_id: u32,
    pub state: ProcessorState,
    /// Listed as an x2APIC entry (type 9).
    pub x2apic: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoApic {
    pub id: u8,
    pub address: u32,
    pub gsi_base: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterruptOverride {
    pub bus: u8,
    pub source_irq: u8,
    pub gsi: u32,
    pub flags: u16,
}

/// What the MADT says.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct MadtInfo {
    /// Physical address of the local APIC (after any 64-bit override).
    pub local_apic_address: u64,
    /// Legacy 8259 PICs are present (PCAT_COMPAT) and must be masked.
    pub has_legacy_pics: bool,
    pub processors: Vec<Processor>,
    pub io_apics: Vec<IoApic>,
    pub overrides: Vec<InterruptOverride>,
    /// Entries of types this module does not interpret.
    pub other_entries: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MadtError {
    TooShort,
    BadSignature,
    /// The header's length disagrees with the bytes available.
    BadLength,
    BadChecksum,
    /// An entry at this offset has a length that is too small or runs past the end.
    BadEntry {
        offset: usize,
    },
}

impl fmt::Display for MadtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MadtError::TooShort => f.write_str("MADT shorter than its fixed fields"),
            MadtError::BadSignature => f.write_str("not an APIC table"),
            MadtError::BadLength => f.write_str("MADT length field disagrees with the table"),
            MadtError::BadChecksum => f.write_str("MADT checksum is wrong"),
            MadtError::BadEntry { offset } => write!(f, "malformed MADT entry at offset {offset}"),
        }
    }
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from(u32_at(b, o)) | (u64::from(u32_at(b, o + 4)) << 32)
}

/// Parses a whole MADT (header included).
pub fn parse(table: &[u8]) -> Result<MadtInfo, MadtError> {
    if table.len() < MADT_FIXED_LEN {
        return Err(MadtError::TooShort);
    }
    if &table[..4] != b"APIC" {
        return Err(MadtError::BadSignature);
    }
    let len = u32_at(table, 4) as usize;
    if len < MADT_FIXED_LEN || len > table.len() {
        return Err(MadtError::BadLength);
    }
    let table = &table[..len];
    if table.iter().fold(0u8, |a, &b| a.wrapping_add(b)) != 0 {
        return Err(MadtError::BadChecksum);
    }
    let mut info = MadtInfo {
        local_apic_address: u64::from(u32_at(table, SDT_HEADER_LEN)),
        has_legacy_pics: u32_at(table, SDT_HEADER_LEN + 4) & 1 != 0,
        ..MadtInfo::default()
    };
    let mut off = MADT_FIXED_LEN;
    while off < len {
        if off + 2 > len {
            return Err(MadtError::BadEntry { offset: off });
        }
        let (kind, elen) = (table[off], table[off + 1] as usize);
        let need = match kind {
            0 => 8,
            1 => 12,
            2 => 10,
            5 => 12,
            9 => 16,
            _ => 2,
        };
        if elen < need || off + elen > len {
            return Err(MadtError::BadEntry { offset: off });
        }
        let e = &table[off..off + elen];
        match kind {
            0 => info.processors.push(Processor {
                uid: u32::from(e[2]),
                apic_id: u32::from(e[3]),
                state: ProcessorState::from_flags(u32_at(e, 4)),
                x2apic: false,
            }),
            1 => info.io_apics.push(IoApic { id: e[2], address: u32_at(e, 4), gsi_base: u32_at(e, 8) }),
            2 => info.overrides.push(InterruptOverride {
                bus: e[2],
                source_irq: e[3],
                gsi: u32_at(e, 4),
                flags: u16_at(e, 8),
            }),
            5 => info.local_apic_address = u64_at(e, 4),
            9 => info.processors.push(Processor {
                uid: u32_at(e, 12),
                apic_id: u32_at(e, 4),
                state: ProcessorState::from_flags(u32_at(e, 8)),
                x2apic: true,
            }),
            _ => info.other_entries += 1,
        }
        off += elen;
    }
    Ok(info)
}

/// Why a processor listed in the MADT is not started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    Disabled,
    OnlineCapable,
    /// Over the `cpus=` limit.
    OverLimit,
    /// Same APIC id as an earlier entry (a broken table).
    Duplicate,
}

/// Which processors run the kernel. CPU index 0 is the boot processor; the
/// others follow in table order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuPlan {
    /// APIC id of CPU index i.
    pub apic_ids: Vec<u32>,
    pub skipped: Vec<(u32, Skip)>,
    /// The boot processor was not in the table (it is used anyway).
    pub bsp_missing_from_table: bool,
}

impl CpuPlan {
    /// Plans for at most `limit` CPUs (at least the boot processor).
    pub fn new(processors: &[Processor], bsp_apic_id: u32, limit: usize) -> CpuPlan {
        let mut plan = CpuPlan { apic_ids: Vec::new(), skipped: Vec::new(), bsp_missing_from_table: false };
        plan.apic_ids.push(bsp_apic_id);
        plan.bsp_missing_from_table = !processors.iter().any(|p| p.apic_id == bsp_apic_id);
        let mut seen_bsp = false;
        for p in processors {
            if p.apic_id == bsp_apic_id {
                if seen_bsp {
                    plan.skipped.push((p.apic_id, Skip::Duplicate));
                }
                seen_bsp = true;
                continue;
            }
            let skip = match p.state {
                ProcessorState::Disabled => Some(Skip::Disabled),
                ProcessorState::OnlineCapable => Some(Skip::OnlineCapable),
                ProcessorState::Enabled if plan.apic_ids.contains(&p.apic_id) => Some(Skip::Duplicate),
                ProcessorState::Enabled if plan.apic_ids.len() >= limit.max(1) => Some(Skip::OverLimit),
                ProcessorState::Enabled => None,
            };
            match skip {
                Some(s) => plan.skipped.push((p.apic_id, s)),
                None => plan.apic_ids.push(p.apic_id),
            }
        }
        plan
    }

    pub fn count(&self, reason: Skip) -> usize {
        self.skipped.iter().filter(|(_, s)| *s == reason).count()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a MADT the way QEMU does: header, LAPIC address 0xfee00000,
    /// PCAT_COMPAT, then the given entries; fixes up length and checksum.
    pub fn table(entries: &[Vec<u8>]) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend(b"APIC");
        t.extend([0u8; 4]); // length, patched below
        t.push(1); // revision
        t.push(0); // checksum, patched below
        t.extend(b"BOCHS ");
        t.extend(b"BXPC    ");
        t.extend(1u32.to_le_bytes());
        t.extend(b"BXPC");
        t.extend(1u32.to_le_bytes());
        t.extend(0xfee0_0000u32.to_le_bytes());
        t.extend(1u32.to_le_bytes());
        for e in entries {
            t.extend(e);
        }
        let len = t.len() as u32;
        t[4..8].copy_from_slice(&len.to_le_bytes());
        let sum = t.iter().fold(0u8, |a, &b| a.wrapping_add(b));
        t[9] = 0u8.wrapping_sub(sum);
        t
    }

    pub fn lapic(uid: u8, apic_id: u8, flags: u32) -> Vec<u8> {
        let mut e = vec![0, 8, uid, apic_id];
        e.extend(flags.to_le_bytes());
        e
    }

    fn x2apic(uid: u32, apic_id: u32, flags: u32) -> Vec<u8> {
        let mut e = vec![9, 16, 0, 0];
        e.extend(apic_id.to_le_bytes());
        e.extend(flags.to_le_bytes());
        e.extend(uid.to_le_bytes());
        e
    }

    fn ioapic() -> Vec<u8> {
        let mut e = vec![1, 12, 0, 0];
        e.extend(0xfec0_0000u32.to_le_bytes());
        e.extend(0u32.to_le_bytes());
        e
    }

    fn iso(source: u8, gsi: u32, flags: u16) -> Vec<u8> {
        let mut e = vec![2, 10, 0, source];
        e.extend(gsi.to_le_bytes());
        e.extend(flags.to_le_bytes());
        e
    }

    /// Recorded from QEMU 7.2 (`log=debug` prints the table): q35 with
    /// `-smp 2,maxcpus=4`: two enabled CPUs, two slots with flags 0, one
    /// I/O APIC, five interrupt source overrides and a LAPIC NMI entry.
    pub const QEMU_Q35_SMP2_MAXCPUS4: [u8; 144] = [
        0x41, 0x50, 0x49, 0x43, 0x90, 0x00, 0x00, 0x00, 0x01, 0x4d, 0x42, 0x4f, 0x43, 0x48, 0x53, 0x20, 0x42, 0x58,
        0x50, 0x43, 0x20, 0x20, 0x20, 0x20, 0x01, 0x00, 0x00, 0x00, 0x42, 0x58, 0x50, 0x43, 0x01, 0x00, 0x00, 0x00,
        0x00, 0x00, 0xe0, 0xfe, 0x01, 0x00, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x08,
        0x01, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x08, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x08, 0x03, 0x03,
        0x00, 0x00, 0x00, 0x00, 0x01, 0x0c, 0x00, 0x00, 0x00, 0x00, 0xc0, 0xfe, 0x00, 0x00, 0x00, 0x00, 0x02, 0x0a,
        0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x0a, 0x00, 0x05, 0x05, 0x00, 0x00, 0x00, 0x0d, 0x00,
        0x02, 0x0a, 0x00, 0x09, 0x09, 0x00, 0x00, 0x00, 0x0d, 0x00, 0x02, 0x0a, 0x00, 0x0a, 0x0a, 0x00, 0x00, 0x00,
        0x0d, 0x00, 0x02, 0x0a, 0x00, 0x0b, 0x0b, 0x00, 0x00, 0x00, 0x0d, 0x00, 0x04, 0x06, 0xff, 0x00, 0x00, 0x01,
    ];

    /// Recorded from QEMU 7.2: the i440FX `pc` machine with `-smp 4`.
    pub const QEMU_PC_SMP4: [u8; 144] = [
        0x41, 0x50, 0x49, 0x43, 0x90, 0x00, 0x00, 0x00, 0x01, 0x4b, 0x42, 0x4f, 0x43, 0x48, 0x53, 0x20, 0x42, 0x58,
        0x50, 0x43, 0x20, 0x20, 0x20, 0x20, 0x01, 0x00, 0x00, 0x00, 0x42, 0x58, 0x50, 0x43, 0x01, 0x00, 0x00, 0x00,
        0x00, 0x00, 0xe0, 0xfe, 0x01, 0x00, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x08,
        0x01, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x08, 0x02, 0x02, 0x01, 0x00, 0x00, 0x00, 0x00, 0x08, 0x03, 0x03,
        0x01, 0x00, 0x00, 0x00, 0x01, 0x0c, 0x00, 0x00, 0x00, 0x00, 0xc0, 0xfe, 0x00, 0x00, 0x00, 0x00, 0x02, 0x0a,
        0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x0a, 0x00, 0x05, 0x05, 0x00, 0x00, 0x00, 0x0d, 0x00,
        0x02, 0x0a, 0x00, 0x09, 0x09, 0x00, 0x00, 0x00, 0x0d, 0x00, 0x02, 0x0a, 0x00, 0x0a, 0x0a, 0x00, 0x00, 0x00,
        0x0d, 0x00, 0x02, 0x0a, 0x00, 0x0b, 0x0b, 0x00, 0x00, 0x00, 0x0d, 0x00, 0x04, 0x06, 0xff, 0x00, 0x00, 0x01,
    ];

    /// The same table built by hand, to show the builder matches QEMU.
    pub fn qemu_smp2_of_4() -> Vec<u8> {
        table(&[
            lapic(0, 0, 1),
            lapic(1, 1, 1),
            lapic(2, 2, 0),
            lapic(3, 3, 0),
            ioapic(),
            iso(0, 2, 0),
            iso(5, 5, 0xd),
            iso(9, 9, 0xd),
            iso(10, 10, 0xd),
            iso(11, 11, 0xd),
            vec![4, 6, 0xff, 0, 0, 1],
        ])
    }

    #[test]
    fn the_builder_reproduces_qemus_table() {
        let built = qemu_smp2_of_4();
        assert_eq!(built.len(), QEMU_Q35_SMP2_MAXCPUS4.len());
        assert_eq!(built[..], QEMU_Q35_SMP2_MAXCPUS4[..]);
    }

    #[test]
    fn recorded_pc_table_with_four_cpus() {
        let m = parse(&QEMU_PC_SMP4).unwrap();
        assert!(m.processors.iter().all(|p| p.state == ProcessorState::Enabled && !p.x2apic));
        let plan = CpuPlan::new(&m.processors, 0, 64);
        assert_eq!(plan.apic_ids, [0, 1, 2, 3]);
        assert!(plan.skipped.is_empty());
        assert_eq!(CpuPlan::new(&m.processors, 0, 2).count(Skip::OverLimit), 2);
    }

    #[test]
    fn qemu_table_is_understood() {
        let m = parse(&QEMU_Q35_SMP2_MAXCPUS4).unwrap();
        assert_eq!(m.local_apic_address, 0xfee0_0000);
        assert!(m.has_legacy_pics);
        let states: Vec<_> = m.processors.iter().map(|p| (p.apic_id, p.state)).collect();
        assert_eq!(
            states,
            [
                (0, ProcessorState::Enabled),
                (1, ProcessorState::Enabled),
                (2, ProcessorState::Disabled),
                (3, ProcessorState::Disabled)
            ]
        );
        assert_eq!(m.io_apics, [IoApic { id: 0, address: 0xfec0_0000, gsi_base: 0 }]);
        assert_eq!(m.overrides[0], InterruptOverride { bus: 0, source_irq: 0, gsi: 2, flags: 0 });
        assert_eq!(m.overrides.len(), 5);
        assert_eq!(m.other_entries, 1, "the LAPIC NMI entry");
    }

    #[test]
    fn x2apic_entries_online_capable_and_address_override() {
        let mut addr = vec![5, 12, 0, 0];
        addr.extend(0x1_fee0_0000u64.to_le_bytes());
        let m = parse(&table(&[lapic(0, 0, 1), x2apic(300, 256, 1), x2apic(301, 257, 2), addr])).unwrap();
        assert_eq!(m.local_apic_address, 0x1_fee0_0000);
        assert_eq!(m.processors[1], Processor { uid: 300, apic_id: 256, state: ProcessorState::Enabled, x2apic: true });
        assert_eq!(m.processors[2].state, ProcessorState::OnlineCapable);
    }

    #[test]
    fn malformed_tables_are_errors() {
        let good = QEMU_Q35_SMP2_MAXCPUS4.to_vec();
        assert_eq!(parse(&good[..40]), Err(MadtError::TooShort));
        let mut bad = good.clone();
        bad[0] = b'X';
        assert_eq!(parse(&bad), Err(MadtError::BadSignature));
        let mut bad = good.clone();
        bad[20] ^= 1;
        assert_eq!(parse(&bad), Err(MadtError::BadChecksum));
        assert_eq!(parse(&good[..good.len() - 1]), Err(MadtError::BadLength));
        // An entry whose length is 0 would loop forever; one too long runs off the end.
        for bad_len in [0u8, 1, 7, 200] {
            let mut e = lapic(0, 0, 1);
            e[1] = bad_len;
            let t = table(&[e]);
            assert_eq!(parse(&t), Err(MadtError::BadEntry { offset: 44 }), "entry length {bad_len}");
        }
    }

    #[test]
    fn plan_starts_enabled_cpus_with_the_bsp_first() {
        let m = parse(&QEMU_Q35_SMP2_MAXCPUS4).unwrap();
        let plan = CpuPlan::new(&m.processors, 0, 64);
        assert_eq!(plan.apic_ids, [0, 1]);
        assert_eq!(plan.skipped, [(2, Skip::Disabled), (3, Skip::Disabled)]);
        assert!(!plan.bsp_missing_from_table);
    }

    #[test]
    fn plan_honours_the_limit_and_a_bsp_that_is_not_first() {
        let t = table(&[lapic(0, 4, 1), lapic(1, 0, 1), lapic(2, 2, 1), lapic(3, 6, 1)]);
        let m = parse(&t).unwrap();
        let plan = CpuPlan::new(&m.processors, 2, 2);
        assert_eq!(plan.apic_ids, [2, 4]);
        assert_eq!(plan.skipped, [(0, Skip::OverLimit), (6, Skip::OverLimit)]);
        assert_eq!(plan.count(Skip::OverLimit), 2);
        assert_eq!(CpuPlan::new(&m.processors, 2, 0).apic_ids, [2], "the BSP always runs");
    }

    #[test]
    fn plan_survives_duplicates_and_a_missing_bsp() {
        let t = table(&[lapic(0, 1, 1), lapic(1, 1, 1), lapic(2, 0, 1), lapic(3, 0, 1)]);
        let m = parse(&t).unwrap();
        let plan = CpuPlan::new(&m.processors, 0, 8);
        assert_eq!(plan.apic_ids, [0, 1]);
        assert_eq!(plan.skipped, [(1, Skip::Duplicate), (0, Skip::Duplicate)]);
        let plan = CpuPlan::new(&m.processors, 9, 8);
        assert!(plan.bsp_missing_from_table);
        assert_eq!(plan.apic_ids[0], 9);
    }
}
