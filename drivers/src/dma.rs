//! Memory shared with a device.
//!
//! Two kinds of handle, and this module holds all of the crate's `unsafe`:
//!
//! - [`DmaBuf`]: a region the driver and the device both read and write
//!   while it is in use (the rings). It is reached only through volatile,
//!   bounds-checked accessors that copy values in and out: no Rust reference
//!   to the memory ever exists, so the device writing it at any moment breaks
//!   no aliasing rule. A `DmaBuf` is owned (neither `Copy` nor `Clone`) and is
//!   not `Sync`, so one CPU at a time uses it.
//! - [`BufferPool`] and [`Buffer`]: packet buffers. A `Buffer` is the one
//!   handle to one buffer of its pool; it cannot be copied or forged. Whoever
//!   holds it owns those bytes: the driver, or the device while the buffer
//!   sits in a queue (the queue keeps the token until the device gives the
//!   buffer back). Byte slices are borrowed *through* the token, so the borrow
//!   checker rules out two live views of one buffer where one can write.
//!
//! [`device_barrier`] orders the CPU's accesses to shared memory against the
//! device's: it is the one full fence the notification protocol needs.
#![allow(unsafe_code)]

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering};

use alloc::vec::Vec;

/// A region of DMA memory: `len` bytes at virtual `ptr`, physical `phys`.
#[derive(Debug)]
pub struct DmaBuf {
    ptr: NonNull<u8>,
    len: usize,
    phys: u64,
}

// SAFETY: a DmaBuf is the owning handle of memory that lives forever; moving
// it to another CPU moves the only handle (it is neither Copy nor Clone).
unsafe impl Send for DmaBuf {}

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
    /// through this handle and by the device.
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
        offset_in(self.phys, self.len, phys, len)
    }

    fn at(&self, off: usize, size: usize) -> *mut u8 {
        assert!(off.checked_add(size).is_some_and(|end| end <= self.len), "DMA access out of range");
        // SAFETY: `off + size <= len`, so the pointer stays inside the buffer.
        unsafe { self.ptr.as_ptr().add(off) }
    }

    fn read<const N: usize>(&self, off: usize) -> [u8; N] {
        let p = self.at(off, N) as *const [u8; N];
        // SAFETY: in bounds (checked by `at`); [u8; N] has alignment 1; a
        // volatile copy creates no reference the device could invalidate.
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

    /// Copies `src` into the region at `off` (byte by byte, volatile).
    pub fn write_bytes(&self, off: usize, src: &[u8]) {
        let p = self.at(off, src.len());
        for (i, b) in src.iter().enumerate() {
            // SAFETY: `off + src.len() <= len` (checked by `at`), so every
            // byte written is inside the region.
            unsafe { core::ptr::write_volatile(p.add(i), *b) }
        }
    }

    /// Copies the region's bytes at `off` into `dst` (volatile).
    pub fn read_bytes(&self, off: usize, dst: &mut [u8]) {
        let p = self.at(off, dst.len());
        for (i, b) in dst.iter_mut().enumerate() {
            // SAFETY: as in `write_bytes`.
            *b = unsafe { core::ptr::read_volatile(p.add(i)) };
        }
    }
}

/// A full memory barrier between this CPU's earlier and later accesses to
/// memory shared with a device (stores before it are visible before loads
/// after it are performed).
///
/// On x86 this is `mfence` rather than the `lock or` that `fence(SeqCst)`
/// compiles to: under QEMU's TCG with one vCPU a locked instruction runs as a
/// plain load, modify and store, while `mfence` is what QEMU 8.1 made a host
/// barrier again in that mode. QEMU 7.2 honours neither there, which is why
/// the queues do not rely on this alone (see "The data path" in README).
#[inline(always)]
pub fn device_barrier() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `mfence` only orders memory accesses; it reads and writes no
    // memory or register, and the asm block is a compiler barrier as well
    // (no `nomem`), so the compiler keeps accesses on their side of it.
    unsafe {
        core::arch::asm!("mfence", options(nostack, preserves_flags));
    }
    #[cfg(not(target_arch = "x86_64"))]
    core::sync::atomic::fence(Ordering::SeqCst);
}

fn offset_in(base: u64, size: usize, phys: u64, len: usize) -> Option<usize> {
    let off = usize::try_from(phys.checked_sub(base)?).ok()?;
    (off.checked_add(len)? <= size).then_some(off)
}

/// Distinguishes pools, so a token is only ever honoured by its own pool.
static NEXT_POOL: AtomicU32 = AtomicU32::new(1);

/// `count` packet buffers of `buf_size` bytes in one DMA block.
#[derive(Debug)]
pub struct BufferPool {
    mem: DmaBuf,
    buf_size: usize,
    count: u32,
    id: u32,
}

/// The one handle to one buffer of a [`BufferPool`]: not `Copy`, not
/// `Clone`, and only its pool can make one.
#[derive(Debug, PartialEq, Eq)]
pub struct Buffer {
    pool: u32,
    index: u32,
}

impl Buffer {
    /// The buffer's number in its pool (for tests and diagnostics).
    pub fn index(&self) -> u32 {
        self.index
    }
}

impl BufferPool {
    /// A pool and the tokens of all its buffers.
    pub fn new(dma: &dyn DmaAlloc, buf_size: usize, count: u32) -> Option<(BufferPool, Vec<Buffer>)> {
        let mem = dma.alloc(buf_size.checked_mul(count as usize)?, 64)?;
        let id = NEXT_POOL.fetch_add(1, Ordering::Relaxed);
        let tokens = (0..count).rev().map(|index| Buffer { pool: id, index }).collect();
        Some((BufferPool { mem, buf_size, count, id }, tokens))
    }

    pub fn buf_size(&self) -> usize {
        self.buf_size
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    /// Whether `b` is one of this pool's buffers.
    pub fn owns(&self, b: &Buffer) -> bool {
        b.pool == self.id
    }

    /// Start of `b` in the block. Tokens come only from this pool (checked:
    /// honouring another pool's token could alias one of ours).
    fn start(&self, b: &Buffer) -> usize {
        assert!(b.pool == self.id && b.index < self.count, "buffer token of another pool");
        b.index as usize * self.buf_size
    }

    pub fn phys(&self, b: &Buffer) -> u64 {
        self.mem.phys() + self.start(b) as u64
    }

    /// Bytes `off..off+len` of buffer `b`.
    pub fn bytes<'a>(&'a self, b: &'a Buffer, off: usize, len: usize) -> &'a [u8] {
        let start = self.start(b);
        assert!(off.checked_add(len).is_some_and(|end| end <= self.buf_size), "slice outside its buffer");
        let p = self.mem.at(start + off, len);
        // SAFETY: inside buffer `b` (checked above and by `at`). Holding `b`
        // means owning these bytes: the device has given the buffer back and
        // will not write it until the token is handed to a queue again, which
        // the borrow of `b` prevents while the slice lives; no `&mut` to them
        // can exist at the same time, since that needs `&mut b`.
        unsafe { core::slice::from_raw_parts(p, len) }
    }

    /// Mutable bytes `off..off+len` of buffer `b`.
    pub fn bytes_mut<'a>(&'a self, b: &'a mut Buffer, off: usize, len: usize) -> &'a mut [u8] {
        let start = self.start(b);
        assert!(off.checked_add(len).is_some_and(|end| end <= self.buf_size), "slice outside its buffer");
        let p = self.mem.at(start + off, len);
        // SAFETY: as in `bytes`; `&mut b` makes this the only view of the
        // buffer's bytes for the slice's lifetime.
        unsafe { core::slice::from_raw_parts_mut(p, len) }
    }
}

#[cfg(any(test, feature = "fake"))]
pub mod fake {
    //! DMA memory for host tests: leaked heap blocks whose "physical"
    //! address is their virtual address, with a registry so a fake device
    //! can resolve addresses found in descriptors, as hardware would.
    use super::*;
    use std::cell::RefCell;

    #[derive(Clone, Copy, Debug)]
    struct Region {
        ptr: NonNull<u8>,
        len: usize,
    }

    #[derive(Default)]
    pub struct TestDma {
        regions: RefCell<Vec<Region>>,
    }

    impl DmaAlloc for TestDma {
        fn alloc(&self, len: usize, align: usize) -> Option<DmaBuf> {
            let layout = std::alloc::Layout::from_size_align(len.max(1), align).ok()?;
            // SAFETY: non-zero size; the block is leaked (lives forever).
            let ptr = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })?;
            self.regions.borrow_mut().push(Region { ptr, len });
            // SAFETY: zeroed, leaked, used through this handle and by the
            // test device (which stands for the hardware).
            Some(unsafe { DmaBuf::from_raw(ptr, len, ptr.as_ptr() as u64) })
        }
    }

    /// The device's view of `len` bytes of DMA memory.
    pub struct DeviceView {
        mem: DmaBuf,
    }

    impl core::ops::Deref for DeviceView {
        type Target = DmaBuf;
        fn deref(&self) -> &DmaBuf {
            &self.mem
        }
    }

    impl TestDma {
        /// The device's view of `phys..phys+len`, as a device would resolve
        /// a descriptor address, if it lies inside one allocation.
        pub fn resolve(&self, phys: u64, len: usize) -> Option<DeviceView> {
            self.regions.borrow().iter().find_map(|r| {
                let off = offset_in(r.ptr.as_ptr() as u64, r.len, phys, len)?;
                // SAFETY: `off + len` lies inside a live allocation.
                let p = unsafe { NonNull::new_unchecked(r.ptr.as_ptr().add(off)) };
                // SAFETY: the test device is the hardware of these tests: it
                // accesses the memory it was given only through volatile
                // copies, as the driver's own DmaBuf handles do.
                Some(DeviceView { mem: unsafe { DmaBuf::from_raw(p, len, phys) } })
            })
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
        b.write_bytes(0, b"abcd");
        let mut out = [0u8; 4];
        b.read_bytes(0, &mut out);
        assert_eq!(&out, b"abcd");
        let dev = dma.resolve(b.phys() + 1, 2).unwrap();
        assert_eq!(dev.read_u16(0), u16::from_le_bytes(*b"bc"));
        assert!(dma.resolve(b.phys() + 10, 7).is_none(), "crosses the end of the allocation");
    }

    #[test]
    fn buffers_are_disjoint_slices_reached_through_their_tokens() {
        let dma = TestDma::default();
        let (pool, mut tokens) = BufferPool::new(&dma, 64, 4).unwrap();
        assert_eq!(tokens.len(), 4);
        let mut a = tokens.pop().unwrap();
        let mut b = tokens.pop().unwrap();
        pool.bytes_mut(&mut a, 0, 64).fill(0xaa);
        pool.bytes_mut(&mut b, 0, 64).fill(0xbb);
        assert!(pool.bytes(&a, 0, 64).iter().all(|&x| x == 0xaa));
        assert_eq!(pool.phys(&b) - pool.phys(&a), 64 * (b.index() as u64 - a.index() as u64));
        assert!(std::panic::catch_unwind(|| pool.bytes(&a, 60, 5).len()).is_err(), "past the buffer's end");
        let (other, mut theirs) = BufferPool::new(&dma, 64, 4).unwrap();
        let foreign = theirs.pop().unwrap();
        assert!(std::panic::catch_unwind(|| pool.phys(&foreign)).is_err(), "another pool's token");
        let _ = other.bytes_mut(&mut theirs[0], 0, 1);
    }
}
