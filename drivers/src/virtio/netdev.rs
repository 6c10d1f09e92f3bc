//! The virtio-net data path: receive and transmit queues with their DMA
//! buffers and counters, the control queue, and the MSI-X vector plan.
//!
//! Every queue is owned by one CPU. Frames are copied neither way inside the
//! driver: received frames are handed out as slices of the DMA buffer, and
//! transmitted frames are written straight into one.

use alloc::vec::Vec;

use super::queue::{Segment, SplitQueue, Used, UsedErrors};
use super::transport::NO_VECTOR;
use crate::dma::{DmaAlloc, DmaBuf};

/// `virtio_net_hdr` with VERSION_1 (num_buffers included).
pub const HDR_LEN: usize = 12;
/// One receive/transmit buffer: header + a 1514-byte frame, rounded up.
pub const BUF_SIZE: usize = 2048;
/// Largest Ethernet frame without offloads (no FCS).
pub const MAX_FRAME: usize = 1514;

/// Counters of one queue. Device input problems are counted by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub packets: u64,
    pub bytes: u64,
    pub polls: u64,
    /// Receive: times a poll found no buffer posted for the device.
    pub no_buffers: u64,
    /// Transmit: frames refused because the queue was full.
    pub full: u64,
    pub drop_bad_len: u64,
    pub drop_bad_id: u64,
    pub drop_header: u64,
    pub kicks: u64,
}

impl QueueStats {
    fn absorb(&mut self, e: &UsedErrors) {
        self.drop_bad_id = e.bad_id + e.bad_index;
        self.drop_bad_len = e.bad_len;
    }
}

/// A queue's buffers: `count` slots of [`BUF_SIZE`] in one DMA block.
struct Slots {
    mem: DmaBuf,
    free: Vec<u32>,
}

impl Slots {
    fn new(dma: &dyn DmaAlloc, count: u16) -> Option<Slots> {
        let mem = dma.alloc(BUF_SIZE * count as usize, 64)?;
        Some(Slots { mem, free: (0..count as u32).rev().collect() })
    }

    fn phys(&self, slot: u32) -> u64 {
        self.mem.phys() + slot as u64 * BUF_SIZE as u64
    }

    fn offset(slot: u32) -> usize {
        slot as usize * BUF_SIZE
    }
}

/// A receive queue with every buffer posted to the device.
pub struct RxQueue {
    pub index: u16,
    queue: SplitQueue,
    slots: Slots,
    stats: QueueStats,
    /// Completed slots being looked at by the owner (token, frame length).
    held: Option<(u32, usize)>,
}

impl RxQueue {
    pub fn new(dma: &dyn DmaAlloc, index: u16, size: u16, event_idx: bool) -> Option<RxQueue> {
        let queue = SplitQueue::new(dma, size, event_idx).ok()?;
        let slots = Slots::new(dma, size)?;
        Some(RxQueue { index, queue, slots, stats: QueueStats::default(), held: None })
    }

    pub fn queue(&self) -> &SplitQueue {
        &self.queue
    }

    pub fn queue_mut(&mut self) -> &mut SplitQueue {
        &mut self.queue
    }

    /// Posts every free buffer; returns whether the device must be notified.
    pub fn refill(&mut self) -> bool {
        while let Some(slot) = self.slots.free.pop() {
            let seg = Segment { phys: self.slots.phys(slot), len: BUF_SIZE as u32, writable: true };
            if self.queue.add(&[seg], slot).is_err() {
                self.slots.free.push(slot);
                break;
            }
        }
        let kick = self.queue.publish();
        if kick {
            self.stats.kicks += 1;
        }
        kick
    }

    /// The next received frame, if any, as a slice of its DMA buffer. The
    /// buffer stays with the driver until [`Self::release`]; malformed
    /// completions are counted and their buffers recycled.
    pub fn next_frame(&mut self) -> Option<&[u8]> {
        if self.held.is_none() {
            self.stats.polls += 1;
            loop {
                let Some(Used { token, len }) = self.queue.pop_used() else {
                    self.stats.absorb(&self.queue.errors);
                    if self.queue.num_free() == self.queue.size() {
                        self.stats.no_buffers += 1;
                    }
                    return None;
                };
                let len = len as usize;
                let off = Slots::offset(token);
                // num_buffers (with MRG_RXBUF) must be 1: frames never span
                // buffers without receive offloads.
                let num_buffers = self.slots.mem.read_u16(off + 10);
                if len < HDR_LEN || len - HDR_LEN > MAX_FRAME || num_buffers > 1 {
                    self.stats.drop_header += u64::from(len != 0 || num_buffers > 1);
                    self.slots.free.push(token);
                    continue;
                }
                self.held = Some((token, len - HDR_LEN));
                break;
            }
        }
        let (token, len) = self.held?;
        Some(self.slots.mem.bytes(Slots::offset(token) + HDR_LEN, len))
    }

    /// Gives the frame returned by `next_frame` back to the device queue
    /// (posted at the next `refill`).
    pub fn release(&mut self) {
        if let Some((token, len)) = self.held.take() {
            self.stats.packets += 1;
            self.stats.bytes += len as u64;
            self.slots.free.push(token);
        }
    }

    pub fn stats(&mut self) -> QueueStats {
        self.stats.absorb(&self.queue.errors);
        self.stats
    }
}

/// A transmit queue.
pub struct TxQueue {
    pub index: u16,
    queue: SplitQueue,
    slots: Slots,
    stats: QueueStats,
}

impl TxQueue {
    pub fn new(dma: &dyn DmaAlloc, index: u16, size: u16, event_idx: bool) -> Option<TxQueue> {
        let queue = SplitQueue::new(dma, size, event_idx).ok()?;
        let slots = Slots::new(dma, size)?;
        Some(TxQueue { index, queue, slots, stats: QueueStats::default() })
    }

    pub fn queue_mut(&mut self) -> &mut SplitQueue {
        &mut self.queue
    }

    /// Takes back buffers the device has sent.
    pub fn reclaim(&mut self) {
        while let Some(Used { token, .. }) = self.queue.pop_used() {
            self.slots.free.push(token);
        }
        self.stats.absorb(&self.queue.errors);
    }

    /// Whether a frame could be queued right now.
    pub fn has_room(&mut self) -> bool {
        if self.slots.free.is_empty() {
            self.reclaim();
        }
        !self.slots.free.is_empty()
    }

    /// Queues a `len`-byte frame that `fill` writes in place. Returns
    /// whether the device must be notified, or `None` when the queue is full
    /// (the frame is dropped and counted).
    pub fn send<R>(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> R) -> Option<(bool, R)> {
        if len > MAX_FRAME || !self.has_room() {
            self.stats.full += 1;
            return None;
        }
        let slot = self.slots.free.pop()?;
        let off = Slots::offset(slot);
        self.slots.mem.bytes_mut(off, HDR_LEN).fill(0);
        let r = fill(self.slots.mem.bytes_mut(off + HDR_LEN, len));
        let seg = Segment { phys: self.slots.phys(slot), len: (HDR_LEN + len) as u32, writable: false };
        if self.queue.add(&[seg], slot).is_err() {
            self.slots.free.push(slot);
            self.stats.full += 1;
            return None;
        }
        self.stats.packets += 1;
        self.stats.bytes += len as u64;
        let kick = self.queue.publish();
        if kick {
            self.stats.kicks += 1;
        }
        Some((kick, r))
    }

    pub fn stats(&mut self) -> QueueStats {
        self.stats.absorb(&self.queue.errors);
        self.stats
    }
}

/// Control-queue command classes and commands.
pub mod ctrl {
    pub const CLASS_MQ: u8 = 4;
    pub const MQ_VQ_PAIRS_SET: u8 = 0;
    pub const OK: u8 = 0;
    pub const ERR: u8 = 1;
}

/// What happened to a control command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtrlResult {
    Ok,
    /// The device answered VIRTIO_NET_ERR (or something else than OK).
    Refused(u8),
    /// The device did not answer within the wait.
    NoAnswer,
}

/// The control queue: one command in flight at a time.
pub struct CtrlQueue {
    pub index: u16,
    queue: SplitQueue,
    mem: DmaBuf,
}

/// Where the ack byte lives in the command buffer.
const CTRL_ACK: usize = 64;

impl CtrlQueue {
    pub fn new(dma: &dyn DmaAlloc, index: u16, size: u16) -> Option<CtrlQueue> {
        Some(CtrlQueue { index, queue: SplitQueue::new(dma, size, false).ok()?, mem: dma.alloc(128, 64)? })
    }

    pub fn queue(&self) -> &SplitQueue {
        &self.queue
    }

    /// Queues `{class, command, data}` with a device-writable ack byte.
    /// Returns whether the device must be notified.
    pub fn submit(&mut self, class: u8, command: u8, data: &[u8]) -> bool {
        let len = 2 + data.len();
        assert!(len <= CTRL_ACK, "control command too long");
        let b = self.mem.bytes_mut(0, len);
        b[0] = class;
        b[1] = command;
        b[2..].copy_from_slice(data);
        // 0xff: no answer yet.
        self.mem.write_u8(CTRL_ACK, 0xff);
        let cmd = Segment { phys: self.mem.phys(), len: len as u32, writable: false };
        let ack = Segment { phys: self.mem.phys() + CTRL_ACK as u64, len: 1, writable: true };
        let _ = self.queue.add(&[cmd, ack], 0);
        self.queue.publish()
    }

    /// Checks for the answer to the submitted command.
    pub fn poll(&mut self) -> Option<CtrlResult> {
        let used = self.queue.pop_used()?;
        let ack = self.mem.read_u8(CTRL_ACK);
        Some(match (used.len, ack) {
            (0, _) => CtrlResult::NoAnswer,
            (_, ctrl::OK) => CtrlResult::Ok,
            (_, a) => CtrlResult::Refused(a),
        })
    }

    /// `VQ_PAIRS_SET` payload.
    pub fn pairs_set(&mut self, pairs: u16) -> bool {
        self.submit(ctrl::CLASS_MQ, ctrl::MQ_VQ_PAIRS_SET, &pairs.to_le_bytes())
    }
}

/// Which MSI-X table entry serves each queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VectorPlan {
    /// Entry per queue pair: (rx, tx). NO_VECTOR means polled.
    pub pairs: Vec<(u16, u16)>,
    pub config: u16,
    pub kind: PlanKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanKind {
    /// One entry per queue (RX and TX apart) plus the config entry.
    PerQueue,
    /// One entry per queue pair plus the config entry.
    PerPair,
    /// No MSI-X (or too few entries): queues are polled.
    Polling,
}

/// Plans vectors for `pairs` queue pairs given `table_size` MSI-X entries
/// (0 without MSI-X): one entry per queue when there are enough, unless
/// `per_pair` asks for one per pair. The control queue is polled and needs none.
pub fn plan_vectors(pairs: u16, table_size: u16, per_pair: bool) -> VectorPlan {
    let n = pairs as usize;
    if table_size as usize > 2 * n && !per_pair {
        let pairs = (0..pairs).map(|p| (2 * p, 2 * p + 1)).collect();
        VectorPlan { pairs, config: 2 * pairs_u16(n), kind: PlanKind::PerQueue }
    } else if table_size as usize > n {
        let pairs = (0..pairs).map(|p| (p, p)).collect();
        VectorPlan { pairs, config: pairs_u16(n), kind: PlanKind::PerPair }
    } else {
        VectorPlan { pairs: alloc::vec![(NO_VECTOR, NO_VECTOR); n], config: NO_VECTOR, kind: PlanKind::Polling }
    }
}

fn pairs_u16(n: usize) -> u16 {
    n as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dma::fake::TestDma;
    use crate::virtio::queue::fake::FakeDeviceQueue;

    fn ethernet(len: usize, fill: u8) -> Vec<u8> {
        std::vec![fill; len]
    }

    fn with_header(frame: &[u8], num_buffers: u16) -> Vec<u8> {
        let mut v = std::vec![0u8; HDR_LEN];
        v[10..12].copy_from_slice(&num_buffers.to_le_bytes());
        v.extend_from_slice(frame);
        v
    }

    #[test]
    fn receive_refill_and_recycle() {
        let dma = TestDma::default();
        let mut rx = RxQueue::new(&dma, 0, 8, true).unwrap();
        let mut dev = FakeDeviceQueue::new(&dma, rx.queue());
        assert!(rx.refill());
        for i in 0..20u8 {
            let (head, segs) = dev.pop_avail().expect("a posted buffer");
            assert_eq!(segs[0].len as usize, BUF_SIZE);
            let n = dev.fill(&segs, &with_header(&ethernet(60 + i as usize, i), 1));
            dev.push_used(head as u32, n);
            let frame = rx.next_frame().expect("a frame");
            assert_eq!(frame.len(), 60 + i as usize);
            assert!(frame.iter().all(|&b| b == i));
            rx.release();
            rx.refill();
        }
        assert_eq!(rx.next_frame(), None);
        let s = rx.stats();
        assert_eq!((s.packets, s.bytes), (20, (60..80).sum::<u64>()));
        assert_eq!(s.drop_header + s.drop_bad_id + s.drop_bad_len, 0);
    }

    #[test]
    fn malformed_receive_completions_are_dropped_and_counted() {
        let dma = TestDma::default();
        let mut rx = RxQueue::new(&dma, 0, 8, false).unwrap();
        let mut dev = FakeDeviceQueue::new(&dma, rx.queue());
        rx.refill();
        let mut complete = |data: &[u8], len_override: Option<u32>| {
            let (head, segs) = dev.pop_avail().unwrap();
            let n = dev.fill(&segs, data);
            dev.push_used(head as u32, len_override.unwrap_or(n));
        };
        complete(&[0u8; 5], None); // shorter than the header
        complete(&with_header(&ethernet(60, 1), 2), None); // spans buffers
        complete(&with_header(&ethernet(60, 1), 1), Some(BUF_SIZE as u32 + 1)); // longer than the buffer
        complete(&with_header(&ethernet(1600, 1), 1), None); // bigger than any frame
        complete(&with_header(&ethernet(64, 9), 1), None); // good
        dev.push_used(1000, 64); // not a descriptor
        let frame = rx.next_frame().unwrap();
        assert_eq!(frame.len(), 64);
        rx.release();
        assert_eq!(rx.next_frame(), None);
        let s = rx.stats();
        assert_eq!((s.drop_header, s.drop_bad_len, s.drop_bad_id, s.packets), (3, 1, 1, 1));
        // Every buffer came back and can be posted again.
        rx.refill();
        assert_eq!(rx.queue().num_free(), 0);
    }

    #[test]
    fn transmit_writes_header_and_frame_and_reclaims() {
        let dma = TestDma::default();
        let mut tx = TxQueue::new(&dma, 1, 4, false).unwrap();
        let mut dev = FakeDeviceQueue::new(&dma, &tx.queue);
        for round in 0..10u8 {
            for i in 0..4u8 {
                let (kick, ()) = tx.send(100, |b| b.fill(round ^ i)).expect("room");
                assert!(kick, "without EVENT_IDX or NO_NOTIFY every publish notifies");
            }
            assert!(tx.send(100, |_| ()).is_none(), "full");
            while let Some((head, segs)) = dev.pop_avail() {
                let bytes = dev.read(&segs);
                assert_eq!(bytes.len(), HDR_LEN + 100);
                assert!(bytes[..HDR_LEN].iter().all(|&b| b == 0));
                dev.push_used(head as u32, 0);
            }
        }
        let s = tx.stats();
        assert_eq!((s.packets, s.full), (40, 10));
        assert!(tx.send(MAX_FRAME + 1, |_| ()).is_none(), "oversized frames are refused");
    }

    #[test]
    fn vq_pairs_set_bytes_and_acks() {
        let dma = TestDma::default();
        let mut ctrl = CtrlQueue::new(&dma, 8, 16).unwrap();
        let mut dev = FakeDeviceQueue::new(&dma, ctrl.queue());
        for (answer, expected) in [(ctrl::OK, CtrlResult::Ok), (ctrl::ERR, CtrlResult::Refused(1))] {
            ctrl.pairs_set(4);
            let (head, segs) = dev.pop_avail().unwrap();
            assert_eq!(dev.read(&segs), [ctrl::CLASS_MQ, ctrl::MQ_VQ_PAIRS_SET, 4, 0]);
            assert_eq!(segs.iter().filter(|s| s.writable).map(|s| s.len).sum::<u32>(), 1);
            assert_eq!(ctrl.poll(), None, "no answer yet");
            dev.fill(&segs, &[answer]);
            dev.push_used(head as u32, 1);
            assert_eq!(ctrl.poll(), Some(expected));
        }
        // A device that completes without writing the ack.
        ctrl.pairs_set(2);
        let (head, _) = dev.pop_avail().unwrap();
        dev.push_used(head as u32, 0);
        assert_eq!(ctrl.poll(), Some(CtrlResult::NoAnswer));
    }

    #[test]
    fn vector_plans() {
        let p = plan_vectors(4, 10, false);
        assert_eq!(p.kind, PlanKind::PerQueue);
        assert_eq!(p.pairs, [(0, 1), (2, 3), (4, 5), (6, 7)]);
        assert_eq!(p.config, 8);
        let p = plan_vectors(4, 6, false);
        assert_eq!((p.kind, p.pairs[3], p.config), (PlanKind::PerPair, (3, 3), 4));
        let p = plan_vectors(4, 0, false);
        assert_eq!((p.kind, p.pairs[0], p.config), (PlanKind::Polling, (NO_VECTOR, NO_VECTOR), NO_VECTOR));
        assert_eq!(plan_vectors(1, 4, false).kind, PlanKind::PerQueue, "vectors=2Q+2 with Q=1");
        let p = plan_vectors(4, 10, true);
        assert_eq!((p.kind, p.pairs[2], p.config), (PlanKind::PerPair, (2, 2), 4), "asked for per pair");
        assert_eq!(plan_vectors(4, 0, true).kind, PlanKind::Polling);
    }
}
