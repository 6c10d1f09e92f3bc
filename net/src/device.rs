//! smoltcp's `Device` over one virtio-net queue pair.
//!
//! Received frames are handed to smoltcp straight from the DMA buffer and
//! the buffer goes back to the device afterwards; transmitted frames are
//! written by smoltcp straight into a transmit buffer. Nothing allocates.

pub use drivers::virtio::netdev::Doorbell;
use drivers::virtio::netdev::{RxQueue, TxQueue, MAX_FRAME};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Whether an Ethernet frame is ARP (whose neighbour information every
/// CPU's stack needs: each keeps its own neighbour cache).
pub fn is_arp(frame: &[u8]) -> bool {
    frame.len() >= 14 && frame[12..14] == [0x08, 0x06]
}

/// Something that looks at each received frame before the stack does.
pub type Observer<'a> = &'a dyn Fn(&[u8]);

/// One queue pair seen as a smoltcp device.
pub struct QueuePair<'a, B: Doorbell> {
    pub rx: &'a mut RxQueue,
    pub tx: &'a mut TxQueue,
    pub doorbell: &'a B,
    /// Where a frame goes when the transmit queue is full (it is dropped).
    pub scratch: &'a mut [u8; MAX_FRAME],
    /// A frame that did not arrive on this queue (made up from neighbour
    /// information another CPU learned), received before the queue's own.
    pub injected: Option<&'a [u8]>,
    /// Sees every frame received from the queue before the stack does.
    pub observer: Option<Observer<'a>>,
}

impl<'a, B: Doorbell> QueuePair<'a, B> {
    pub fn new(rx: &'a mut RxQueue, tx: &'a mut TxQueue, doorbell: &'a B, scratch: &'a mut [u8; MAX_FRAME]) -> Self {
        QueuePair { rx, tx, doorbell, scratch, injected: None, observer: None }
    }
}

pub enum Rx<'a> {
    Queue { rx: &'a mut RxQueue, observer: Option<Observer<'a>> },
    Injected(&'a [u8]),
}

pub struct Tx<'a, B: Doorbell> {
    tx: &'a mut TxQueue,
    doorbell: &'a B,
    scratch: &'a mut [u8; MAX_FRAME],
}

impl phy::RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        match self {
            Rx::Injected(frame) => f(frame),
            Rx::Queue { rx, observer } => {
                let frame = rx.next_frame().expect("receive() only hands out a token when a frame is held");
                if let Some(o) = observer {
                    o(frame);
                }
                let r = f(frame);
                rx.release();
                r
            }
        }
    }
}

impl<B: Doorbell> phy::TxToken for Tx<'_, B> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut f = Some(f);
        if let Some(r) = self.tx.send(len, self.doorbell, |buf| (f.take().expect("called once"))(buf)) {
            return r;
        }
        // Full or too long (counted by the queue): let smoltcp write, then drop it.
        let len = len.min(MAX_FRAME);
        (f.take().expect("not called yet"))(&mut self.scratch[..len])
    }
}

impl<B: Doorbell> phy::Device for QueuePair<'_, B> {
    type RxToken<'b>
        = Rx<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = Tx<'b, B>
    where
        Self: 'b;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let tx = Tx { tx: self.tx, doorbell: self.doorbell, scratch: self.scratch };
        if let Some(frame) = self.injected.take() {
            return Some((Rx::Injected(frame), tx));
        }
        self.rx.next_frame()?;
        Some((Rx::Queue { rx: self.rx, observer: self.observer }, tx))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        if !self.tx.has_room(self.doorbell) {
            return None;
        }
        Some(Tx { tx: self.tx, doorbell: self.doorbell, scratch: self.scratch })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MAX_FRAME;
        caps.max_burst_size = None;
        caps
    }
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
    const CFG: NetConfig = NetConfig { mac: GUEST_MAC, ip: [10, 99, 0, 2], prefix_len: 24 };

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
        scratch: [u8; MAX_FRAME],
        stack: Stack,
    }

    impl<'d> Guest<'d> {
        fn new(dma: &'d TestDma, seed: u64) -> Guest<'d> {
            let mut rx = RxQueue::new(dma, 0, 16, true, true).unwrap();
            let mut tx = TxQueue::new(dma, 1, 16, true).unwrap();
            let rx_dev = FakeDeviceQueue::new(dma, rx.queue());
            let tx_dev = FakeDeviceQueue::new(dma, tx.queue());
            let bell = Bell::default();
            let mut scratch = [0u8; MAX_FRAME];
            rx.refill(&bell);
            let stack = {
                let mut dev = QueuePair::new(&mut rx, &mut tx, &bell, &mut scratch);
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
        fn poll(&mut self, injected: Option<&[u8]>, observer: Option<Observer>) {
            let mut dev = QueuePair::new(&mut self.rx, &mut self.tx, &self.bell, &mut self.scratch);
            dev.injected = injected;
            dev.observer = observer;
            let mut rounds = 0;
            while self.stack.poll(&mut dev, Instant::from_millis(2)) {
                rounds += 1;
                assert!(rounds < 100, "poll keeps reporting progress");
            }
            self.rx.refill(&self.bell);
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
        let seen = RefCell::new(0usize);
        let count = |_: &[u8]| *seen.borrow_mut() += 1;
        g.poll(None, Some(&count));
        assert_eq!(*seen.borrow(), 4, "the observer saw every received frame");
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
        let post = |f: &[u8]| {
            if is_arp(f) {
                if let Some(binding) = arp_sender(f, &local) {
                    board.post(binding, 5);
                }
            }
        };
        a.poll(None, Some(&post));
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
