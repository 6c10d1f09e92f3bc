//! smoltcp's `Device` over one virtio-net queue pair.
//!
//! Received frames are handed to smoltcp straight from the DMA buffer and
//! the buffer goes back to the device afterwards; transmitted frames are
//! written by smoltcp straight into a transmit buffer. Nothing allocates.

use drivers::virtio::netdev::{RxQueue, TxQueue, MAX_FRAME};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Whether an Ethernet frame is ARP (which every CPU's stack must see: each
/// keeps its own neighbour cache).
pub fn is_arp(frame: &[u8]) -> bool {
    frame.len() >= 14 && frame[12..14] == [0x08, 0x06]
}

/// Notifies the device that a queue has new buffers.
pub trait Doorbell {
    fn ring(&self, queue: u16);
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
    /// A frame that did not arrive on this queue (handed over by another
    /// CPU), received before the queue's own frames.
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
        if let Some((kick, r)) = self.tx.send(len, |buf| (f.take().expect("called once"))(buf)) {
            if kick {
                self.doorbell.ring(self.tx.index);
            }
            return r;
        }
        // Full (counted by the queue): let smoltcp write, then drop it.
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
        if !self.tx.has_room() {
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
    use crate::stack::{NetConfig, Stack};
    use core::cell::RefCell;
    use drivers::dma::fake::TestDma;
    use drivers::virtio::netdev::HDR_LEN;
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

    fn frame(
        dst: EthernetAddress,
        proto: EthernetProtocol,
        payload_len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Vec<u8> {
        let eth = EthernetRepr { src_addr: HOST_MAC, dst_addr: dst, ethertype: proto };
        let mut buf = std::vec![0u8; HDR_LEN + eth.buffer_len() + payload_len];
        let mut f = EthernetFrame::new_unchecked(&mut buf[HDR_LEN..]);
        eth.emit(&mut f);
        fill(f.payload_mut());
        // virtio header: num_buffers (offset 10) = 1.
        buf[10] = 1;
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

    fn echo_request(seq: u16) -> Vec<u8> {
        let data = b"mqnet ping";
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

    /// Host → guest: ARP request and pings on the RX queue; guest → host:
    /// the replies on the TX queue, through smoltcp and the virtio rings.
    #[test]
    fn answers_arp_and_ping_through_the_rings() {
        let dma = TestDma::default();
        let mut rx = RxQueue::new(&dma, 0, 16, true).unwrap();
        let mut tx = TxQueue::new(&dma, 1, 16, true).unwrap();
        let mut rx_dev = FakeDeviceQueue::new(&dma, rx.queue());
        let mut tx_dev = FakeDeviceQueue::new(&dma, tx.queue_mut());
        let bell = Bell::default();
        let mut scratch = [0u8; MAX_FRAME];
        rx.refill();
        let cfg = NetConfig { mac: GUEST_MAC, ip: [10, 99, 0, 2], prefix_len: 24 };
        let now = Instant::from_millis(1);
        let mut stack = {
            let mut dev = QueuePair::new(&mut rx, &mut tx, &bell, &mut scratch);
            Stack::new(&cfg, &mut dev, now)
        };
        let mut inject = |bytes: Vec<u8>| {
            let (head, segs) = rx_dev.pop_avail().expect("posted buffer");
            let n = rx_dev.fill(&segs, &bytes);
            rx_dev.push_used(head as u32, n);
        };
        inject(arp_request());
        for seq in 0..3 {
            inject(echo_request(seq));
        }
        {
            let seen = RefCell::new(0usize);
            let count = |_: &[u8]| *seen.borrow_mut() += 1;
            let mut dev = QueuePair::new(&mut rx, &mut tx, &bell, &mut scratch);
            dev.observer = Some(&count);
            let mut rounds = 0;
            while stack.poll(&mut dev, now) {
                rounds += 1;
                assert!(rounds < 100, "poll keeps reporting progress");
            }
            assert!(rounds >= 1);
            let _ = &dev;
            assert_eq!(*seen.borrow(), 4, "the observer saw every received frame");
        }
        let mut sent = Vec::new();
        while let Some((head, segs)) = tx_dev.pop_avail() {
            sent.push(tx_dev.read(&segs));
            tx_dev.push_used(head as u32, 0);
        }
        assert_eq!(sent.len(), 4, "one ARP reply and three echo replies");
        let eth = EthernetFrame::new_checked(&sent[0][HDR_LEN..]).unwrap();
        assert_eq!(eth.ethertype(), EthernetProtocol::Arp);
        let arp = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap();
        assert!(
            matches!(arp, ArpRepr::EthernetIpv4 { operation: ArpOperation::Reply, source_protocol_addr, .. } if source_protocol_addr == GUEST_IP)
        );
        for (i, bytes) in sent[1..].iter().enumerate() {
            let eth = EthernetFrame::new_checked(&bytes[HDR_LEN..]).unwrap();
            assert_eq!(eth.dst_addr(), HOST_MAC);
            let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
            assert_eq!(ip.dst_addr(), HOST_IP);
            let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
            let repr = Icmpv4Repr::parse(&icmp, &Default::default()).unwrap();
            assert!(matches!(repr, Icmpv4Repr::EchoReply { seq_no, .. } if seq_no == i as u16));
        }
        assert!(!bell.0.borrow().is_empty(), "the transmit queue was kicked");
        let s = rx.stats();
        assert_eq!(s.packets, 4);
        rx.refill();
        assert_eq!(rx.queue().num_free(), 0, "every receive buffer is posted again");
    }
}
