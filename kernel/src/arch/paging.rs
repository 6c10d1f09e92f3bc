//! Additions to the bootloader's page tables: identity mappings (the AP
//! start-up trampoline) and uncached MMIO mappings in a window of their own.

use spin::Mutex;
use x86_64::registers::control::Cr3;
use x86_64::structures::paging::mapper::{MapToError, TranslateResult};
use x86_64::structures::paging::{
    FrameAllocator, Mapper, OffsetPageTable, Page, PageTable, PageTableFlags as F, PhysFrame, Size4KiB, Translate,
};
use x86_64::{PhysAddr, VirtAddr};

struct Paging {
    table: OffsetPageTable<'static>,
    /// Next free virtual address in the MMIO window.
    mmio_next: u64,
    mmio_end: u64,
}

// SAFETY: the page table is only reached through the mutex below.
unsafe impl Send for Paging {}

static PAGING: Mutex<Option<Paging>> = Mutex::new(None);

/// Page-table frames come from the kernel's frame allocator.
struct Frames;

// SAFETY: `memory::allocate_frame` returns frames that nothing else uses.
unsafe impl FrameAllocator<Size4KiB> for Frames {
    fn allocate_frame(&mut self) -> Option<PhysFrame> {
        crate::memory::allocate_frame().map(|a| PhysFrame::containing_address(PhysAddr::new(a)))
    }
}

/// Takes over the active page table. The MMIO window is a PML4 slot (512
/// GiB) that the bootloader left empty.
pub fn init(phys_offset: u64) {
    let (frame, _) = Cr3::read();
    let virt = phys_offset + frame.start_address().as_u64();
    // SAFETY: the bootloader maps all physical memory at `phys_offset`, the
    // active PML4 is a frame it owns on our behalf, and from here on the only
    // access to it is through PAGING.
    let pml4: &'static mut PageTable = unsafe { &mut *(virt as *mut PageTable) };
    // Not slot 511: its end would wrap to 0.
    let slot = (256..511).rev().find(|&i| pml4[i].is_unused()).expect("no free PML4 slot for MMIO mappings");
    let start = VirtAddr::new_truncate((slot as u64) << 39).as_u64();
    // SAFETY: as above; `phys_offset` is where physical memory is mapped.
    let table = unsafe { OffsetPageTable::new(pml4, VirtAddr::new(phys_offset)) };
    *PAGING.lock() = Some(Paging { table, mmio_next: start, mmio_end: start + (1 << 39) });
}

fn with<R>(f: impl FnOnce(&mut Paging) -> R) -> R {
    f(PAGING.lock().as_mut().expect("paging::init not called"))
}

/// Maps the 4 KiB page at physical `phys` at the same virtual address,
/// writable and executable (for code that runs while paging is turned on).
pub fn identity_map(phys: u64) -> Result<(), &'static str> {
    with(|p| {
        let page = Page::<Size4KiB>::containing_address(VirtAddr::new(phys));
        let frame = PhysFrame::containing_address(PhysAddr::new(phys));
        if let TranslateResult::Mapped { frame: f, .. } = p.table.translate(page.start_address()) {
            return if f.start_address() == frame.start_address() {
                Ok(())
            } else {
                Err("page already mapped elsewhere")
            };
        }
        // SAFETY: the page was unmapped and the frame is reserved for its one user.
        match unsafe { p.table.map_to(page, frame, F::PRESENT | F::WRITABLE, &mut Frames) } {
            Ok(flush) => {
                flush.flush();
                Ok(())
            }
            Err(MapToError::FrameAllocationFailed) => Err("out of frames for page tables"),
            Err(_) => Err("identity mapping failed"),
        }
    })
}

/// Maps `len` bytes of device memory at physical `phys` uncached and not
/// executable; returns the virtual address of `phys`.
pub fn map_mmio(phys: u64, len: u64) -> Result<u64, &'static str> {
    with(|p| {
        let first = phys & !0xfff;
        let last = phys.checked_add(len.max(1) - 1).ok_or("MMIO range wraps")? & !0xfff;
        let pages = (last - first) / 4096 + 1;
        let base = p.mmio_next;
        if base + pages * 4096 > p.mmio_end {
            return Err("MMIO window full");
        }
        for i in 0..pages {
            let page = Page::<Size4KiB>::containing_address(VirtAddr::new(base + i * 4096));
            let frame = PhysFrame::containing_address(PhysAddr::new(first + i * 4096));
            let flags = F::PRESENT | F::WRITABLE | F::NO_CACHE | F::WRITE_THROUGH | F::NO_EXECUTE;
            // SAFETY: the page is fresh in a window nothing else maps; the
            // frame is device memory the caller owns.
            let flush =
                unsafe { p.table.map_to(page, frame, flags, &mut Frames) }.map_err(|_| "MMIO mapping failed")?;
            flush.flush();
        }
        p.mmio_next += pages * 4096;
        Ok(base + (phys - first))
    })
}

/// The physical address of kernel virtual address `virt` in the active
/// page tables, which map all physical memory at `phys_offset` (the
/// bootloader's tables, before [`init`]).
pub fn translate_early(phys_offset: u64, virt: u64) -> Option<u64> {
    let (frame, _) = Cr3::read();
    let pml4 = (phys_offset + frame.start_address().as_u64()) as *mut PageTable;
    // SAFETY: all physical memory is mapped at `phys_offset`, so the PML4
    // is there; the table is only read (through an OffsetPageTable, which
    // wants a mutable reference), on the boot CPU alone, before anything
    // takes the tables over.
    let table = unsafe { OffsetPageTable::new(&mut *pml4, VirtAddr::new(phys_offset)) };
    table.translate_addr(VirtAddr::try_new(virt).ok()?).map(|p| p.as_u64())
}

/// The active PML4's physical address (for the AP trampoline).
pub fn pml4_phys() -> u64 {
    Cr3::read().0.start_address().as_u64()
}
