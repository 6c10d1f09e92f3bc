//! The bootloader maps all physical memory at a fixed virtual offset. Heap
//! memory lives inside that mapping, so a heap buffer's physical address (the
//! one a device needs for DMA) is its virtual address minus the offset.

/// The direct mapping of physical memory `[0, phys_end)` at `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectMap {
    offset: u64,
    phys_end: u64,
}

impl DirectMap {
    /// `None` if the mapping would wrap around the address space.
    pub fn new(offset: u64, phys_end: u64) -> Option<Self> {
        offset.checked_add(phys_end)?;
        Some(DirectMap { offset, phys_end })
    }

    pub const fn offset(&self) -> u64 {
        self.offset
    }

    /// Virtual address of physical `phys`, if it is mapped.
    pub fn phys_to_virt(&self, phys: u64) -> Option<u64> {
        (phys < self.phys_end).then(|| self.offset + phys)
    }

    /// Physical address of the direct-mapped virtual `virt`. `None` for any
    /// address outside the mapping (kernel image, stacks, MMIO windows):
    /// such memory must never be handed to a device.
    pub fn virt_to_phys(&self, virt: u64) -> Option<u64> {
        let phys = virt.checked_sub(self.offset)?;
        (phys < self.phys_end).then_some(phys)
    }

    /// Physical address of `len` bytes at `virt`, only if all of them are
    /// direct-mapped (so a buffer that runs off the end is refused).
    pub fn virt_range_to_phys(&self, virt: u64, len: u64) -> Option<u64> {
        let phys = self.virt_to_phys(virt)?;
        let end = phys.checked_add(len)?;
        (end <= self.phys_end).then_some(phys)
    }
}

/// How much of the usable memory becomes heap: half of it, at least 8 MiB
/// when there is that much, at most 1 GiB, whole 2 MiB units, and never more
/// than the largest contiguous run available. The rest stays with the frame
/// allocator for page tables, stacks and device rings.
pub fn heap_size(usable: u64, largest_run: u64) -> u64 {
    const MIB: u64 = 1 << 20;
    let want = (usable / 2).clamp(8 * MIB, 1024 * MIB);
    let size = want.min(largest_run);
    if size >= 2 * MIB {
        size & !(2 * MIB - 1)
    } else {
        size & !0xfff
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const OFF: u64 = 0x1800_0000_0000;

    #[test]
    fn translation_round_trips_inside_the_map() {
        let m = DirectMap::new(OFF, 512 * MIB).unwrap();
        assert_eq!(m.phys_to_virt(0x1234), Some(OFF + 0x1234));
        assert_eq!(m.virt_to_phys(OFF + 0x1234), Some(0x1234));
        assert_eq!(m.virt_to_phys(m.phys_to_virt(512 * MIB - 1).unwrap()), Some(512 * MIB - 1));
    }

    #[test]
    fn addresses_outside_the_map_are_refused() {
        let m = DirectMap::new(OFF, 512 * MIB).unwrap();
        assert_eq!(m.phys_to_virt(512 * MIB), None);
        assert_eq!(m.virt_to_phys(OFF - 1), None, "below the map (e.g. kernel image)");
        assert_eq!(m.virt_to_phys(OFF + 512 * MIB), None);
        assert_eq!(m.virt_range_to_phys(OFF + 512 * MIB - 4096, 4096), Some(512 * MIB - 4096));
        assert_eq!(m.virt_range_to_phys(OFF + 512 * MIB - 4096, 4097), None, "runs off the end");
        assert_eq!(m.virt_range_to_phys(OFF, u64::MAX), None);
        assert_eq!(DirectMap::new(u64::MAX - 10, 20), None);
    }

    #[test]
    fn heap_size_policy() {
        assert_eq!(heap_size(1024 * MIB, 1000 * MIB), 512 * MIB);
        assert_eq!(heap_size(8192 * MIB, 8000 * MIB), 1024 * MIB, "capped at 1 GiB");
        assert_eq!(heap_size(12 * MIB, 11 * MIB), 8 * MIB, "at least 8 MiB when possible");
        assert_eq!(heap_size(100 * MIB, 31 * MIB + 5), 30 * MIB, "limited by contiguity, 2 MiB units");
        assert_eq!(heap_size(3 * MIB, 0x1_0fff), 0x1_0000, "tiny machines still get whole pages");
    }
}
