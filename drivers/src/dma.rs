//! Memory shared with a device.
//!
//! A [`DmaBuf`] is a physically contiguous, zeroed region that both the CPU
//! and the device access. Every access goes through volatile, bounds-checked
//! accessors here, so the rest of the driver is safe code. This module holds
//! the crate's only `unsafe`.
#![allow(unsafe_code)]

use core::ptr::NonNull;

/// A region of DMA memory: `len` bytes at virtual `ptr`, physical `phys`.
#[derive(Clone, Copy, Debug)]
pub struct DmaBuf {
    ptr: NonNull<u8>,
    len: usize,
    phys: u64,
}

// SAFETY: a DmaBuf is a handle to memory that lives forever and is only
// accessed volatilely; which CPU uses it is decided by its owner.
unsafe impl Send for DmaBuf {}
// SAFETY: as above.
unsafe impl Sync for DmaBuf {}

/// Allocates DMA memory.
pub trait DmaAlloc {
    /// `len` zeroed bytes aligned to `align` (a power of two), physically
    /// contiguous, never freed.
    fn alloc(&self, len: usize, align: usize) -> Option<DmaBuf>;
}

impl DmaBuf {
    /// # Safety
    /// `ptr..ptr+len` must be valid, zeroed memory that lives for the rest
    /// of the program, is physically contiguous at `phys`, and is used only
    /// through this handle (and copies of it) and by the device.
    pub const unsafe fn from_raw(ptr: NonNull<u8>, len: usize, phys: u64) -> DmaBuf {
        DmaBuf { ptr, len, phys }
    }

    pub const fn len(&self) -> usize {
        self.len
    }

    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub const fn phys(&self) -> u64 {
        self.phys
    }

    /// The offset of `phys..phys+len` in this buffer, if it lies inside.
    pub fn offset_of(&self, phys: u64, len: usize) -> Option<usize> {
        let off = usize::try_from(phys.checked_sub(self.phys)?).ok()?;
        (off.checked_add(len)? <= self.len).then_some(off)
    }

    fn at(&self, off: usize, size: usize) -> *mut u8 {
        assert!(off.checked_add(size).is_some_and(|end| end <= self.len), "DMA access out of range");
        // SAFETY: `off + size <= len`, so the pointer stays inside the buffer.
        unsafe { self.ptr.as_ptr().add(off) }
    }

    fn read<const N: usize>(&self, off: usize) -> [u8; N] {
        let p = self.at(off, N) as *const [u8; N];
        // SAFETY: in bounds (checked by `at`); [u8; N] has alignment 1.
        unsafe { core::ptr::read_volatile(p) }
    }

    fn write<const N: usize>(&self, off: usize, bytes: [u8; N]) {
        let p = self.at(off, N) as *mut [u8; N];
        // SAFETY: as in `read`.
        unsafe { core::ptr::write_volatile(p, bytes) }
    }

    pub fn read_u8(&self, off: usize) -> u8 {
        self.read::<1>(off)[0]
    }
    pub fn write_u8(&self, off: usize, v: u8) {
        self.write(off, [v])
    }
    pub fn read_u16(&self, off: usize) -> u16 {
        u16::from_le_bytes(self.read(off))
    }
    pub fn write_u16(&self, off: usize, v: u16) {
        self.write(off, v.to_le_bytes())
    }
    pub fn read_u32(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.read(off))
    }
    pub fn write_u32(&self, off: usize, v: u32) {
        self.write(off, v.to_le_bytes())
    }
    pub fn read_u64(&self, off: usize) -> u64 {
        u64::from_le_bytes(self.read(off))
    }
    pub fn write_u64(&self, off: usize, v: u64) {
        self.write(off, v.to_le_bytes())
    }

    /// Borrows `off..off+len` as bytes. The caller must own that part of the
    /// buffer at the virtio level (not currently offered to the device).
    pub fn bytes(&self, off: usize, len: usize) -> &[u8] {
        let p = self.at(off, len);
        // SAFETY: in bounds; by the virtio protocol the device does not
        // write a buffer the driver owns, so the bytes do not change under
        // the borrow.
        unsafe { core::slice::from_raw_parts(p, len) }
    }

    /// Mutable version of [`Self::bytes`]; same ownership rule, and the
    /// caller must not hold another borrow of the same bytes.
    #[allow(clippy::mut_from_ref)]
    pub fn bytes_mut(&self, off: usize, len: usize) -> &mut [u8] {
        let p = self.at(off, len);
        // SAFETY: in bounds; exclusive per the ownership rule above.
        unsafe { core::slice::from_raw_parts_mut(p, len) }
    }
}

#[cfg(any(test, feature = "fake"))]
pub mod fake {
    //! DMA memory for host tests: leaked heap blocks whose "physical"
    //! address is their virtual address, with a registry so a fake device
    //! can resolve addresses found in descriptors.
    use super::*;
    use std::cell::RefCell;
    use std::vec::Vec;

    #[derive(Default)]
    pub struct TestDma {
        pub bufs: RefCell<Vec<DmaBuf>>,
    }

    impl DmaAlloc for TestDma {
        fn alloc(&self, len: usize, align: usize) -> Option<DmaBuf> {
            let layout = std::alloc::Layout::from_size_align(len.max(1), align).ok()?;
            // SAFETY: non-zero size; the block is leaked (lives forever).
            let ptr = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })?;
            // SAFETY: zeroed, leaked, used only through this handle.
            let buf = unsafe { DmaBuf::from_raw(ptr, len, ptr.as_ptr() as u64) };
            self.bufs.borrow_mut().push(buf);
            Some(buf)
        }
    }

    impl TestDma {
        /// The buffer and offset holding `phys..phys+len`, as a device would
        /// resolve a descriptor address.
        pub fn resolve(&self, phys: u64, len: usize) -> Option<(DmaBuf, usize)> {
            self.bufs.borrow().iter().find_map(|b| b.offset_of(phys, len).map(|o| (*b, o)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::TestDma;
    use super::*;

    #[test]
    fn little_endian_accessors_and_bounds() {
        let dma = TestDma::default();
        let b = dma.alloc(16, 16).unwrap();
        b.write_u32(4, 0x1122_3344);
        assert_eq!(b.read_u8(4), 0x44);
        assert_eq!(b.read_u16(6), 0x1122);
        b.write_u64(8, u64::MAX - 1);
        assert_eq!(b.read_u64(8), u64::MAX - 1);
        assert_eq!(b.offset_of(b.phys() + 8, 8), Some(8));
        assert_eq!(b.offset_of(b.phys() + 8, 9), None);
        assert_eq!(b.offset_of(b.phys() - 1, 1), None);
        assert!(std::panic::catch_unwind(|| b.read_u32(14)).is_err(), "out of range is a driver bug");
        b.bytes_mut(0, 4).copy_from_slice(b"abcd");
        assert_eq!(b.bytes(0, 4), b"abcd");
    }
}
