//! A split virtqueue (virtio 1.x §2.7), driver side.
//!
//! The driver offers descriptor chains in the available ring and takes
//! completed ones from the used ring. Each chain carries a token of type `T`
//! (a [`crate::dma::Buffer`] for packet queues): it moves into the queue with
//! the chain and comes back out with its completion, so a buffer is never
//! both with the device and with the driver, and no completion can hand the
//! same buffer out twice.
//!
//! Everything the device writes is checked before use. A used entry that
//! names a descriptor not in flight, or a length beyond the chain's writable
//! bytes, is counted and dropped. A used index that claims more completions
//! than chains are in flight means the device has lost track of the ring:
//! the queue is marked broken and refuses all further work (virtio §2.7.8:
//! the device cannot use more buffers than were made available), and the
//! owner is expected to reset the device.
//!
//! Notifications follow `VIRTIO_F_EVENT_IDX` (§2.7.10) when negotiated, and
//! the queue also remembers how many entries were published without one, so
//! that its owner can make sure the device has heard of every entry before
//! it stops looking ([`SplitQueue::needs_flush`]). That is what keeps a lost
//! notification from wedging a queue for good. The per-packet path allocates
//! nothing.

use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{fence, Ordering};

use super::transport::QueueAddresses;
use crate::dma::{device_barrier, DmaAlloc, DmaBuf};

const DESC_SIZE: usize = 16;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
/// `avail.flags`: the driver does not want interrupts (without EVENT_IDX).
const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// `used.flags`: the device does not want notifications (without EVENT_IDX).
const USED_F_NO_NOTIFY: u16 = 1;
/// With interrupts off under EVENT_IDX, `used_event` is kept this far ahead
/// of the completions taken, and rewritten once half of that is used up.
const USED_EVENT_FAR: u16 = 0x8000;

/// Byte offsets of the ring fields (virtio 1.x §2.7.5, §2.7.8).
mod layout {
    /// Available ring: flags, idx, ring[size], used_event.
    pub const AVAIL_FLAGS: usize = 0;
    pub const AVAIL_IDX: usize = 2;
    pub const fn avail_ring(slot: usize) -> usize {
        4 + 2 * slot
    }
    pub const fn used_event(size: usize) -> usize {
        avail_ring(size)
    }
    pub const fn avail_bytes(size: usize) -> usize {
        used_event(size) + 2
    }
    /// Used ring: flags, idx, ring[size] of {id: u32, len: u32}, avail_event.
    pub const USED_FLAGS: usize = 0;
    pub const USED_IDX: usize = 2;
    pub const fn used_ring(slot: usize) -> usize {
        4 + 8 * slot
    }
    pub const fn avail_event(size: usize) -> usize {
        used_ring(size)
    }
    pub const fn used_bytes(size: usize) -> usize {
        avail_event(size) + 2
    }
    /// Descriptor: addr u64, len u32, flags u16, next u16.
    pub const fn desc(i: usize) -> usize {
        16 * i
    }
}

/// One buffer of a chain: physical address, length, device-writable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub phys: u64,
    pub len: u32,
    pub writable: bool,
}

/// A completed chain: the token given to [`SplitQueue::add`] and the bytes
/// the device wrote.
#[derive(Debug, PartialEq, Eq)]
pub struct Used<T> {
    pub token: T,
    pub len: u32,
}

/// Device errors found in the used ring, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsedErrors {
    /// The id was out of range or not the head of a chain in flight.
    pub bad_id: u64,
    /// The length exceeded the chain's device-writable bytes.
    pub bad_len: u64,
    /// The used index moved past the chains in flight (the queue is broken).
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
    /// The device broke the ring protocol; the queue takes no more work.
    Broken,
}

/// How the device broke the ring: the used index it published against what
/// the driver had in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BrokenRing {
    /// The next used entry the driver expected.
    pub last_used: u16,
    /// The device's used index.
    pub used_idx: u16,
    /// Chains the device could have completed.
    pub in_flight: u16,
}

impl fmt::Display for BrokenRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the used index jumped from {} to {} ({} completions) with {} chains in flight",
            self.last_used,
            self.used_idx,
            self.used_idx.wrapping_sub(self.last_used),
            self.in_flight
        )
    }
}

/// Both ends' indices at one moment, for diagnostics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingState {
    pub size: u16,
    /// The driver's `avail.idx`.
    pub avail_idx: u16,
    /// Entries published since the device was last notified.
    pub unnotified: u32,
    /// `avail_event` as the device last wrote it (EVENT_IDX only).
    pub avail_event: Option<u16>,
    /// The device's `used.idx`.
    pub used_idx: u16,
    /// The next used entry the driver will look at.
    pub last_used: u16,
    /// Chains the device holds (from the driver's books).
    pub in_flight: u16,
}

impl fmt::Display for RingState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "avail idx {} ({} not notified), used idx {} (taken up to {}), {} of {} in flight",
            self.avail_idx, self.unnotified, self.used_idx, self.last_used, self.in_flight, self.size
        )?;
        if let Some(e) = self.avail_event {
            write!(f, ", device's avail_event {e}")?;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct InFlight<T> {
    token: T,
    /// Descriptors in the chain.
    count: u16,
    /// Device-writable bytes in the chain.
    writable: u32,
}

/// Whether the device may interrupt for completions, and (EVENT_IDX, off)
/// the `last_used` that the far-away `used_event` was computed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Interrupts {
    On,
    Off { base: u16 },
}

pub struct SplitQueue<T> {
    size: u16,
    desc: DmaBuf,
    avail: DmaBuf,
    used: DmaBuf,
    event_idx: bool,
    free_head: u16,
    num_free: u16,
    /// Our copy of `avail.idx` (the device only reads it).
    avail_idx: u16,
    /// `avail.idx` at the last publish: the `old` of the EVENT_IDX test.
    published_idx: u16,
    /// Entries published since the device was last notified (saturating).
    unnotified: u32,
    /// Next used-ring entry to look at.
    last_used: u16,
    /// Chains the device holds.
    chains: u16,
    in_flight: Vec<Option<InFlight<T>>>,
    /// The `next` link of every descriptor, kept on the driver's side: the
    /// descriptor table is shared memory a faulty device could scribble on,
    /// so the free list and chains are never read back from it.
    next: Vec<u16>,
    interrupts: Interrupts,
    broken: Option<BrokenRing>,
    pub errors: UsedErrors,
}

impl<T> SplitQueue<T> {
    /// A queue of `size` entries in fresh DMA memory, interrupts on.
    pub fn new(dma: &dyn DmaAlloc, size: u16, event_idx: bool) -> Result<SplitQueue<T>, QueueError> {
        if size == 0 || !size.is_power_of_two() || size > 32768 {
            return Err(QueueError::BadRequest);
        }
        let n = size as usize;
        let desc = dma.alloc(DESC_SIZE * n, 16).ok_or(QueueError::NoMemory)?;
        let avail = dma.alloc(layout::avail_bytes(n), 2).ok_or(QueueError::NoMemory)?;
        let used = dma.alloc(layout::used_bytes(n), 4).ok_or(QueueError::NoMemory)?;
        Ok(SplitQueue {
            size,
            desc,
            avail,
            used,
            event_idx,
            free_head: 0,
            num_free: size,
            avail_idx: 0,
            published_idx: 0,
            unnotified: 0,
            last_used: 0,
            chains: 0,
            in_flight: (0..n).map(|_| None).collect(),
            // Initially one free list through every descriptor.
            next: (1..=size).map(|i| i % size).collect(),
            interrupts: Interrupts::On,
            broken: None,
            errors: UsedErrors::default(),
        })
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    /// Free descriptors.
    pub fn num_free(&self) -> u16 {
        self.num_free
    }

    /// Chains the device holds (added and not yet taken back).
    pub fn in_flight(&self) -> u16 {
        self.chains
    }

    /// How the device broke the ring, once it has.
    pub fn broken(&self) -> Option<BrokenRing> {
        self.broken
    }

    pub fn addresses(&self) -> QueueAddresses {
        QueueAddresses { descriptors: self.desc.phys(), driver: self.avail.phys(), device: self.used.phys() }
    }

    /// Offers a chain; `token` comes back with it in [`Used`]. The device
    /// sees it after [`Self::publish`]. On error the token is handed back.
    pub fn add(&mut self, segments: &[Segment], token: T) -> Result<u16, (QueueError, T)> {
        if self.broken.is_some() {
            return Err((QueueError::Broken, token));
        }
        if segments.is_empty() {
            return Err((QueueError::BadRequest, token));
        }
        if segments.len() > self.num_free as usize {
            return Err((QueueError::Full, token));
        }
        let head = self.free_head;
        let mut idx = head;
        let mut writable = 0u32;
        for (i, s) in segments.iter().enumerate() {
            let d = layout::desc(idx as usize);
            let next = self.next[idx as usize];
            let last = i + 1 == segments.len();
            let flags = if s.writable { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
            self.desc.write_u64(d, s.phys);
            self.desc.write_u32(d + 8, s.len);
            self.desc.write_u16(d + 12, flags);
            self.desc.write_u16(d + 14, next);
            if s.writable {
                writable = writable.saturating_add(s.len);
            }
            if last {
                self.free_head = next;
            } else {
                idx = next;
            }
        }
        self.num_free -= segments.len() as u16;
        self.chains += 1;
        self.in_flight[head as usize] = Some(InFlight { token, count: segments.len() as u16, writable });
        let slot = (self.avail_idx % self.size) as usize;
        self.avail.write_u16(layout::avail_ring(slot), head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        Ok(head)
    }

    /// Makes added chains visible to the device. Returns whether the device
    /// asked to be notified about them; the caller then notifies it.
    pub fn publish(&mut self) -> bool {
        if self.broken.is_some() {
            return false;
        }
        // Descriptors and ring entries before the index.
        fence(Ordering::Release);
        self.avail.write_u16(layout::AVAIL_IDX, self.avail_idx);
        // The index before reading the device's notification suppression.
        device_barrier();
        let old = self.published_idx;
        let new = self.avail_idx;
        self.published_idx = new;
        if old == new {
            return false;
        }
        let notify = if self.event_idx {
            let avail_event = self.used.read_u16(layout::avail_event(self.size as usize));
            new.wrapping_sub(avail_event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            self.used.read_u16(layout::USED_FLAGS) & USED_F_NO_NOTIFY == 0
        };
        if notify {
            self.unnotified = 0;
        } else {
            self.unnotified = self.unnotified.saturating_add(u32::from(new.wrapping_sub(old)));
        }
        notify
    }

    /// Whether the device must be notified although it did not ask: entries
    /// were published without a notification, are not used yet, and the
    /// device has used every entry it is sure to have heard of, so it may
    /// have stopped looking. Under the notification protocol that cannot
    /// happen, but the protocol rests on a full barrier on each side; when
    /// one is lost (QEMU 7.2's TCG drops the guest's with one vCPU) the
    /// device sleeps on a stale `avail.idx` and the driver on a stale
    /// `avail_event`. Owners ask before they stop polling.
    pub fn needs_flush(&self) -> bool {
        if self.unnotified == 0 || self.broken.is_some() {
            return false;
        }
        let used_idx = self.used.read_u16(layout::USED_IDX);
        // Entries the device has not used yet: if there are none it saw
        // everything; if they are all among the last `unnotified` published,
        // it may have seen none of them.
        let outstanding = u32::from(self.avail_idx.wrapping_sub(used_idx));
        outstanding > 0 && outstanding <= self.unnotified
    }

    /// Records that the owner notified the device outside [`Self::publish`].
    pub fn mark_notified(&mut self) {
        self.unnotified = 0;
    }

    /// Whether the device has completed chains we have not taken.
    pub fn has_used(&self) -> bool {
        if self.broken.is_some() {
            return false;
        }
        let ready = self.ready();
        fence(Ordering::Acquire);
        ready != 0
    }

    /// The device's `used.idx` as it stands (for progress checks).
    pub fn device_used_idx(&self) -> u16 {
        self.used.read_u16(layout::USED_IDX)
    }

    /// Completions the device has published that are not taken yet (as the
    /// device claims: [`Self::pop_used`] checks the claim).
    pub fn ready(&self) -> u16 {
        self.device_used_idx().wrapping_sub(self.last_used)
    }

    /// Takes the next completed chain, if any. Malformed entries are
    /// counted in [`Self::errors`] and skipped; an impossible used index
    /// breaks the queue (see [`Self::broken`]).
    pub fn pop_used(&mut self) -> Option<Used<T>> {
        loop {
            if self.broken.is_some() {
                return None;
            }
            let idx = self.used.read_u16(layout::USED_IDX);
            let pending = idx.wrapping_sub(self.last_used);
            if pending == 0 {
                return None;
            }
            if pending > self.chains {
                // More completions than chains the device holds: nothing in
                // the ring can be trusted any more.
                self.errors.bad_index += 1;
                self.broken = Some(BrokenRing { last_used: self.last_used, used_idx: idx, in_flight: self.chains });
                return None;
            }
            fence(Ordering::Acquire);
            let slot = (self.last_used % self.size) as usize;
            let id = self.used.read_u32(layout::used_ring(slot));
            let len = self.used.read_u32(layout::used_ring(slot) + 4);
            self.last_used = self.last_used.wrapping_add(1);
            self.refresh_far_used_event();
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
        self.chains -= 1;
    }

    fn write_used_event(&mut self, v: u16) {
        self.avail.write_u16(layout::used_event(self.size as usize), v);
    }

    /// Asks for an interrupt at the next completion, then re-checks: a
    /// `true` return means completions arrived meanwhile and the caller must
    /// poll again instead of sleeping.
    pub fn enable_interrupts(&mut self) -> bool {
        self.interrupts = Interrupts::On;
        if self.event_idx {
            self.write_used_event(self.last_used);
        } else {
            self.avail.write_u16(layout::AVAIL_FLAGS, 0);
        }
        device_barrier();
        self.has_used()
    }

    /// Asks for an interrupt only once `n` more chains have completed
    /// (interrupt moderation; `n` ≤ 1 is [`Self::enable_interrupts`]). With
    /// EVENT_IDX only: without it the device interrupts on every chain.
    /// The caller must look again by other means (a timer) for fewer than
    /// `n`. Returns whether a completion is already waiting.
    pub fn enable_interrupts_after(&mut self, n: u16) -> bool {
        if n <= 1 || !self.event_idx {
            return self.enable_interrupts();
        }
        self.interrupts = Interrupts::On;
        self.write_used_event(self.last_used.wrapping_add(n - 1));
        device_barrier();
        self.has_used()
    }

    /// Asks for one interrupt once about three quarters of the chains in
    /// flight have completed (all of them without EVENT_IDX), like Linux's
    /// `virtqueue_enable_cb_delayed`: a full transmit ring wants to hear
    /// when there is room again, not about every frame. Returns whether that
    /// point has already been passed (poll instead of waiting).
    pub fn enable_interrupts_delayed(&mut self) -> bool {
        self.interrupts = Interrupts::On;
        let wait = (self.chains as u32 * 3 / 4) as u16;
        if self.event_idx {
            self.write_used_event(self.last_used.wrapping_add(wait));
        } else {
            self.avail.write_u16(layout::AVAIL_FLAGS, 0);
        }
        device_barrier();
        let done = self.ready();
        done != 0 && done >= wait
    }

    /// Whether completion interrupts are asked for (by one of the enables).
    pub fn interrupts_enabled(&self) -> bool {
        self.interrupts == Interrupts::On
    }

    /// Stops completion interrupts while the owner polls anyway (or, for a
    /// transmit queue, reclaims when it sends). With EVENT_IDX, `used_event`
    /// is put half the index space ahead and kept there.
    pub fn disable_interrupts(&mut self) {
        if let Interrupts::Off { .. } = self.interrupts {
            return;
        }
        self.interrupts = Interrupts::Off { base: self.last_used };
        if self.event_idx {
            self.write_used_event(self.last_used.wrapping_add(USED_EVENT_FAR));
        } else {
            self.avail.write_u16(layout::AVAIL_FLAGS, AVAIL_F_NO_INTERRUPT);
        }
    }

    fn refresh_far_used_event(&mut self) {
        if let Interrupts::Off { base } = self.interrupts {
            if self.event_idx && self.last_used.wrapping_sub(base) >= USED_EVENT_FAR / 2 {
                self.interrupts = Interrupts::Off { base: self.last_used };
                self.write_used_event(self.last_used.wrapping_add(USED_EVENT_FAR));
            }
        }
    }

    /// Fault injection, for testing an owner's reaction to a broken device
    /// under a device that works: writes the device's `used.idx` as a broken
    /// device would. Nothing calls it unless asked to act out that fault.
    pub fn inject_device_used_idx(&mut self, idx: u16) {
        self.used.write_u16(layout::USED_IDX, idx);
    }

    /// Both ends' indices now.
    pub fn state(&self) -> RingState {
        RingState {
            size: self.size,
            avail_idx: self.avail_idx,
            unnotified: self.unnotified,
            avail_event: self.event_idx.then(|| self.used.read_u16(layout::avail_event(self.size as usize))),
            used_idx: self.device_used_idx(),
            last_used: self.last_used,
            in_flight: self.chains,
        }
    }
}

#[cfg(any(test, feature = "fake"))]
pub mod fake {
    //! The device's end of a split queue, for host tests: it reads what the
    //! driver offers and writes completions exactly where hardware would,
    //! and can be told to misbehave.
    use super::*;
    use crate::dma::fake::{DeviceView, TestDma};

    pub struct FakeDeviceQueue<'a> {
        pub dma: &'a TestDma,
        pub addrs: QueueAddresses,
        pub size: u16,
        pub last_avail: u16,
        pub used_idx: u16,
    }

    impl<'a> FakeDeviceQueue<'a> {
        pub fn new<T>(dma: &'a TestDma, q: &SplitQueue<T>) -> Self {
            FakeDeviceQueue { dma, addrs: q.addresses(), size: q.size(), last_avail: 0, used_idx: 0 }
        }

        fn region(&self, phys: u64, len: usize) -> DeviceView {
            self.dma.resolve(phys, len).expect("driver gave the device an address outside DMA memory")
        }

        fn avail(&self) -> DeviceView {
            self.region(self.addrs.driver, layout::avail_bytes(self.size as usize))
        }

        fn used(&self) -> DeviceView {
            self.region(self.addrs.device, layout::used_bytes(self.size as usize))
        }

        /// The driver's `avail.idx`.
        pub fn avail_idx(&self) -> u16 {
            self.avail().read_u16(layout::AVAIL_IDX)
        }

        /// The next available chain: head and its segments.
        pub fn pop_avail(&mut self) -> Option<(u16, Vec<Segment>)> {
            let avail = self.avail();
            if avail.read_u16(layout::AVAIL_IDX) == self.last_avail {
                return None;
            }
            let head = avail.read_u16(layout::avail_ring((self.last_avail % self.size) as usize));
            self.last_avail = self.last_avail.wrapping_add(1);
            let desc = self.region(self.addrs.descriptors, DESC_SIZE * self.size as usize);
            let mut segs = Vec::new();
            let mut i = head;
            loop {
                let d = layout::desc(i as usize);
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
                self.region(s.phys, s.len as usize).write_bytes(0, &data[done..done + n]);
                done += n;
            }
            done as u32
        }

        /// Reads the chain's device-readable bytes.
        pub fn read(&self, segs: &[Segment]) -> Vec<u8> {
            let mut out = Vec::new();
            for s in segs.iter().filter(|s| !s.writable) {
                let mut part = std::vec![0u8; s.len as usize];
                self.region(s.phys, s.len as usize).read_bytes(0, &mut part);
                out.extend_from_slice(&part);
            }
            out
        }

        /// Writes a used-ring entry without publishing it (any id and
        /// length: tests lie on purpose); [`Self::set_used_idx`] publishes.
        pub fn write_used(&mut self, id: u32, len: u32) {
            let used = self.used();
            let slot = (self.used_idx % self.size) as usize;
            used.write_u32(layout::used_ring(slot), id);
            used.write_u32(layout::used_ring(slot) + 4, len);
            self.used_idx = self.used_idx.wrapping_add(1);
        }

        /// Appends a used-ring entry and publishes it.
        pub fn push_used(&mut self, id: u32, len: u32) {
            self.write_used(id, len);
            self.set_used_idx(self.used_idx);
        }

        /// Writes `used.idx` (any value: tests lie on purpose).
        pub fn set_used_idx(&mut self, idx: u16) {
            self.used_idx = idx;
            self.used().write_u16(layout::USED_IDX, idx);
        }

        pub fn used_event(&self) -> u16 {
            self.avail().read_u16(layout::used_event(self.size as usize))
        }

        pub fn avail_flags(&self) -> u16 {
            self.avail().read_u16(layout::AVAIL_FLAGS)
        }

        pub fn set_avail_event(&self, v: u16) {
            self.used().write_u16(layout::avail_event(self.size as usize), v);
        }

        /// Whether an interrupt is due after the used index moved from
        /// `old` to the current one (EVENT_IDX rule, §2.7.10).
        pub fn interrupt_due(&self, old: u16) -> bool {
            let new = self.used_idx;
            new.wrapping_sub(self.used_event()).wrapping_sub(1) < new.wrapping_sub(old)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeDeviceQueue;
    use super::*;
    use crate::dma::fake::TestDma;
    use std::collections::BTreeSet;

    fn seg(phys: u64, len: u32, writable: bool) -> Segment {
        Segment { phys, len, writable }
    }

    #[test]
    fn sizes_must_be_powers_of_two() {
        let dma = TestDma::default();
        assert_eq!(SplitQueue::<u32>::new(&dma, 0, false).err(), Some(QueueError::BadRequest));
        assert_eq!(SplitQueue::<u32>::new(&dma, 100, false).err(), Some(QueueError::BadRequest));
        assert!(SplitQueue::<u32>::new(&dma, 256, true).is_ok());
    }

    #[test]
    fn chains_round_trip_through_a_device() {
        let dma = TestDma::default();
        let buf = dma.alloc(4096, 16).unwrap();
        let mut q = SplitQueue::new(&dma, 8, false).unwrap();
        let mut dev = FakeDeviceQueue::new(&dma, &q);
        buf.write_bytes(0, b"hello");
        q.add(&[seg(buf.phys(), 5, false), seg(buf.phys() + 100, 64, true)], 42).unwrap();
        assert_eq!((q.num_free(), q.in_flight()), (6, 1));
        assert!(dev.pop_avail().is_none(), "not visible before publish");
        assert!(q.publish(), "device wants notifications by default");
        let (head, segs) = dev.pop_avail().unwrap();
        assert_eq!(dev.read(&segs), b"hello");
        let n = dev.fill(&segs, b"world!");
        dev.push_used(head as u32, n);
        assert!(q.has_used());
        assert_eq!(q.pop_used(), Some(Used { token: 42, len: 6 }));
        let mut out = [0u8; 6];
        buf.read_bytes(100, &mut out);
        assert_eq!(&out, b"world!");
        assert_eq!(q.pop_used(), None);
        assert_eq!((q.num_free(), q.in_flight()), (8, 0), "descriptors returned to the free list");
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
            assert_eq!(q.add(&[seg(buf.phys(), 1, true)], 99), Err((QueueError::Full, 99)), "token handed back");
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
        for t in [7, 8, 9, 10, 11] {
            q.add(&[seg(buf.phys() + 100 * (t - 7), 100, true)], t as u32).unwrap();
        }
        q.publish();
        let (h1, _) = dev.pop_avail().unwrap();
        let (h2, _) = dev.pop_avail().unwrap();
        dev.push_used(9999, 10); // id out of range
        dev.push_used(7, 10); // in range but not in flight
        dev.push_used(h1 as u32, 101); // longer than the buffer
        dev.push_used(h1 as u32, 10); // already completed
        dev.push_used(h2 as u32, 100); // fine
        assert_eq!(q.pop_used(), Some(Used { token: 7, len: 0 }), "bad length: buffer returned empty");
        assert_eq!(q.pop_used(), Some(Used { token: 8, len: 100 }));
        assert_eq!(q.pop_used(), None);
        assert_eq!(q.errors, UsedErrors { bad_id: 3, bad_len: 1, bad_index: 0 });
        assert_eq!((q.num_free(), q.in_flight()), (5, 3));
        assert!(q.broken().is_none(), "bad entries are dropped, the ring stays usable");
    }

    #[test]
    fn a_used_index_beyond_the_chains_in_flight_breaks_the_queue() {
        let dma = TestDma::default();
        let buf = dma.alloc(4096, 16).unwrap();
        let mut q = SplitQueue::new(&dma, 8, true).unwrap();
        let mut dev = FakeDeviceQueue::new(&dma, &q);
        for t in 0..3u32 {
            q.add(&[seg(buf.phys() + 64 * t as u64, 64, true)], t).unwrap();
        }
        q.publish();
        let (h, _) = dev.pop_avail().unwrap();
        dev.push_used(h as u32, 8);
        assert_eq!(q.pop_used().map(|u| u.token), Some(0));
        // The device claims 8 more completions (a whole ring) with 2 in flight.
        dev.set_used_idx(9);
        assert_eq!(q.pop_used(), None, "nothing is handed out");
        let broken = q.broken().expect("the queue is broken");
        assert_eq!(broken, BrokenRing { last_used: 1, used_idx: 9, in_flight: 2 });
        assert_eq!(broken.to_string(), "the used index jumped from 1 to 9 (8 completions) with 2 chains in flight");
        assert_eq!(q.errors.bad_index, 1);
        // It stays refused: no more work, no notifications, no completions.
        assert_eq!(q.add(&[seg(buf.phys(), 1, true)], 5), Err((QueueError::Broken, 5)));
        assert!(!q.publish());
        assert!(!q.has_used());
        dev.set_used_idx(2);
        assert_eq!(q.pop_used(), None, "even a plausible index later is not trusted");
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
            let desc = dma.resolve(q.addresses().descriptors, 64).unwrap();
            for i in 0..4 {
                desc.write_u16(16 * i + 14, 0xffff);
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

    /// The transmit stall, replayed: the device takes entries, updates
    /// `avail_event` after each, and goes idle having asked to be notified
    /// about entry 3; the driver, reading `avail_event` before the device's
    /// update reached it (the lost barrier), publishes entry 3 without a
    /// notification. Nothing in the EVENT_IDX protocol ever notifies the
    /// device again; `needs_flush` sees that it must.
    #[test]
    fn a_missed_notification_is_seen_by_needs_flush() {
        let dma = TestDma::default();
        let buf = dma.alloc(4096, 16).unwrap();
        let mut q = SplitQueue::new(&dma, 8, true).unwrap();
        let mut dev = FakeDeviceQueue::new(&dma, &q);
        for t in 0..3u32 {
            q.add(&[seg(buf.phys(), 60, false)], t).unwrap();
            let kick = q.publish();
            assert_eq!(kick, t == 0, "the device asked about entry 0 only");
        }
        assert!(!q.needs_flush(), "the device has not completed what it was told about");
        // The device works through entries 0..3 and would ask about entry 3,
        // but the driver still sees the stale avail_event 0.
        while let Some((h, _)) = dev.pop_avail() {
            dev.push_used(h as u32, 0);
        }
        q.add(&[seg(buf.phys(), 60, false)], 3).unwrap();
        assert!(!q.publish(), "stale avail_event: no notification");
        dev.set_avail_event(3);
        assert_eq!(q.state().unnotified, 3, "entries 1, 2 and 3 were never notified");
        assert!(q.needs_flush(), "the device finished what it heard of and never saw entry 3");
        q.mark_notified();
        assert!(!q.needs_flush());
        assert_eq!(dev.pop_avail().map(|(h, _)| h), Some(3), "after the notification the device finds it");
    }

    #[test]
    fn needs_flush_stays_quiet_while_the_device_holds_notified_work() {
        let dma = TestDma::default();
        let buf = dma.alloc(4096, 16).unwrap();
        let mut q = SplitQueue::new(&dma, 8, true).unwrap();
        let mut dev = FakeDeviceQueue::new(&dma, &q);
        dev.set_avail_event(0);
        for t in 0..4u32 {
            q.add(&[seg(buf.phys(), 60, false)], t).unwrap();
            q.publish();
        }
        // Told about entry 0 only; it has completed nothing: it surely still
        // holds work it was told about and will come back for more.
        assert_eq!(q.state().unnotified, 3);
        assert!(!q.needs_flush());
        let (h, _) = dev.pop_avail().unwrap();
        dev.push_used(h as u32, 0);
        assert!(q.needs_flush(), "entry 0 done: the rest may be unknown to it");
        while let Some((h, _)) = dev.pop_avail() {
            dev.push_used(h as u32, 0);
        }
        assert!(!q.needs_flush(), "it found and used them all: nothing to tell it");
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
        let (h, _) = dev.pop_avail().unwrap();
        dev.push_used(h as u32, 1);
        assert!(dev.interrupt_due(1), "the next completion interrupts");
    }

    #[test]
    fn disabled_interrupts_stay_off_over_many_completions() {
        let dma = TestDma::default();
        let buf = dma.alloc(4096, 16).unwrap();
        let mut q = SplitQueue::new(&dma, 8, true).unwrap();
        let mut dev = FakeDeviceQueue::new(&dma, &q);
        q.disable_interrupts();
        let mut interrupts = 0;
        for t in 0..100_000u32 {
            q.add(&[seg(buf.phys(), 60, false)], t).unwrap();
            q.publish();
            let (h, _) = dev.pop_avail().unwrap();
            let old = dev.used_idx;
            dev.push_used(h as u32, 0);
            interrupts += dev.interrupt_due(old) as u32;
            assert_eq!(q.pop_used().map(|u| u.token), Some(t));
        }
        assert_eq!(interrupts, 0, "used_event kept out of reach, across index wraps");
        let plain = SplitQueue::<u32>::new(&dma, 8, false);
        let mut plain = plain.unwrap();
        let pdev = FakeDeviceQueue::new(&dma, &plain);
        plain.disable_interrupts();
        assert_eq!(pdev.avail_flags(), AVAIL_F_NO_INTERRUPT);
        assert!(!plain.enable_interrupts());
        assert_eq!(pdev.avail_flags(), 0);
    }

    #[test]
    fn delayed_interrupt_waits_for_three_quarters_of_the_chains() {
        let dma = TestDma::default();
        let buf = dma.alloc(4096, 16).unwrap();
        let mut q = SplitQueue::new(&dma, 8, true).unwrap();
        let mut dev = FakeDeviceQueue::new(&dma, &q);
        q.disable_interrupts();
        for t in 0..8u32 {
            q.add(&[seg(buf.phys(), 60, false)], t).unwrap();
        }
        q.publish();
        assert!(!q.enable_interrupts_delayed(), "nothing completed yet");
        assert_eq!(dev.used_event(), 6, "interrupt once 6 of 8 are done");
        let mut fired = Vec::new();
        for _ in 0..8 {
            let (h, _) = dev.pop_avail().unwrap();
            let old = dev.used_idx;
            dev.push_used(h as u32, 0);
            fired.push(dev.interrupt_due(old));
        }
        assert_eq!(fired, [false, false, false, false, false, false, true, false]);
        assert!(q.enable_interrupts_delayed(), "already past: poll now");
    }

    #[test]
    fn moderated_interrupt_waits_for_n_chains() {
        let dma = TestDma::default();
        let buf = dma.alloc(4096, 16).unwrap();
        let mut q = SplitQueue::new(&dma, 8, true).unwrap();
        let mut dev = FakeDeviceQueue::new(&dma, &q);
        q.disable_interrupts();
        for t in 0..8u32 {
            q.add(&[seg(buf.phys(), 60, false)], t).unwrap();
        }
        q.publish();
        assert!(!q.enable_interrupts_after(3), "nothing completed yet");
        assert_eq!(dev.used_event(), 2, "an interrupt with the third completion");
        let mut fired = Vec::new();
        for _ in 0..4 {
            let (h, _) = dev.pop_avail().unwrap();
            let old = dev.used_idx;
            dev.push_used(h as u32, 0);
            fired.push(dev.interrupt_due(old));
        }
        assert_eq!(fired, [false, false, true, false]);
        assert!(q.enable_interrupts_after(3), "completions waiting: poll now");
        // 1 (or 0) is an interrupt per completion, as enable_interrupts.
        while q.pop_used().is_some() {}
        assert!(!q.enable_interrupts_after(1));
        assert_eq!(dev.used_event(), 4);
    }

    /// A tiny deterministic generator for the property test below.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A device that writes arbitrary used entries (ids, lengths) and
    /// arbitrary used indices, interleaved with honest work: whatever it
    /// does, every descriptor is free or in flight, no token comes back
    /// twice or before it was added, no length exceeds its chain, and a
    /// broken queue hands out nothing more.
    #[test]
    fn property_hostile_device_cannot_corrupt_the_books() {
        for seed in 1..=300u64 {
            let mut rng = XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let dma = TestDma::default();
            let buf = dma.alloc(8192, 16).unwrap();
            let size = 1u16 << (1 + rng.below(5));
            let mut q = SplitQueue::new(&dma, size, rng.below(2) == 0).unwrap();
            let mut dev = FakeDeviceQueue::new(&dma, &q);
            let mut next_token = 0u32;
            // token -> (descriptors, writable bytes) while with the device.
            let mut out: std::collections::BTreeMap<u32, (u16, u32)> = Default::default();
            let mut returned = BTreeSet::new();
            for _ in 0..400 {
                match rng.below(12) {
                    0..=4 => {
                        let n = 1 + rng.below(3) as usize;
                        let segs: Vec<Segment> = (0..n)
                            .map(|i| seg(buf.phys() + 64 * i as u64, 1 + rng.below(64) as u32, rng.below(2) == 0))
                            .collect();
                        let writable: u32 = segs.iter().filter(|s| s.writable).map(|s| s.len).sum();
                        match q.add(&segs, next_token) {
                            Ok(_) => {
                                out.insert(next_token, (n as u16, writable));
                            }
                            Err((e, t)) => {
                                assert_eq!(t, next_token, "a refused token is handed back");
                                assert!(matches!(e, QueueError::Full | QueueError::Broken));
                            }
                        }
                        next_token += 1;
                        q.publish();
                    }
                    5..=7 => {
                        // Honest completion of the next available chain.
                        if let Some((h, segs)) = dev.pop_avail() {
                            let w: u32 = segs.iter().filter(|s| s.writable).map(|s| s.len).sum();
                            dev.push_used(h as u32, rng.below(u64::from(w) + 1) as u32);
                        }
                    }
                    8 => {
                        // Takes a chain and completes it with a lie: a wrong
                        // id, an id out of range, or a length past the chain.
                        if let Some((h, _)) = dev.pop_avail() {
                            let (id, len) = match rng.below(4) {
                                0 => (rng.below(u64::from(size)) as u32, 1),
                                1 => (rng.next() as u32, 1),
                                2 => (u32::from(h), 64 * 3 + 1 + rng.below(5000) as u32),
                                _ => (u32::from(h), rng.next() as u32),
                            };
                            dev.push_used(id, len);
                        }
                    }
                    9 if rng.below(16) == 0 => {
                        // Publishes a used index of its own choosing: mostly
                        // one the ring could hold (exposing stale or unwritten
                        // entries), sometimes one beyond every chain in flight.
                        let jump = if rng.below(4) == 0 {
                            rng.below(u64::from(size) * 3) as u16
                        } else {
                            rng.below(u64::from(q.in_flight()) + 1) as u16
                        };
                        let idx = dev.used_idx.wrapping_add(jump);
                        dev.set_used_idx(idx);
                    }
                    9 => {}
                    _ => {
                        while let Some(u) = q.pop_used() {
                            let (_, writable) = out.remove(&u.token).expect("token not with the device");
                            assert!(returned.insert(u.token), "token {} returned twice", u.token);
                            assert!(u.len <= writable, "length beyond the chain");
                        }
                    }
                }
                let held: u16 = out.values().map(|(n, _)| n).sum();
                assert_eq!(q.num_free() + held, size, "seed {seed}: free + in flight == size");
                assert_eq!(q.in_flight() as usize, out.len());
                if q.broken().is_some() {
                    assert!(q.pop_used().is_none());
                    assert!(!q.has_used());
                }
            }
        }
    }
}
