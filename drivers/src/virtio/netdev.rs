//! The virtio-net data path: receive and transmit queues with their DMA
//! buffers and counters, the control queue, and the MSI-X vector plan.
//!
//! Every queue is owned by one CPU. A frame that fits one receive buffer is
//! handed out as a slice of that buffer and transmitted frames are written
//! straight into one, so neither direction copies in the common case. A
//! received frame that spans several buffers (`VIRTIO_NET_F_MRG_RXBUF`,
//! `num_buffers` > 1) is joined into a per-queue buffer allocated once.
//!
//! Notifications: each queue rings its doorbell when the EVENT_IDX test says
//! the device asked (`kicks`). It also rings when the device may have
//! stopped looking without having seen every published entry (`rescues`):
//! when a transmit ring is full and nothing can be reclaimed (asking for one
//! completion interrupt at the same time), when a receive ring ran dry, and
//! when the owner is about to halt with entries published but never
//! notified (see [`SplitQueue::needs_flush`]). A transmit watchdog, run from
//! the owner's timer, rings again when descriptors sit with the device
//! without progress (`watchdog`), backing off, and reports a device that
//! stays silent. All of this is counted per queue.

use alloc::boxed::Box;
use alloc::vec::Vec;

use super::csum::IpVersion;
use super::queue::{BrokenRing, QueueError, RingState, Segment, SplitQueue, Used, UsedErrors};
use super::transport::NO_VECTOR;
use crate::dma::{Buffer, BufferPool, DmaAlloc, DmaBuf};

/// `virtio_net_hdr` with VERSION_1 (num_buffers included): the header of
/// queues built with `new`.
pub const HDR_LEN: usize = 12;
/// `virtio_net_hdr` with HASH_REPORT negotiated: `hash_value` (le32 @12),
/// `hash_report` (le16 @16) and padding (@18) follow. The device and the
/// driver use this length in *both* directions once the feature is
/// negotiated (QEMU's `guest_hdr_len`, Linux's `vi->hdr_len`), so both
/// queues of a pair must be built `with_header(.., HASH_HDR_LEN)`.
pub const HASH_HDR_LEN: usize = 20;
/// One receive/transmit buffer: header + a 1514-byte frame, rounded up.
pub const BUF_SIZE: usize = 2048;
/// Largest Ethernet frame without offloads (no FCS): what is transmitted.
pub const MAX_FRAME: usize = 1514;
/// Largest received frame accepted: a 64 KiB IP packet with its Ethernet
/// and VLAN headers (what large receive offload will deliver).
pub const MAX_RX_FRAME: usize = 65_535 + 18;
/// Largest transmitted frame with HOST_TSO4/6 (see [`TxQueue::set_tso`]): a
/// 64 KiB IPv4 packet and its Ethernet header. A longer one would wrap the
/// IPv4 total length (an IPv6 payload length leaves 40 bytes to spare).
pub const MAX_TSO_FRAME: usize = 65_535 + 14;
/// Large transmit buffers per queue with TSO on: frames up to
/// [`MAX_TSO_FRAME`] that the device is still sending (a fast sender keeps
/// a few in flight; 2 MiB of DMA memory per queue).
pub const TSO_BUFFERS: u32 = 32;
/// One large transmit buffer: a header of either length and the largest
/// frame, rounded up to 64 bytes.
const TSO_BUF_SIZE: usize = (HASH_HDR_LEN + MAX_TSO_FRAME).next_multiple_of(64);
/// Ethernet header: shorter frames are malformed.
const ETH_HDR: usize = 14;

/// Which TCP segments the device cuts: those over IPv4 (HOST_TSO4) and over
/// IPv6 (HOST_TSO6), as negotiated (see `net::tx_tso`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxTso {
    pub v4: bool,
    pub v6: bool,
}

impl TxTso {
    pub const NONE: TxTso = TxTso { v4: false, v6: false };

    pub fn any(self) -> bool {
        self.v4 || self.v6
    }
}

// A header of either length and the largest transmitted (or unmerged
// received) frame share one buffer.
const _: () = assert!(HASH_HDR_LEN + MAX_FRAME <= BUF_SIZE);

/// The header lengths a queue can be built with.
fn valid_header_len(hdr_len: usize) -> bool {
    hdr_len == HDR_LEN || hdr_len == HASH_HDR_LEN
}

/// `virtio_net_hdr.flags` and `gso_type` values this driver understands.
mod hdr {
    pub const FLAGS: usize = 0;
    pub const GSO_TYPE: usize = 1;
    /// Same place in both header lengths.
    pub const NUM_BUFFERS: usize = 10;
    /// Only in the 20-byte header.
    pub const HASH_VALUE: usize = 12;
    pub const HASH_REPORT: usize = 16;
    pub const HDR_LEN: usize = 2;
    pub const GSO_SIZE: usize = 4;
    pub const CSUM_START: usize = 6;
    pub const CSUM_OFFSET: usize = 8;
    /// The checksum is partial: on receive only with GUEST_CSUM (see
    /// [`super::RxOffloads`]); on transmit with CSUM (see
    /// [`super::TxQueue::set_csum_offload`]).
    pub const F_NEEDS_CSUM: u8 = 1;
    /// Receive, with GUEST_CSUM: the device checked the checksums.
    pub const F_DATA_VALID: u8 = 2;
    pub const GSO_NONE: u8 = 0;
    pub const GSO_TCPV4: u8 = 1;
    pub const GSO_TCPV6: u8 = 4;
    /// Types this driver never negotiates, refused as undefined ones are
    /// (named for the tests): UDP (GUEST_UFO), and the ECN bit or-ed into a
    /// TCP type (GUEST_ECN).
    #[cfg(test)]
    pub const GSO_UDP: u8 = 3;
    #[cfg(test)]
    pub const GSO_ECN: u8 = 0x80;
}

/// The receive offloads negotiated for a queue (see
/// [`RxQueue::set_offloads`]); all off by default, when a received header
/// asking for any of them is malformed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxOffloads {
    /// VIRTIO_NET_F_GUEST_CSUM: frames may arrive with a partial TCP/UDP
    /// checksum (NEEDS_CSUM) or one the device checked (DATA_VALID), so the
    /// stacks must not check those sums; the queue checks frames that
    /// arrive with neither flag itself (see [`super::csum::verify`]).
    pub csum: bool,
    /// VIRTIO_NET_F_GUEST_TSO4: coalesced IPv4 TCP segments of up to 64 KiB
    /// (`gso_type` TCPV4, `gso_size` the sender's MSS). Needs `csum`.
    pub tso4: bool,
    /// VIRTIO_NET_F_GUEST_TSO6: the same for IPv6.
    pub tso6: bool,
}

/// `virtio_net_hdr.hash_report` values (virtio spec, "Hash reporting for
/// incoming packets"; the same numbers as Linux's and QEMU's
/// `VIRTIO_NET_HASH_REPORT_*`). Report n corresponds to hash type bit n-1
/// (`net::hash_type`).
pub mod hash_report {
    /// No hash computed: the frame matched no enabled hash type, or hashing
    /// is not configured (the device starts with every type disabled).
    pub const NONE: u16 = 0;
    pub const IPV4: u16 = 1;
    pub const TCPV4: u16 = 2;
    pub const UDPV4: u16 = 3;
    pub const IPV6: u16 = 4;
    pub const TCPV6: u16 = 5;
    pub const UDPV6: u16 = 6;
    pub const IPV6_EX: u16 = 7;
    pub const TCPV6_EX: u16 = 8;
    pub const UDPV6_EX: u16 = 9;
}

/// Rings the doorbell of a queue. The kernel implements it with the
/// device's notification region; tests count the rings.
pub trait Doorbell {
    fn ring(&self, queue: u16);
}

/// Counters of one queue. Device input problems are counted by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub packets: u64,
    pub bytes: u64,
    pub polls: u64,
    /// Every doorbell ring: those the device asked for (EVENT_IDX) plus
    /// `rescues` and `watchdog`.
    pub kicks: u64,
    /// Rings the device did not ask for: full or dry ring, or entries left
    /// unnotified when the owner goes idle.
    pub rescues: u64,
    /// Rings by the transmit watchdog after no progress.
    pub watchdog: u64,
    /// Receive: polls that found the device holding no buffer.
    pub no_buffers: u64,
    /// Receive: frames joined from several buffers.
    pub merged: u64,
    /// Transmit: frames dropped because the ring was full.
    pub full: u64,
    pub drop_bad_len: u64,
    pub drop_bad_id: u64,
    /// Receive: shorter than a header and an Ethernet header.
    pub drop_header: u64,
    /// Receive: a `num_buffers` that is 0, beyond the ring, or names buffers
    /// the device has not returned.
    pub drop_merge: u64,
    /// Receive: a joined frame beyond [`MAX_RX_FRAME`]; transmit: a frame
    /// beyond [`MAX_FRAME`].
    pub drop_too_long: u64,
    /// Receive: hash reports of a type the spec does not define. The frame
    /// is delivered; only the report is ignored.
    pub hash_unknown: u64,
    /// Receive: coalesced segments (a `gso_type` other than NONE); transmit:
    /// frames handed to the device to segment (TSO).
    pub large: u64,
    /// Receive, with GUEST_CSUM: frames the queue checked itself (they came
    /// with neither NEEDS_CSUM nor DATA_VALID).
    pub csum_checked: u64,
    /// Receive: frames that failed that check.
    pub drop_csum: u64,
    /// Receive: offload fields that make no sense: a partial checksum whose
    /// field lies outside the frame, a coalesced segment with `gso_size` 0
    /// or a `hdr_len` beyond the frame, a `gso_type` not negotiated or
    /// undefined.
    pub drop_offload: u64,
}

impl QueueStats {
    /// Every frame or completion dropped, whatever the reason (`full`, a
    /// transmit frame with no room, is counted apart).
    pub fn dropped(&self) -> u64 {
        self.drop_bad_len
            + self.drop_bad_id
            + self.drop_header
            + self.drop_merge
            + self.drop_too_long
            + self.drop_offload
            + self.drop_csum
    }

    fn absorb(&mut self, e: &UsedErrors) {
        self.drop_bad_id = e.bad_id;
        self.drop_bad_len = e.bad_len;
    }

    fn ring(&mut self, bell: &dyn Doorbell, queue: u16, why: Ring) {
        bell.ring(queue);
        self.kicks += 1;
        match why {
            Ring::Asked => {}
            Ring::Rescue => self.rescues += 1,
            Ring::Watchdog => self.watchdog += 1,
        }
    }
}

#[derive(Clone, Copy)]
enum Ring {
    Asked,
    Rescue,
    Watchdog,
}

/// What a received frame is held in until [`RxQueue::release`].
enum Held {
    /// One buffer: the frame is `hdr_len..hdr_len+len` of it.
    Buffer(Buffer, usize),
    /// Joined into the queue's join buffer: its first `len` bytes.
    Joined(usize),
}

/// A receive queue with every buffer posted to the device.
pub struct RxQueue {
    pub index: u16,
    queue: SplitQueue<Buffer>,
    pool: BufferPool,
    /// Buffers with the driver, waiting to be posted.
    free: Vec<Buffer>,
    /// MRG_RXBUF negotiated: `num_buffers` is meaningful.
    mergeable: bool,
    /// Where frames spanning buffers are joined (allocated once).
    join: Box<[u8]>,
    held: Option<Held>,
    /// The hash report of the held frame (checked; None when not reported).
    hash: Option<(u32, u16)>,
    /// [`HDR_LEN`], or [`HASH_HDR_LEN`] with HASH_REPORT.
    hdr_len: usize,
    stats: QueueStats,
    /// Refills that found the device out of buffers (see
    /// [`RxQueue::starved_refills`]).
    starved: u64,
    offloads: RxOffloads,
}

/// What the header of a received buffer says, once checked.
struct RxHeader {
    num_buffers: u16,
    hash: Option<(u32, u16)>,
    flags: u8,
    /// `gso_type` (NONE or a negotiated TCP type), `gso_size`, `hdr_len`.
    gso: (u8, u16, u16),
    /// `csum_start`, `csum_offset`.
    csum: (u16, u16),
}

/// A header field that asks for an offload this queue did not negotiate,
/// or one the spec does not define; with the frame's `num_buffers`.
struct NotNegotiated(u16);

/// A hash report of a type the spec does not define.
struct UnknownHash;

impl RxQueue {
    /// A receive queue with the 12-byte header (no HASH_REPORT).
    pub fn new(dma: &dyn DmaAlloc, index: u16, size: u16, event_idx: bool, mergeable: bool) -> Option<RxQueue> {
        RxQueue::with_header(dma, index, size, event_idx, mergeable, HDR_LEN)
    }

    /// A receive queue whose buffers start with a `hdr_len`-byte
    /// `virtio_net_hdr`: [`HDR_LEN`], or [`HASH_HDR_LEN`] when HASH_REPORT
    /// is negotiated. `None` for any other length, or without DMA memory.
    pub fn with_header(
        dma: &dyn DmaAlloc,
        index: u16,
        size: u16,
        event_idx: bool,
        mergeable: bool,
        hdr_len: usize,
    ) -> Option<RxQueue> {
        if !valid_header_len(hdr_len) {
            return None;
        }
        let queue = SplitQueue::new(dma, size, event_idx).ok()?;
        let (pool, free) = BufferPool::new(dma, BUF_SIZE, size as u32)?;
        let join = if mergeable { alloc::vec![0u8; MAX_RX_FRAME].into_boxed_slice() } else { Box::default() };
        let stats = QueueStats::default();
        Some(RxQueue {
            index,
            queue,
            pool,
            free,
            mergeable,
            join,
            held: None,
            hash: None,
            hdr_len,
            stats,
            starved: 0,
            offloads: RxOffloads::default(),
        })
    }

    /// The receive offloads negotiated: what received headers may ask for
    /// (anything else is dropped and counted in `drop_offload`).
    pub fn set_offloads(&mut self, offloads: RxOffloads) {
        self.offloads = offloads;
    }

    /// The `virtio_net_hdr` length this queue was built with.
    pub fn header_len(&self) -> usize {
        self.hdr_len
    }

    pub fn queue(&self) -> &SplitQueue<Buffer> {
        &self.queue
    }

    pub fn queue_mut(&mut self) -> &mut SplitQueue<Buffer> {
        &mut self.queue
    }

    /// Posts every free buffer and notifies the device if it asked, or if
    /// it had run dry (held no buffer at all) before this refill.
    pub fn refill(&mut self, bell: &dyn Doorbell) {
        if self.free.is_empty() {
            return;
        }
        let ran_dry = self.queue.in_flight() == 0;
        while let Some(buf) = self.free.pop() {
            let seg = Segment { phys: self.pool.phys(&buf), len: BUF_SIZE as u32, writable: true };
            if let Err((_, buf)) = self.queue.add(&[seg], buf) {
                self.free.push(buf);
                break;
            }
        }
        if self.queue.publish() {
            self.stats.ring(bell, self.index, Ring::Asked);
            self.starved += 1;
        } else if ran_dry && self.queue.in_flight() > 0 {
            self.queue.mark_notified();
            self.stats.ring(bell, self.index, Ring::Rescue);
            self.starved += 1;
        }
    }

    /// How many refills found the device out of buffers: it asked to be
    /// notified (with EVENT_IDX a receive queue's device asks only once it
    /// has taken every posted buffer) or the ring was dry. With QEMU's
    /// software RSS such a moment can leave frames for this queue parked on
    /// *another* queue, which the owner should then notify as well.
    pub fn starved_refills(&self) -> u64 {
        self.starved
    }

    /// Before the owner goes idle: notifies the device if it may not have
    /// seen every posted buffer (a lost notification would otherwise leave
    /// it waiting for buffers it has). Returns whether it rang.
    pub fn flush(&mut self, bell: &dyn Doorbell) -> bool {
        flush(&mut self.queue, &mut self.stats, bell, self.index)
    }

    /// The next received frame, if any, as a slice of its DMA buffer (or of
    /// the join buffer). It stays held until [`Self::release`]; malformed
    /// completions are counted and their buffers recycled.
    pub fn next_frame(&mut self) -> Option<&[u8]> {
        if self.held.is_none() {
            self.stats.polls += 1;
            self.held = self.take_frame();
        }
        let held = self.held.as_ref()?;
        Some(Self::bytes_of(&self.pool, &self.join, self.hdr_len, held))
    }

    /// The hash the device reported for the frame returned by
    /// [`Self::next_frame`] and not yet released: `(hash_value,
    /// hash_report)` with a [`hash_report`] type other than NONE. `None`
    /// without a held frame, on a queue with the 12-byte header, when the
    /// device computed no hash, or when it reported an undefined type
    /// (counted in `hash_unknown`). Device data: a steering hint, never a
    /// reason to trust the frame.
    pub fn hash_report(&self) -> Option<(u32, u16)> {
        self.held.as_ref().and(self.hash)
    }

    fn take_frame(&mut self) -> Option<Held> {
        loop {
            let Some(Used { token: buf, len }) = self.queue.pop_used() else {
                self.stats.absorb(&self.queue.errors);
                if self.queue.in_flight() == 0 {
                    self.stats.no_buffers += 1;
                }
                return None;
            };
            let len = len as usize;
            if len == 0 {
                // Nothing written (or a bad length, counted by the queue).
                self.free.push(buf);
                continue;
            }
            let header = match self.header(&buf, len) {
                Some(Ok(header)) => header,
                Some(Err(NotNegotiated(count))) => {
                    self.stats.drop_offload += 1;
                    self.free.push(buf);
                    // The frame's other buffers go with it (those already
                    // returned), rather than being read as frames.
                    for _ in 1..count.min(self.queue.ready().saturating_add(1)) {
                        match self.queue.pop_used() {
                            Some(Used { token, .. }) => self.free.push(token),
                            None => break,
                        }
                    }
                    continue;
                }
                None => {
                    self.stats.drop_header += 1;
                    self.free.push(buf);
                    continue;
                }
            };
            let held = match header.num_buffers {
                1 => Held::Buffer(buf, len - self.hdr_len),
                n => match self.join_frame(buf, len, n) {
                    Some(joined) => {
                        self.stats.merged += 1;
                        Held::Joined(joined)
                    }
                    None => continue,
                },
            };
            if self.offloads_hold(&header, &held) {
                self.hash = header.hash;
                return Some(held);
            }
            if let Held::Buffer(buf, _) = held {
                self.free.push(buf);
            }
        }
    }

    /// The bytes of a frame held in `held`.
    fn bytes_of<'s>(pool: &'s BufferPool, join: &'s [u8], hdr_len: usize, held: &'s Held) -> &'s [u8] {
        match held {
            Held::Buffer(buf, len) => pool.bytes(buf, hdr_len, *len),
            Held::Joined(len) => &join[..*len],
        }
    }

    /// Checks what the header's offload fields say against the whole frame
    /// (`false`, counted, to drop it): a partial checksum's field within
    /// the frame, a coalesced segment's `gso_size` and `hdr_len`; and, with
    /// GUEST_CSUM, the TCP/UDP checksum of a frame the device neither
    /// checked nor left partial.
    fn offloads_hold(&mut self, header: &RxHeader, held: &Held) -> bool {
        let frame = Self::bytes_of(&self.pool, &self.join, self.hdr_len, held);
        let (gso_type, gso_size, gso_hdr_len) = header.gso;
        if gso_type != hdr::GSO_NONE {
            if gso_size == 0 || usize::from(gso_hdr_len) > frame.len() {
                self.stats.drop_offload += 1;
                return false;
            }
            self.stats.large += 1;
        }
        // NEEDS_CSUM got here only with GUEST_CSUM (see `header`).
        if header.flags & hdr::F_NEEDS_CSUM != 0 {
            if !super::csum::partial_in_bounds(frame, header.csum.0, header.csum.1) {
                self.stats.drop_offload += 1;
                return false;
            }
        } else if self.offloads.csum && header.flags & hdr::F_DATA_VALID == 0 {
            self.stats.csum_checked += 1;
            if super::csum::verify(frame) == super::csum::Verdict::Bad {
                self.stats.drop_csum += 1;
                return false;
            }
        }
        true
    }

    /// Checks the header of a buffer the device filled with `len` (> 0)
    /// bytes: `None` without room for the header and an Ethernet header,
    /// `Err` when it asks for an offload this queue did not negotiate (a
    /// partial checksum without GUEST_CSUM, a coalesced segment of a type
    /// not negotiated or undefined, ECN). Without MRG_RXBUF `num_buffers`
    /// is not meaningful and reads as 1. The fields that must fit the
    /// whole frame are checked once it is joined ([`Self::offloads_hold`]).
    fn header(&mut self, buf: &Buffer, len: usize) -> Option<Result<RxHeader, NotNegotiated>> {
        if len < self.hdr_len + ETH_HDR {
            return None;
        }
        let header = self.pool.bytes(buf, 0, self.hdr_len);
        let (flags, gso_type) = (header[hdr::FLAGS], header[hdr::GSO_TYPE]);
        let o = self.offloads;
        let gso_allowed = match gso_type {
            hdr::GSO_NONE => true,
            hdr::GSO_TCPV4 => o.tso4,
            hdr::GSO_TCPV6 => o.tso6,
            // UDP (GUEST_UFO), the ECN bit (GUEST_ECN): never negotiated;
            // anything else is undefined.
            _ => false,
        };
        let num_buffers = if self.mergeable { le16(header, hdr::NUM_BUFFERS) } else { 1 };
        if !gso_allowed || (flags & hdr::F_NEEDS_CSUM != 0 && !o.csum) {
            return Some(Err(NotNegotiated(num_buffers)));
        }
        let gso = (gso_type, le16(header, hdr::GSO_SIZE), le16(header, hdr::HDR_LEN));
        let csum = (le16(header, hdr::CSUM_START), le16(header, hdr::CSUM_OFFSET));
        let hash = hash_in(header).unwrap_or_else(|UnknownHash| {
            self.stats.hash_unknown += 1;
            None
        });
        Some(Ok(RxHeader { num_buffers, hash, flags, gso, csum }))
    }

    /// Joins a frame whose first buffer `first` (`len` bytes used) says it
    /// spans `count` buffers: the other `count - 1` must already be in the
    /// used ring (a device returns a frame's buffers together). Every buffer
    /// is recycled; `None` (counted) when the frame is malformed.
    fn join_frame(&mut self, first: Buffer, len: usize, count: u16) -> Option<usize> {
        let ready = self.queue.ready();
        if count == 0 || count > self.queue.size() || ready < count - 1 {
            self.stats.drop_merge += 1;
            self.free.push(first);
            return None;
        }
        // Only the first buffer carries the header.
        let mut total = len - self.hdr_len;
        self.join[..total].copy_from_slice(self.pool.bytes(&first, self.hdr_len, total));
        self.free.push(first);
        let mut too_long = false;
        for _ in 1..count {
            let Some(Used { token: buf, len }) = self.queue.pop_used() else {
                // The device broke the ring meanwhile, or completed a chain
                // it did not hold (counted by the queue).
                self.stats.drop_merge += 1;
                return None;
            };
            let len = len as usize;
            if !too_long && total + len <= MAX_RX_FRAME {
                self.join[total..total + len].copy_from_slice(self.pool.bytes(&buf, 0, len));
                total += len;
            } else {
                too_long = true;
            }
            self.free.push(buf);
        }
        if too_long {
            self.stats.drop_too_long += 1;
            return None;
        }
        Some(total)
    }

    /// Gives the frame returned by `next_frame` back to the device queue
    /// (posted at the next `refill`).
    pub fn release(&mut self) {
        let len = match self.held.take() {
            Some(Held::Buffer(buf, len)) => {
                self.free.push(buf);
                len
            }
            Some(Held::Joined(len)) => len,
            None => return,
        };
        self.hash = None;
        self.stats.packets += 1;
        self.stats.bytes += len as u64;
    }

    /// Both ends' indices (for diagnostics).
    pub fn ring_state(&self) -> RingState {
        self.queue.state()
    }

    pub fn broken(&self) -> Option<BrokenRing> {
        self.queue.broken()
    }

    pub fn stats(&mut self) -> QueueStats {
        self.stats.absorb(&self.queue.errors);
        self.stats
    }
}

fn le16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn le32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// The hash report in a received header: `Ok(None)` for a 12-byte header
/// or a NONE report, `Ok(Some((hash_value, hash_report)))` for a defined
/// type, `Err` for a type beyond the spec's (a confused or hostile device).
fn hash_in(header: &[u8]) -> Result<Option<(u32, u16)>, UnknownHash> {
    if header.len() < HASH_HDR_LEN {
        return Ok(None);
    }
    match le16(header, hdr::HASH_REPORT) {
        hash_report::NONE => Ok(None),
        report @ hash_report::IPV4..=hash_report::UDPV6_EX => Ok(Some((le32(header, hdr::HASH_VALUE), report))),
        _ => Err(UnknownHash),
    }
}

fn flush(queue: &mut SplitQueue<Buffer>, stats: &mut QueueStats, bell: &dyn Doorbell, index: u16) -> bool {
    if !queue.needs_flush() {
        return false;
    }
    queue.mark_notified();
    stats.ring(bell, index, Ring::Rescue);
    true
}

/// What a transmit watchdog tick found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watchdog {
    /// Nothing with the device: the watchdog can stop.
    Idle,
    /// The device completed something since the last tick.
    Progress,
    /// No progress; the device was notified again, or will be at a later
    /// tick (the interval doubles while it stays silent).
    Silent,
    /// No progress for [`STALL_TICKS`] ticks despite notifications: report
    /// it (once per stall) with the ring state.
    Stalled(RingState),
}

/// Silent ticks after which a stalled transmit queue is reported.
pub const STALL_TICKS: u32 = 20;

/// A transmit queue.
pub struct TxQueue {
    pub index: u16,
    queue: SplitQueue<Buffer>,
    pool: BufferPool,
    free: Vec<Buffer>,
    stats: QueueStats,
    /// The device's used index at the last watchdog tick (None: not watching).
    watched: Option<u16>,
    /// Consecutive ticks without progress.
    silent_ticks: u32,
    /// [`HDR_LEN`], or [`HASH_HDR_LEN`] with HASH_REPORT.
    hdr_len: usize,
    /// Frames are queued without being published: the owner publishes
    /// them once per poll round ([`Self::publish`]), so a burst costs one
    /// notification check (and at most one notification) instead of one
    /// per frame.
    batched: bool,
    /// Frames queued since the last publish.
    unpublished: u32,
    /// CSUM negotiated and wanted: TCP and UDP frames leave with
    /// NEEDS_CSUM and the device finishes their checksums.
    csum_offload: bool,
    /// HOST_TSO4/6 (see [`Self::set_tso`]): the large buffers, those free,
    /// and which IP versions' segments the device cuts.
    tso: Option<(BufferPool, Vec<Buffer>, TxTso)>,
}

impl TxQueue {
    /// A transmit queue with the 12-byte header (no HASH_REPORT).
    pub fn new(dma: &dyn DmaAlloc, index: u16, size: u16, event_idx: bool) -> Option<TxQueue> {
        TxQueue::with_header(dma, index, size, event_idx, HDR_LEN)
    }

    /// A transmit queue that puts a zeroed `hdr_len`-byte `virtio_net_hdr`
    /// before each frame: [`HDR_LEN`], or [`HASH_HDR_LEN`] when HASH_REPORT
    /// is negotiated (the device then expects 20 bytes on transmit too).
    /// `None` for any other length, or without DMA memory.
    pub fn with_header(dma: &dyn DmaAlloc, index: u16, size: u16, event_idx: bool, hdr_len: usize) -> Option<TxQueue> {
        if !valid_header_len(hdr_len) {
            return None;
        }
        let mut queue = SplitQueue::new(dma, size, event_idx).ok()?;
        // Completions are reclaimed when sending; interrupts only to rescue
        // a full ring.
        queue.disable_interrupts();
        let (pool, free) = BufferPool::new(dma, BUF_SIZE, size as u32)?;
        let stats = QueueStats::default();
        Some(TxQueue {
            index,
            queue,
            pool,
            free,
            stats,
            watched: None,
            silent_ticks: 0,
            hdr_len,
            batched: false,
            unpublished: 0,
            csum_offload: false,
            tso: None,
        })
    }

    /// Transmit segmentation offload for the IP versions in `versions`
    /// (HOST_TSO4/6 negotiated, with CSUM and [`Self::set_csum_offload`]
    /// on): allocates [`TSO_BUFFERS`] buffers for frames up to
    /// [`MAX_TSO_FRAME`], which [`Self::send_segmented`] hands to the device
    /// with `gso_type` TCPV4 or TCPV6 for it to cut into segments. Returns
    /// `false` (TSO stays off) without the DMA memory.
    pub fn set_tso(&mut self, dma: &dyn DmaAlloc, versions: TxTso) -> bool {
        match &mut self.tso {
            Some((_, _, v)) => *v = versions,
            None if versions.any() => {
                self.tso = BufferPool::new(dma, TSO_BUF_SIZE, TSO_BUFFERS).map(|(pool, free)| (pool, free, versions));
            }
            None => {}
        }
        self.tso.is_some()
    }

    /// Which large frames can be sent ([`Self::set_tso`]).
    pub fn tso(&self) -> TxTso {
        self.tso.as_ref().map_or(TxTso::NONE, |t| t.2)
    }

    /// Transmit checksum offload on or off (only with CSUM negotiated). On,
    /// the stack must leave TCP and UDP checksums to the device: each IPv4
    /// or IPv6 TCP or UDP frame gets its pseudo-header sum and NEEDS_CSUM with
    /// `csum_start`/`csum_offset` (see [`super::csum`]); other frames go as
    /// they are.
    pub fn set_csum_offload(&mut self, on: bool) {
        self.csum_offload = on;
    }

    /// The `virtio_net_hdr` length this queue was built with.
    pub fn header_len(&self) -> usize {
        self.hdr_len
    }

    pub fn queue(&self) -> &SplitQueue<Buffer> {
        &self.queue
    }

    /// Takes back buffers the device has sent. Progress ends a full-ring
    /// rescue: completion interrupts go off again.
    pub fn reclaim(&mut self) {
        let mut progress = false;
        while let Some(Used { token, .. }) = self.queue.pop_used() {
            match self.tso.as_mut() {
                Some((pool, free, _)) if pool.owns(&token) => free.push(token),
                _ => self.free.push(token),
            }
            progress = true;
        }
        if progress {
            self.queue.disable_interrupts();
        }
        self.stats.absorb(&self.queue.errors);
    }

    /// Whether a frame can be queued now. When the ring is full and nothing
    /// can be reclaimed, asks for an interrupt once most of the ring has
    /// completed and notifies the device (once per full episode): if a
    /// notification was lost, the device would otherwise never send them.
    /// With TSO on, a large buffer must be free as well: the caller does not
    /// know yet how long its frame will be.
    pub fn has_room(&mut self, bell: &dyn Doorbell) -> bool {
        if !self.ready() {
            self.reclaim();
        }
        if self.ready() {
            return true;
        }
        // Full: the device must see what is queued before it can free any.
        self.publish(bell);
        // Interrupts are on only during a rescue: one per full episode.
        if !self.queue.interrupts_enabled() && self.queue.broken().is_none() {
            if self.queue.enable_interrupts_delayed() {
                // Completions arrived meanwhile.
                self.reclaim();
            }
            self.queue.mark_notified();
            self.stats.ring(bell, self.index, Ring::Rescue);
        }
        self.ready()
    }

    /// A frame of any length can be queued without reclaiming: a free
    /// buffer, a free large one with TSO on, and a free descriptor (the
    /// large buffers share the ring's descriptors with the others).
    fn ready(&self) -> bool {
        !self.free.is_empty()
            && self.tso.as_ref().is_none_or(|(_, free, _)| !free.is_empty())
            && self.queue.num_free() > 0
    }

    /// Frames that can be queued now without reclaiming (free buffers; each
    /// frame takes one buffer and one descriptor). Unlike [`Self::has_room`]
    /// this neither reclaims nor notifies.
    pub fn room(&self) -> usize {
        self.free.len()
    }

    /// Queues a `len`-byte frame that `fill` writes in place, and notifies
    /// the device if it asked. `None`, without calling `fill`, when the
    /// queue is full or the frame too long (the frame is dropped and
    /// counted); once `fill` has run the result is always `Some`, even for
    /// a frame that then turns out not to be sendable (dropped and counted).
    pub fn send<R>(&mut self, len: usize, bell: &dyn Doorbell, fill: impl FnOnce(&mut [u8]) -> R) -> Option<R> {
        self.send_segmented(len, None, bell, fill)
    }

    /// [`Self::send`] for a frame the device may have to cut into segments
    /// of `mss` payload bytes: with TSO on for its IP version
    /// ([`Self::set_tso`]), a TCP frame longer than [`MAX_FRAME`] (up to
    /// [`MAX_TSO_FRAME`]) goes in a large buffer with `gso_type` TCPV4 or
    /// TCPV6, `gso_size` `mss` and `hdr_len` its headers' length, and its
    /// checksum left partial. A long frame
    /// that is not such a segment, or comes without `mss`, is dropped
    /// (counted in `drop_too_long`).
    pub fn send_segmented<R>(
        &mut self,
        len: usize,
        mss: Option<u16>,
        bell: &dyn Doorbell,
        fill: impl FnOnce(&mut [u8]) -> R,
    ) -> Option<R> {
        let large = len > MAX_FRAME;
        // A long frame needs a segment size, TSO and checksum offload.
        let gso_size = match mss {
            Some(m) if m > 0 && len <= MAX_TSO_FRAME && self.tso.is_some() && self.csum_offload => m,
            _ if large => {
                self.stats.drop_too_long += 1;
                return None;
            }
            _ => 0,
        };
        if !self.has_room(bell) {
            self.stats.full += 1;
            return None;
        }
        let hdr_len = self.hdr_len;
        let versions = self.tso();
        let (pool, free) = match self.tso.as_mut() {
            Some((pool, free, _)) if large => (&*pool, free),
            _ => (&self.pool, &mut self.free),
        };
        let mut buf = free.pop()?;
        let bytes = pool.bytes_mut(&mut buf, 0, hdr_len + len);
        // The header starts zeroed (no hash, and no offload unless set
        // below): a buffer is reused, so the previous frame's bytes must not
        // leak into it.
        bytes[..hdr_len].fill(0);
        let r = fill(&mut bytes[hdr_len..]);
        let partial = if self.csum_offload { super::csum::prepare_partial(&mut bytes[hdr_len..]) } else { None };
        if let Some((start, offset)) = partial {
            bytes[hdr::FLAGS] = hdr::F_NEEDS_CSUM;
            bytes[hdr::CSUM_START..hdr::CSUM_START + 2].copy_from_slice(&start.to_le_bytes());
            bytes[hdr::CSUM_OFFSET..hdr::CSUM_OFFSET + 2].copy_from_slice(&offset.to_le_bytes());
        }
        if large {
            // Only a TCP segment (whose checksum was just left partial) of
            // an IP version the device cuts.
            let cut =
                partial.and(super::csum::tcp_headers_len(&bytes[hdr_len..])).and_then(
                    |(headers, version)| match version {
                        IpVersion::V4 if versions.v4 => Some((headers, hdr::GSO_TCPV4)),
                        IpVersion::V6 if versions.v6 => Some((headers, hdr::GSO_TCPV6)),
                        _ => None,
                    },
                );
            let Some((headers, gso_type)) = cut else {
                free.push(buf);
                self.stats.drop_too_long += 1;
                return Some(r);
            };
            bytes[hdr::GSO_TYPE] = gso_type;
            bytes[hdr::HDR_LEN..hdr::HDR_LEN + 2].copy_from_slice(&headers.to_le_bytes());
            bytes[hdr::GSO_SIZE..hdr::GSO_SIZE + 2].copy_from_slice(&gso_size.to_le_bytes());
        }
        let seg = Segment { phys: pool.phys(&buf), len: (hdr_len + len) as u32, writable: false };
        if let Err((_, buf)) = self.queue.add(&[seg], buf) {
            // Not reached: `has_room` saw a free descriptor.
            free.push(buf);
            self.stats.full += 1;
            return Some(r);
        }
        if large {
            self.stats.large += 1;
        }
        self.stats.packets += 1;
        self.stats.bytes += len as u64;
        self.unpublished += 1;
        if !self.batched {
            self.publish(bell);
        }
        Some(r)
    }

    /// Batched mode on or off (see [`Self::publish`]); turning it off
    /// publishes what is queued.
    pub fn set_batched(&mut self, batched: bool, bell: &dyn Doorbell) {
        self.batched = batched;
        if !batched {
            self.publish(bell);
        }
    }

    /// Makes every queued frame visible to the device and notifies it if it
    /// asked. In batched mode the owner calls this at the end of each poll
    /// round; a full ring publishes by itself.
    pub fn publish(&mut self, bell: &dyn Doorbell) {
        if self.unpublished == 0 {
            return;
        }
        self.unpublished = 0;
        if self.queue.publish() {
            self.stats.ring(bell, self.index, Ring::Asked);
        }
    }

    /// Before the owner goes idle: notifies the device if it may not have
    /// seen every queued frame. Returns whether it rang.
    pub fn flush(&mut self, bell: &dyn Doorbell) -> bool {
        self.publish(bell);
        flush(&mut self.queue, &mut self.stats, bell, self.index)
    }

    /// Whether the watchdog should be running: frames are with the device.
    pub fn needs_watchdog(&self) -> bool {
        self.queue.in_flight() > 0
    }

    /// One watchdog tick (the owner calls it every few milliseconds while
    /// [`Self::needs_watchdog`]): reclaims, and if the device has completed
    /// nothing since the last tick while holding frames, notifies it again
    /// on the 1st, 2nd, 4th, 8th... silent tick, and reports the stall once.
    pub fn watchdog_tick(&mut self, bell: &dyn Doorbell) -> Watchdog {
        self.publish(bell);
        self.reclaim();
        if self.queue.in_flight() == 0 || self.queue.broken().is_some() {
            self.watched = None;
            self.silent_ticks = 0;
            return Watchdog::Idle;
        }
        let used = self.queue.device_used_idx();
        if self.watched != Some(used) {
            self.watched = Some(used);
            self.silent_ticks = 0;
            return Watchdog::Progress;
        }
        self.silent_ticks += 1;
        if self.silent_ticks.is_power_of_two() {
            self.queue.mark_notified();
            self.stats.ring(bell, self.index, Ring::Watchdog);
        }
        if self.silent_ticks == STALL_TICKS {
            return Watchdog::Stalled(self.queue.state());
        }
        Watchdog::Silent
    }

    pub fn ring_state(&self) -> RingState {
        self.queue.state()
    }

    pub fn broken(&self) -> Option<BrokenRing> {
        self.queue.broken()
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
    /// Needs VIRTIO_NET_F_RSS; data from [`super::encode_rss_config`].
    pub const MQ_RSS_CONFIG: u8 = 1;
    pub const OK: u8 = 0;
    pub const ERR: u8 = 1;
}

/// What happened to a control command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtrlResult {
    Ok,
    /// The device answered VIRTIO_NET_ERR (or something else than OK).
    Refused(u8),
    /// The device completed the command without writing an answer.
    NoAnswer,
}

/// Why a control command could not be queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtrlError {
    /// A command is still with the device; only one at a time.
    Busy,
    /// The command does not fit the command buffer ([`CTRL_MAX_DATA`]), or
    /// an encoder's output.
    TooLong,
    /// The command's fields break a rule of its format (what, in words).
    Invalid(&'static str),
    /// The ring refused it (broken or full).
    Queue(QueueError),
}

/// The control queue: one command in flight at a time. A command the device
/// never answers stays in flight; the owner must then reset the device
/// before relying on any state the command could change.
pub struct CtrlQueue {
    pub index: u16,
    queue: SplitQueue<()>,
    mem: DmaBuf,
}

/// The command buffer: `{class, command, data}` from offset 0, the ack byte
/// after the longest command. Sized for an RSS_CONFIG with QEMU's limits
/// (128 entries, 40-byte key: 2 + 309 bytes).
const CTRL_BUF: usize = 512;
/// Where the ack byte lives in the command buffer.
const CTRL_ACK: usize = CTRL_BUF - 1;
/// The longest command data `submit` takes (after class and command).
pub const CTRL_MAX_DATA: usize = CTRL_ACK - 2;

impl CtrlQueue {
    pub fn new(dma: &dyn DmaAlloc, index: u16, size: u16) -> Option<CtrlQueue> {
        let mut queue = SplitQueue::new(dma, size, false).ok()?;
        // Polled: the driver waits for the answer.
        queue.disable_interrupts();
        Some(CtrlQueue { index, queue, mem: dma.alloc(CTRL_BUF, 64)? })
    }

    pub fn queue(&self) -> &SplitQueue<()> {
        &self.queue
    }

    /// Whether a command is with the device.
    pub fn busy(&self) -> bool {
        self.queue.in_flight() > 0
    }

    /// Queues `{class, command, data}` with a device-writable ack byte and
    /// notifies the device if it asks.
    pub fn submit(&mut self, class: u8, command: u8, data: &[u8], bell: &dyn Doorbell) -> Result<(), CtrlError> {
        if self.busy() {
            return Err(CtrlError::Busy);
        }
        let len = 2 + data.len();
        if len > CTRL_ACK {
            return Err(CtrlError::TooLong);
        }
        self.mem.write_u8(0, class);
        self.mem.write_u8(1, command);
        self.mem.write_bytes(2, data);
        // 0xff: no answer yet.
        self.mem.write_u8(CTRL_ACK, 0xff);
        let cmd = Segment { phys: self.mem.phys(), len: len as u32, writable: false };
        let ack = Segment { phys: self.mem.phys() + CTRL_ACK as u64, len: 1, writable: true };
        self.queue.add(&[cmd, ack], ()).map_err(|(e, ())| CtrlError::Queue(e))?;
        if self.queue.publish() {
            bell.ring(self.index);
        }
        Ok(())
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

    /// `VQ_PAIRS_SET`.
    pub fn pairs_set(&mut self, pairs: u16, bell: &dyn Doorbell) -> Result<(), CtrlError> {
        self.submit(ctrl::CLASS_MQ, ctrl::MQ_VQ_PAIRS_SET, &pairs.to_le_bytes(), bell)
    }

    /// `RSS_CONFIG` (only with VIRTIO_NET_F_RSS negotiated, after
    /// DRIVER_OK). Checked and encoded by [`encode_rss_config`]; a
    /// configuration beyond [`CTRL_MAX_DATA`] bytes is `TooLong`.
    ///
    /// QEMU (7.2, `virtio_net_handle_mq`) turns RSS off at the start of
    /// *every* MQ command, VQ_PAIRS_SET included, and an accepted RSS_CONFIG
    /// sets the active pairs to `max_tx_vq` itself: send RSS_CONFIG instead
    /// of VQ_PAIRS_SET, or after it, never before it. A refused RSS_CONFIG
    /// leaves RSS off and the pair count unchanged.
    pub fn rss_config(&mut self, cfg: &RssConfig, bell: &dyn Doorbell) -> Result<(), CtrlError> {
        let mut data = [0u8; CTRL_MAX_DATA];
        let len = encode_rss_config(cfg, &mut data)?;
        self.submit(ctrl::CLASS_MQ, ctrl::MQ_RSS_CONFIG, &data[..len], bell)
    }
}

/// The data of an `RSS_CONFIG` command (`virtio_net_rss_config`).
///
/// Queue numbers (`table` entries and `unclassified`) are *pair indices*
/// k = 0..pairs-1, i.e. receiveq(k+1), virtqueue 2k: the spec's `rss_rq_id`
/// holds "bits 1 to 16 of the virtqueue index" (virtio spec, "Setting RSS
/// parameters": value 3 is virtqueue 6, receiveq4), and QEMU steers a
/// packet to `qemu_get_subqueue(nic, table[hash & mask])`, the pair's
/// subqueue (hw/net/virtio-net.c, `virtio_net_process_rss`); Linux fills the
/// table with `i % queue_pairs`. Not the virtqueue index 2k.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RssConfig<'a> {
    /// `net::hash_type` bits; only types in the device's
    /// `supported_hash_types`. QEMU refuses types without a key.
    pub hash_types: u32,
    /// The indirection table: the pair each `hash & (len - 1)` goes to.
    /// Its length is a power of two, at most the device's
    /// `rss_max_table_len` (QEMU: 128).
    pub table: &'a [u16],
    /// The pair for packets the device computed no hash for.
    pub unclassified: u16,
    /// How many transmit queues the driver uses (transmitq1..max_tx_vq).
    /// QEMU 7.2 also takes it as the number of active pairs, so every
    /// receive pair named above must be below it (checked).
    pub max_tx_vq: u16,
    /// The Toeplitz key, at most the device's `rss_max_key_size` (QEMU: 40).
    pub key: &'a [u8],
}

impl RssConfig<'_> {
    /// The encoded length: hash_types, mask, unclassified, table, max_tx_vq,
    /// key length, key.
    pub fn encoded_len(&self) -> usize {
        4 + 2 + 2 + 2 * self.table.len() + 2 + 1 + self.key.len()
    }
}

/// Largest table and pair count the wire format carries: the mask is le16,
/// and `rss_rq_id` has 15 bits (its top bit is reserved, zero); the spec
/// bounds pairs to 0x8000 as well.
const RSS_MAX_ENTRIES: usize = 0x8000;

/// Checks what the format and the spec require of an RSS configuration,
/// before anything is written.
fn check_rss(cfg: &RssConfig) -> Result<(), CtrlError> {
    if cfg.max_tx_vq == 0 || cfg.max_tx_vq as usize > RSS_MAX_ENTRIES {
        return Err(CtrlError::Invalid("max_tx_vq must be 1..=0x8000"));
    }
    if !cfg.table.len().is_power_of_two() || cfg.table.len() > RSS_MAX_ENTRIES {
        return Err(CtrlError::Invalid("indirection table length must be a power of two, 1..=0x8000"));
    }
    if cfg.key.len() > u8::MAX as usize {
        return Err(CtrlError::Invalid("RSS key longer than 255 bytes"));
    }
    // The driver must name only enabled receive queues; with QEMU 7.2 those
    // are the first max_tx_vq pairs. A packet steered beyond would sit on a
    // disabled queue.
    if cfg.unclassified >= cfg.max_tx_vq || cfg.table.iter().any(|&q| q >= cfg.max_tx_vq) {
        return Err(CtrlError::Invalid("RSS queue beyond max_tx_vq pairs"));
    }
    Ok(())
}

/// Encodes `cfg` as the data of an `RSS_CONFIG` command into `out`; returns
/// the length written ([`RssConfig::encoded_len`]). Little-endian:
/// le32 hash_types, le16 indirection_table_mask (len - 1), le16
/// unclassified_queue, `le16 indirection_table[len]`, le16 max_tx_vq, u8
/// hash_key_length, key. `Invalid` when `cfg` breaks a rule (see
/// [`RssConfig`]), `TooLong` when `out` is too short.
pub fn encode_rss_config(cfg: &RssConfig, out: &mut [u8]) -> Result<usize, CtrlError> {
    check_rss(cfg)?;
    let len = cfg.encoded_len();
    let out = out.get_mut(..len).ok_or(CtrlError::TooLong)?;
    let mut w = Writer { out, at: 0 };
    w.put(&cfg.hash_types.to_le_bytes());
    // Both fit a u16: checked above.
    w.put(&((cfg.table.len() - 1) as u16).to_le_bytes());
    w.put(&cfg.unclassified.to_le_bytes());
    for entry in cfg.table {
        w.put(&entry.to_le_bytes());
    }
    w.put(&cfg.max_tx_vq.to_le_bytes());
    w.put(&[cfg.key.len() as u8]);
    w.put(cfg.key);
    Ok(w.at)
}

/// Spreads `pairs` pairs over an indirection table round robin (entry i
/// is pair i % pairs), as Linux does by default: with a table length that
/// is a multiple of `pairs`, each pair gets the same share of hashes.
/// `pairs` 0 is taken as 1.
pub fn spread_rss_table(table: &mut [u16], pairs: u16) {
    let pairs = pairs.max(1) as usize;
    for (i, entry) in table.iter_mut().enumerate() {
        *entry = (i % pairs) as u16;
    }
}

/// Appends bytes to a slice sized beforehand.
struct Writer<'a> {
    out: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.out[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
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
    use std::cell::RefCell;

    #[derive(Default)]
    struct Bell(RefCell<Vec<u16>>);
    impl Doorbell for Bell {
        fn ring(&self, queue: u16) {
            self.0.borrow_mut().push(queue);
        }
    }
    impl Bell {
        fn rings(&self) -> usize {
            self.0.borrow().len()
        }
    }

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
        let bell = Bell::default();
        let mut rx = RxQueue::new(&dma, 0, 8, true, true).unwrap();
        let mut dev = FakeDeviceQueue::new(&dma, rx.queue());
        rx.refill(&bell);
        assert_eq!(bell.rings(), 1, "the device asked about entry 0");
        for i in 0..20u8 {
            let (head, segs) = dev.pop_avail().expect("a posted buffer");
            assert_eq!(segs[0].len as usize, BUF_SIZE);
            let n = dev.fill(&segs, &with_header(&ethernet(60 + i as usize, i), 1));
            dev.push_used(head as u32, n);
            let frame = rx.next_frame().expect("a frame");
            assert_eq!(frame.len(), 60 + i as usize);
            assert!(frame.iter().all(|&b| b == i));
            rx.release();
            rx.refill(&bell);
        }
        assert_eq!(rx.next_frame(), None);
        let s = rx.stats();
        assert_eq!((s.packets, s.bytes, s.merged), (20, (60..80).sum::<u64>(), 0));
        assert_eq!(s.drop_header + s.drop_bad_id + s.drop_bad_len + s.drop_merge, 0);
    }

    /// Completes the next posted buffers with `data` spread over `count`
    /// buffers (the header says `num_buffers`), as a device does with
    /// MRG_RXBUF: one used entry per buffer, published together.
    fn complete_merged(dev: &mut FakeDeviceQueue, data: &[u8], count: usize, num_buffers: u16) {
        let mut packet = with_header(data, num_buffers);
        let mut parts = Vec::new();
        for i in 0..count {
            let (head, segs) = dev.pop_avail().expect("posted buffer");
            let take = if i + 1 == count { packet.len() } else { BUF_SIZE.min(packet.len()) };
            let rest = packet.split_off(take);
            let n = dev.fill(&segs, &packet);
            parts.push((head, n));
            packet = rest;
        }
        for (head, n) in parts {
            dev.write_used(head as u32, n);
        }
        let idx = dev.used_idx;
        dev.set_used_idx(idx);
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn frames_spanning_two_and_three_buffers_are_joined() {
        let dma = TestDma::default();
        let bell = Bell::default();
        let mut rx = RxQueue::new(&dma, 0, 8, true, true).unwrap();
        let mut dev = FakeDeviceQueue::new(&dma, rx.queue());
        rx.refill(&bell);
        for (len, count) in [(3000usize, 2usize), (4042, 2), (5000, 3), (100, 1), (2 * BUF_SIZE - HDR_LEN, 2)] {
            let data = pattern(len);
            complete_merged(&mut dev, &data, count, count as u16);
            let frame = rx.next_frame().expect("a joined frame");
            assert_eq!(frame.len(), len);
            assert!(frame == data.as_slice(), "{len}-byte frame over {count} buffers joined in order");
            rx.release();
            assert_eq!(rx.next_frame(), None, "continuation buffers are not frames of their own");
            rx.refill(&bell);
        }
        let s = rx.stats();
        assert_eq!((s.packets, s.merged), (5, 4));
        assert_eq!(s.drop_header + s.drop_merge + s.drop_too_long + s.drop_bad_id + s.drop_bad_len, 0);
        assert_eq!(rx.queue().in_flight(), 8, "every buffer posted again");
    }

    #[test]
    fn a_lying_num_buffers_is_dropped_and_counted() {
        let dma = TestDma::default();
        let bell = Bell::default();
        let mut rx = RxQueue::new(&dma, 0, 8, true, true).unwrap();
        let mut dev = FakeDeviceQueue::new(&dma, rx.queue());
        rx.refill(&bell);
        // Says 3 buffers, returns 2: the head is dropped; its continuation,
        // read as a frame of its own, has payload bytes for a header (a GSO
        // type here) and is dropped as well. Never garbage handed out.
        complete_merged(&mut dev, &pattern(3000), 2, 3);
        assert_eq!(rx.next_frame(), None);
        let s = rx.stats();
        assert_eq!((s.drop_merge, s.drop_header + s.drop_offload, s.packets), (1, 1, 0));
        // Says 0 buffers.
        rx.refill(&bell);
        complete_merged(&mut dev, &pattern(100), 1, 0);
        assert_eq!(rx.next_frame(), None);
        // Says 9: more than the ring has.
        rx.refill(&bell);
        complete_merged(&mut dev, &pattern(100), 1, 9);
        assert_eq!(rx.next_frame(), None);
        assert_eq!(rx.stats().drop_merge, 3);
        // The queue keeps working, with every buffer accounted for.
        rx.refill(&bell);
        complete_merged(&mut dev, &pattern(200), 1, 1);
        assert_eq!(rx.next_frame().map(|f| f.len()), Some(200));
        rx.release();
        rx.refill(&bell);
        assert_eq!(rx.queue().in_flight(), 8);
    }

    #[test]
    fn a_joined_frame_beyond_the_maximum_is_dropped() {
        let dma = TestDma::default();
        let bell = Bell::default();
        let mut rx = RxQueue::new(&dma, 0, 64, true, true).unwrap();
        let mut dev = FakeDeviceQueue::new(&dma, rx.queue());
        rx.refill(&bell);
        let count = MAX_RX_FRAME / BUF_SIZE + 2;
        complete_merged(&mut dev, &pattern(count * BUF_SIZE - HDR_LEN), count, count as u16);
        complete_merged(&mut dev, &pattern(64), 1, 1);
        assert_eq!(rx.next_frame().map(|f| f.len()), Some(64), "the next frame is intact");
        rx.release();
        let s = rx.stats();
        assert_eq!((s.drop_too_long, s.packets), (1, 1));
    }

    #[test]
    fn without_mrg_rxbuf_num_buffers_is_ignored() {
        let dma = TestDma::default();
        let bell = Bell::default();
        let mut rx = RxQueue::new(&dma, 0, 8, true, false).unwrap();
        let mut dev = FakeDeviceQueue::new(&dma, rx.queue());
        rx.refill(&bell);
        complete_merged(&mut dev, &pattern(100), 1, 0);
        assert_eq!(rx.next_frame().map(|f| f.len()), Some(100));
    }

    #[test]
    fn malformed_receive_completions_are_dropped_and_counted() {
        let dma = TestDma::default();
        let bell = Bell::default();
        let mut rx = RxQueue::new(&dma, 0, 8, false, true).unwrap();
        let mut dev = FakeDeviceQueue::new(&dma, rx.queue());
        rx.refill(&bell);
        let mut complete = |data: &[u8], len_override: Option<u32>| {
            let (head, segs) = dev.pop_avail().unwrap();
            let n = dev.fill(&segs, data);
            dev.push_used(head as u32, len_override.unwrap_or(n));
        };
        complete(&[0u8; 5], None); // shorter than the header
        complete(&with_header(&ethernet(60, 1), 1), Some(BUF_SIZE as u32 + 1)); // longer than the buffer
        let mut gso = with_header(&ethernet(60, 1), 1);
        gso[1] = 1; // GSO TCPv4, not negotiated
        complete(&gso, None);
        let mut partial = with_header(&ethernet(60, 1), 1);
        partial[0] = 1; // NEEDS_CSUM, not negotiated
        complete(&partial, None);
        complete(&with_header(&ethernet(64, 9), 1), None); // good
        dev.push_used(1000, 64); // not a descriptor
        let frame = rx.next_frame().unwrap();
        assert_eq!(frame.len(), 64);
        rx.release();
        assert_eq!(rx.next_frame(), None);
        let s = rx.stats();
        assert_eq!((s.drop_header, s.drop_offload, s.drop_bad_len, s.drop_bad_id, s.packets), (1, 2, 1, 1, 1));
        // Every buffer came back and can be posted again.
        rx.refill(&bell);
        assert_eq!(rx.queue().num_free(), 0);
    }

    /// QEMU (like any EVENT_IDX device) sets avail_event to the next entry
    /// it will take: a refill notifies, and counts as starved, only once
    /// the device has taken every posted buffer.
    #[test]
    fn a_refill_counts_as_starved_only_when_the_device_took_every_buffer() {
        let dma = TestDma::default();
        let bell = Bell::default();
        let mut rx = RxQueue::new(&dma, 0, 4, true, true).unwrap();
        let mut dev = FakeDeviceQueue::new(&dma, rx.queue());
        rx.refill(&bell);
        assert_eq!(rx.starved_refills(), 1, "the device had nothing before the first posting");
        let mut taken = 0u16;
        let mut take = |dev: &mut FakeDeviceQueue, rx: &mut RxQueue, n: usize| {
            for _ in 0..n {
                let (head, segs) = dev.pop_avail().expect("a posted buffer");
                taken = taken.wrapping_add(1);
                dev.set_avail_event(taken);
                let len = dev.fill(&segs, &with_header(&ethernet(60, 1), 1));
                dev.push_used(head as u32, len);
            }
            while rx.next_frame().is_some() {
                rx.release();
            }
        };
        // Three of four taken: the device still holds one buffer.
        take(&mut dev, &mut rx, 3);
        let rings = bell.rings();
        rx.refill(&bell);
        assert_eq!((rx.starved_refills(), bell.rings()), (1, rings));
        // All taken (four posted since): the device asked, the refill rings.
        take(&mut dev, &mut rx, 4);
        rx.refill(&bell);
        assert_eq!((rx.starved_refills(), bell.rings()), (2, rings + 1));
    }

    #[test]
    fn a_receive_ring_that_ran_dry_is_renotified_at_refill() {
        let dma = TestDma::default();
        let bell = Bell::default();
        let mut rx = RxQueue::new(&dma, 0, 4, true, true).unwrap();
        let mut dev = FakeDeviceQueue::new(&dma, rx.queue());
        rx.refill(&bell);
        // The device fills every buffer; its avail_event (stale, as the
        // driver sees it) does not ask for a notification.
        dev.set_avail_event(100);
        while let Some((h, segs)) = dev.pop_avail() {
            let n = dev.fill(&segs, &with_header(&ethernet(60, 3), 1));
            dev.push_used(h as u32, n);
        }
        while rx.next_frame().is_some() {
            rx.release();
        }
        let before = bell.rings();
        rx.refill(&bell);
        assert_eq!(bell.rings(), before + 1, "dry ring: notified without waiting for a packet");
        assert_eq!(rx.stats().rescues, 1);
        assert_eq!(rx.starved_refills(), 2, "the first posting, then the dry ring");
    }

    #[test]
    fn transmit_writes_header_and_frame_and_reclaims() {
        let dma = TestDma::default();
        let bell = Bell::default();
        let mut tx = TxQueue::new(&dma, 1, 4, false).unwrap();
        let mut dev = FakeDeviceQueue::new(&dma, tx.queue());
        for round in 0..10u8 {
            for i in 0..4u8 {
                tx.send(100, &bell, |b| b.fill(round ^ i)).expect("room");
            }
            assert!(tx.send(100, &bell, |_| ()).is_none(), "full");
            while let Some((head, segs)) = dev.pop_avail() {
                let bytes = dev.read(&segs);
                assert_eq!(bytes.len(), HDR_LEN + 100);
                assert!(bytes[..HDR_LEN].iter().all(|&b| b == 0));
                assert!(bytes[HDR_LEN..].iter().all(|&b| b == bytes[HDR_LEN]));
                dev.push_used(head as u32, 0);
            }
        }
        let s = tx.stats();
        assert_eq!((s.packets, s.full), (40, 10));
        assert!(s.kicks >= 40, "without EVENT_IDX or NO_NOTIFY every publish notifies");
        assert!(tx.send(MAX_FRAME + 1, &bell, |_| ()).is_none(), "oversized frames are refused");
        assert_eq!(tx.stats().drop_too_long, 1);
    }

    /// With checksum offload an IPv4 TCP frame leaves with NEEDS_CSUM,
    /// csum_start after the IP header and the TCP checksum's offset; an ARP
    /// frame, or any frame with offload off, leaves with a zero header.
    #[test]
    fn checksum_offload_marks_tcp_frames_only() {
        let tcp = |b: &mut [u8]| {
            b.fill(0);
            b[12..14].copy_from_slice(&[0x08, 0x00]);
            b[14] = 0x45;
            b[16..18].copy_from_slice(&40u16.to_be_bytes());
            b[23] = 6;
        };
        let arp = |b: &mut [u8]| {
            b.fill(0);
            b[12..14].copy_from_slice(&[0x08, 0x06]);
        };
        for (offload, frame, want) in [
            (true, tcp as fn(&mut [u8]), Some((34u16, 16u16))),
            (true, arp as fn(&mut [u8]), None),
            (false, tcp as fn(&mut [u8]), None),
        ] {
            let dma = TestDma::default();
            let bell = Bell::default();
            let mut tx = TxQueue::new(&dma, 1, 4, false).unwrap();
            tx.set_csum_offload(offload);
            let mut dev = FakeDeviceQueue::new(&dma, tx.queue());
            tx.send(54, &bell, frame).expect("room");
            let (_, segs) = dev.pop_avail().expect("a frame");
            let bytes = dev.read(&segs);
            let header = &bytes[..HDR_LEN];
            match want {
                Some((start, offset)) => {
                    assert_eq!(header[hdr::FLAGS], hdr::F_NEEDS_CSUM);
                    assert_eq!(u16::from_le_bytes([header[6], header[7]]), start);
                    assert_eq!(u16::from_le_bytes([header[8], header[9]]), offset);
                    assert_eq!(header[hdr::GSO_TYPE], hdr::GSO_NONE);
                    assert_ne!(&bytes[HDR_LEN + 50..HDR_LEN + 52], &[0, 0], "the pseudo-header sum is in place");
                }
                None => assert!(header.iter().all(|&b| b == 0), "offload {offload}: {header:?}"),
            }
        }
    }

    /// A transmit queue with checksum offload and TSO on, and its device end.
    fn tso_queue(dma: &TestDma) -> (TxQueue, FakeDeviceQueue<'_>) {
        let mut tx = TxQueue::new(dma, 1, 64, false).unwrap();
        tx.set_csum_offload(true);
        assert!(tx.set_tso(dma, BOTH));
        let dev = FakeDeviceQueue::new(dma, tx.queue());
        (tx, dev)
    }

    const BOTH: TxTso = TxTso { v4: true, v6: true };

    /// HOST_TSO4 and HOST_TSO6: a 64 KiB TCP segment leaves whole, in one
    /// large buffer, with the header the device needs to cut it (gso_type,
    /// gso_size, hdr_len) and its checksum left for the device to finish.
    #[test]
    fn a_64_kib_tcp_segment_leaves_whole_for_the_device_to_cut() {
        use super::super::csum::frames::{checksummed_v4, checksummed_v6, device_finishes, segment};
        let dma = TestDma::default();
        let bell = Bell::default();
        let (mut tx, mut dev) = tso_queue(&dma);
        // (IP version, the frame, gso_type, headers' length)
        let mut l4 = segment(65_535 - 20, 3);
        l4[12] = 0x50; // a 20-byte TCP header
        let v4 = checksummed_v4(6, &l4);
        assert_eq!(v4.len(), MAX_TSO_FRAME);
        let mut l4 = segment(65_535 - 40, 4);
        l4[12] = 0x80; // a 32-byte TCP header (timestamps)
        let v6 = checksummed_v6(6, &l4);
        assert_eq!(v6.len(), MAX_TSO_FRAME);
        for (n, (version, want, gso_type, headers)) in
            [(4, v4, hdr::GSO_TCPV4, 14 + 20 + 20), (6, v6, hdr::GSO_TCPV6, 14 + 40 + 32)].into_iter().enumerate()
        {
            let start = if version == 4 { 34 } else { 54 };
            let mut stack_wrote = want.clone();
            stack_wrote[start + 16..start + 18].fill(0); // a stack with TCP checksums offloaded
            tx.send_segmented(want.len(), Some(1448), &bell, |b| b.copy_from_slice(&stack_wrote)).expect("sent");
            let (_, segs) = dev.pop_avail().expect("a frame");
            assert_eq!(segs.len(), 1, "IPv{version}: one descriptor");
            let mut bytes = dev.read(&segs);
            let h = &bytes[..HDR_LEN];
            assert_eq!((h[hdr::FLAGS], h[hdr::GSO_TYPE]), (hdr::F_NEEDS_CSUM, gso_type), "IPv{version}");
            assert_eq!((le16(h, hdr::HDR_LEN), le16(h, hdr::GSO_SIZE)), (headers, 1448), "IPv{version}");
            assert_eq!((le16(h, hdr::CSUM_START), le16(h, hdr::CSUM_OFFSET)), (start as u16, 16), "IPv{version}");
            let frame = &mut bytes[HDR_LEN..];
            device_finishes(frame, start as u16, 16);
            assert!(
                frame == want.as_slice(),
                "IPv{version}: the device's checksum is the one a stack would have computed"
            );
            let s = tx.stats();
            let sent = n as u64 + 1;
            assert_eq!((s.large, s.packets, s.bytes, s.drop_too_long), (sent, sent, sent * MAX_TSO_FRAME as u64, 0));
        }
        // An ordinary frame still goes in an ordinary buffer, with no GSO.
        let small = checksummed_v4(6, &segment(100, 4));
        tx.send_segmented(small.len(), Some(1448), &bell, |b| b.copy_from_slice(&small)).expect("sent");
        let (_, segs) = dev.pop_avail().expect("a frame");
        assert!(segs[0].len as usize <= BUF_SIZE);
        assert_eq!(dev.read(&segs)[hdr::GSO_TYPE], hdr::GSO_NONE);
    }

    /// Large buffers come back to their own pool; while every one of them
    /// is with the device the queue says it has no room (the next frame
    /// might be long), and it has again once the device returns one.
    #[test]
    fn large_buffers_are_recycled_and_bound_the_room() {
        use super::super::csum::frames::{checksummed_v4, segment};
        let dma = TestDma::default();
        let bell = Bell::default();
        let (mut tx, mut dev) = tso_queue(&dma);
        let big = checksummed_v4(6, &segment(20_000, 5));
        let mut heads = Vec::new();
        for round in 0..3 {
            for _ in 0..TSO_BUFFERS {
                assert!(tx.has_room(&bell), "round {round}");
                tx.send_segmented(big.len(), Some(1000), &bell, |b| b.copy_from_slice(&big)).expect("sent");
                heads.push(dev.pop_avail().expect("posted").0);
            }
            assert!(!tx.has_room(&bell), "every large buffer is with the device");
            assert_eq!(tx.send(60, &bell, |b| b.fill(0)), None);
            for h in heads.drain(..) {
                dev.push_used(u32::from(h), 0);
            }
            assert!(tx.has_room(&bell));
        }
        assert_eq!(tx.stats().large, 3 * u64::from(TSO_BUFFERS));
    }

    /// The large buffers share the ring's descriptors: with fewer
    /// descriptors than buffers, the queue says it has no room once the
    /// descriptors are gone, whatever buffers are left.
    #[test]
    fn room_counts_descriptors_as_well_as_buffers() {
        use super::super::csum::frames::{checksummed_v4, segment};
        let dma = TestDma::default();
        let bell = Bell::default();
        let mut tx = TxQueue::new(&dma, 1, 8, false).unwrap();
        tx.set_csum_offload(true);
        assert!(tx.set_tso(&dma, TxTso { v4: true, v6: false }));
        let mut dev = FakeDeviceQueue::new(&dma, tx.queue());
        let big = checksummed_v4(6, &segment(5000, 5));
        let small = checksummed_v4(6, &segment(100, 5));
        for i in 0..8 {
            assert!(tx.has_room(&bell), "frame {i}");
            let f = if i % 2 == 0 { &big } else { &small };
            tx.send_segmented(f.len(), Some(1000), &bell, |b| b.copy_from_slice(f)).expect("sent");
        }
        assert!(!tx.has_room(&bell), "8 descriptors in flight");
        assert_eq!(tx.send(60, &bell, |_| panic!("not called")), None);
        let (head, _) = dev.pop_avail().unwrap();
        dev.push_used(u32::from(head), 0);
        assert!(tx.has_room(&bell));
    }

    /// Long frames the device cannot be asked to cut are dropped and
    /// counted, and nothing reaches the ring.
    #[test]
    fn long_frames_that_cannot_be_cut_are_dropped() {
        use super::super::csum::frames::{checksummed_v4, checksummed_v6, segment};
        let dma = TestDma::default();
        let bell = Bell::default();
        let tcp = checksummed_v4(6, &segment(3000, 1));
        let udp = checksummed_v4(17, &segment(3000, 1));
        let tcp6 = checksummed_v6(6, &segment(3000, 1));
        let (v4, v6) = (TxTso { v4: true, v6: false }, TxTso { v4: false, v6: true });
        // (what, TSO, MSS, frame, length: 0 for the frame's own, made ARP)
        type Case<'a> = (&'static str, TxTso, Option<u16>, &'a [u8], usize);
        let cases: [Case; 8] = [
            ("TSO off", TxTso::NONE, Some(1448), &tcp, tcp.len()),
            ("no MSS", BOTH, None, &tcp, tcp.len()),
            ("MSS 0", BOTH, Some(0), &tcp, tcp.len()),
            ("UDP", BOTH, Some(1448), &udp, udp.len()),
            ("ARP-typed", BOTH, Some(1448), &tcp[..], 0),
            ("beyond 64 KiB", BOTH, Some(1448), &tcp, MAX_TSO_FRAME + 1),
            ("IPv6 without HOST_TSO6", v4, Some(1448), &tcp6, tcp6.len()),
            ("IPv4 without HOST_TSO4", v6, Some(1448), &tcp, tcp.len()),
        ];
        for (what, tso, mss, frame, len) in cases {
            let mut tx = TxQueue::new(&dma, 1, 8, false).unwrap();
            tx.set_csum_offload(true);
            assert_eq!(tx.set_tso(&dma, tso), tso.any(), "{what}");
            assert_eq!(tx.tso(), tso, "{what}");
            let mut dev = FakeDeviceQueue::new(&dma, tx.queue());
            let (len, arp) = if len == 0 { (frame.len(), true) } else { (len, false) };
            let sent = tx.send_segmented(len, mss, &bell, |b| {
                let n = frame.len().min(b.len());
                b[..n].copy_from_slice(&frame[..n]);
                if arp {
                    b[12..14].copy_from_slice(&[0x08, 0x06]);
                }
            });
            // Refused before `fill` when the header says enough; after it
            // (what it wrote is no TCP segment), dropped all the same.
            let after_fill = what == "UDP" || what.starts_with("IPv") || arp;
            assert_eq!(sent, after_fill.then_some(()), "{what}");
            assert_eq!((tx.stats().drop_too_long, tx.stats().packets), (1, 0), "{what}");
            assert!(dev.pop_avail().is_none(), "{what}");
            assert!(tx.has_room(&bell), "{what}: its buffer is free again");
        }
    }

    /// Batched transmit: frames queued in a poll round reach the device
    /// together, at the round's end, with one notification; a ring that
    /// fills publishes by itself, so the device can free it.
    #[test]
    fn batched_transmit_publishes_once_per_round() {
        let dma = TestDma::default();
        let bell = Bell::default();
        let mut tx = TxQueue::new(&dma, 1, 8, false).unwrap();
        let mut dev = FakeDeviceQueue::new(&dma, tx.queue());
        tx.set_batched(true, &bell);
        for i in 0..5u8 {
            tx.send(60, &bell, |b| b.fill(i)).expect("room");
        }
        assert!(dev.pop_avail().is_none(), "nothing visible before the round ends");
        assert_eq!(bell.0.borrow().len(), 0);
        tx.publish(&bell);
        assert_eq!(bell.0.borrow().len(), 1, "one notification for five frames");
        let mut seen = 0;
        while let Some((head, segs)) = dev.pop_avail() {
            assert_eq!(dev.read(&segs)[HDR_LEN], seen);
            dev.push_used(head as u32, 0);
            seen += 1;
        }
        assert_eq!(seen, 5);
        tx.publish(&bell);
        assert_eq!(bell.0.borrow().len(), 1, "nothing new: no notification");
        // A round that fills the ring: the frames are published when it is
        // found full, not left invisible behind a full ring.
        tx.reclaim();
        for i in 0..8u8 {
            tx.send(60, &bell, |b| b.fill(i)).expect("room");
        }
        assert!(!tx.has_room(&bell));
        assert_eq!(std::iter::from_fn(|| dev.pop_avail()).count(), 8, "published when full");
        assert_eq!(tx.stats().packets, 13);
    }

    /// The transmit stall: the device misses the notification for frame 3
    /// (it went idle having asked about entry 3, the driver read a stale
    /// `avail_event`), the ring fills, and from then on every send finds it
    /// full. The full-ring path must notify the device again and ask for one
    /// completion interrupt.
    #[test]
    fn a_missed_transmit_notification_is_rescued_when_the_ring_fills() {
        let dma = TestDma::default();
        let bell = Bell::default();
        let mut tx = TxQueue::new(&dma, 1, 8, true).unwrap();
        let mut dev = FakeDeviceQueue::new(&dma, tx.queue());
        for _ in 0..3 {
            tx.send(60, &bell, |_| ()).unwrap();
        }
        while let Some((h, _)) = dev.pop_avail() {
            dev.push_used(h as u32, 0);
        }
        // The device now waits for entry 3; the driver's view of
        // avail_event is stale (0) so nothing below notifies it.
        let kicks_before = bell.rings();
        let mut sent = 0;
        while tx.send(60, &bell, |_| ()).is_some() {
            sent += 1;
            dev.set_avail_event(0);
        }
        assert_eq!(sent, 8, "3 reclaimed + 5 free");
        let s = tx.stats();
        assert_eq!(s.full, 1);
        assert_eq!(s.rescues, 1, "the full ring notified the device");
        assert_eq!(bell.rings(), kicks_before + 1);
        assert_eq!(dev.used_event(), 3 + 6, "one interrupt after 6 of the 8 in flight complete");
        // Still full: no second rescue for the same episode.
        assert!(tx.send(60, &bell, |_| ()).is_none());
        assert_eq!(tx.stats().rescues, 1);
        // The notified device sends everything; room again, interrupts off.
        let mut fired = false;
        while let Some((h, _)) = dev.pop_avail() {
            let old = dev.used_idx;
            dev.push_used(h as u32, 0);
            fired |= dev.interrupt_due(old);
        }
        assert!(fired, "the completion interrupt came");
        assert!(tx.send(60, &bell, |_| ()).is_some());
        let old = dev.used_idx;
        let (h, _) = dev.pop_avail().unwrap();
        dev.push_used(h as u32, 0);
        assert!(!dev.interrupt_due(old), "interrupts off again after the rescue");
    }

    #[test]
    fn a_missed_transmit_notification_is_rescued_by_the_watchdog() {
        let dma = TestDma::default();
        let bell = Bell::default();
        let mut tx = TxQueue::new(&dma, 1, 8, true).unwrap();
        let mut dev = FakeDeviceQueue::new(&dma, tx.queue());
        tx.send(60, &bell, |_| ()).unwrap();
        let (h, _) = dev.pop_avail().unwrap();
        dev.push_used(h as u32, 0);
        // A frame published without a notification the device needed.
        dev.set_avail_event(0);
        tx.send(60, &bell, |_| ()).unwrap();
        assert!(tx.needs_watchdog());
        let rings = bell.rings();
        assert_eq!(tx.watchdog_tick(&bell), Watchdog::Progress, "the first tick only looks");
        assert_eq!(tx.watchdog_tick(&bell), Watchdog::Silent);
        assert_eq!(bell.rings(), rings + 1, "no progress for a tick: notified again");
        assert_eq!(tx.stats().watchdog, 1);
        // The device now sends it.
        let (h, _) = dev.pop_avail().expect("visible after the notification");
        dev.push_used(h as u32, 0);
        assert_eq!(tx.watchdog_tick(&bell), Watchdog::Idle, "reclaimed: nothing left to watch");
        assert!(!tx.needs_watchdog());
    }

    #[test]
    fn a_silent_device_is_reported_and_not_hammered() {
        let dma = TestDma::default();
        let bell = Bell::default();
        let mut tx = TxQueue::new(&dma, 1, 8, true).unwrap();
        while tx.send(60, &bell, |_| ()).is_some() {}
        let rings = bell.rings();
        let mut verdicts = Vec::new();
        for _ in 0..100 {
            verdicts.push(tx.watchdog_tick(&bell));
        }
        let stalled: Vec<usize> =
            verdicts.iter().enumerate().filter(|(_, v)| matches!(v, Watchdog::Stalled(_))).map(|(i, _)| i).collect();
        assert_eq!(stalled, [STALL_TICKS as usize], "reported once");
        if let Watchdog::Stalled(state) = verdicts[STALL_TICKS as usize] {
            assert_eq!((state.in_flight, state.used_idx), (8, 0));
        }
        // Notified on silent ticks 1, 2, 4, 8, 16, 32, 64: backing off.
        assert_eq!(bell.rings() - rings, 7);
        assert_eq!(tx.stats().watchdog, 7);
    }

    #[test]
    fn flush_before_idle_notifies_only_when_the_device_may_not_know() {
        let dma = TestDma::default();
        let bell = Bell::default();
        let mut tx = TxQueue::new(&dma, 1, 8, true).unwrap();
        let mut dev = FakeDeviceQueue::new(&dma, tx.queue());
        tx.send(60, &bell, |_| ()).unwrap(); // asked: notified
        assert!(!tx.flush(&bell), "everything was notified");
        tx.send(60, &bell, |_| ()).unwrap(); // not asked
        assert!(!tx.flush(&bell), "the device still holds notified work and will look again");
        let (h, _) = dev.pop_avail().unwrap();
        dev.push_used(h as u32, 0);
        assert!(tx.flush(&bell), "done with what it heard of: tell it about the rest");
        assert!(!tx.flush(&bell));
        assert_eq!(tx.stats().rescues, 1);
    }

    #[test]
    fn control_commands_one_at_a_time() {
        let dma = TestDma::default();
        let bell = Bell::default();
        let mut ctrl = CtrlQueue::new(&dma, 8, 16).unwrap();
        let mut dev = FakeDeviceQueue::new(&dma, ctrl.queue());
        for (answer, expected) in [(ctrl::OK, CtrlResult::Ok), (ctrl::ERR, CtrlResult::Refused(1))] {
            ctrl.pairs_set(4, &bell).unwrap();
            let (head, segs) = dev.pop_avail().unwrap();
            assert_eq!(dev.read(&segs), [ctrl::CLASS_MQ, ctrl::MQ_VQ_PAIRS_SET, 4, 0]);
            assert_eq!(segs.iter().filter(|s| s.writable).map(|s| s.len).sum::<u32>(), 1);
            assert_eq!(ctrl.poll(), None, "no answer yet");
            assert_eq!(ctrl.pairs_set(2, &bell), Err(CtrlError::Busy), "the first is still with the device");
            dev.fill(&segs, &[answer]);
            dev.push_used(head as u32, 1);
            assert_eq!(ctrl.poll(), Some(expected));
            assert!(!ctrl.busy());
        }
        // A device that completes without writing the ack.
        ctrl.pairs_set(2, &bell).unwrap();
        let (head, _) = dev.pop_avail().unwrap();
        dev.push_used(head as u32, 0);
        assert_eq!(ctrl.poll(), Some(CtrlResult::NoAnswer));
        assert_eq!(ctrl.submit(1, 2, &[0; CTRL_MAX_DATA + 1], &bell), Err(CtrlError::TooLong));
        // One that never answers: the command stays in flight.
        ctrl.pairs_set(3, &bell).unwrap();
        assert_eq!(ctrl.poll(), None);
        assert!(ctrl.busy(), "still with the device: the owner must reset it");
    }

    #[test]
    fn the_longest_command_and_its_ack_do_not_overlap() {
        let dma = TestDma::default();
        let bell = Bell::default();
        let mut ctrl = CtrlQueue::new(&dma, 8, 16).unwrap();
        let mut dev = FakeDeviceQueue::new(&dma, ctrl.queue());
        ctrl.submit(1, 2, &[0xaa; CTRL_MAX_DATA], &bell).unwrap();
        let (head, segs) = dev.pop_avail().unwrap();
        let cmd = dev.read(&segs);
        assert_eq!(cmd.len(), 2 + CTRL_MAX_DATA);
        assert!(cmd[2..].iter().all(|&b| b == 0xaa));
        let (read, ack) = (segs[0], segs[1]);
        assert!(ack.writable && ack.len == 1);
        assert!(ack.phys >= read.phys + u64::from(read.len), "the ack follows the command area");
        dev.fill(&segs, &[ctrl::ERR]);
        dev.push_used(head as u32, 1);
        assert_eq!(ctrl.poll(), Some(CtrlResult::Refused(ctrl::ERR)));
        assert!(dev.read(&segs)[2..].iter().all(|&b| b == 0xaa), "the answer did not land in the command");
    }

    const KEY: [u8; 40] = [
        0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0, 0xd0, 0xca,
        0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b,
        0xbe, 0xac, 0x01, 0xfa,
    ];

    #[test]
    fn rss_config_wire_layout() {
        let cfg = RssConfig {
            hash_types: crate::virtio::net::hash_type::TCPV4 | crate::virtio::net::hash_type::IPV4,
            table: &[0, 1, 2, 1],
            unclassified: 2,
            max_tx_vq: 3,
            key: &[0xa1, 0xa2, 0xa3],
        };
        let mut out = [0xeeu8; 64];
        let n = encode_rss_config(&cfg, &mut out).unwrap();
        #[rustfmt::skip]
        let expected = [
            3, 0, 0, 0,       // hash_types (le32)
            3, 0,             // indirection_table_mask = 4 - 1
            2, 0,             // unclassified_queue: pair 2
            0, 0, 1, 0, 2, 0, 1, 0, // table: pairs, not virtqueue numbers
            3, 0,             // max_tx_vq
            3,                // hash_key_length
            0xa1, 0xa2, 0xa3, // key
        ];
        assert_eq!(&out[..n], &expected);
        assert_eq!(n, cfg.encoded_len());
        assert_eq!(out[n], 0xee, "nothing written past the command");
    }

    #[test]
    fn rss_config_reaches_the_device_exactly() {
        let dma = TestDma::default();
        let bell = Bell::default();
        let mut ctrl = CtrlQueue::new(&dma, 8, 16).unwrap();
        let mut dev = FakeDeviceQueue::new(&dma, ctrl.queue());
        let mut table = [0u16; 128];
        spread_rss_table(&mut table, 4);
        assert_eq!(&table[..6], &[0, 1, 2, 3, 0, 1]);
        let cfg = RssConfig { hash_types: 0x1ff, table: &table, unclassified: 0, max_tx_vq: 4, key: &KEY };
        let mut encoded = [0u8; 512];
        let n = encode_rss_config(&cfg, &mut encoded).unwrap();
        assert_eq!(2 + n, 2 + 4 + 2 + 2 + 256 + 2 + 1 + 40, "309 bytes with class and command");
        for (answer, expected) in [(ctrl::OK, CtrlResult::Ok), (ctrl::ERR, CtrlResult::Refused(ctrl::ERR))] {
            ctrl.rss_config(&cfg, &bell).unwrap();
            let (head, segs) = dev.pop_avail().unwrap();
            let cmd = dev.read(&segs);
            assert_eq!(&cmd[..2], &[ctrl::CLASS_MQ, ctrl::MQ_RSS_CONFIG]);
            assert!(cmd[2..] == encoded[..n], "the device reads exactly the encoded configuration");
            assert_eq!(segs.iter().filter(|s| s.writable).map(|s| s.len).sum::<u32>(), 1);
            assert_eq!(ctrl.rss_config(&cfg, &bell), Err(CtrlError::Busy));
            dev.fill(&segs, &[answer]);
            dev.push_used(head as u32, 1);
            assert_eq!(ctrl.poll(), Some(expected));
        }
    }

    #[test]
    fn rss_configs_breaking_the_rules_are_not_sent() {
        let dma = TestDma::default();
        let bell = Bell::default();
        let mut ctrl = CtrlQueue::new(&dma, 8, 16).unwrap();
        let mut dev = FakeDeviceQueue::new(&dma, ctrl.queue());
        let good = RssConfig { hash_types: 0x3, table: &[0, 1], unclassified: 0, max_tx_vq: 2, key: &KEY };
        let long_key = [0u8; 256];
        let big_table = [0u16; 256];
        let invalid = [
            RssConfig { table: &[], ..good },
            RssConfig { table: &[0, 1, 0], ..good },
            RssConfig { table: &[0, 2], ..good },
            RssConfig { unclassified: 2, ..good },
            RssConfig { max_tx_vq: 0, table: &[0], ..good },
            RssConfig { key: &long_key, ..good },
        ];
        for cfg in invalid {
            assert!(matches!(ctrl.rss_config(&cfg, &bell), Err(CtrlError::Invalid(_))), "{cfg:?}");
        }
        // 256 entries and a 40-byte key: 565 bytes, beyond the buffer.
        assert_eq!(ctrl.rss_config(&RssConfig { table: &big_table, ..good }, &bell), Err(CtrlError::TooLong));
        assert_eq!(encode_rss_config(&good, &mut [0u8; 20]), Err(CtrlError::TooLong), "short output");
        assert!(dev.pop_avail().is_none() && !ctrl.busy(), "nothing reached the device");
        assert_eq!(bell.rings(), 0);
        ctrl.rss_config(&good, &bell).unwrap();
        assert!(dev.pop_avail().is_some());
    }

    /// A 20-byte header: hash_value and hash_report after num_buffers.
    fn with_hash_header(frame: &[u8], num_buffers: u16, hash: u32, report: u16) -> Vec<u8> {
        let mut v = std::vec![0u8; HASH_HDR_LEN];
        v[10..12].copy_from_slice(&num_buffers.to_le_bytes());
        v[12..16].copy_from_slice(&hash.to_le_bytes());
        v[16..18].copy_from_slice(&report.to_le_bytes());
        v[18..20].copy_from_slice(&[0xff, 0xff]); // padding: ignored
        v.extend_from_slice(frame);
        v
    }

    /// Completes the next posted buffers with `packet` (header included)
    /// spread over as many buffers as it needs, published together.
    fn complete_packet(dev: &mut FakeDeviceQueue, packet: &[u8]) {
        let mut parts = Vec::new();
        for chunk in packet.chunks(BUF_SIZE) {
            let (head, segs) = dev.pop_avail().expect("posted buffer");
            parts.push((head, dev.fill(&segs, chunk)));
        }
        for (head, n) in parts {
            dev.write_used(head as u32, n);
        }
        let idx = dev.used_idx;
        dev.set_used_idx(idx);
    }

    /// A receive header with the offload fields set, for `frame`.
    fn offload_header(frame: &[u8], flags: u8, gso: (u8, u16, u16), csum: (u16, u16), num_buffers: u16) -> Vec<u8> {
        let mut v = with_header(frame, num_buffers);
        v[hdr::FLAGS] = flags;
        v[hdr::GSO_TYPE] = gso.0;
        v[hdr::HDR_LEN..hdr::HDR_LEN + 2].copy_from_slice(&gso.2.to_le_bytes());
        v[hdr::GSO_SIZE..hdr::GSO_SIZE + 2].copy_from_slice(&gso.1.to_le_bytes());
        v[hdr::CSUM_START..hdr::CSUM_START + 2].copy_from_slice(&csum.0.to_le_bytes());
        v[hdr::CSUM_OFFSET..hdr::CSUM_OFFSET + 2].copy_from_slice(&csum.1.to_le_bytes());
        v
    }

    const ALL_OFFLOADS: RxOffloads = RxOffloads { csum: true, tso4: true, tso6: true };

    /// A receive queue of 64 buffers with `offloads`, its device end, and
    /// every buffer posted.
    fn offload_queue(dma: &TestDma, offloads: RxOffloads) -> (RxQueue, FakeDeviceQueue<'_>) {
        let mut rx = RxQueue::new(dma, 0, 64, true, true).unwrap();
        rx.set_offloads(offloads);
        let dev = FakeDeviceQueue::new(dma, rx.queue());
        rx.refill(&Bell::default());
        (rx, dev)
    }

    /// Hands `packet` (header included) to `rx` and returns the frame it
    /// delivered, if any, releasing it and posting its buffers again.
    fn deliver(rx: &mut RxQueue, dev: &mut FakeDeviceQueue, packet: &[u8]) -> Option<Vec<u8>> {
        complete_packet(dev, packet);
        let frame = rx.next_frame().map(<[u8]>::to_vec);
        rx.release();
        assert_eq!(rx.next_frame(), None, "one frame per packet");
        rx.refill(&Bell::default());
        frame
    }

    /// Every `gso_type` and checksum flag, negotiated or not: what is
    /// negotiated and consistent is delivered intact; the rest is dropped,
    /// counted in `drop_offload`, and the queue goes on.
    #[test]
    fn every_gso_type_and_checksum_flag_is_decoded() {
        use super::super::csum::frames::{checksummed_v4, checksummed_v6, segment};
        let v4 = checksummed_v4(6, &segment(1000, 1));
        let v6 = checksummed_v6(6, &segment(1000, 2));
        let off = RxOffloads::default();
        let csum_only = RxOffloads { csum: true, ..off };
        let tso4_only = RxOffloads { tso6: false, ..ALL_OFFLOADS };
        let (n, p, v) = (0, hdr::F_NEEDS_CSUM, hdr::F_DATA_VALID);
        // (offloads, gso_type, flags, frame, delivered?)
        let cases: &[(RxOffloads, u8, u8, &[u8], bool)] = &[
            (off, hdr::GSO_NONE, n, &v4, true),
            (off, hdr::GSO_NONE, v, &v4, true),
            (off, hdr::GSO_NONE, p, &v4, false),
            (off, hdr::GSO_TCPV4, p, &v4, false),
            (csum_only, hdr::GSO_NONE, p, &v4, true),
            (csum_only, hdr::GSO_NONE, p | v, &v4, true),
            (csum_only, hdr::GSO_TCPV4, p, &v4, false),
            (ALL_OFFLOADS, hdr::GSO_TCPV4, p, &v4, true),
            (ALL_OFFLOADS, hdr::GSO_TCPV4, v, &v4, true),
            (ALL_OFFLOADS, hdr::GSO_TCPV4, n, &v4, true),
            (ALL_OFFLOADS, hdr::GSO_TCPV6, p, &v6, true),
            (tso4_only, hdr::GSO_TCPV6, p, &v6, false),
            (ALL_OFFLOADS, hdr::GSO_UDP, p, &v4, false),
            (ALL_OFFLOADS, hdr::GSO_TCPV4 | hdr::GSO_ECN, p, &v4, false),
            (ALL_OFFLOADS, hdr::GSO_TCPV6 | hdr::GSO_ECN, p, &v6, false),
            (ALL_OFFLOADS, 2, p, &v4, false),
            (ALL_OFFLOADS, 5, p, &v4, false),
            (ALL_OFFLOADS, 0x7f, p, &v4, false),
        ];
        let dma = TestDma::default();
        for &(offloads, gso_type, flags, frame, delivered) in cases {
            let (mut rx, mut dev) = offload_queue(&dma, offloads);
            let csum_start = if frame == v4.as_slice() { 34 } else { 54 };
            let gso = if gso_type == hdr::GSO_NONE { (0, 0, 0) } else { (gso_type, 1448, csum_start + 20) };
            let packet = offload_header(frame, flags, gso, (csum_start, 16), 1);
            let got = deliver(&mut rx, &mut dev, &packet);
            let what = alloc::format!("{offloads:?}, gso_type {gso_type:#x}, flags {flags}");
            assert_eq!(got.is_some(), delivered, "{what}");
            if let Some(got) = got {
                assert!(got == frame, "{what}: delivered intact");
            }
            let s = rx.stats();
            assert_eq!(s.drop_offload, u64::from(!delivered), "{what}");
            assert_eq!(s.large, u64::from(delivered && gso_type != hdr::GSO_NONE), "{what}");
            assert_eq!(s.csum_checked, u64::from(delivered && offloads.csum && flags == n), "{what}");
            assert_eq!(deliver(&mut rx, &mut dev, &with_header(&v4, 1)).as_deref(), Some(v4.as_slice()), "{what}");
        }
    }

    /// Offload fields that do not fit the frame: dropped and counted, never
    /// handed to the stack, and every buffer goes back to the device.
    #[test]
    fn malformed_offload_fields_are_dropped_and_counted() {
        use super::super::csum::frames::{checksummed_v4, segment};
        let f = checksummed_v4(6, &segment(1000, 1));
        let len = f.len() as u16;
        let (p, tcp4) = (hdr::F_NEEDS_CSUM, hdr::GSO_TCPV4);
        // (what, flags, (gso_type, gso_size, hdr_len), (csum_start, csum_offset))
        type Case = (&'static str, u8, (u8, u16, u16), (u16, u16));
        let cases: &[Case] = &[
            ("csum_start beyond the frame", p, (0, 0, 0), (len, 0)),
            ("csum_offset beyond the frame", p, (0, 0, 0), (34, len)),
            ("the field's second byte beyond the frame", p, (0, 0, 0), (34, len - 35)),
            ("csum_start inside the Ethernet header", p, (0, 0, 0), (4, 16)),
            ("csum_start + csum_offset overflowing 16 bits", p, (0, 0, 0), (u16::MAX, u16::MAX)),
            ("gso_size 0", p, (tcp4, 0, 54), (34, 16)),
            ("hdr_len beyond the frame", p, (tcp4, 1448, len + 1), (34, 16)),
            ("hdr_len at its largest", p, (tcp4, 1448, u16::MAX), (34, 16)),
        ];
        let dma = TestDma::default();
        let (mut rx, mut dev) = offload_queue(&dma, ALL_OFFLOADS);
        for (i, &(what, flags, gso, csum)) in cases.iter().enumerate() {
            assert_eq!(deliver(&mut rx, &mut dev, &offload_header(&f, flags, gso, csum, 1)), None, "{what}");
            assert_eq!(rx.stats().drop_offload, i as u64 + 1, "{what}");
        }
        // At the edges, the same fields are fine.
        let edge = offload_header(&f, p, (tcp4, 1, len), (34, len - 36), 1);
        assert_eq!(deliver(&mut rx, &mut dev, &edge).as_deref(), Some(f.as_slice()));
        // A malformed header on a frame spanning several buffers takes its
        // other buffers with it: none is read as a frame of its own.
        let big = checksummed_v4(6, &segment(5000, 4));
        let mut packet = offload_header(&big, hdr::F_NEEDS_CSUM, (hdr::GSO_UDP, 1448, 54), (34, 6), 3);
        assert_eq!(deliver(&mut rx, &mut dev, &packet), None);
        packet[hdr::GSO_TYPE] = hdr::GSO_TCPV4;
        packet[hdr::CSUM_OFFSET] = 16;
        assert_eq!(deliver(&mut rx, &mut dev, &packet).as_deref(), Some(big.as_slice()), "the same frame, well formed");
        let s = rx.stats();
        assert_eq!((s.drop_offload, s.drop_header, s.drop_merge, s.packets), (cases.len() as u64 + 1, 0, 0, 2));
        assert_eq!(rx.queue().in_flight(), 64, "every buffer posted again");
    }

    /// With GUEST_CSUM the stacks check no TCP/UDP sums: frames the device
    /// neither checked nor left partial are checked here.
    #[test]
    fn frames_without_a_checksum_flag_are_checked_by_the_queue() {
        use super::super::csum::frames::{checksummed_v4, checksummed_v6, segment};
        let dma = TestDma::default();
        let (mut rx, mut dev) = offload_queue(&dma, ALL_OFFLOADS);
        for good in [
            checksummed_v4(6, &segment(700, 5)),
            checksummed_v4(17, &segment(33, 6)),
            checksummed_v6(6, &segment(99, 7)),
        ] {
            assert_eq!(deliver(&mut rx, &mut dev, &with_header(&good, 1)).as_deref(), Some(good.as_slice()));
            let mut bad = good.clone();
            *bad.last_mut().unwrap() ^= 1;
            assert_eq!(deliver(&mut rx, &mut dev, &with_header(&bad, 1)), None, "a corrupted frame is dropped");
            // The device's word is taken for frames it vouches for or left
            // partial (the bytes are in memory the host wrote).
            let flagged = offload_header(&bad, hdr::F_DATA_VALID, (0, 0, 0), (0, 0), 1);
            assert_eq!(deliver(&mut rx, &mut dev, &flagged).as_deref(), Some(bad.as_slice()));
        }
        let s = rx.stats();
        assert_eq!((s.csum_checked, s.drop_csum, s.packets), (6, 3, 6));
        // Without GUEST_CSUM the stacks check sums: the queue does not.
        let (mut rx, mut dev) = offload_queue(&dma, RxOffloads::default());
        let mut bad = checksummed_v4(6, &segment(700, 5));
        bad[60] ^= 1;
        assert!(deliver(&mut rx, &mut dev, &with_header(&bad, 1)).is_some());
        assert_eq!(rx.stats().csum_checked, 0);
    }

    /// GUEST_TSO4: the largest coalesced segment a device can hand over
    /// (a 65,535-byte IPv4 packet) arrives over 33 buffers, is joined in
    /// order, and its checksum is checked when it has no flag.
    #[test]
    fn a_64_kib_coalesced_segment_is_joined_whole() {
        use super::super::csum::frames::{checksummed_v4, segment};
        let dma = TestDma::default();
        let (mut rx, mut dev) = offload_queue(&dma, ALL_OFFLOADS);
        let f = checksummed_v4(6, &segment(65_535 - 20, 9));
        assert_eq!(f.len(), 65_549);
        for flags in [hdr::F_NEEDS_CSUM, 0] {
            let packet = offload_header(&f, flags, (hdr::GSO_TCPV4, 1448, 54), (34, 16), 33);
            assert_eq!(packet.len().div_ceil(BUF_SIZE), 33);
            let got = deliver(&mut rx, &mut dev, &packet).expect("delivered");
            assert!(got == f, "joined in order");
        }
        let s = rx.stats();
        assert_eq!((s.large, s.merged, s.packets, s.csum_checked, s.drop_csum), (2, 2, 2, 1, 0));
    }

    #[test]
    fn a_hash_header_queue_delivers_frames_and_their_hash() {
        let dma = TestDma::default();
        let bell = Bell::default();
        let mut rx = RxQueue::with_header(&dma, 2, 8, true, true, HASH_HDR_LEN).unwrap();
        assert_eq!(rx.header_len(), HASH_HDR_LEN);
        let mut dev = FakeDeviceQueue::new(&dma, rx.queue());
        rx.refill(&bell);
        let cases = [
            (100, 0xdead_beef, hash_report::TCPV4, Some((0xdead_beef, hash_report::TCPV4))),
            (BUF_SIZE - HASH_HDR_LEN, 7, hash_report::IPV4, Some((7, hash_report::IPV4))), // one full buffer
            (3000, 0x1234_5678, hash_report::UDPV4, Some((0x1234_5678, hash_report::UDPV4))), // two buffers
            (5000, 0xffff_ffff, hash_report::UDPV6_EX, Some((0xffff_ffff, hash_report::UDPV6_EX))), // three
            (60, 0xabcd, hash_report::NONE, None),
        ];
        for (len, hash, report, expected) in cases {
            let data = pattern(len);
            let count = (HASH_HDR_LEN + len).div_ceil(BUF_SIZE) as u16;
            complete_packet(&mut dev, &with_hash_header(&data, count, hash, report));
            assert_eq!(rx.hash_report(), None, "no frame held yet");
            let frame = rx.next_frame().expect("a frame");
            assert!(frame == data.as_slice(), "{len}-byte frame intact after a 20-byte header");
            assert_eq!(rx.hash_report(), expected, "{len}-byte frame");
            rx.release();
            assert_eq!(rx.hash_report(), None, "released");
            rx.refill(&bell);
        }
        let s = rx.stats();
        assert_eq!((s.packets, s.merged, s.hash_unknown), (5, 2, 0));
        assert_eq!(s.drop_header + s.drop_merge + s.drop_too_long + s.drop_bad_id + s.drop_bad_len, 0);
    }

    #[test]
    fn an_undefined_hash_report_is_counted_and_the_frame_kept() {
        let dma = TestDma::default();
        let bell = Bell::default();
        let mut rx = RxQueue::with_header(&dma, 0, 8, false, false, HASH_HDR_LEN).unwrap();
        let mut dev = FakeDeviceQueue::new(&dma, rx.queue());
        rx.refill(&bell);
        complete_packet(&mut dev, &with_hash_header(&pattern(80), 1, 42, 10));
        assert_eq!(rx.next_frame().map(|f| f.len()), Some(80));
        assert_eq!(rx.hash_report(), None);
        rx.release();
        // Shorter than a 20-byte header and an Ethernet header.
        complete_packet(&mut dev, &with_hash_header(&pattern(13), 1, 42, hash_report::TCPV4));
        assert_eq!(rx.next_frame(), None);
        let s = rx.stats();
        assert_eq!((s.hash_unknown, s.drop_header, s.packets), (1, 1, 1));
    }

    #[test]
    fn a_twelve_byte_header_queue_reports_no_hash() {
        let dma = TestDma::default();
        let bell = Bell::default();
        let mut rx = RxQueue::new(&dma, 0, 8, true, true).unwrap();
        assert_eq!(rx.header_len(), HDR_LEN);
        let mut dev = FakeDeviceQueue::new(&dma, rx.queue());
        rx.refill(&bell);
        // Frame bytes 0..8 look like a hash and a TCPv4 report would in a
        // 20-byte header: they are frame, not header.
        let mut data = pattern(64);
        data[..8].copy_from_slice(&[1, 2, 3, 4, 2, 0, 0, 0]);
        complete_packet(&mut dev, &with_header(&data, 1));
        assert!(rx.next_frame().expect("a frame") == data.as_slice());
        assert_eq!(rx.hash_report(), None);
        rx.release();
        assert_eq!(rx.stats().hash_unknown, 0);
    }

    #[test]
    fn queues_take_only_the_two_header_lengths() {
        let dma = TestDma::default();
        for bad in [0, 10, 16, 24] {
            assert!(RxQueue::with_header(&dma, 0, 8, true, true, bad).is_none(), "{bad}");
            assert!(TxQueue::with_header(&dma, 1, 8, true, bad).is_none(), "{bad}");
        }
        assert_eq!(TxQueue::with_header(&dma, 1, 8, true, HASH_HDR_LEN).unwrap().header_len(), HASH_HDR_LEN);
        assert_eq!(TxQueue::new(&dma, 1, 8, true).unwrap().header_len(), HDR_LEN);
    }

    #[test]
    fn transmit_with_a_hash_header_writes_a_zeroed_20_byte_header() {
        let dma = TestDma::default();
        let bell = Bell::default();
        let mut tx = TxQueue::with_header(&dma, 1, 4, false, HASH_HDR_LEN).unwrap();
        let mut dev = FakeDeviceQueue::new(&dma, tx.queue());
        for round in 0..3u8 {
            for i in 0..4u8 {
                tx.send(MAX_FRAME, &bell, |b| b.fill(round * 4 + i + 1)).expect("room");
            }
            while let Some((head, segs)) = dev.pop_avail() {
                let bytes = dev.read(&segs);
                assert_eq!(bytes.len(), HASH_HDR_LEN + MAX_FRAME);
                assert!(bytes[..HASH_HDR_LEN].iter().all(|&b| b == 0), "round {round}: {:?}", &bytes[..20]);
                assert!(bytes[HASH_HDR_LEN..].iter().all(|&b| b == bytes[HASH_HDR_LEN] && b != 0));
                // A device scribbling over the buffer it was lent: the next
                // frame in it must still get a clean header.
                dma.resolve(segs[0].phys, segs[0].len as usize).unwrap().write_bytes(0, &[0xff; HASH_HDR_LEN]);
                dev.push_used(head as u32, 0);
            }
        }
        assert_eq!(tx.stats().packets, 12);
    }

    /// A receive queue under a device that writes whatever it likes: used
    /// ids, lengths, `num_buffers`, header bytes (hash reports included,
    /// with either header length). Every frame handed out lies within a
    /// buffer or the join buffer and within the limits, every hash report
    /// handed out has a defined type, the ring's books balance after every
    /// step, and the queue keeps working.
    #[test]
    fn property_hostile_receive_completions() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n.max(1)
        };
        for _ in 0..200 {
            let dma = TestDma::default();
            let bell = Bell::default();
            let size = 1u16 << (2 + next(4));
            let hdr_len = if next(2) == 0 { HDR_LEN } else { HASH_HDR_LEN };
            let mut rx = RxQueue::with_header(&dma, 0, size, next(2) == 0, true, hdr_len).unwrap();
            if next(2) == 0 {
                rx.set_offloads(ALL_OFFLOADS);
            }
            let mut dev = FakeDeviceQueue::new(&dma, rx.queue());
            rx.refill(&bell);
            for _ in 0..200 {
                // The device completes one to three posted buffers with
                // random contents and lengths, sometimes with a wrong id.
                let mut entries = Vec::new();
                for _ in 0..1 + next(3) {
                    let Some((head, segs)) = dev.pop_avail() else { break };
                    let mut bytes: Vec<u8> = (0..next(BUF_SIZE as u64 + 1)).map(|_| next(256) as u8).collect();
                    if bytes.len() >= hdr_len && next(2) == 0 {
                        bytes[..HDR_LEN].fill(0);
                        bytes[10] = next(4) as u8;
                        // Offload fields: any flags and type, small sizes.
                        bytes[hdr::FLAGS] = next(4) as u8;
                        bytes[hdr::GSO_TYPE] = [0, 1, 3, 4, 0x81, 7][next(6) as usize];
                        for at in [hdr::HDR_LEN, hdr::GSO_SIZE, hdr::CSUM_START, hdr::CSUM_OFFSET] {
                            bytes[at] = next(80) as u8;
                        }
                        if hdr_len == HASH_HDR_LEN {
                            bytes[17] = 0; // report types around the defined range
                            bytes[16] = next(12) as u8;
                        }
                    }
                    let n = dev.fill(&segs, &bytes);
                    let len = if next(8) == 0 { next(u64::from(u32::MAX)) as u32 } else { n };
                    let id = if next(16) == 0 { next(u64::from(size) * 2) as u32 } else { u32::from(head) };
                    entries.push((id, len));
                }
                for (id, len) in entries {
                    dev.write_used(id, len);
                }
                let idx = dev.used_idx;
                dev.set_used_idx(idx);
                while let Some(frame) = rx.next_frame() {
                    assert!(frame.len() >= ETH_HDR && frame.len() <= MAX_RX_FRAME, "frame of {} bytes", frame.len());
                    if let Some((_, report)) = rx.hash_report() {
                        assert!(hdr_len == HASH_HDR_LEN && (1..=9).contains(&report), "report {report}");
                    }
                    rx.release();
                }
                rx.refill(&bell);
                let q = rx.queue();
                assert_eq!(q.num_free() as usize + q.in_flight() as usize, size as usize, "descriptors balance");
                assert!(q.broken().is_none(), "a device that never over-claims does not break the ring");
            }
        }
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
