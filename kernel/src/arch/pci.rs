//! PCI configuration space access: ECAM (memory-mapped, from the ACPI
//! MCFG) where the firmware describes it, legacy port I/O (0xcf8/0xcfc)
//! otherwise.

use drivers::pci::{Bdf, ConfigSpace};
use spin::Mutex;
use x86_64::instructions::port::Port;

use super::acpi::EcamRegion;
use super::mmio::Mmio;

/// Configuration mechanism #1: an address port and a data port.
pub struct PortConfig {
    lock: Mutex<()>,
}

impl PortConfig {
    pub const fn new() -> Self {
        PortConfig { lock: Mutex::new(()) }
    }

    fn address(bdf: Bdf, offset: u16) -> u32 {
        0x8000_0000
            | (bdf.bus as u32) << 16
            | ((bdf.device as u32) & 0x1f) << 11
            | ((bdf.function as u32) & 0x7) << 8
            | (offset as u32 & 0xfc)
    }
}

impl ConfigSpace for PortConfig {
    fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
        if offset >= 256 {
            return 0xffff_ffff;
        }
        let _g = self.lock.lock();
        // SAFETY: 0xcf8/0xcfc are the PCI configuration ports; the lock keeps
        // the address/data pair together.
        unsafe {
            Port::<u32>::new(0xcf8).write(Self::address(bdf, offset));
            Port::<u32>::new(0xcfc).read()
        }
    }

    fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
        if offset >= 256 {
            return;
        }
        let _g = self.lock.lock();
        // SAFETY: as in read32.
        unsafe {
            Port::<u32>::new(0xcf8).write(Self::address(bdf, offset));
            Port::<u32>::new(0xcfc).write(value);
        }
    }
}

/// ECAM: 4 KiB of configuration space per function, 1 MiB per bus, mapped
/// one bus at a time on first use.
pub struct EcamConfig {
    region: EcamRegion,
    buses: Mutex<[Option<Mmio>; 256]>,
}

impl EcamConfig {
    pub fn new(region: EcamRegion) -> Self {
        EcamConfig { region, buses: Mutex::new([None; 256]) }
    }

    fn bus(&self, bus: u8) -> Option<Mmio> {
        if bus < self.region.bus_start || bus > self.region.bus_end {
            return None;
        }
        let mut buses = self.buses.lock();
        if let Some(m) = buses[bus as usize] {
            return Some(m);
        }
        let phys = self.region.physical_address + (((bus - self.region.bus_start) as u64) << 20);
        let virt = super::paging::map_mmio(phys, 1 << 20).ok()?;
        // SAFETY: just mapped uncached, for good.
        let m = unsafe { Mmio::new(virt, 1 << 20) };
        buses[bus as usize] = Some(m);
        Some(m)
    }

    fn offset(bdf: Bdf, offset: u16) -> u64 {
        ((bdf.device as u64 & 0x1f) << 15) | ((bdf.function as u64 & 7) << 12) | (offset as u64 & 0xffc)
    }
}

impl ConfigSpace for EcamConfig {
    fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
        match self.bus(bdf.bus) {
            Some(m) if offset < 4096 => m.read32(Self::offset(bdf, offset)),
            _ => 0xffff_ffff,
        }
    }

    fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
        if let (Some(m), true) = (self.bus(bdf.bus), offset < 4096) {
            m.write32(Self::offset(bdf, offset), value);
        }
    }
}
