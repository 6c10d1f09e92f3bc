//! MSI-X: the capability in configuration space and the vector table in a
//! BAR, and the message that aims an interrupt at one CPU.

use core::fmt;

use crate::pci::{Bdf, ConfigSpace};
use crate::regs::RegisterBlock;

const CONTROL: u16 = 2;
const TABLE: u16 = 4;
const PBA: u16 = 8;
const CONTROL_ENABLE: u16 = 1 << 15;
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
const ENTRY_SIZE: u64 = 16;
const VECTOR_CONTROL_MASKED: u32 = 1;

/// Where a function's MSI-X table and pending-bit array live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixCapability {
    /// Offset of the capability in configuration space.
    pub cap_offset: u16,
    /// Number of table entries (1–2048).
    pub table_size: u16,
    pub table_bar: u8,
    pub table_offset: u32,
    pub pba_bar: u8,
    pub pba_offset: u32,
}

impl MsixCapability {
    pub fn read(cfg: &dyn ConfigSpace, bdf: Bdf, cap_offset: u16) -> MsixCapability {
        let control = cfg.read16(bdf, cap_offset + CONTROL);
        let table = cfg.read32(bdf, cap_offset + TABLE);
        let pba = cfg.read32(bdf, cap_offset + PBA);
        MsixCapability {
            cap_offset,
            table_size: (control & 0x7ff) + 1,
            table_bar: (table & 7) as u8,
            table_offset: table & !7,
            pba_bar: (pba & 7) as u8,
            pba_offset: pba & !7,
        }
    }

    /// Sets the Enable and Function Mask bits of the message control word.
    pub fn set_control(&self, cfg: &dyn ConfigSpace, bdf: Bdf, enable: bool, function_mask: bool) {
        let mut control = cfg.read16(bdf, self.cap_offset + CONTROL);
        control &= !(CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
        if enable {
            control |= CONTROL_ENABLE;
        }
        if function_mask {
            control |= CONTROL_FUNCTION_MASK;
        }
        cfg.write16(bdf, self.cap_offset + CONTROL, control);
    }

    pub fn control(&self, cfg: &dyn ConfigSpace, bdf: Bdf) -> (bool, bool) {
        let c = cfg.read16(bdf, self.cap_offset + CONTROL);
        (c & CONTROL_ENABLE != 0, c & CONTROL_FUNCTION_MASK != 0)
    }

    /// Where the vector table lies: its BAR, its offset in that BAR and its
    /// length in bytes. Map exactly this and hand it to [`MsixTable::new`].
    pub fn table_window(&self) -> (u8, u64, u64) {
        (self.table_bar, self.table_offset as u64, self.table_size as u64 * ENTRY_SIZE)
    }
}

/// An x86 MSI message: a write of `data` to `address`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsixError {
    /// Without interrupt remapping an MSI can only name APIC ids 0–255.
    ApicIdNotAddressable(u32),
    /// Vectors below 32 are CPU exceptions.
    ReservedVector(u8),
    /// The entry index is beyond the device's table.
    NoSuchEntry(u16),
}

impl fmt::Display for MsixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MsixError::ApicIdNotAddressable(id) => write!(f, "APIC id {id} cannot be the target of an MSI"),
            MsixError::ReservedVector(v) => write!(f, "vector {v} is reserved for exceptions"),
            MsixError::NoSuchEntry(i) => write!(f, "MSI-X entry {i} does not exist"),
        }
    }
}

/// The message that raises `vector` on the CPU with local APIC id
/// `apic_id`: physical destination, fixed delivery, edge triggered.
pub fn message(apic_id: u32, vector: u8) -> Result<MsiMessage, MsixError> {
    if apic_id > 0xff {
        return Err(MsixError::ApicIdNotAddressable(apic_id));
    }
    if vector < 32 {
        return Err(MsixError::ReservedVector(vector));
    }
    Ok(MsiMessage { address: 0xfee0_0000 | ((apic_id as u64) << 12), data: vector as u32 })
}

/// The vector table, in the register block `regs`, which starts at the
/// table itself ([`MsixCapability::table_window`]), not at its BAR: entry
/// `i` is at `16 * i`. (The table offset is applied once, by the mapping.)
pub struct MsixTable<'a, R: RegisterBlock> {
    regs: &'a R,
    cap: MsixCapability,
}

impl<'a, R: RegisterBlock> MsixTable<'a, R> {
    pub fn new(regs: &'a R, cap: MsixCapability) -> Self {
        MsixTable { regs, cap }
    }

    fn entry(&self, index: u16) -> Result<u64, MsixError> {
        if index >= self.cap.table_size {
            return Err(MsixError::NoSuchEntry(index));
        }
        Ok(index as u64 * ENTRY_SIZE)
    }

    /// Programs entry `index` with `msg`, leaving it masked or not as asked.
    /// The entry is masked while it is rewritten.
    pub fn program(&self, index: u16, msg: MsiMessage, masked: bool) -> Result<(), MsixError> {
        let e = self.entry(index)?;
        self.regs.write32(e + 12, VECTOR_CONTROL_MASKED);
        self.regs.write32(e, msg.address as u32);
        self.regs.write32(e + 4, (msg.address >> 32) as u32);
        self.regs.write32(e + 8, msg.data);
        self.regs.write32(e + 12, if masked { VECTOR_CONTROL_MASKED } else { 0 });
        Ok(())
    }

    pub fn set_masked(&self, index: u16, masked: bool) -> Result<(), MsixError> {
        let e = self.entry(index)?;
        let control = self.regs.read32(e + 12);
        let control = if masked { control | VECTOR_CONTROL_MASKED } else { control & !VECTOR_CONTROL_MASKED };
        self.regs.write32(e + 12, control);
        Ok(())
    }

    pub fn read(&self, index: u16) -> Result<(MsiMessage, bool), MsixError> {
        let e = self.entry(index)?;
        let address = self.regs.read32(e) as u64 | ((self.regs.read32(e + 4) as u64) << 32);
        let data = self.regs.read32(e + 8);
        let masked = self.regs.read32(e + 12) & VECTOR_CONTROL_MASKED != 0;
        Ok((MsiMessage { address, data }, masked))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::fake::{FakeConfig, FakeFunction};
    use crate::pci::CAP_MSIX;
    use crate::regs::fake::Memory;

    #[test]
    fn messages_aim_at_one_cpu() {
        assert_eq!(message(0, 0x40), Ok(MsiMessage { address: 0xfee0_0000, data: 0x40 }));
        assert_eq!(message(3, 0x41), Ok(MsiMessage { address: 0xfee0_3000, data: 0x41 }));
        assert_eq!(message(255, 0xff).unwrap().address, 0xfeef_f000);
        assert_eq!(message(256, 0x40), Err(MsixError::ApicIdNotAddressable(256)));
        assert_eq!(message(1, 14), Err(MsixError::ReservedVector(14)));
    }

    /// QEMU's virtio-net-pci with vectors=10: table and PBA in BAR 1.
    fn virtio_net_msix() -> (FakeConfig, Bdf) {
        // control: table size - 1 = 9; table: BIR 1, offset 0; PBA: BIR 1, offset 0x800.
        msix_function(&[9, 0, 1, 0, 0, 0, 0x01, 0x08, 0, 0])
    }

    fn msix_function(cap: &[u8]) -> (FakeConfig, Bdf) {
        let cfg = FakeConfig::default();
        let bdf = Bdf::new(0, 3, 0);
        let mut f = FakeFunction::new(0x1af4, 0x1041, 2, 0);
        f.caps(&[(CAP_MSIX, cap)]);
        cfg.add(bdf, f);
        (cfg, bdf)
    }

    /// A device whose table does not start its BAR (many real NICs put it
    /// at 0x2000 or so; QEMU's at 0 hid a double offset once): mapping the
    /// window the capability names and programming an entry must touch the
    /// bytes at BAR offset `table_offset + 16 * entry`, and nothing else.
    #[test]
    fn a_table_away_from_the_start_of_its_bar() {
        // Table: BIR 2 at offset 0x2000, 4 entries; PBA: BIR 2 at 0x3000.
        let (cfg, bdf) = msix_function(&[3, 0, 0x02, 0x20, 0, 0, 0x02, 0x30, 0, 0]);
        let cap = MsixCapability::read(&cfg, bdf, 0x40);
        assert_eq!(cap.table_window(), (2, 0x2000, 64));
        let bar = Memory::new(0x4000);
        let (_, offset, len) = cap.table_window();
        let window = Window { inner: &bar, base: offset, len };
        let table = MsixTable::new(&window, cap);
        let msg = message(1, 0x45).unwrap();
        table.program(3, msg, false).unwrap();
        assert_eq!(bar.read32(0x2000 + 3 * 16), 0xfee0_1000);
        assert_eq!(bar.read32(0x2000 + 3 * 16 + 8), 0x45);
        let written = bar.0.borrow().iter().enumerate().filter(|(_, b)| **b != 0).map(|(i, _)| i).max();
        assert_eq!(
            written,
            Some(0x2000 + 3 * 16 + 8),
            "nothing written past the entry (its last nonzero byte is the data)"
        );
        assert_eq!(table.program(4, msg, false), Err(MsixError::NoSuchEntry(4)));
    }

    /// A register block that is a window of another, as the kernel's
    /// mapping of the table is a window of the BAR.
    struct Window<'a> {
        inner: &'a Memory,
        base: u64,
        len: u64,
    }

    impl Window<'_> {
        fn at(&self, offset: u64, width: u64) -> u64 {
            assert!(offset + width <= self.len, "access outside the mapped window");
            self.base + offset
        }
    }

    impl RegisterBlock for Window<'_> {
        fn read32(&self, o: u64) -> u32 {
            self.inner.read32(self.at(o, 4))
        }
        fn write32(&self, o: u64, v: u32) {
            self.inner.write32(self.at(o, 4), v)
        }
        fn read16(&self, o: u64) -> u16 {
            self.inner.read16(self.at(o, 2))
        }
        fn write16(&self, o: u64, v: u16) {
            self.inner.write16(self.at(o, 2), v)
        }
        fn read8(&self, o: u64) -> u8 {
            self.inner.read8(self.at(o, 1))
        }
        fn write8(&self, o: u64, v: u8) {
            self.inner.write8(self.at(o, 1), v)
        }
    }

    #[test]
    fn capability_is_decoded_and_controlled() {
        let (cfg, bdf) = virtio_net_msix();
        let cap = MsixCapability::read(&cfg, bdf, 0x40);
        assert_eq!(
            cap,
            MsixCapability {
                cap_offset: 0x40,
                table_size: 10,
                table_bar: 1,
                table_offset: 0,
                pba_bar: 1,
                pba_offset: 0x800
            }
        );
        cap.set_control(&cfg, bdf, true, true);
        assert_eq!(cap.control(&cfg, bdf), (true, true));
        cap.set_control(&cfg, bdf, true, false);
        assert_eq!(cap.control(&cfg, bdf), (true, false));
        assert_eq!(MsixCapability::read(&cfg, bdf, 0x40).table_size, 10, "size bits untouched");
    }

    #[test]
    fn table_entries_are_programmed_masked_first() {
        let (cfg, bdf) = virtio_net_msix();
        let cap = MsixCapability::read(&cfg, bdf, 0x40);
        let bar = Memory::new(0x1000);
        let table = MsixTable::new(&bar, cap);
        let msg = message(2, 0x42).unwrap();
        table.program(3, msg, false).unwrap();
        assert_eq!(table.read(3), Ok((msg, false)));
        assert_eq!(bar.read32(3 * 16), 0xfee0_2000);
        assert_eq!(bar.read32(3 * 16 + 8), 0x42);
        table.set_masked(3, true).unwrap();
        assert_eq!(table.read(3), Ok((msg, true)));
        assert_eq!(table.program(10, msg, false), Err(MsixError::NoSuchEntry(10)));
        assert_eq!(table.set_masked(99, true), Err(MsixError::NoSuchEntry(99)));
    }
}
