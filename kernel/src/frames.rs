//! Physical memory: the usable ranges of the boot memory map and a frame
//! allocator over them.
//!
//! The allocator hands out 4 KiB frames, single or physically contiguous runs
//! (the heap and DMA rings need those), within an address window (the AP
//! start-up trampoline must live below 1 MiB). It never frees: a unikernel
//! allocates its long-lived structures once at boot, and everything that
//! comes and goes lives on the heap. Memory below 1 MiB is only handed out
//! when asked for explicitly, so the low pages stay available for firmware
//! interfaces and the trampoline.

use core::fmt;

pub const FRAME_SIZE: u64 = 4096;
/// Frames below this address are given out only on explicit request.
pub const LOW_MEMORY_END: u64 = 0x10_0000;

/// A half-open physical address range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PhysRange {
    pub start: u64,
    pub end: u64,
}

impl PhysRange {
    pub const fn new(start: u64, end: u64) -> Self {
        PhysRange { start, end }
    }
    pub const fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One usable region and how far it has been handed out.
#[derive(Clone, Copy, Debug, Default)]
struct Region {
    range: PhysRange,
    /// Everything in `[range.start, next)` is allocated.
    next: u64,
}

/// Why an allocation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocError {
    /// No region has enough free frames in the requested window.
    OutOfMemory,
    /// `count` was zero or the alignment not a power-of-two multiple of 4 KiB.
    BadRequest,
}

/// What the boot memory map looked like, for the banner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MemoryStats {
    /// Usable bytes (after alignment to whole frames).
    pub usable: u64,
    /// Number of separate usable regions (after merging neighbours).
    pub regions: usize,
    /// End of the highest usable region.
    pub highest: u64,
    /// Usable regions that did not fit the allocator's table (lost memory).
    pub dropped_regions: usize,
}

/// A bump allocator over up to `N` usable regions.
pub struct FrameAllocator<const N: usize> {
    regions: [Region; N],
    len: usize,
    stats: MemoryStats,
}

impl<const N: usize> FrameAllocator<N> {
    /// Builds the allocator from the usable ranges of the memory map, in any
    /// order. Ranges are shrunk to whole frames, frame 0 is never used,
    /// touching ranges are merged, and overlapping ranges (a broken map) are
    /// clipped so no frame can be handed out twice.
    pub fn new(usable: impl IntoIterator<Item = PhysRange>) -> Self {
        let mut this = FrameAllocator { regions: [Region::default(); N], len: 0, stats: MemoryStats::default() };
        for r in usable {
            let start = align_up(r.start.max(FRAME_SIZE), FRAME_SIZE);
            let end = r.end & !(FRAME_SIZE - 1);
            if start < end {
                this.insert(PhysRange::new(start, end));
            }
        }
        for r in &mut this.regions[..this.len] {
            r.next = r.range.start;
        }
        this.stats.regions = this.len;
        this.stats.usable = this.regions[..this.len].iter().map(|r| r.range.len()).sum();
        this.stats.highest = this.regions[..this.len].last().map_or(0, |r| r.range.end);
        this
    }

    /// Inserts keeping `regions` sorted, merged and disjoint.
    fn insert(&mut self, mut new: PhysRange) {
        // Clip against existing regions.
        for r in &self.regions[..self.len] {
            if new.start < r.range.end && r.range.start < new.end {
                if new.start >= r.range.start {
                    new.start = r.range.end;
                } else {
                    // Keep the part below; the part above comes back later
                    // only if the map lists it again, which a sane map won't.
                    new.end = r.range.start;
                }
            }
            if new.is_empty() {
                return;
            }
        }
        let pos = self.regions[..self.len].iter().position(|r| r.range.start > new.start).unwrap_or(self.len);
        // Merge with the neighbour below / above when they touch.
        if pos > 0 && self.regions[pos - 1].range.end == new.start {
            self.regions[pos - 1].range.end = new.end;
            if pos < self.len && self.regions[pos].range.start == new.end {
                self.regions[pos - 1].range.end = self.regions[pos].range.end;
                self.regions.copy_within(pos + 1..self.len, pos);
                self.len -= 1;
            }
            return;
        }
        if pos < self.len && self.regions[pos].range.start == new.end {
            self.regions[pos].range.start = new.start;
            return;
        }
        if self.len == N {
            self.stats.dropped_regions += 1;
            return;
        }
        self.regions.copy_within(pos..self.len, pos + 1);
        self.regions[pos] = Region { range: new, next: new.start };
        self.len += 1;
    }

    pub fn stats(&self) -> MemoryStats {
        self.stats
    }

    /// Bytes not yet handed out.
    pub fn free_bytes(&self) -> u64 {
        self.regions[..self.len].iter().map(|r| r.range.end - r.next).sum()
    }

    /// The usable regions, for reporting.
    pub fn regions(&self) -> impl Iterator<Item = PhysRange> + '_ {
        self.regions[..self.len].iter().map(|r| r.range)
    }

    /// Largest contiguous run that [`Self::allocate`] could still return above 1 MiB.
    pub fn largest_free_run(&self) -> u64 {
        self.regions[..self.len]
            .iter()
            .map(|r| r.range.end - r.next.max(LOW_MEMORY_END).min(r.range.end))
            .max()
            .unwrap_or(0)
    }

    /// One frame at or above 1 MiB.
    pub fn allocate_frame(&mut self) -> Result<u64, AllocError> {
        self.allocate(1)
    }

    /// `count` contiguous frames at or above 1 MiB.
    pub fn allocate(&mut self, count: u64) -> Result<u64, AllocError> {
        self.allocate_in(count, FRAME_SIZE, PhysRange::new(LOW_MEMORY_END, u64::MAX))
    }

    /// `count` contiguous frames, the first aligned to `align`, all inside
    /// `window`. The lowest fitting address is chosen.
    pub fn allocate_in(&mut self, count: u64, align: u64, window: PhysRange) -> Result<u64, AllocError> {
        if count == 0 || !align.is_power_of_two() || align < FRAME_SIZE {
            return Err(AllocError::BadRequest);
        }
        let bytes = count.checked_mul(FRAME_SIZE).ok_or(AllocError::BadRequest)?;
        for r in &mut self.regions[..self.len] {
            let Some(start) = align_up_checked(r.next.max(window.start), align) else { continue };
            let Some(end) = start.checked_add(bytes) else { continue };
            if end <= r.range.end && end <= window.end {
                // Frames skipped for alignment or below the window are not
                // lost for good only if they sit below the window; alignment
                // padding inside the window is given up (bump allocator).
                r.next = end;
                return Ok(start);
            }
        }
        Err(AllocError::OutOfMemory)
    }
}

impl fmt::Display for MemoryStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} MiB usable in {} regions, highest address {:#x}", self.usable >> 20, self.regions, self.highest)?;
        if self.dropped_regions > 0 {
            write!(f, " ({} regions dropped: table full)", self.dropped_regions)?;
        }
        Ok(())
    }
}

const fn align_up(x: u64, align: u64) -> u64 {
    (x + align - 1) & !(align - 1)
}

fn align_up_checked(x: u64, align: u64) -> Option<u64> {
    Some(x.checked_add(align - 1)? & !(align - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Roughly what QEMU's BIOS hands over for `-m 128M` after the
    /// bootloader took its share.
    fn qemu_like_map() -> Vec<PhysRange> {
        vec![
            PhysRange::new(0x0, 0x9_f000),         // low memory incl. frame 0
            PhysRange::new(0x10_0000, 0x40_0000),  // 1..4 MiB
            PhysRange::new(0x80_0000, 0x7fe_0000), // 8 MiB..~128 MiB
            PhysRange::new(0x40_0000, 0x40_0800),  // less than a frame: ignored
        ]
    }

    #[test]
    fn map_is_trimmed_sorted_and_counted() {
        let fa = FrameAllocator::<8>::new(qemu_like_map());
        let regions: Vec<_> = fa.regions().collect();
        assert_eq!(
            regions,
            [
                PhysRange::new(0x1000, 0x9_f000),
                PhysRange::new(0x10_0000, 0x40_0000),
                PhysRange::new(0x80_0000, 0x7fe_0000),
            ]
        );
        let s = fa.stats();
        assert_eq!(s.regions, 3);
        assert_eq!(s.usable, 0x9_e000 + 3 * MIB + 0x7fe_0000 - 0x80_0000);
        assert_eq!(s.highest, 0x7fe_0000);
        assert_eq!(fa.free_bytes(), s.usable);
        assert_eq!(s.to_string(), "123 MiB usable in 3 regions, highest address 0x7fe0000");
    }

    #[test]
    fn unaligned_ranges_shrink_to_whole_frames() {
        let fa = FrameAllocator::<4>::new([PhysRange::new(0x20_0010, 0x20_3ff0)]);
        assert_eq!(fa.regions().collect::<Vec<_>>(), [PhysRange::new(0x20_1000, 0x20_3000)]);
    }

    #[test]
    fn touching_ranges_merge_and_overlaps_are_clipped() {
        let fa = FrameAllocator::<4>::new([
            PhysRange::new(0x30_0000, 0x40_0000),
            PhysRange::new(0x10_0000, 0x20_0000),
            PhysRange::new(0x20_0000, 0x30_0000), // bridges the two
            PhysRange::new(0x38_0000, 0x48_0000), // overlaps the end
        ]);
        assert_eq!(fa.regions().collect::<Vec<_>>(), [PhysRange::new(0x10_0000, 0x48_0000)]);
        assert_eq!(fa.stats().usable, 0x38_0000);
    }

    #[test]
    fn single_frames_come_from_above_one_mib_and_never_repeat() {
        let mut fa = FrameAllocator::<8>::new(qemu_like_map());
        let mut seen = std::collections::HashSet::new();
        for _ in 0..(3 * MIB / FRAME_SIZE) {
            let f = fa.allocate_frame().unwrap();
            assert!(f >= LOW_MEMORY_END && f.is_multiple_of(FRAME_SIZE));
            assert!(seen.insert(f), "frame {f:#x} handed out twice");
        }
        // The 1..4 MiB region is used up; the next comes from 8 MiB.
        assert_eq!(fa.allocate_frame(), Ok(0x80_0000));
    }

    #[test]
    fn contiguous_runs_skip_regions_that_are_too_small() {
        let mut fa = FrameAllocator::<8>::new(qemu_like_map());
        let heap = fa.allocate(16 * MIB / FRAME_SIZE).unwrap();
        assert_eq!(heap, 0x80_0000, "1..4 MiB cannot hold 16 MiB");
        // The small region is still there for single frames.
        assert_eq!(fa.allocate_frame(), Ok(0x10_0000));
        assert_eq!(fa.allocate_in(1, 2 * MIB, PhysRange::new(0, u64::MAX)), Ok(0x20_0000));
    }

    #[test]
    fn low_memory_only_on_request() {
        let mut fa = FrameAllocator::<8>::new(qemu_like_map());
        let low = fa.allocate_in(1, FRAME_SIZE, PhysRange::new(0, LOW_MEMORY_END)).unwrap();
        assert_eq!(low, 0x1000, "frame 0 is never handed out");
        let high = fa.allocate_frame().unwrap();
        assert!(high >= LOW_MEMORY_END);
    }

    #[test]
    fn exhaustion_and_bad_requests_are_errors() {
        let mut fa = FrameAllocator::<2>::new([PhysRange::new(0x10_0000, 0x10_2000)]);
        assert_eq!(fa.allocate(0), Err(AllocError::BadRequest));
        assert_eq!(fa.allocate_in(1, 3000, PhysRange::new(0, u64::MAX)), Err(AllocError::BadRequest));
        assert_eq!(fa.allocate(u64::MAX), Err(AllocError::BadRequest));
        assert_eq!(fa.allocate(3), Err(AllocError::OutOfMemory));
        assert_eq!(fa.allocate(2), Ok(0x10_0000));
        assert_eq!(fa.allocate_frame(), Err(AllocError::OutOfMemory));
        assert_eq!(fa.free_bytes(), 0);
        assert_eq!(fa.largest_free_run(), 0);
    }

    #[test]
    fn a_full_table_counts_the_regions_it_dropped() {
        let ranges = (0..5u64).map(|i| PhysRange::new((i * 2 + 1) * MIB, (i * 2 + 2) * MIB));
        let fa = FrameAllocator::<3>::new(ranges);
        assert_eq!(fa.stats().regions, 3);
        assert_eq!(fa.stats().dropped_regions, 2);
        assert!(fa.stats().to_string().ends_with("(2 regions dropped: table full)"));
    }

    #[test]
    fn largest_free_run_ignores_low_memory() {
        let mut fa = FrameAllocator::<8>::new(qemu_like_map());
        assert_eq!(fa.largest_free_run(), 0x7fe_0000 - 0x80_0000);
        fa.allocate(MIB / FRAME_SIZE).unwrap(); // from 1..4 MiB
        fa.allocate(4 * MIB / FRAME_SIZE).unwrap(); // from 8 MiB on
        assert_eq!(fa.largest_free_run(), 0x7fe_0000 - 0xc0_0000);
    }
}
