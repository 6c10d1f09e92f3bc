//! Volatile access to memory-mapped device registers.

/// A mapped register block; offsets are checked against its length.
#[derive(Clone, Copy, Debug)]
pub struct Mmio {
    base: u64,
    len: u64,
}

impl Mmio {
    fn check(&self, offset: u64, width: u64) {
        assert!(offset.is_multiple_of(width) && offset + width <= self.len, "MMIO access out of range");
    }

    pub fn read16(&self, offset: u64) -> u16 {
        self.check(offset, 2);
        // SAFETY: in range and aligned (checked); the mapping is live (constructor contract).
        unsafe { core::ptr::read_volatile((self.base + offset) as *const u16) }
    }

    pub fn write16(&self, offset: u64, value: u16) {
        self.check(offset, 2);
        // SAFETY: as in read16.
        unsafe { core::ptr::write_volatile((self.base + offset) as *mut u16, value) }
    }

    pub fn read8(&self, offset: u64) -> u8 {
        self.check(offset, 1);
        // SAFETY: as in read16.
        unsafe { core::ptr::read_volatile((self.base + offset) as *const u8) }
    }

    pub fn write8(&self, offset: u64, value: u8) {
        self.check(offset, 1);
        // SAFETY: as in read16.
        unsafe { core::ptr::write_volatile((self.base + offset) as *mut u8, value) }
    }

    /// # Safety
    /// `base..base+len` must be a live, uncached mapping of device registers
    /// that stays mapped for the rest of the kernel's life.
    pub const unsafe fn new(base: u64, len: u64) -> Self {
        Mmio { base, len }
    }

    pub fn read32(&self, offset: u64) -> u32 {
        self.check(offset, 4);
        // SAFETY: in range and aligned (checked above); the mapping is live (constructor contract).
        unsafe { core::ptr::read_volatile((self.base + offset) as *const u32) }
    }

    pub fn write32(&self, offset: u64, value: u32) {
        self.check(offset, 4);
        // SAFETY: as in read32.
        unsafe { core::ptr::write_volatile((self.base + offset) as *mut u32, value) }
    }
}

impl drivers::regs::RegisterBlock for Mmio {
    fn read32(&self, offset: u64) -> u32 {
        Mmio::read32(self, offset)
    }
    fn write32(&self, offset: u64, value: u32) {
        Mmio::write32(self, offset, value)
    }
    fn read16(&self, offset: u64) -> u16 {
        Mmio::read16(self, offset)
    }
    fn write16(&self, offset: u64, value: u16) {
        Mmio::write16(self, offset, value)
    }
    fn read8(&self, offset: u64) -> u8 {
        Mmio::read8(self, offset)
    }
    fn write8(&self, offset: u64, value: u8) {
        Mmio::write8(self, offset, value)
    }
}
