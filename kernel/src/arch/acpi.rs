//! ACPI tables through the `acpi` crate: the MADT (processors, APIC ids,
//! I/O APICs, overrides) and the MCFG (PCI ECAM regions, kept for the PCI
//! driver).

use alloc::vec::Vec;
use core::ptr::NonNull;

use acpi::madt::Madt;
use acpi::mcfg::PciConfigRegions;
use acpi::{AcpiHandler, AcpiTables, PhysicalMapping};
use kernel::directmap::DirectMap;
use kernel::madt::{self, MadtInfo};
use spin::Once;

/// ACPI tables live in RAM the bootloader maps at the physical-memory offset.
#[derive(Clone, Copy)]
struct DirectMapHandler(DirectMap);

impl AcpiHandler for DirectMapHandler {
    unsafe fn map_physical_region<T>(&self, physical_address: usize, size: usize) -> PhysicalMapping<Self, T> {
        let virt = self
            .0
            .phys_to_virt(physical_address as u64)
            .filter(|&v| self.0.virt_range_to_phys(v, size as u64).is_some())
            .unwrap_or_else(|| panic!("ACPI table at {physical_address:#x} (+{size}) is outside the direct map"));
        // SAFETY: `virt` maps `size` bytes of physical memory (checked above);
        // the caller (the acpi crate) guarantees a `T` lives there.
        unsafe {
            PhysicalMapping::new(physical_address, NonNull::new(virt as *mut T).expect("non-null"), size, size, *self)
        }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

/// A PCI ECAM window (from the MCFG).
#[derive(Clone, Copy, Debug)]
pub struct EcamRegion {
    pub segment: u16,
    pub bus_start: u8,
    pub bus_end: u8,
    pub physical_address: u64,
}

pub struct AcpiInfo {
    pub madt: MadtInfo,
    pub ecam: Vec<EcamRegion>,
}

static INFO: Once<AcpiInfo> = Once::new();

/// Reads the tables from the RSDP the bootloader found.
pub fn init(rsdp: u64, map: DirectMap) -> Result<&'static AcpiInfo, &'static str> {
    INFO.try_call_once(|| {
        let handler = DirectMapHandler(map);
        // SAFETY: the bootloader validated the RSDP address it hands over;
        // the handler maps tables through the direct map.
        let tables = unsafe { AcpiTables::from_rsdp(handler, rsdp as usize) }.map_err(|_| "invalid ACPI RSDP/RSDT")?;
        let mapping = tables.find_table::<Madt>().map_err(|_| "no MADT in the ACPI tables")?;
        let len = mapping.region_length();
        let virt = map.phys_to_virt(mapping.physical_start() as u64).ok_or("MADT outside the direct map")?;
        // SAFETY: the acpi crate mapped `len` bytes (the table's own length)
        // at this direct-map address; they stay mapped and are never written.
        let bytes = unsafe { core::slice::from_raw_parts(virt as *const u8, len) };
        log::debug!("acpi: MADT {len} bytes: {:02x?}", bytes);
        let madt = madt::parse(bytes).map_err(|_| "malformed MADT")?;
        let ecam = match PciConfigRegions::new(&tables) {
            Ok(regions) => regions
                .iter()
                .map(|r| EcamRegion {
                    segment: r.segment_group,
                    bus_start: *r.bus_range.start(),
                    bus_end: *r.bus_range.end(),
                    physical_address: r.physical_address as u64,
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        Ok(AcpiInfo { madt, ecam })
    })
}

/// The tables read at boot, if they were.
pub fn info() -> Option<&'static AcpiInfo> {
    INFO.get()
}
