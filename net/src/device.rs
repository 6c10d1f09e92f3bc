//! smoltcp's `Device` over one vCPU's view of the NIC.
//!
//! A vCPU receives from its own receive queue (if it has one) and from its
//! inbox (frames other vCPUs received for flows it owns), and transmits on
//! its own transmit queue, on a queue it shares under a lock, or by handing
//! frames to the queue's owner (see [`TxPath`]). Received frames are handed
//! to smoltcp straight from the DMA buffer and the buffer goes back to the
//! device afterwards; transmitted frames are written by smoltcp straight
//! into a transmit buffer. Nothing allocates.

use core::num::NonZeroUsize;
pub use drivers::virtio::netdev::Doorbell;

use drivers::virtio::netdev::{RxQueue, TxQueue, TxTso, MAX_FRAME, MAX_TSO_FRAME};
use smoltcp::phy::{self, Checksum, DeviceCapabilities, Medium, PacketMeta};
use smoltcp::time::Instant;
use spin::Mutex;

use crate::inbox::{Inbox, SLOT_BYTES};
use crate::steer::{Flow, Steering};
use crate::zerowin::{ZeroWindows, COPY_MAX};

/// Whether an Ethernet frame is ARP (whose neighbour information every
/// vCPU's stack needs: each keeps its own neighbour cache).
pub fn is_arp(frame: &[u8]) -> bool {
    frame.len() >= 14 && frame[12..14] == [0x08, 0x06]
}

/// Whether an Ethernet frame is an IPv4 TCP segment with RST set (a stack
/// answers a segment no connection of its own accepts with one: counted,
/// because with steering right only a peer that really lost its
/// connection should ever get one).
pub fn is_tcp_reset(frame: &[u8]) -> bool {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] || frame[23] != 6 {
        return false;
    }
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    frame.get(14 + ihl + 13).is_some_and(|flags| flags & 0x04 != 0)
}

/// Where a frame is written when it cannot be queued (to be dropped), and
/// where a handed-off frame is written before it is copied out: as long as
/// the longest frame a stack may emit (a TSO segment).
pub type Scratch = [u8; MAX_TSO_FRAME];

/// A zeroed [`Scratch`] on the heap (not built on the stack first).
pub fn new_scratch() -> alloc::boxed::Box<Scratch> {
    alloc::vec![0u8; MAX_TSO_FRAME].into_boxed_slice().try_into().expect("the length of a Scratch")
}

/// Looks at each frame from the receive queue, with the hash the device
/// reported for it (value and type, when it reports one), before the stack
/// does; `false` means the frame was taken elsewhere (steered to its
/// owner) and this stack must not see it.
pub type Filter<'a> = &'a mut dyn FnMut(&[u8], Option<(u32, u16)>) -> bool;

/// Where a vCPU's frames go out.
pub enum TxPath<'a> {
    /// Its own transmit queue.
    Own(&'a mut TxQueue),
    /// A queue it shares with other vCPUs: one lock per frame.
    Shared(&'a Mutex<TxQueue>),
    /// Handed to the queue owner's outbox, which that vCPU drains onto its
    /// queue; a full outbox drops the frame (counted by the outbox).
    Handoff(&'a Inbox),
}

/// One vCPU's NIC seen as a smoltcp device.
pub struct NetDevice<'a, B: Doorbell> {
    pub rx: Option<&'a mut RxQueue>,
    pub tx: TxPath<'a>,
    pub doorbell: &'a B,
    /// Where a frame goes when the transmit queue is full (it is dropped),
    /// and where a handed-off frame is written before it is copied out.
    pub scratch: &'a mut Scratch,
    /// A frame made up locally (from neighbour information another vCPU
    /// learned), received before anything else.
    pub injected: Option<&'a [u8]>,
    /// Frames other vCPUs handed over, received before the queue's own, and
    /// the buffer each is copied into.
    pub inbox: Option<(&'a Inbox, &'a mut [u8; SLOT_BYTES])>,
    pub filter: Option<Filter<'a>>,
    /// Frames handed to the stack so far, and how many of them came from
    /// the inbox.
    pub received: usize,
    pub from_inbox: usize,
    /// Which TCP/UDP checksums the stack leaves to the queues. Like `tso`,
    /// only what [`phy::Device::capabilities`] says, which smoltcp reads
    /// once, when the interface is made.
    pub checksums: Checksums,
    /// The IP versions whose TCP segments of up to 64 KiB the transmit
    /// queue's device cuts (HOST_TSO4/6, `TxQueue::set_tso`); none through
    /// a handoff outbox, whose slots hold ordinary frames.
    pub tso: TxTso,
    pub resets: Resets<'a>,
    /// Flows we advertised a zero window to (see `zerowin`): their data
    /// segments reach the stack after a payload-less copy.
    pub zero_windows: Option<&'a mut ZeroWindows>,
    /// That copy, and the frame it was made from, handed out next.
    strip_buf: [u8; COPY_MAX],
    after_copy: Option<Source>,
    /// Length of the frame taken from the inbox.
    pending_len: usize,
}

/// A transmit token made of a device's fields: a macro rather than a
/// method, so that it borrows only those fields and a receive token can
/// borrow the others at the same time.
macro_rules! tx_token {
    ($dev:expr) => {
        Tx {
            tx: &mut $dev.tx,
            doorbell: $dev.doorbell,
            scratch: $dev.scratch,
            resets: &mut $dev.resets,
            zero_windows: $dev.zero_windows.as_deref_mut(),
            mss: None,
        }
    };
}

impl<'a, B: Doorbell> NetDevice<'a, B> {
    pub fn new(rx: Option<&'a mut RxQueue>, tx: TxPath<'a>, doorbell: &'a B, scratch: &'a mut Scratch) -> Self {
        NetDevice {
            rx,
            tx,
            doorbell,
            scratch,
            injected: None,
            inbox: None,
            filter: None,
            received: 0,
            from_inbox: 0,
            checksums: Checksums::default(),
            tso: TxTso::NONE,
            resets: Resets::default(),
            zero_windows: None,
            strip_buf: [0; COPY_MAX],
            after_copy: None,
            pending_len: 0,
        }
    }

    /// Whether a frame is still due after the payload-less copy handed out
    /// last (the caller must let the stack receive it before it stops).
    pub fn has_pending(&self) -> bool {
        self.after_copy.is_some()
    }

    fn tx_token(&mut self) -> Tx<'_, 'a, B> {
        tx_token!(self)
    }

    /// Where the next frame comes from: a made-up one, the inbox (copied
    /// out), or the receive queue (held there).
    fn next_source(&mut self) -> Option<Source> {
        if self.injected.is_some() {
            return Some(Source::Injected);
        }
        if let Some((inbox, buf)) = self.inbox.as_mut() {
            if !inbox.is_empty() {
                if let Some(n) = inbox.pop(&mut buf[..]) {
                    self.pending_len = n;
                    return Some(Source::Inbox);
                }
            }
        }
        self.next_from_queue().then_some(Source::Queue)
    }

    /// A payload-less copy of the frame from `source` when its flow was
    /// last told our window is zero (see `zerowin`), in `strip_buf`.
    fn zero_window_copy(&mut self, source: Source) -> Option<usize> {
        let z = self.zero_windows.as_deref_mut()?;
        let frame = match source {
            Source::Injected => return None,
            Source::Inbox => &self.inbox.as_ref()?.1[..self.pending_len],
            Source::Queue => self.rx.as_deref_mut()?.next_frame()?,
        };
        z.strip(frame, &mut self.strip_buf)
    }

    /// Takes frames from the receive queue until one is for this stack (it
    /// stays held by the queue); frames the filter steered away are
    /// released at once.
    fn next_from_queue(&mut self) -> bool {
        let Some(rx) = self.rx.as_deref_mut() else { return false };
        loop {
            if rx.next_frame().is_none() {
                return false;
            }
            let hash = rx.hash_report();
            let frame = rx.next_frame().expect("held");
            let keep = match self.filter.as_mut() {
                Some(f) => f(frame, hash),
                None => true,
            };
            if keep {
                return true;
            }
            rx.release();
        }
    }
}

pub enum Rx<'a> {
    Queue(&'a mut RxQueue),
    Bytes(&'a [u8]),
}

pub struct Tx<'b, 'a, B: Doorbell> {
    tx: &'b mut TxPath<'a>,
    doorbell: &'b B,
    scratch: &'b mut Scratch,
    resets: &'b mut Resets<'a>,
    zero_windows: Option<&'b mut ZeroWindows>,
    /// The segment size a TSO frame is to be cut to (smoltcp's
    /// `PacketMeta::segmentation_offload_size`, virtio's `gso_size`).
    mss: Option<u16>,
}

/// TCP resets this device sent, and how many answered a flow that the
/// steering says another vCPU owns.
#[derive(Clone, Copy, Debug, Default)]
pub struct Resets<'a> {
    /// Whose flows this device's stack should see: (steering, its vCPU).
    pub owner: Option<(&'a Steering, u16)>,
    pub count: usize,
    pub unowned: usize,
}

impl phy::RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        match self {
            Rx::Bytes(frame) => f(frame),
            Rx::Queue(rx) => {
                let frame = rx.next_frame().expect("receive() only hands out a token when a frame is held");
                let r = f(frame);
                rx.release();
                r
            }
        }
    }
}

/// Writes a frame onto `queue`, or into `scratch` to be dropped when the
/// queue is full or the frame too long (counted by the queue).
fn send_on<R>(
    queue: &mut TxQueue,
    bell: &dyn Doorbell,
    scratch: &mut Scratch,
    len: usize,
    mss: Option<u16>,
    f: impl FnOnce(&mut [u8]) -> R,
) -> R {
    let mut f = Some(f);
    if let Some(r) = queue.send_segmented(len, mss, bell, |buf| (f.take().expect("called once"))(buf)) {
        return r;
    }
    (f.take().expect("not called yet"))(&mut scratch[..len.min(MAX_TSO_FRAME)])
}

impl<B: Doorbell> phy::TxToken for Tx<'_, '_, B> {
    fn set_meta(&mut self, meta: PacketMeta) {
        self.mss = meta.segmentation_offload_size.map(|n| n.get());
    }

    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let (resets, zero_windows, mss) = (self.resets, self.zero_windows, self.mss);
        let f = |buf: &mut [u8]| {
            let r = f(buf);
            if let Some(z) = zero_windows {
                z.on_transmit(buf);
            }
            if is_tcp_reset(buf) {
                resets.count += 1;
                // The reset goes back along the flow it answers.
                if let (Some((steering, me)), Some(flow)) = (resets.owner, Flow::parse(buf)) {
                    if steering.owner_of_hash(steering.hash(&flow.reversed())) != me {
                        resets.unowned += 1;
                    }
                }
            }
            r
        };
        match self.tx {
            TxPath::Own(q) => send_on(q, self.doorbell, self.scratch, len, mss, f),
            TxPath::Shared(m) => send_on(&mut m.lock(), self.doorbell, self.scratch, len, mss, f),
            TxPath::Handoff(outbox) => {
                let len = len.min(MAX_FRAME);
                let r = f(&mut self.scratch[..len]);
                // A full outbox drops the frame; the outbox counts it.
                let _ = outbox.push(&self.scratch[..len]);
                r
            }
        }
    }
}

impl<'a, B: Doorbell> phy::Device for NetDevice<'a, B> {
    type RxToken<'b>
        = Rx<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = Tx<'b, 'a, B>
    where
        Self: 'b;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let source = match self.after_copy.take() {
            Some(source) => source,
            None => {
                let source = self.next_source()?;
                self.received += 1;
                if let Some(n) = self.zero_window_copy(source) {
                    self.after_copy = Some(source);
                    let tx = tx_token!(self);
                    return Some((Rx::Bytes(&self.strip_buf[..n]), tx));
                }
                source
            }
        };
        let rx = match source {
            Source::Injected => Rx::Bytes(self.injected.take().expect("checked")),
            Source::Inbox => {
                self.from_inbox += 1;
                let (_, buf) = self.inbox.as_mut().expect("checked");
                Rx::Bytes(&buf[..self.pending_len])
            }
            Source::Queue => Rx::Queue(self.rx.as_deref_mut().expect("checked")),
        };
        let tx = tx_token!(self);
        Some((rx, tx))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        let room = match &mut self.tx {
            TxPath::Own(q) => q.has_room(self.doorbell),
            TxPath::Shared(m) => m.lock().has_room(self.doorbell),
            TxPath::Handoff(_) => true,
        };
        if !room {
            return None;
        }
        Some(self.tx_token())
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MAX_FRAME;
        caps.max_burst_size = None;
        let sums = self.checksums.stack_side();
        caps.checksum.tcp = sums;
        caps.checksum.udp = sums;
        // smoltcp emits TCP segments up to this long (Ethernet header
        // included) and passes the MSS to cut them to; it needs transmit
        // checksums off, which TSO on the queue implies.
        if self.checksums.tx && !matches!(self.tx, TxPath::Handoff(_)) {
            let tso = |on: bool| if on { NonZeroUsize::new(MAX_TSO_FRAME) } else { None };
            caps.segmentation.tcpv4 = tso(self.tso.v4);
            caps.segmentation.tcpv6 = tso(self.tso.v6);
        }
        caps
    }
}

/// Which TCP and UDP checksums the queues take off the stacks' hands. The
/// same for every vCPU (frames cross between them), so smoltcp's
/// per-device [`Checksum`] setting can say it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checksums {
    /// Every transmit queue finishes them (CSUM negotiated,
    /// `TxQueue::set_csum_offload` on): the device completes them from the
    /// pseudo-header sum the queue writes.
    pub tx: bool,
    /// Receive (GUEST_CSUM negotiated, `RxQueue::set_offloads`): frames
    /// arrive with partial sums (NEEDS_CSUM, and every coalesced segment)
    /// or sums the device checked; the queues check the rest themselves.
    pub rx: bool,
}

impl Checksums {
    /// What the stacks still compute or check.
    pub fn stack_side(self) -> Checksum {
        match (self.tx, self.rx) {
            (false, false) => Checksum::Both,
            (true, false) => Checksum::Rx,
            (false, true) => Checksum::Tx,
            (true, true) => Checksum::None,
        }
    }
}

#[derive(Clone, Copy)]
enum Source {
    Injected,
    Inbox,
    Queue,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::neighbours::{arp_reply_frame, arp_sender, NeighbourBoard};
    use crate::stack::{NetConfig, Stack};
    use core::cell::RefCell;
    use drivers::dma::fake::TestDma;
    use drivers::virtio::netdev::{BUF_SIZE, HDR_LEN};
    use drivers::virtio::queue::fake::FakeDeviceQueue;
    use smoltcp::wire::{
        ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv4Packet,
        Icmpv4Repr, IpProtocol, Ipv4Address, Ipv4Packet, Ipv4Repr,
    };
    use std::vec::Vec;

    #[derive(Default)]
    struct Bell(RefCell<Vec<u16>>);
    impl Doorbell for Bell {
        fn ring(&self, queue: u16) {
            self.0.borrow_mut().push(queue);
        }
    }

    const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    const HOST_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 1]);
    const HOST_IP: Ipv4Address = Ipv4Address::new(10, 99, 0, 1);
    const GUEST_IP: Ipv4Address = Ipv4Address::new(10, 99, 0, 2);
    const CFG: NetConfig = NetConfig { mac: GUEST_MAC, ip: [10, 99, 0, 2], prefix_len: 24, gateway: None };

    /// An Ethernet frame from the host (no virtio header).
    fn frame(
        dst: EthernetAddress,
        proto: EthernetProtocol,
        payload_len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Vec<u8> {
        let eth = EthernetRepr { src_addr: HOST_MAC, dst_addr: dst, ethertype: proto };
        let mut buf = std::vec![0u8; eth.buffer_len() + payload_len];
        let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
        eth.emit(&mut f);
        fill(f.payload_mut());
        buf
    }

    fn arp_request() -> Vec<u8> {
        let repr = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: HOST_MAC,
            source_protocol_addr: HOST_IP,
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: GUEST_IP,
        };
        frame(EthernetAddress::BROADCAST, EthernetProtocol::Arp, repr.buffer_len(), |p| {
            repr.emit(&mut ArpPacket::new_unchecked(p))
        })
    }

    fn echo_request(seq: u16, data: &[u8]) -> Vec<u8> {
        let icmp = Icmpv4Repr::EchoRequest { ident: 7, seq_no: seq, data };
        let ip = Ipv4Repr {
            src_addr: HOST_IP,
            dst_addr: GUEST_IP,
            next_header: IpProtocol::Icmp,
            payload_len: icmp.buffer_len(),
            hop_limit: 64,
        };
        frame(EthernetAddress(GUEST_MAC), EthernetProtocol::Ipv4, ip.buffer_len() + icmp.buffer_len(), |p| {
            let mut pkt = Ipv4Packet::new_unchecked(p);
            ip.emit(&mut pkt, &Default::default());
            icmp.emit(&mut Icmpv4Packet::new_unchecked(pkt.payload_mut()), &Default::default());
        })
    }

    /// One CPU's queue pair, its stack, and the device's end of both rings.
    struct Guest<'d> {
        rx: RxQueue,
        tx: TxQueue,
        rx_dev: FakeDeviceQueue<'d>,
        tx_dev: FakeDeviceQueue<'d>,
        bell: Bell,
        scratch: std::boxed::Box<Scratch>,
        stack: Stack,
    }

    impl<'d> Guest<'d> {
        fn new(dma: &'d TestDma, seed: u64) -> Guest<'d> {
            let mut rx = RxQueue::new(dma, 0, 16, true, true).unwrap();
            let mut tx = TxQueue::new(dma, 1, 16, true).unwrap();
            let rx_dev = FakeDeviceQueue::new(dma, rx.queue());
            let tx_dev = FakeDeviceQueue::new(dma, tx.queue());
            let bell = Bell::default();
            let mut scratch = new_scratch();
            rx.refill(&bell);
            let stack = {
                let mut dev = NetDevice::new(Some(&mut rx), TxPath::Own(&mut tx), &bell, &mut scratch);
                Stack::new(&CFG, &mut dev, Instant::from_millis(1), seed)
            };
            Guest { rx, tx, rx_dev, tx_dev, bell, scratch, stack }
        }

        /// The device receives `frame` from the wire: spread over as many
        /// merged buffers as it takes, with `num_buffers` in the header.
        fn deliver(&mut self, frame: &[u8]) {
            let mut packet = std::vec![0u8; HDR_LEN];
            packet.extend_from_slice(frame);
            let count = packet.len().div_ceil(BUF_SIZE);
            packet[10..12].copy_from_slice(&(count as u16).to_le_bytes());
            let mut heads = Vec::new();
            for chunk in packet.chunks(BUF_SIZE) {
                let (head, segs) = self.rx_dev.pop_avail().expect("posted buffer");
                heads.push((head, self.rx_dev.fill(&segs, chunk)));
            }
            for (head, n) in heads {
                self.rx_dev.write_used(head as u32, n);
            }
            let idx = self.rx_dev.used_idx;
            self.rx_dev.set_used_idx(idx);
        }

        /// Runs the stack until it is done; `injected` first, if any.
        fn poll<'s>(&'s mut self, injected: Option<&'s [u8]>, filter: Option<Filter<'s>>) {
            let mut dev = NetDevice::new(Some(&mut self.rx), TxPath::Own(&mut self.tx), &self.bell, &mut self.scratch);
            dev.injected = injected;
            dev.filter = filter;
            let mut rounds = 0;
            while self.stack.poll(&mut dev, Instant::from_millis(2)) {
                rounds += 1;
                assert!(rounds < 100, "poll keeps reporting progress");
            }
            if let Some(rx) = dev.rx.as_deref_mut() {
                rx.refill(&self.bell);
            }
        }

        /// Frames the guest sent, as the device reads them (no header).
        fn sent(&mut self) -> Vec<Vec<u8>> {
            let mut out = Vec::new();
            while let Some((head, segs)) = self.tx_dev.pop_avail() {
                let bytes = self.tx_dev.read(&segs);
                assert!(bytes[..HDR_LEN].iter().all(|&b| b == 0), "plain header");
                out.push(bytes[HDR_LEN..].to_vec());
                self.tx_dev.push_used(head as u32, 0);
            }
            out
        }
    }

    fn echo_reply_of(frame: &[u8]) -> Option<(u16, Vec<u8>)> {
        let eth = EthernetFrame::new_checked(frame).ok()?;
        let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
        let icmp = Icmpv4Packet::new_checked(ip.payload()).ok()?;
        match Icmpv4Repr::parse(&icmp, &Default::default()).ok()? {
            Icmpv4Repr::EchoReply { seq_no, data, .. } => Some((seq_no, data.to_vec())),
            _ => None,
        }
    }

    fn is_arp_reply(frame: &[u8]) -> bool {
        let Ok(eth) = EthernetFrame::new_checked(frame) else { return false };
        let Ok(arp) = ArpPacket::new_checked(eth.payload()) else { return false };
        matches!(ArpRepr::parse(&arp), Ok(ArpRepr::EthernetIpv4 { operation: ArpOperation::Reply, source_protocol_addr, .. }) if source_protocol_addr == GUEST_IP)
    }

    /// Host → guest: ARP request and pings on the RX queue; guest → host:
    /// the replies on the TX queue, through smoltcp and the virtio rings.
    #[test]
    fn answers_arp_and_ping_through_the_rings() {
        let dma = TestDma::default();
        let mut g = Guest::new(&dma, 1);
        g.deliver(&arp_request());
        for seq in 0..3 {
            g.deliver(&echo_request(seq, b"mqnet ping"));
        }
        let mut seen = 0usize;
        let mut count = |_: &[u8], _| {
            seen += 1;
            true
        };
        g.poll(None, Some(&mut count));
        assert_eq!(seen, 4, "the filter saw every received frame");
        let sent = g.sent();
        assert_eq!(sent.len(), 4, "one ARP reply and three echo replies");
        assert!(is_arp_reply(&sent[0]));
        for (i, f) in sent[1..].iter().enumerate() {
            assert_eq!(EthernetFrame::new_checked(&f[..]).unwrap().dst_addr(), HOST_MAC);
            assert_eq!(echo_reply_of(f), Some((i as u16, b"mqnet ping".to_vec())));
        }
        assert!(!g.bell.0.borrow().is_empty(), "the transmit queue was kicked");
        assert_eq!(g.rx.stats().packets, 4);
        assert_eq!(g.rx.queue().num_free(), 0, "every receive buffer is posted again");
    }

    /// A host with a 9000-byte MTU pings with 4000 bytes: the frame spans
    /// two receive buffers; it is joined, and the reply (bigger than our
    /// MTU) goes out as IPv4 fragments that reassemble to the same data.
    #[test]
    fn a_jumbo_ping_is_joined_and_answered_in_fragments() {
        let dma = TestDma::default();
        let mut g = Guest::new(&dma, 1);
        // Teach the stack the host's address first (ARP), and drop that reply.
        g.deliver(&arp_request());
        g.poll(None, None);
        g.sent();
        let data: Vec<u8> = (0..4000u32).map(|i| (i % 251) as u8).collect();
        let request = echo_request(9, &data);
        assert_eq!(request.len(), 4042);
        g.deliver(&request);
        g.poll(None, None);
        let sent = g.sent();
        assert!(sent.len() >= 3, "4028 bytes of IP over a 1500-byte MTU: {} frames", sent.len());
        assert!(sent.iter().all(|f| f.len() <= MAX_FRAME));
        // Reassemble the fragments.
        let mut payload = std::vec![0u8; 0];
        for f in &sent {
            let eth = EthernetFrame::new_checked(&f[..]).unwrap();
            let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
            let off = ip.frag_offset() as usize;
            if payload.len() < off + ip.payload().len() {
                payload.resize(off + ip.payload().len(), 0);
            }
            payload[off..off + ip.payload().len()].copy_from_slice(ip.payload());
        }
        let icmp = Icmpv4Packet::new_checked(&payload[..]).unwrap();
        match Icmpv4Repr::parse(&icmp, &Default::default()).unwrap() {
            Icmpv4Repr::EchoReply { seq_no, data: echoed, .. } => {
                assert_eq!(seq_no, 9);
                assert!(echoed == data.as_slice(), "the joined frame came back intact");
            }
            other => panic!("not an echo reply: {other:?}"),
        }
        assert_eq!(g.rx.stats().merged, 1);
    }

    /// Two CPUs' stacks: the host's ARP request reaches one of them, which
    /// answers it (one reply on the wire) and posts the binding; the other
    /// learns it from the board without any request reaching it, and answers
    /// a ping at once, without asking for the host's address itself.
    #[test]
    fn one_arp_request_one_reply_and_the_binding_reaches_every_stack() {
        let dma = TestDma::default();
        let mut a = Guest::new(&dma, 1);
        let mut b = Guest::new(&dma, 2);
        let board = NeighbourBoard::new();
        let local = CFG;
        a.deliver(&arp_request());
        let mut post = |f: &[u8], _| {
            if is_arp(f) {
                if let Some(binding) = arp_sender(f, &local) {
                    board.post(binding, 5);
                }
            }
            true
        };
        a.poll(None, Some(&mut post));
        let replies = a.sent();
        assert_eq!(replies.iter().filter(|f| is_arp_reply(f)).count(), 1);
        assert_eq!(b.sent().len(), 0, "the other stack saw no request and sent nothing");
        // b catches up from the board.
        let mut learned = Vec::new();
        let seen = board.catch_up(0, |binding| learned.push(arp_reply_frame(binding, &local)));
        assert_eq!((seen, learned.len()), (board.generation(), 1));
        b.poll(Some(&learned[0]), None);
        assert!(b.sent().is_empty(), "learning sends nothing");
        b.deliver(&echo_request(1, b"to b"));
        b.poll(None, None);
        let sent = b.sent();
        assert_eq!(sent.len(), 1, "no ARP request first: the binding is known");
        assert_eq!(echo_reply_of(&sent[0]), Some((1, b"to b".to_vec())));
    }

    #[test]
    fn stacks_with_different_seeds_choose_different_sequence_numbers() {
        use smoltcp::iface::SocketHandle;
        use smoltcp::socket::tcp;
        let dma = TestDma::default();
        let mut isn = Vec::new();
        for seed in [11u64, 12] {
            let mut g = Guest::new(&dma, seed);
            g.deliver(&arp_request());
            g.poll(None, None);
            g.sent();
            let socket = tcp::Socket::new(
                tcp::SocketBuffer::new(std::vec![0; 1024]),
                tcp::SocketBuffer::new(std::vec![0; 1024]),
            );
            let h: SocketHandle = g.stack.sockets.add(socket);
            let cx = g.stack.iface.context();
            g.stack.sockets.get_mut::<tcp::Socket>(h).connect(cx, (HOST_IP, 80), 49152).unwrap();
            g.poll(None, None);
            let syn = g.sent().pop().expect("a SYN");
            let eth = EthernetFrame::new_checked(&syn[..]).unwrap();
            let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
            let tcp = smoltcp::wire::TcpPacket::new_checked(ip.payload()).unwrap();
            isn.push(tcp.seq_number());
        }
        assert_ne!(isn[0], isn[1]);
    }
}
