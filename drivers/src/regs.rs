//! A block of device registers (a mapped BAR region), accessed by offset.

/// Volatile 8/16/32-bit register access at byte offsets into one block.
/// The kernel implements it over uncached MMIO mappings; the tests over
/// memory with device behaviour attached.
pub trait RegisterBlock {
    fn read32(&self, offset: u64) -> u32;
    fn write32(&self, offset: u64, value: u32);
    fn read16(&self, offset: u64) -> u16;
    fn write16(&self, offset: u64, value: u16);
    fn read8(&self, offset: u64) -> u8;
    fn write8(&self, offset: u64, value: u8);

    fn read64_split(&self, offset: u64) -> u64 {
        self.read32(offset) as u64 | ((self.read32(offset + 4) as u64) << 32)
    }
    /// 64-bit registers of virtio are written as two 32-bit halves, low first.
    fn write64_split(&self, offset: u64, value: u64) {
        self.write32(offset, value as u32);
        self.write32(offset + 4, (value >> 32) as u32);
    }
}

/// In-memory stand-ins for host tests (this crate's and its users').
#[cfg(any(test, feature = "fake"))]
pub mod fake {
    use super::RegisterBlock;
    use std::cell::RefCell;
    use std::vec::Vec;

    /// Plain memory registers (no side effects).
    pub struct Memory(pub RefCell<Vec<u8>>);

    impl Memory {
        pub fn new(len: usize) -> Memory {
            Memory(RefCell::new(std::vec![0; len]))
        }
        fn get<const N: usize>(&self, off: u64) -> [u8; N] {
            self.0.borrow()[off as usize..off as usize + N].try_into().unwrap()
        }
        fn put(&self, off: u64, bytes: &[u8]) {
            self.0.borrow_mut()[off as usize..off as usize + bytes.len()].copy_from_slice(bytes);
        }
    }

    impl RegisterBlock for Memory {
        fn read32(&self, o: u64) -> u32 {
            u32::from_le_bytes(self.get(o))
        }
        fn write32(&self, o: u64, v: u32) {
            self.put(o, &v.to_le_bytes())
        }
        fn read16(&self, o: u64) -> u16 {
            u16::from_le_bytes(self.get(o))
        }
        fn write16(&self, o: u64, v: u16) {
            self.put(o, &v.to_le_bytes())
        }
        fn read8(&self, o: u64) -> u8 {
            self.get::<1>(o)[0]
        }
        fn write8(&self, o: u64, v: u8) {
            self.put(o, &[v])
        }
    }
}
