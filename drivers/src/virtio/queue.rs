//! A split virtqueue (virtio 1.x §2.7), driver side.
//!
//! The driver offers descriptor chains in the available ring and takes
//! completed ones from the used ring. Everything the device writes (used
//! ring ids and lengths) is checked before use: an entry that names a
//! descriptor not in flight, or a length beyond the chain's writable bytes,
//! is counted and dropped. The per-packet path allocates nothing.

use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{fence, Ordering};

use super::transport::QueueAddresses;
use crate::dma::{DmaAlloc, DmaBuf};

const DESC_SIZE: usize = 16;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
/// `avail.flags`: the driver does not want interrupts (without EVENT_IDX).
const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// `used.flags`: the device does not want notifications (without EVENT_IDX).
const USED_F_NO_NOTIFY: u16 = 1;

/// One buffer of a chain: physical address, length, device-writable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub phys: u64,
    pub len: u32,
    pub writable: bool,
}

/// A completed chain: the token given to [`SplitQueue::add`] and the bytes
/// the device wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Used {
    pub token: u32,
    pub len: u32,
}

/// Device errors found in the used ring, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsedErrors {
    /// The id was out of range or not the head of a chain in flight.
    pub bad_id: u64,
    /// The length exceeded the chain's device-writable bytes.
    pub bad_len: u64,
    /// The used index moved by more than the queue size.
    pub bad_index: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueError {
    /// Not enough free descriptors for the chain.
    Full,
    /// An empty chain, or a size that is not a power of two ≤ 32768.
    BadRequest,
    /// DMA memory could not be allocated.
    NoMemory,
}

#[derive(Clone, Copy, Debug)]
struct InFlight {
    token: u32,
    /// Descriptors in the chain.
    count: u16,
    /// Device-writable bytes in the chain.
    writable: u32,
}

pub struct SplitQueue {
    size: u16,
    desc: DmaBuf,
    avail: DmaBuf,
    used: DmaBuf,
    event_idx: bool,
    free_head: u16,
    num_free: u16,
    /// Our copy of `avail.idx` (the device only reads it).
    avail_idx: u16,
    /// `avail.idx` when the device was last notified.
    notified_idx: u16,
    /// Next used-ring entry to look at.
    last_used: u16,
    in_flight: Vec<Option<InFlight>>,
    /// The `next` link of every descriptor, kept on the driver's side: the
    /// descriptor table is shared memory a faulty device could scribble on,
    /// so the free list and chains are never read back from it.
    next: Vec<u16>,
    pub errors: UsedErrors,
}

impl SplitQueue {
    /// A queue of `size` entries in fresh DMA memory.
    pub fn new(dma: &dyn DmaAlloc, size: u16, event_idx: bool) -> Result<SplitQueue, QueueError> {
        if size == 0 || !size.is_power_of_two() || size > 32768 {
            return Err(QueueError::BadRequest);
        }
        let n = size as usize;
        let desc = dma.alloc(DESC_SIZE * n, 16).ok_or(QueueError::NoMemory)?;
        let avail = dma.alloc(6 + 2 * n, 2).ok_or(QueueError::NoMemory)?;
        let used = dma.alloc(6 + 8 * n, 4).ok_or(QueueError::NoMemory)?;
        Ok(SplitQueue {
            size,
            desc,
            avail,
            used,
            event_idx,
            free_head: 0,
            num_free: size,
            avail_idx: 0,
            notified_idx: 0,
            last_used: 0,
            in_flight: vec![None; n],
            // Initially one free list through every descriptor.
            next: (1..=size).map(|i| i % size).collect(),
            errors: UsedErrors::default(),
        })
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    pub fn num_free(&self) -> u16 {
        self.num_free
    }

    pub fn addresses(&self) -> QueueAddresses {
        QueueAddresses { descriptors: self.desc.phys(), driver: self.avail.phys(), device: self.used.phys() }
    }

    /// Offers a chain; `token` comes back with it in [`Used`]. The device
    /// sees it after [`Self::publish`].
    pub fn add(&mut self, segments: &[Segment], token: u32) -> Result<u16, QueueError> {
        if segments.is_empty() {
            return Err(QueueError::BadRequest);
        }
        if segments.len() > self.num_free as usize {
            return Err(QueueError::Full);
        }
        let head = self.free_head;
        let mut idx = head;
        let mut writable = 0u32;
        for (i, s) in segments.iter().enumerate() {
            let d = idx as usize * DESC_SIZE;
            let next = self.next[idx as usize];
            let mut flags = if s.writable { F_WRITE } else { 0 };
            if i + 1 < segments.len() {
                flags |= F_NEXT;
            }
            self.desc.write_u64(d, s.phys);
            self.desc.write_u32(d + 8, s.len);
            self.desc.write_u16(d + 12, flags);
            self.desc.write_u16(d + 14, next);
            if s.writable {
                writable = writable.saturating_add(s.len);
            }
            if i + 1 < segments.len() {
                idx = next;
            } else {
                self.free_head = next;
            }
        }
        self.num_free -= segments.len() as u16;
        self.in_flight[head as usize] = Some(InFlight { token, count: segments.len() as u16, writable });
        let slot = (self.avail_idx % self.size) as usize;
        self.avail.write_u16(4 + 2 * slot, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        Ok(head)
    }

    /// Makes added chains visible to the device. Returns whether the device
    /// asked to be notified about them.
    pub fn publish(&mut self) -> bool {
        // Descriptors and ring entries before the index.
        fence(Ordering::Release);
        self.avail.write_u16(2, self.avail_idx);
        // The index before reading the device's notification suppression.
        fence(Ordering::SeqCst);
        let old = self.notified_idx;
        let new = self.avail_idx;
        self.notified_idx = new;
        if old == new {
            return false;
        }
        if self.event_idx {
            let avail_event = self.used.read_u16(4 + 8 * self.size as usize);
            new.wrapping_sub(avail_event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            self.used.read_u16(0) & USED_F_NO_NOTIFY == 0
        }
    }

    /// Whether the device has completed chains we have not taken.
    pub fn has_used(&self) -> bool {
        let idx = self.used.read_u16(2);
        fence(Ordering::Acquire);
        idx != self.last_used
    }

    /// Takes the next completed chain, if any. Malformed entries are
    /// counted in [`Self::errors`] and skipped.
    pub fn pop_used(&mut self) -> Option<Used> {
        loop {
            let idx = self.used.read_u16(2);
            if idx == self.last_used {
                return None;
            }
            if idx.wrapping_sub(self.last_used) > self.size {
                // The device claims more completions than the queue holds:
                // nothing in the ring can be trusted beyond one lap.
                self.errors.bad_index += 1;
            }
            fence(Ordering::Acquire);
            let slot = (self.last_used % self.size) as usize;
            let id = self.used.read_u32(4 + 8 * slot);
            let len = self.used.read_u32(4 + 8 * slot + 4);
            self.last_used = self.last_used.wrapping_add(1);
            let Some(flight) = usize::try_from(id).ok().and_then(|i| self.in_flight.get_mut(i)).and_then(|f| f.take())
            else {
                self.errors.bad_id += 1;
                continue;
            };
            self.free_chain(id as u16, flight.count);
            if len > flight.writable {
                self.errors.bad_len += 1;
                // The buffer is back in our hands; hand its token back with
                // no data so the owner can reuse it.
                return Some(Used { token: flight.token, len: 0 });
            }
            return Some(Used { token: flight.token, len });
        }
    }

    /// Returns a chain to the free list, following the driver-side links.
    fn free_chain(&mut self, head: u16, count: u16) {
        let mut last = head;
        for _ in 1..count {
            last = self.next[last as usize];
        }
        self.next[last as usize] = self.free_head;
        self.free_head = head;
        self.num_free += count;
    }

    /// Asks for an interrupt when more chains complete, then re-checks: a
    /// `true` return means completions arrived meanwhile and the caller must
    /// poll again instead of sleeping.
    pub fn enable_interrupts(&mut self) -> bool {
        if self.event_idx {
            self.avail.write_u16(4 + 2 * self.size as usize, self.last_used);
        } else {
            self.avail.write_u16(0, 0);
        }
        fence(Ordering::SeqCst);
        self.has_used()
    }

    /// Stops interrupts while the owner is polling anyway. With EVENT_IDX
    /// this leaves `used_event` where it is: at most one more interrupt.
    pub fn disable_interrupts(&mut self) {
        if !self.event_idx {
            self.avail.write_u16(0, AVAIL_F_NO_INTERRUPT);
        }
    }
}

#[cfg(any(test, feature = "fake"))]
pub mod fake {
    //! The device's end of a split queue, for host tests.
    use super::*;
    use crate::dma::fake::TestDma;

    pub struct FakeDeviceQueue<'a> {
        pub dma: &'a TestDma,
        pub addrs: QueueAddresses,
        pub size: u16,
        pub last_avail: u16,
        pub used_idx: u16,
    }

    impl<'a> FakeDeviceQueue<'a> {
        pub fn new(dma: &'a TestDma, q: &SplitQueue) -> Self {
            FakeDeviceQueue { dma, addrs: q.addresses(), size: q.size(), last_avail: 0, used_idx: 0 }
        }

        fn region(&self, phys: u64, len: usize) -> (DmaBuf, usize) {
            self.dma.resolve(phys, len).expect("driver gave the device an address outside DMA memory")
        }

        /// The next available chain: head and its segments.
        pub fn pop_avail(&mut self) -> Option<(u16, Vec<Segment>)> {
            let (avail, o) = self.region(self.addrs.driver, 6 + 2 * self.size as usize);
            let idx = avail.read_u16(o + 2);
            if idx == self.last_avail {
                return None;
            }
            let head = avail.read_u16(o + 4 + 2 * (self.last_avail % self.size) as usize);
            self.last_avail = self.last_avail.wrapping_add(1);
            let (desc, d0) = self.region(self.addrs.descriptors, 16 * self.size as usize);
            let mut segs = Vec::new();
            let mut i = head;
            loop {
                let d = d0 + 16 * i as usize;
                let flags = desc.read_u16(d + 12);
                segs.push(Segment {
                    phys: desc.read_u64(d),
                    len: desc.read_u32(d + 8),
                    writable: flags & F_WRITE != 0,
                });
                if flags & F_NEXT == 0 || segs.len() > self.size as usize {
                    break;
                }
                i = desc.read_u16(d + 14);
            }
            Some((head, segs))
        }

        /// Writes `data` into the chain's writable segments; returns bytes written.
        pub fn fill(&self, segs: &[Segment], data: &[u8]) -> u32 {
            let mut done = 0;
            for s in segs.iter().filter(|s| s.writable) {
                let n = (data.len() - done).min(s.len as usize);
                let (b, o) = self.region(s.phys, s.len as usize);
                b.bytes_mut(o, n).copy_from_slice(&data[done..done + n]);
                done += n;
            }
            done as u32
        }

        /// Reads the chain's device-readable bytes.
        pub fn read(&self, segs: &[Segment]) -> Vec<u8> {
            let mut out = Vec::new();
            for s in segs.iter().filter(|s| !s.writable) {
                let (b, o) = self.region(s.phys, s.len as usize);
                out.extend_from_slice(b.bytes(o, s.len as usize));
            }
            out
        }

        /// Appends a used-ring entry (any id and length: tests lie on purpose).
        pub fn push_used(&mut self, id: u32, len: u32) {
            let (used, o) = self.region(self.addrs.device, 6 + 8 * self.size as usize);
            let slot = (self.used_idx % self.size) as usize;
            used.write_u32(o + 4 + 8 * slot, id);
            used.write_u32(o + 8 + 8 * slot, len);
            self.used_idx = self.used_idx.wrapping_add(1);
            used.write_u16(o + 2, self.used_idx);
        }

        pub fn used_event(&self) -> u16 {
            let (avail, o) = self.region(self.addrs.driver, 6 + 2 * self.size as usize);
            avail.read_u16(o + 4 + 2 * self.size as usize)
        }

        pub fn set_avail_event(&self, v: u16) {
            let (used, o) = self.region(self.addrs.device, 6 + 8 * self.size as usize);
            used.write_u16(o + 4 + 8 * self.size as usize, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeDeviceQueue;
    use super::*;
    use crate::dma::fake::TestDma;

    fn seg(phys: u64, len: u32, writable: bool) -> Segment {
        Segment { phys, len, writable }
    }

    #[test]
    fn sizes_must_be_powers_of_two() {
        let dma = TestDma::default();
        assert_eq!(SplitQueue::new(&dma, 0, false).err(), Some(QueueError::BadRequest));
        assert_eq!(SplitQueue::new(&dma, 100, false).err(), Some(QueueError::BadRequest));
        assert!(SplitQueue::new(&dma, 256, true).is_ok());
    }

    #[test]
    fn chains_round_trip_through_a_device() {
        let dma = TestDma::default();
        let buf = dma.alloc(4096, 16).unwrap();
        let mut q = SplitQueue::new(&dma, 8, false).unwrap();
        let mut dev = FakeDeviceQueue::new(&dma, &q);
        buf.bytes_mut(0, 5).copy_from_slice(b"hello");
        q.add(&[seg(buf.phys(), 5, false), seg(buf.phys() + 100, 64, true)], 42).unwrap();
        assert_eq!(q.num_free(), 6);
        assert!(dev.pop_avail().is_none(), "not visible before publish");
        assert!(q.publish(), "device wants notifications by default");
        let (head, segs) = dev.pop_avail().unwrap();
        assert_eq!(dev.read(&segs), b"hello");
        let n = dev.fill(&segs, b"world!");
        dev.push_used(head as u32, n);
        assert!(q.has_used());
        assert_eq!(q.pop_used(), Some(Used { token: 42, len: 6 }));
        assert_eq!(buf.bytes(100, 6), b"world!");
        assert_eq!(q.pop_used(), None);
        assert_eq!(q.num_free(), 8, "descriptors returned to the free list");
    }

    #[test]
    fn the_queue_fills_up_and_recycles_many_times() {
        let dma = TestDma::default();
        let buf = dma.alloc(4096, 16).unwrap();
        let mut q = SplitQueue::new(&dma, 4, true).unwrap();
        let mut dev = FakeDeviceQueue::new(&dma, &q);
        for round in 0..50u32 {
            for i in 0..4 {
                q.add(&[seg(buf.phys() + i * 64, 64, true)], round * 4 + i as u32).unwrap();
            }
            assert_eq!(q.add(&[seg(buf.phys(), 1, true)], 0), Err(QueueError::Full));
            q.publish();
            while let Some((head, _)) = dev.pop_avail() {
                dev.push_used(head as u32, 10);
            }
            let tokens: Vec<u32> = core::iter::from_fn(|| q.pop_used()).map(|u| u.token).collect();
            assert_eq!(tokens, (round * 4..round * 4 + 4).collect::<Vec<_>>());
        }
        assert_eq!(q.errors, UsedErrors::default());
    }

    #[test]
    fn malformed_used_entries_are_counted_and_dropped() {
        let dma = TestDma::default();
        let buf = dma.alloc(4096, 16).unwrap();
        let mut q = SplitQueue::new(&dma, 8, false).unwrap();
        let mut dev = FakeDeviceQueue::new(&dma, &q);
        q.add(&[seg(buf.phys(), 100, true)], 7).unwrap();
        q.add(&[seg(buf.phys() + 100, 100, true)], 8).unwrap();
        q.publish();
        let (h1, _) = dev.pop_avail().unwrap();
        let (h2, _) = dev.pop_avail().unwrap();
        dev.push_used(9999, 10); // id out of range
        dev.push_used(5, 10); // in range but not in flight
        dev.push_used(h1 as u32, 101); // longer than the buffer
        dev.push_used(h1 as u32, 10); // already completed
        dev.push_used(h2 as u32, 100); // fine
        assert_eq!(q.pop_used(), Some(Used { token: 7, len: 0 }), "bad length: buffer returned empty");
        assert_eq!(q.pop_used(), Some(Used { token: 8, len: 100 }));
        assert_eq!(q.pop_used(), None);
        assert_eq!(q.errors, UsedErrors { bad_id: 3, bad_len: 1, bad_index: 0 });
        assert_eq!(q.num_free(), 8);
    }

    #[test]
    fn a_device_scribbling_on_the_descriptor_table_cannot_derail_the_free_list() {
        let dma = TestDma::default();
        let buf = dma.alloc(4096, 16).unwrap();
        let mut q = SplitQueue::new(&dma, 4, false).unwrap();
        let mut dev = FakeDeviceQueue::new(&dma, &q);
        for round in 0..8u32 {
            q.add(&[seg(buf.phys(), 8, false), seg(buf.phys() + 8, 8, true)], round).unwrap();
            q.publish();
            let (head, _) = dev.pop_avail().unwrap();
            // Garbage in every descriptor's `next` field.
            let (desc, d0) = dma.resolve(q.addresses().descriptors, 64).unwrap();
            for i in 0..4 {
                desc.write_u16(d0 + 16 * i + 14, 0xffff);
            }
            dev.push_used(head as u32, 8);
            assert_eq!(q.pop_used(), Some(Used { token: round, len: 8 }));
            assert_eq!(q.num_free(), 4);
        }
    }

    #[test]
    fn event_idx_notification_suppression() {
        let dma = TestDma::default();
        let buf = dma.alloc(4096, 16).unwrap();
        let mut q = SplitQueue::new(&dma, 8, true).unwrap();
        let dev = FakeDeviceQueue::new(&dma, &q);
        dev.set_avail_event(0);
        q.add(&[seg(buf.phys(), 1, false)], 0).unwrap();
        assert!(q.publish(), "idx 0 -> 1 crosses avail_event 0");
        q.add(&[seg(buf.phys(), 1, false)], 1).unwrap();
        assert!(!q.publish(), "device asked only about entry 0");
        dev.set_avail_event(2);
        q.add(&[seg(buf.phys(), 1, false)], 2).unwrap();
        assert!(q.publish(), "2 -> 3 crosses avail_event 2");
        assert!(!q.publish(), "nothing new");
    }

    #[test]
    fn interrupt_enable_writes_used_event_and_reports_races() {
        let dma = TestDma::default();
        let buf = dma.alloc(4096, 16).unwrap();
        let mut q = SplitQueue::new(&dma, 8, true).unwrap();
        let mut dev = FakeDeviceQueue::new(&dma, &q);
        q.add(&[seg(buf.phys(), 64, true)], 1).unwrap();
        q.add(&[seg(buf.phys() + 64, 64, true)], 2).unwrap();
        q.publish();
        let (h, _) = dev.pop_avail().unwrap();
        dev.push_used(h as u32, 1);
        assert!(q.enable_interrupts(), "a completion is already waiting");
        assert_eq!(q.pop_used().map(|u| u.token), Some(1));
        assert!(!q.enable_interrupts(), "nothing pending: safe to sleep");
        assert_eq!(dev.used_event(), 1);
    }
}
