//! Physical memory and the heap.
//!
//! The frame allocator is built from the loader's memory map. The heap is
//! one physically contiguous run of frames, used through the direct map of
//! physical memory (the bootloader's, or the one `arch::pvh` builds), so heap buffers can be handed to devices:
//! [`virt_to_phys`] turns a heap pointer into the address a device needs.

use kernel::directmap::{self, DirectMap};
use kernel::frames::{FrameAllocator, MemoryStats, PhysRange, FRAME_SIZE};
use spin::{Mutex, Once};
use talc::source::Manual;
use talc::TalcLock;

/// More usable regions than any PC firmware reports.
const MAX_REGIONS: usize = 128;

#[global_allocator]
static HEAP: TalcLock<spinning_top::RawSpinlock, Manual> = TalcLock::new(Manual);

static FRAMES: Mutex<Option<FrameAllocator<MAX_REGIONS>>> = Mutex::new(None);
static DIRECT_MAP: Once<DirectMap> = Once::new();

/// What memory set-up found, for the banner.
pub struct MemorySummary {
    pub stats: MemoryStats,
    pub heap_phys: u64,
    pub heap_bytes: u64,
    pub frames_free: u64,
    pub direct_map_offset: u64,
}

static HEAP_BYTES: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// The heap's size (0 before [`init`]).
pub fn heap_bytes() -> u64 {
    HEAP_BYTES.load(core::sync::atomic::Ordering::Relaxed)
}

/// Builds the frame allocator from the `usable` RAM the loader left and
/// carves the heap out of it. Physical memory `0..phys_end` is mapped at
/// `offset` (the bootloader's map, or `arch::pvh`'s).
pub fn init(usable: &mut dyn Iterator<Item = PhysRange>, phys_end: u64, offset: u64) -> MemorySummary {
    let mut frames = FrameAllocator::<MAX_REGIONS>::new(usable);
    let stats = frames.stats();
    let map = DirectMap::new(offset, phys_end).expect("direct map wraps the address space");
    DIRECT_MAP.call_once(|| map);

    let heap_bytes = directmap::heap_size(stats.usable, frames.largest_free_run());
    let heap_phys = frames
        .allocate(heap_bytes / FRAME_SIZE)
        .unwrap_or_else(|e| panic!("no {} MiB run for the heap: {e:?} ({stats})", heap_bytes >> 20));
    let heap_virt = map.phys_to_virt(heap_phys).expect("heap frames are direct-mapped");
    // SAFETY: the frames were just taken from the allocator, so nothing else
    // uses them, and the loader's direct map has them read-write at
    // `heap_virt`.
    let claimed = unsafe { HEAP.lock().claim(heap_virt as *mut u8, heap_bytes as usize) };
    if claimed.is_none() {
        panic!("the allocator refused a {} MiB heap", heap_bytes >> 20);
    }
    let frames_free = frames.free_bytes();
    *FRAMES.lock() = Some(frames);
    HEAP_BYTES.store(heap_bytes, core::sync::atomic::Ordering::Relaxed);
    MemorySummary { stats, heap_phys, heap_bytes, frames_free, direct_map_offset: offset }
}

/// Physical address of `len` bytes at `ptr`, for DMA. `None` unless the
/// whole buffer is direct-mapped memory (heap buffers always are).
pub fn virt_to_phys(ptr: *const u8, len: usize) -> Option<u64> {
    DIRECT_MAP.get()?.virt_range_to_phys(ptr as u64, len as u64)
}

/// One physical frame at or above 1 MiB, for page tables and the like.
pub fn allocate_frame() -> Option<u64> {
    FRAMES.lock().as_mut()?.allocate_frame().ok()
}

/// One frame below 1 MiB (real-mode code such as the AP trampoline), reserved
/// for good.
pub fn allocate_low_frame() -> Option<u64> {
    let window = PhysRange::new(0, kernel::frames::LOW_MEMORY_END);
    FRAMES.lock().as_mut()?.allocate_in(1, FRAME_SIZE, window).ok()
}

/// The direct map of physical memory.
pub fn direct_map() -> DirectMap {
    *DIRECT_MAP.get().expect("memory::init not called")
}
