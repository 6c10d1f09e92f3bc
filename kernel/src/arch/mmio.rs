//! Volatile access to memory-mapped device registers.

/// A mapped register block; offsets are checked against its length.
#[derive(Clone, Copy, Debug)]
pub struct Mmio {
    base: u64,
    len: u64,
}

impl Mmio {
    /// # Safety
    /// `base..base+len` must be a live, uncached mapping of device registers
    /// that stays mapped for the rest of the kernel's life.
    pub const unsafe fn new(base: u64, len: u64) -> Self {
        Mmio { base, len }
    }

    pub fn read32(&self, offset: u64) -> u32 {
        assert!(offset.is_multiple_of(4) && offset + 4 <= self.len, "MMIO read out of range");
        // SAFETY: in range and aligned (checked above); the mapping is live (constructor contract).
        unsafe { core::ptr::read_volatile((self.base + offset) as *const u32) }
    }

    pub fn write32(&self, offset: u64, value: u32) {
        assert!(offset.is_multiple_of(4) && offset + 4 <= self.len, "MMIO write out of range");
        // SAFETY: as in read32.
        unsafe { core::ptr::write_volatile((self.base + offset) as *mut u32, value) }
    }
}
