//! PCI configuration space: access behind a trait, bus enumeration,
//! capability walking and BAR decoding/sizing.
//!
//! The kernel supplies the access method (legacy port I/O or ECAM from the
//! ACPI MCFG); the logic here is tested on the host against an in-memory
//! configuration space. Values read from a device are not trusted: a
//! capability list that loops or points outside the header is cut short.

use alloc::vec::Vec;
use core::fmt;

/// Bus, device, function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl Bdf {
    pub const fn new(bus: u8, device: u8, function: u8) -> Bdf {
        Bdf { bus, device, function }
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

/// Reads and writes of a function's configuration space, 32 bits at a time
/// at 4-byte aligned offsets below 4096 (256 for port I/O access).
pub trait ConfigSpace {
    fn read32(&self, bdf: Bdf, offset: u16) -> u32;
    fn write32(&self, bdf: Bdf, offset: u16, value: u32);

    fn read16(&self, bdf: Bdf, offset: u16) -> u16 {
        (self.read32(bdf, offset & !3) >> ((offset & 2) * 8)) as u16
    }
    fn read8(&self, bdf: Bdf, offset: u16) -> u8 {
        (self.read32(bdf, offset & !3) >> ((offset & 3) * 8)) as u8
    }
    /// Read-modify-write of the 16-bit half at `offset`.
    fn write16(&self, bdf: Bdf, offset: u16, value: u16) {
        let aligned = offset & !3;
        let shift = (offset & 2) * 8;
        let old = self.read32(bdf, aligned);
        let new = (old & !(0xffff << shift)) | ((value as u32) << shift);
        self.write32(bdf, aligned, new);
    }
}

pub const VENDOR_ID: u16 = 0x00;
pub const DEVICE_ID: u16 = 0x02;
pub const COMMAND: u16 = 0x04;
pub const STATUS: u16 = 0x06;
pub const REVISION: u16 = 0x08;
pub const HEADER_TYPE: u16 = 0x0e;
pub const BAR0: u16 = 0x10;
pub const SUBSYSTEM_ID: u16 = 0x2e;
pub const CAP_POINTER: u16 = 0x34;

pub const COMMAND_IO: u16 = 1 << 0;
pub const COMMAND_MEMORY: u16 = 1 << 1;
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
const STATUS_CAP_LIST: u16 = 1 << 4;

/// What enumeration found about one function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Function {
    pub bdf: Bdf,
    pub vendor: u16,
    pub device: u16,
    pub revision: u8,
    pub class: u8,
    pub subclass: u8,
    pub prog_if: u8,
    pub header_type: u8,
}

impl Function {
    fn read(cfg: &dyn ConfigSpace, bdf: Bdf) -> Option<Function> {
        let id = cfg.read32(bdf, VENDOR_ID);
        let vendor = id as u16;
        if vendor == 0xffff || vendor == 0 {
            return None;
        }
        let class = cfg.read32(bdf, REVISION);
        Some(Function {
            bdf,
            vendor,
            device: (id >> 16) as u16,
            revision: class as u8,
            prog_if: (class >> 8) as u8,
            subclass: (class >> 16) as u8,
            class: (class >> 24) as u8,
            header_type: cfg.read8(bdf, HEADER_TYPE) & 0x7f,
        })
    }
}

const SECONDARY_BUS: u16 = 0x19;

/// Every function reachable from bus 0: each device of a bus, functions 1–7
/// only of multi-function devices, and the bus behind every PCI-to-PCI
/// bridge (each bus once, so a misconfigured bridge cannot loop).
pub fn enumerate(cfg: &dyn ConfigSpace) -> Vec<Function> {
    let mut found = Vec::new();
    let mut pending: Vec<u8> = alloc::vec![0];
    let mut seen = [false; 256];
    while let Some(bus) = pending.pop() {
        if core::mem::replace(&mut seen[bus as usize], true) {
            continue;
        }
        let start = found.len();
        scan_bus(cfg, bus, &mut found);
        for f in &found[start..] {
            if f.header_type == 1 {
                let secondary = cfg.read8(f.bdf, SECONDARY_BUS);
                if secondary != 0 {
                    pending.push(secondary);
                }
            }
        }
    }
    found.sort_by_key(|f| f.bdf);
    found
}

/// Every function on the buses in `buses`, without following bridges.
pub fn enumerate_buses(cfg: &dyn ConfigSpace, buses: core::ops::RangeInclusive<u8>) -> Vec<Function> {
    let mut found = Vec::new();
    for bus in buses {
        scan_bus(cfg, bus, &mut found);
    }
    found
}

fn scan_bus(cfg: &dyn ConfigSpace, bus: u8, found: &mut Vec<Function>) {
    {
        for device in 0..32 {
            let Some(f0) = Function::read(cfg, Bdf::new(bus, device, 0)) else { continue };
            found.push(f0);
            if cfg.read8(f0.bdf, HEADER_TYPE) & 0x80 != 0 {
                for function in 1..8 {
                    if let Some(f) = Function::read(cfg, Bdf::new(bus, device, function)) {
                        found.push(f);
                    }
                }
            }
        }
    }
}

/// One entry of the capability list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    pub id: u8,
    pub offset: u16,
}

pub const CAP_MSI: u8 = 0x05;
pub const CAP_VENDOR: u8 = 0x09;
pub const CAP_MSIX: u8 = 0x11;

/// Most capabilities a 256-byte header can hold; a longer walk is a loop.
const MAX_CAPS: usize = 48;

/// The function's capability list. A pointer below 0x40, a loop or a list
/// longer than the header can hold ends the walk.
pub fn capabilities(cfg: &dyn ConfigSpace, bdf: Bdf) -> Vec<Capability> {
    let mut caps = Vec::new();
    if cfg.read16(bdf, STATUS) & STATUS_CAP_LIST == 0 {
        return caps;
    }
    let mut ptr = cfg.read8(bdf, CAP_POINTER) & !3;
    while ptr >= 0x40 && caps.len() < MAX_CAPS {
        let offset = ptr as u16;
        if caps.iter().any(|c: &Capability| c.offset == offset) {
            break;
        }
        let header = cfg.read16(bdf, offset);
        caps.push(Capability { id: header as u8, offset });
        ptr = ((header >> 8) as u8) & !3;
    }
    caps
}

/// A decoded base address register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bar {
    Memory { address: u64, size: u64, prefetchable: bool, is_64bit: bool },
    Io { port: u32, size: u32 },
}

impl Bar {
    pub fn memory(&self) -> Option<(u64, u64)> {
        match *self {
            Bar::Memory { address, size, .. } => Some((address, size)),
            Bar::Io { .. } => None,
        }
    }
}

/// Decodes and sizes BAR `index` (0–5) of a type-0 header. Decoding is
/// switched off while the BAR holds all ones and restored afterwards.
/// `None` for an unimplemented BAR or the upper half of a 64-bit one.
pub fn read_bar(cfg: &dyn ConfigSpace, bdf: Bdf, index: u8) -> Option<Bar> {
    if index > 5 {
        return None;
    }
    let off = BAR0 + 4 * index as u16;
    let command = cfg.read16(bdf, COMMAND);
    cfg.write16(bdf, COMMAND, command & !(COMMAND_IO | COMMAND_MEMORY));
    let probe = |off: u16| {
        let original = cfg.read32(bdf, off);
        cfg.write32(bdf, off, 0xffff_ffff);
        let mask = cfg.read32(bdf, off);
        cfg.write32(bdf, off, original);
        (original, mask)
    };
    let (low, low_mask) = probe(off);
    let bar = if low & 1 == 1 {
        let size = (!(low_mask & !0x3)).wrapping_add(1) & 0xffff;
        (low_mask != 0).then_some(Bar::Io { port: low & !0x3, size })
    } else {
        let is_64bit = (low >> 1) & 0b11 == 0b10;
        let prefetchable = low & 0b1000 != 0;
        // The upper half of a 64-bit BAR holds address and size bits 32..64.
        let (high, high_mask) = if is_64bit && index < 5 { probe(off + 4) } else { (0, 0) };
        let implemented = low_mask & !0xf != 0 || high_mask != 0;
        let mask = if is_64bit {
            ((high_mask as u64) << 32) | (low_mask & !0xf) as u64
        } else {
            0xffff_ffff_0000_0000 | (low_mask & !0xf) as u64
        };
        let size = (!mask).wrapping_add(1);
        let address = ((high as u64) << 32) | (low & !0xf) as u64;
        implemented.then_some(Bar::Memory { address, size, prefetchable, is_64bit })
    };
    cfg.write16(bdf, COMMAND, command);
    bar
}

/// The memory window below 4 GiB that QEMU's PC machines leave to PCI
/// devices: above the low RAM (at most 3 GiB on i440FX) and the Q35 ECAM
/// (256 MiB from 2.75 GiB), below the I/O APIC.
pub const MMIO_WINDOW_32: (u64, u64) = (0xc000_0000, 0xfec0_0000);

/// Gives each memory BAR of `bdf` that the firmware left unassigned
/// (address 0; qboot assigns no 64-bit BARs) an address in `window`,
/// aligned to its size and clear of every memory BAR of `functions` that
/// has one. Returns the BARs placed (index, address); an error when one
/// does not fit. (A full OS reassigns the whole bus from the bridges'
/// windows; one device's BARs in a known hole is all this kernel needs.)
pub fn assign_memory_bars(
    cfg: &dyn ConfigSpace,
    functions: &[Function],
    bdf: Bdf,
    window: (u64, u64),
) -> Result<Vec<(u8, u64)>, &'static str> {
    // (index, address, size, 64-bit) of each memory BAR.
    let bars = |f: Bdf| {
        let mut out = Vec::new();
        let mut index = 0;
        while index < 6 {
            if let Some(Bar::Memory { address, size, is_64bit, .. }) = read_bar(cfg, f, index) {
                out.push((index, address, size, is_64bit));
                index += u8::from(is_64bit);
            }
            index += 1;
        }
        out
    };
    let mine = bars(bdf);
    let missing: Vec<_> = mine.iter().filter(|&&(_, address, size, _)| address == 0 && size != 0).collect();
    if missing.is_empty() {
        // Firmware that assigns everything (SeaBIOS): no other device's
        // BARs need probing.
        return Ok(Vec::new());
    }
    let mut used: Vec<(u64, u64)> = functions
        .iter()
        .filter(|f| f.header_type & 0x7f == 0 && f.bdf != bdf)
        .flat_map(|f| bars(f.bdf))
        .chain(mine.iter().copied())
        .filter(|&(_, address, size, _)| address != 0 && size != 0)
        .map(|(_, address, size, _)| (address, address.saturating_add(size)))
        .collect();
    let mut placed = Vec::new();
    for &&(index, _, size, is_64bit) in &missing {
        let align = size.max(4096);
        let mut at = window.0.next_multiple_of(align);
        while let Some(&(_, end)) = used.iter().find(|&&(start, end)| at < end && start < at.saturating_add(size)) {
            at = end.next_multiple_of(align);
        }
        if at.saturating_add(size) > window.1 {
            return Err("no room for a BAR in the PCI memory window");
        }
        let off = BAR0 + 4 * u16::from(index);
        cfg.write32(bdf, off, at as u32);
        if is_64bit {
            cfg.write32(bdf, off + 4, (at >> 32) as u32);
        }
        used.push((at, at + size));
        placed.push((index, at));
    }
    Ok(placed)
}

/// Turns on memory decoding and bus mastering (DMA), and turns off legacy
/// INTx (the device will use MSI-X).
pub fn enable_memory_and_dma(cfg: &dyn ConfigSpace, bdf: Bdf) {
    let command = cfg.read16(bdf, COMMAND);
    cfg.write16(bdf, COMMAND, command | COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE);
}

#[cfg(any(test, feature = "fake"))]
pub mod fake {
    //! An in-memory configuration space with BAR sizing semantics.
    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::vec;

    pub struct FakeFunction {
        pub space: [u8; 4096],
        /// Per BAR: size (power of two) or 0 for unimplemented; BARs read
        /// back the size mask when written with all ones.
        pub bar_sizes: [u64; 6],
    }

    impl FakeFunction {
        pub fn new(vendor: u16, device: u16, class: u8, subclass: u8) -> FakeFunction {
            let mut f = FakeFunction { space: [0; 4096], bar_sizes: [0; 6] };
            f.put16(VENDOR_ID, vendor);
            f.put16(DEVICE_ID, device);
            f.space[0x0b] = class;
            f.space[0x0a] = subclass;
            f
        }
        pub fn put8(&mut self, off: u16, v: u8) {
            self.space[off as usize] = v;
        }
        pub fn put16(&mut self, off: u16, v: u16) {
            self.space[off as usize..off as usize + 2].copy_from_slice(&v.to_le_bytes());
        }
        pub fn put32(&mut self, off: u16, v: u32) {
            self.space[off as usize..off as usize + 4].copy_from_slice(&v.to_le_bytes());
        }
        pub fn get32(&self, off: u16) -> u32 {
            u32::from_le_bytes(self.space[off as usize..off as usize + 4].try_into().unwrap())
        }
        /// Appends capabilities (id, body bytes after the 2-byte header) from 0x40.
        pub fn caps(&mut self, caps: &[(u8, &[u8])]) {
            let mut off = 0x40u16;
            self.put16(STATUS, STATUS_CAP_LIST);
            self.put8(CAP_POINTER, off as u8);
            for (i, (id, body)) in caps.iter().enumerate() {
                let len = (2 + body.len() as u16 + 3) & !3;
                let next = if i + 1 == caps.len() { 0 } else { off + len };
                self.put8(off, *id);
                self.put8(off + 1, next as u8);
                for (j, b) in body.iter().enumerate() {
                    self.put8(off + 2 + j as u16, *b);
                }
                off += len;
            }
        }
        pub fn mem_bar(&mut self, index: usize, address: u64, size: u64, is_64bit: bool) {
            self.bar_sizes[index] = size;
            let flags = if is_64bit { 0b100 } else { 0 };
            self.put32(BAR0 + 4 * index as u16, address as u32 | flags);
            if is_64bit {
                self.bar_sizes[index + 1] = u64::MAX; // marks the upper half
                self.put32(BAR0 + 4 * (index as u16 + 1), (address >> 32) as u32);
            }
        }
    }

    #[derive(Default)]
    pub struct FakeConfig {
        pub functions: RefCell<BTreeMap<Bdf, FakeFunction>>,
        pub writes: RefCell<vec::Vec<(Bdf, u16, u32)>>,
    }

    impl FakeConfig {
        pub fn add(&self, bdf: Bdf, f: FakeFunction) {
            self.functions.borrow_mut().insert(bdf, f);
        }
    }

    impl ConfigSpace for FakeConfig {
        fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
            self.functions.borrow().get(&bdf).map_or(0xffff_ffff, |f| f.get32(offset))
        }
        fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
            self.writes.borrow_mut().push((bdf, offset, value));
            let mut fs = self.functions.borrow_mut();
            let Some(f) = fs.get_mut(&bdf) else { return };
            if (BAR0..BAR0 + 24).contains(&offset) {
                let i = ((offset - BAR0) / 4) as usize;
                let size = f.bar_sizes[i];
                let flags = f.get32(offset) & 0xf;
                let v = match (value, size) {
                    (0xffff_ffff, 0) => 0,
                    (0xffff_ffff, u64::MAX) => (!(f.bar_sizes[i - 1] - 1) >> 32) as u32,
                    (0xffff_ffff, s) => (!(s - 1) as u32 & !0xf) | flags,
                    (v, u64::MAX) => v,
                    (v, _) => (v & !0xf) | flags,
                };
                f.put32(offset, v);
                return;
            }
            f.put32(offset, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::*;
    use super::*;

    /// qboot's way: the other device's BAR assigned, the NIC's 32-bit and
    /// 64-bit BARs left at 0. They are placed in the window, aligned, clear
    /// of the assigned one and of each other; assigned BARs stay.
    #[test]
    fn bars_the_firmware_left_unassigned_get_an_address() {
        let cfg = FakeConfig::default();
        let mut vga = FakeFunction::new(0x1234, 0x1111, 3, 0);
        vga.mem_bar(0, 0xc000_0000, 0x4000, false);
        cfg.add(Bdf::new(0, 1, 0), vga);
        let mut nic = FakeFunction::new(0x1af4, 0x1041, 2, 0);
        nic.mem_bar(1, 0, 0x1000, false);
        nic.mem_bar(2, 0xc100_0000, 0x1000, false);
        nic.mem_bar(4, 0, 0x4000, true);
        let nic_bdf = Bdf::new(0, 2, 0);
        cfg.add(nic_bdf, nic);
        let functions = enumerate(&cfg);
        let placed = assign_memory_bars(&cfg, &functions, nic_bdf, MMIO_WINDOW_32).unwrap();
        assert_eq!(placed, [(1, 0xc000_4000), (4, 0xc000_8000)]);
        let addr = |i| read_bar(&cfg, nic_bdf, i).and_then(|b| b.memory()).unwrap();
        assert_eq!([addr(1), addr(2), addr(4)], [(0xc000_4000, 0x1000), (0xc100_0000, 0x1000), (0xc000_8000, 0x4000)]);
        // Nothing left to place the second time.
        assert_eq!(assign_memory_bars(&cfg, &functions, nic_bdf, MMIO_WINDOW_32), Ok(vec![]));
        // A window too small is an error, not an overlap.
        let cfg2 = FakeConfig::default();
        let mut nic = FakeFunction::new(0x1af4, 0x1041, 2, 0);
        nic.mem_bar(4, 0, 0x4000, true);
        cfg2.add(nic_bdf, nic);
        let f2 = enumerate(&cfg2);
        assert!(assign_memory_bars(&cfg2, &f2, nic_bdf, (0xc000_0000, 0xc000_2000)).is_err());
    }

    fn bus_with_devices() -> FakeConfig {
        let cfg = FakeConfig::default();
        cfg.add(Bdf::new(0, 0, 0), FakeFunction::new(0x8086, 0x29c0, 6, 0));
        let mut multi = FakeFunction::new(0x8086, 0x2918, 6, 1);
        multi.put8(HEADER_TYPE, 0x80);
        cfg.add(Bdf::new(0, 0x1f, 0), multi);
        cfg.add(Bdf::new(0, 0x1f, 2), FakeFunction::new(0x8086, 0x2922, 1, 6));
        cfg.add(Bdf::new(0, 3, 0), FakeFunction::new(0x1af4, 0x1041, 2, 0));
        // Function 1 of a single-function device must not be reported.
        cfg.add(Bdf::new(0, 3, 1), FakeFunction::new(0xdead, 0xbeef, 0, 0));
        cfg
    }

    #[test]
    fn enumeration_finds_functions_and_respects_multifunction() {
        let found = enumerate(&bus_with_devices());
        assert_eq!(found, enumerate_buses(&bus_with_devices(), 0..=0));
        let ids: Vec<_> = found.iter().map(|f| (f.bdf.to_string(), f.vendor, f.device)).collect();
        assert_eq!(
            ids,
            [
                ("00:00.0".to_string(), 0x8086, 0x29c0),
                ("00:03.0".to_string(), 0x1af4, 0x1041),
                ("00:1f.0".to_string(), 0x8086, 0x2918),
                ("00:1f.2".to_string(), 0x8086, 0x2922),
            ]
        );
        assert_eq!((found[1].class, found[1].subclass), (2, 0));
    }

    #[test]
    fn bridges_are_followed_once() {
        let cfg = bus_with_devices();
        let mut bridge = FakeFunction::new(0x1b36, 0x000c, 6, 4);
        bridge.put8(HEADER_TYPE, 1);
        bridge.put8(SECONDARY_BUS, 1);
        cfg.add(Bdf::new(0, 0x10, 0), bridge);
        cfg.add(Bdf::new(1, 0, 0), FakeFunction::new(0x1af4, 0x1041, 2, 0));
        // A bridge behind it that claims bus 0 again must not loop.
        let mut looping = FakeFunction::new(0x1b36, 0x000c, 6, 4);
        looping.put8(HEADER_TYPE, 1);
        looping.put8(SECONDARY_BUS, 0);
        cfg.add(Bdf::new(1, 1, 0), looping);
        let found = enumerate(&cfg);
        let bdfs: Vec<String> = found.iter().map(|f| f.bdf.to_string()).collect();
        assert_eq!(bdfs, ["00:00.0", "00:03.0", "00:10.0", "00:1f.0", "00:1f.2", "01:00.0", "01:01.0"]);
    }

    #[test]
    fn capability_walk_and_its_defences() {
        let cfg = FakeConfig::default();
        let mut f = FakeFunction::new(0x1af4, 0x1041, 2, 0);
        f.caps(&[(CAP_MSIX, &[0; 10]), (CAP_VENDOR, &[14, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), (CAP_VENDOR, &[])]);
        cfg.add(Bdf::new(0, 3, 0), f);
        let caps = capabilities(&cfg, Bdf::new(0, 3, 0));
        assert_eq!(caps.iter().map(|c| (c.id, c.offset)).collect::<Vec<_>>(), [(0x11, 0x40), (9, 0x4c), (9, 0x5c)]);
        // A loop: the last capability points back at the first.
        cfg.functions.borrow_mut().get_mut(&Bdf::new(0, 3, 0)).unwrap().put8(0x5d, 0x40);
        assert_eq!(capabilities(&cfg, Bdf::new(0, 3, 0)).len(), 3);
        // A pointer into the header ends the walk.
        cfg.functions.borrow_mut().get_mut(&Bdf::new(0, 3, 0)).unwrap().put8(0x5d, 0x10);
        assert_eq!(capabilities(&cfg, Bdf::new(0, 3, 0)).len(), 3);
        // No capability list bit: nothing.
        cfg.add(Bdf::new(0, 4, 0), FakeFunction::new(1, 2, 3, 4));
        assert!(capabilities(&cfg, Bdf::new(0, 4, 0)).is_empty());
    }

    #[test]
    fn bars_are_decoded_sized_and_restored() {
        let cfg = FakeConfig::default();
        let bdf = Bdf::new(0, 3, 0);
        let mut f = FakeFunction::new(0x1af4, 0x1041, 2, 0);
        f.mem_bar(1, 0xfebd_1000, 0x1000, false);
        f.mem_bar(4, 0xfe00_0000_0000, 0x4000, true);
        f.put16(COMMAND, COMMAND_MEMORY | COMMAND_BUS_MASTER);
        cfg.add(bdf, f);
        assert_eq!(
            read_bar(&cfg, bdf, 1),
            Some(Bar::Memory { address: 0xfebd_1000, size: 0x1000, prefetchable: false, is_64bit: false })
        );
        assert_eq!(
            read_bar(&cfg, bdf, 4),
            Some(Bar::Memory { address: 0xfe00_0000_0000, size: 0x4000, prefetchable: false, is_64bit: true })
        );
        assert_eq!(read_bar(&cfg, bdf, 0), None, "unimplemented");
        assert_eq!(read_bar(&cfg, bdf, 6), None);
        // Everything was put back, including the command register.
        assert_eq!(cfg.read32(bdf, BAR0 + 4), 0xfebd_1000);
        assert_eq!(cfg.read32(bdf, BAR0 + 20), 0xfe00);
        assert_eq!(cfg.read16(bdf, COMMAND), COMMAND_MEMORY | COMMAND_BUS_MASTER);
        // Decoding was off while the BAR held all ones.
        let writes = cfg.writes.borrow();
        let sizing = writes.iter().position(|w| w.2 == 0xffff_ffff).unwrap();
        let cmd_off = writes[..sizing].iter().rev().find(|w| w.1 == COMMAND).unwrap();
        assert_eq!(cmd_off.2 as u16 & (COMMAND_MEMORY | COMMAND_IO), 0);
    }

    #[test]
    fn sixteen_bit_writes_keep_the_other_half() {
        let cfg = FakeConfig::default();
        let bdf = Bdf::new(0, 3, 0);
        let mut f = FakeFunction::new(0x1af4, 0x1041, 2, 0);
        f.put16(STATUS, 0x0010);
        cfg.add(bdf, f);
        enable_memory_and_dma(&cfg, bdf);
        assert_eq!(cfg.read16(bdf, STATUS), 0x0010);
        assert_eq!(cfg.read16(bdf, COMMAND), COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE);
    }
}
