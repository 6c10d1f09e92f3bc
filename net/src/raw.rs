//! Raw driver mode's data path (`raw=` boot option): one vCPU's queue pair
//! moving frames with no TCP/IP stack, like DPDK testpmd's forwarding
//! modes, so that benchmarks show what the device path alone carries.
//!
//! A poll round takes back sent buffers, then, by mode:
//!
//! - rxonly: receives up to [`BUDGET`] frames and reposts their buffers;
//! - txonly: the same for whatever arrives, then fills the transmit ring
//!   with copies of one prepared frame (up to `limit` frames in all);
//! - macswap: sends each received frame back on the same pair with its
//!   source and destination MAC addresses swapped. A frame waits in its
//!   receive buffer while the transmit ring is full (backpressure: the
//!   device then holds the rest, and the host's tap drops what it cannot
//!   queue), so nothing is dropped here for want of room.
//!
//! Transmitted frames are published once at the end of the round (one
//! notification check, at most one notification, per batch). A round that
//! finds the transmit ring full asks the device for a completion interrupt
//! (`TxQueue::has_room`), so the vCPU can halt until there is room.
//!
//! Per frame nothing is allocated, logged or locked: the queues belong to
//! the calling vCPU alone.

use alloc::boxed::Box;

use drivers::virtio::netdev::{RxQueue, TxQueue};

use crate::device::Doorbell;

/// Frames received (or sent, txonly) per round at most.
pub const BUDGET: usize = 128;
/// Receive buffers go back to the device after this many frames.
pub const REFILL_EVERY: usize = 32;

/// What the pair does (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    RxOnly,
    TxOnly,
    MacSwap,
}

/// One vCPU's raw-mode state.
pub struct RawPair {
    mode: Mode,
    /// txonly's frame, copied into every transmit buffer.
    frame: Box<[u8]>,
    /// txonly: frames to send in all (`None`: until the VM stops).
    limit: Option<u64>,
    sent: u64,
    full_rounds: u64,
    /// txonly transmits only while this is set (see [`Self::set_transmitting`]).
    transmitting: bool,
}

/// What a round did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawRound {
    /// Frames moved: poll again before halting.
    pub busy: bool,
    /// txonly reached its limit in this round.
    pub limit_reached: bool,
}

/// Swaps a frame's destination and source MAC addresses (its first 12
/// bytes; a shorter slice is left alone).
pub fn swap_macs(frame: &mut [u8]) {
    if let Some(addrs) = frame.get_mut(..12) {
        let (dst, src) = addrs.split_at_mut(6);
        dst.swap_with_slice(src);
    }
}

impl RawPair {
    /// A pair in `mode`; txonly sends copies of `frame` (at most
    /// `MAX_FRAME` bytes), `limit` of them when given.
    pub fn new(mode: Mode, frame: Box<[u8]>, limit: Option<u64>) -> RawPair {
        RawPair { mode, frame, limit, sent: 0, full_rounds: 0, transmitting: true }
    }

    /// txonly: holds transmission back (`false`, e.g. until a start time)
    /// or lets it go; received frames are taken either way.
    pub fn set_transmitting(&mut self, on: bool) {
        self.transmitting = on;
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Frames txonly has queued.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Rounds that found the transmit ring full.
    pub fn full_rounds(&self) -> u64 {
        self.full_rounds
    }

    fn limit_reached(&self) -> bool {
        self.limit.is_some_and(|l| self.sent >= l)
    }

    /// One round over this vCPU's queues.
    pub fn poll(&mut self, rx: &mut RxQueue, tx: &mut TxQueue, bell: &dyn Doorbell) -> RawRound {
        tx.reclaim();
        let done_before = self.limit_reached();
        let moved = match self.mode {
            Mode::RxOnly => receive(rx, bell),
            Mode::TxOnly => receive(rx, bell) + self.transmit(tx, bell),
            Mode::MacSwap => self.swap(rx, tx, bell),
        };
        rx.refill(bell);
        tx.publish(bell);
        RawRound { busy: moved > 0, limit_reached: !done_before && self.limit_reached() }
    }

    /// The ring is full: ask for a completion interrupt (once per full
    /// episode; the queue also makes sure the device has seen every frame).
    fn ring_full(&mut self, tx: &mut TxQueue, bell: &dyn Doorbell) {
        self.full_rounds += 1;
        tx.has_room(bell);
    }

    fn transmit(&mut self, tx: &mut TxQueue, bell: &dyn Doorbell) -> usize {
        let left = self.limit.map_or(u64::MAX, |l| l.saturating_sub(self.sent));
        if left == 0 || !self.transmitting {
            return 0;
        }
        let n = tx.room().min(BUDGET).min(usize::try_from(left).unwrap_or(usize::MAX));
        if n == 0 {
            self.ring_full(tx, bell);
            return 0;
        }
        let frame = &self.frame;
        let mut sent = 0;
        for _ in 0..n {
            if tx.send(frame.len(), bell, |buf| buf.copy_from_slice(frame)).is_none() {
                break;
            }
            sent += 1;
        }
        self.sent += sent as u64;
        sent
    }

    fn swap(&mut self, rx: &mut RxQueue, tx: &mut TxQueue, bell: &dyn Doorbell) -> usize {
        let mut n = 0;
        while n < BUDGET {
            let Some(frame) = rx.next_frame() else { break };
            if tx.room() == 0 {
                // The frame stays held in its buffer until the next round.
                self.ring_full(tx, bell);
                break;
            }
            // A frame too long to send (joined from merged buffers) is
            // dropped; the transmit queue counts it (`too_long`).
            let _ = tx.send(frame.len(), bell, |buf| {
                buf.copy_from_slice(frame);
                swap_macs(buf);
            });
            rx.release();
            n += 1;
            if n % REFILL_EVERY == 0 {
                rx.refill(bell);
            }
        }
        n
    }
}

/// Receives and counts up to [`BUDGET`] frames, reposting their buffers.
fn receive(rx: &mut RxQueue, bell: &dyn Doorbell) -> usize {
    let mut n = 0;
    while n < BUDGET && rx.next_frame().is_some() {
        rx.release();
        n += 1;
        if n % REFILL_EVERY == 0 {
            rx.refill(bell);
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use core::cell::Cell;
    use drivers::dma::fake::TestDma;
    use drivers::virtio::netdev::HDR_LEN;
    use drivers::virtio::queue::fake::FakeDeviceQueue;

    /// Counts the notifications of the two queues.
    #[derive(Default)]
    struct Bell([Cell<usize>; 2]);
    impl Doorbell for Bell {
        fn ring(&self, queue: u16) {
            let c = &self.0[usize::from(queue)];
            c.set(c.get() + 1);
        }
    }
    impl Bell {
        fn rings(&self, queue: u16) -> usize {
            self.0[usize::from(queue)].get()
        }
    }

    const RXQ: u16 = 0;
    const TXQ: u16 = 1;

    fn frame(len: usize, tag: u8) -> Vec<u8> {
        let mut f: Vec<u8> = (0..len).map(|i| i as u8 ^ tag).collect();
        f[..6].copy_from_slice(&[2, 0, 0, 0, 0, tag]);
        f[6..12].copy_from_slice(&[0x52, 0x54, 0, 0, 0, tag]);
        f
    }

    /// The device delivers `data` into the next posted receive buffer.
    fn deliver(dev: &mut FakeDeviceQueue, data: &[u8]) {
        let (head, segs) = dev.pop_avail().expect("a posted receive buffer");
        let mut packet = alloc::vec![0u8; HDR_LEN];
        packet[10] = 1; // num_buffers
        packet.extend_from_slice(data);
        let n = dev.fill(&segs, &packet);
        dev.push_used(u32::from(head), n);
    }

    /// The device takes every queued transmit frame and completes it.
    fn drain(dev: &mut FakeDeviceQueue) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some((head, segs)) = dev.pop_avail() {
            let bytes = dev.read(&segs);
            assert!(bytes[..HDR_LEN].iter().all(|&b| b == 0), "a zeroed virtio-net header");
            out.push(bytes[HDR_LEN..].to_vec());
            dev.push_used(u32::from(head), 0);
        }
        out
    }

    struct Pair {
        dma: TestDma,
        bell: Bell,
    }

    impl Pair {
        fn new() -> Pair {
            Pair { dma: TestDma::default(), bell: Bell::default() }
        }

        fn queues(&self, size: u16) -> (RxQueue, TxQueue) {
            let mut rx = RxQueue::new(&self.dma, RXQ, size, true, true).unwrap();
            let mut tx = TxQueue::new(&self.dma, TXQ, size, true).unwrap();
            tx.set_batched(true, &self.bell);
            rx.refill(&self.bell);
            (rx, tx)
        }

        /// The device's end of both queues.
        fn devices(&self, rx: &RxQueue, tx: &TxQueue) -> (FakeDeviceQueue<'_>, FakeDeviceQueue<'_>) {
            (FakeDeviceQueue::new(&self.dma, rx.queue()), FakeDeviceQueue::new(&self.dma, tx.queue()))
        }
    }

    #[test]
    fn rxonly_counts_every_frame_reposts_and_sends_nothing() {
        let p = Pair::new();
        let (mut rx, mut tx) = p.queues(64);
        let (mut rxdev, mut txdev) = p.devices(&rx, &tx);
        let mut raw = RawPair::new(Mode::RxOnly, Box::default(), None);
        let mut total = 0;
        for round in 0..10usize {
            for i in 0..40 {
                deliver(&mut rxdev, &frame(60 + i, round as u8));
                total += 60 + i;
            }
            assert!(raw.poll(&mut rx, &mut tx, &p.bell).busy);
        }
        assert!(!raw.poll(&mut rx, &mut tx, &p.bell).busy, "nothing left");
        let s = rx.stats();
        assert_eq!((s.packets, s.bytes as usize), (400, total));
        assert_eq!(rx.queue().in_flight(), 64, "every buffer is back with the device");
        assert!(drain(&mut txdev).is_empty());
        assert_eq!((tx.stats().packets, p.bell.rings(TXQ)), (0, 0));
    }

    #[test]
    fn a_round_takes_at_most_its_budget() {
        let p = Pair::new();
        let (mut rx, mut tx) = p.queues(256);
        let (mut rxdev, _) = p.devices(&rx, &tx);
        let mut raw = RawPair::new(Mode::RxOnly, Box::default(), None);
        for _ in 0..200 {
            deliver(&mut rxdev, &frame(60, 1));
        }
        raw.poll(&mut rx, &mut tx, &p.bell);
        assert_eq!(rx.stats().packets, BUDGET as u64);
        raw.poll(&mut rx, &mut tx, &p.bell);
        assert_eq!(rx.stats().packets, 200);
    }

    #[test]
    fn txonly_fills_the_ring_in_batches_and_stops_at_its_limit() {
        let p = Pair::new();
        let (mut rx, mut tx) = p.queues(64);
        let (_, mut txdev) = p.devices(&rx, &tx);
        let template = frame(1514, 7);
        let mut raw = RawPair::new(Mode::TxOnly, template.clone().into_boxed_slice(), Some(150));
        let r = raw.poll(&mut rx, &mut tx, &p.bell);
        assert_eq!(r, RawRound { busy: true, limit_reached: false });
        assert_eq!(p.bell.rings(TXQ), 1, "one notification for the batch");
        // The ring is full: the next round sends nothing and asks for an
        // interrupt (the device may not have looked yet).
        let r = raw.poll(&mut rx, &mut tx, &p.bell);
        assert_eq!((r.busy, raw.full_rounds()), (false, 1));
        assert!(tx.queue().interrupts_enabled());
        let mut seen = Vec::new();
        let mut reached = 0;
        for _ in 0..10 {
            seen.extend(drain(&mut txdev));
            let r = raw.poll(&mut rx, &mut tx, &p.bell);
            reached += usize::from(r.limit_reached);
        }
        seen.extend(drain(&mut txdev));
        assert_eq!(seen.len(), 150, "exactly the limit");
        assert!(seen.iter().all(|f| *f == template));
        assert_eq!((raw.sent(), tx.stats().packets, tx.stats().bytes), (150, 150, 150 * 1514));
        assert_eq!(reached, 1, "the limit is reported once");
        assert!(!raw.poll(&mut rx, &mut tx, &p.bell).busy);
    }

    #[test]
    fn txonly_still_receives_and_reposts() {
        let p = Pair::new();
        let (mut rx, mut tx) = p.queues(16);
        let (mut rxdev, _) = p.devices(&rx, &tx);
        let mut raw = RawPair::new(Mode::TxOnly, frame(60, 1).into_boxed_slice(), Some(1));
        for _ in 0..40 {
            deliver(&mut rxdev, &frame(90, 2));
            raw.poll(&mut rx, &mut tx, &p.bell);
        }
        assert_eq!((rx.stats().packets, tx.stats().packets), (40, 1));
    }

    #[test]
    fn txonly_waits_until_told_to_transmit() {
        let p = Pair::new();
        let (mut rx, mut tx) = p.queues(16);
        let mut raw = RawPair::new(Mode::TxOnly, frame(60, 1).into_boxed_slice(), None);
        raw.set_transmitting(false);
        assert!(!raw.poll(&mut rx, &mut tx, &p.bell).busy);
        assert_eq!((tx.stats().packets, raw.full_rounds()), (0, 0));
        raw.set_transmitting(true);
        assert!(raw.poll(&mut rx, &mut tx, &p.bell).busy);
        assert_eq!(tx.stats().packets, 16);
    }

    #[test]
    fn macswap_returns_every_frame_with_its_addresses_swapped() {
        let p = Pair::new();
        let (mut rx, mut tx) = p.queues(32);
        let (mut rxdev, mut txdev) = p.devices(&rx, &tx);
        let mut raw = RawPair::new(Mode::MacSwap, Box::default(), None);
        let sent: Vec<Vec<u8>> = (0..100).map(|i| frame(60 + i * 14, i as u8)).collect();
        let mut back = Vec::new();
        for chunk in sent.chunks(10) {
            for f in chunk {
                deliver(&mut rxdev, f);
            }
            assert!(raw.poll(&mut rx, &mut tx, &p.bell).busy);
            back.extend(drain(&mut txdev));
        }
        raw.poll(&mut rx, &mut tx, &p.bell);
        assert_eq!(back.len(), 100);
        for (f, b) in sent.iter().zip(&back) {
            assert_eq!((&b[..6], &b[6..12], &b[12..]), (&f[6..12], &f[..6], &f[12..]));
        }
        assert_eq!((rx.stats().packets, tx.stats().packets), (100, 100));
    }

    #[test]
    fn macswap_waits_for_room_instead_of_dropping() {
        let p = Pair::new();
        let (mut rx, mut tx) = p.queues(16);
        let (mut rxdev, mut txdev) = p.devices(&rx, &tx);
        let mut raw = RawPair::new(Mode::MacSwap, Box::default(), None);
        for i in 0..16 {
            deliver(&mut rxdev, &frame(64, i));
        }
        // The transmit ring (16) takes 16 frames; the device sends none yet.
        raw.poll(&mut rx, &mut tx, &p.bell);
        for i in 16..26 {
            deliver(&mut rxdev, &frame(64, i));
        }
        let r = raw.poll(&mut rx, &mut tx, &p.bell);
        assert!(!r.busy, "nothing moved: the ring is full");
        assert_eq!((raw.full_rounds(), rx.stats().packets), (1, 16));
        assert!(tx.queue().interrupts_enabled(), "woken when the device catches up");
        let mut back = drain(&mut txdev);
        assert!(raw.poll(&mut rx, &mut tx, &p.bell).busy);
        back.extend(drain(&mut txdev));
        assert_eq!(back.len(), 26);
        assert!(back.iter().enumerate().all(|(i, b)| b[11] == i as u8), "in order, none lost");
        let t = tx.stats();
        assert_eq!((t.full, t.drop_too_long), (0, 0));
    }

    #[test]
    fn macswap_drops_frames_too_long_to_send_and_counts_them() {
        let p = Pair::new();
        let (mut rx, mut tx) = p.queues(16);
        let (mut rxdev, mut txdev) = p.devices(&rx, &tx);
        let mut raw = RawPair::new(Mode::MacSwap, Box::default(), None);
        // 3000 bytes, two merged buffers.
        let big = frame(3000, 9);
        let mut packet = alloc::vec![0u8; HDR_LEN];
        packet[10] = 2;
        packet.extend_from_slice(&big);
        let (h1, s1) = rxdev.pop_avail().unwrap();
        let (h2, s2) = rxdev.pop_avail().unwrap();
        let n1 = rxdev.fill(&s1, &packet[..2048]);
        let n2 = rxdev.fill(&s2, &packet[2048..]);
        rxdev.write_used(u32::from(h1), n1);
        rxdev.write_used(u32::from(h2), n2);
        rxdev.set_used_idx(rxdev.used_idx);
        deliver(&mut rxdev, &frame(100, 3));
        raw.poll(&mut rx, &mut tx, &p.bell);
        let back = drain(&mut txdev);
        assert_eq!(back.len(), 1);
        assert_eq!((rx.stats().packets, rx.stats().merged, tx.stats().drop_too_long), (2, 1, 1));
    }

    #[test]
    fn macs_swap_in_place() {
        let mut f = frame(60, 5);
        let orig = f.clone();
        swap_macs(&mut f);
        assert_eq!((&f[..6], &f[6..12]), (&orig[6..12], &orig[..6]));
        let mut short = [1u8, 2, 3];
        swap_macs(&mut short);
        assert_eq!(short, [1, 2, 3]);
    }
}
