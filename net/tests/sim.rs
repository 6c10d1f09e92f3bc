//! A whole guest in one deterministic simulation: N vCPUs, each with its own
//! `CpuNet` (smoltcp stack, services, steering), over fake virtio-net queue
//! pairs, sharing one `Fabric`; a host (a plain smoltcp interface with client
//! sockets) on the other side of a simulated multiqueue tap.
//!
//! Everything runs on one thread on a virtual clock that advances in fixed
//! 1 ms steps. A step: the host polls (its frames go onto the wire); the tap
//! puts each frame from the wire into the receive queue its policy picks (as
//! a device would: into the buffers the guest posted, with a virtio-net
//! header); every vCPU polls, in order, and again while its round reports
//! work (as the kernel's run loop does; a few rounds at most); the tap takes
//! what the guest queued on the transmit queues (learning flows, as tun
//! does) and puts it on the wire to the host. The wire can lose frames, both
//! ways, with a seeded probability. Nothing touches a real network.
//!
//! vCPUs and queue pairs are matched as the kernel matches them
//! (`net::cpu::plan_shares`, used by `claims()` in kernel/src/nic/cpu.rs):
//! vCPU p < pairs owns pair p; every other vCPU n shares pair n mod pairs,
//! under the pair's lock (`TxPath::Shared`) or by handing its frames to the
//! pair owner's outbox (`TxPath::Handoff`).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt::Write as _;

use drivers::dma::fake::TestDma;
use drivers::virtio::netdev::{
    hash_report, RxOffloads, RxQueue, TxQueue, TxTso, BUF_SIZE, HASH_HDR_LEN, HDR_LEN, MAX_FRAME,
};
use drivers::virtio::queue::fake::FakeDeviceQueue;
use net::cpu::{ConnectError, CpuNet, Fabric, Queues, Round, Wake, INBOX_SLOTS};
use net::device::{Doorbell, NetDevice, TxPath};
use net::services::echo::EchoConnection;
use net::services::{ConnCounters, Discard, Echo, Services, TcpConfig};
use net::smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use net::smoltcp::phy::{self, DeviceCapabilities, Medium};
use net::smoltcp::socket::{tcp, Socket};
use net::smoltcp::time::{Duration, Instant};
use net::smoltcp::wire::{
    checksum, EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpProtocol, Ipv4Address, TcpControl, TcpSeqNumber,
};
use net::stack::{NetConfig, Stack};
use net::steer::{Flow, Proto, Steering, KEY_LEN};
use net::zerowin::ZeroWindows;
use spin::Mutex;
use support::client::{Rng, Stream, StreamCheck};
use support::frames::{self, End};

mod support;

const GUEST: NetConfig =
    NetConfig { mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56], ip: [10, 99, 0, 2], prefix_len: 24, gateway: None };
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const HOST_IP: [u8; 4] = [10, 99, 0, 1];
const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
/// One tick of the virtual clock.
const STEP: Duration = Duration::from_millis(1);
/// Entries per virtio queue (the kernel's size).
const QUEUE_SIZE: u16 = 256;
/// Frames the tap holds per queue while the guest has no receive buffer
/// posted (tun's queue length); more are dropped.
const TAP_BACKLOG: usize = 1000;
/// Poll rounds a busy vCPU gets per step (at most `BUDGET` frames each).
const ROUNDS_PER_STEP: usize = 8;
/// How long tun remembers which queue a flow was last sent on.
const TUN_FLOW_EXPIRE: Duration = Duration::from_secs(3);

fn guest_ip() -> IpAddress {
    IpAddress::Ipv4(Ipv4Address::from(GUEST.ip))
}

fn host_ip() -> IpAddress {
    IpAddress::Ipv4(Ipv4Address::from(HOST_IP))
}

/// Every random choice of the simulation comes from an `Rng` (splitmix64).
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True with probability `ppm` in a million.
    fn chance(&mut self, ppm: u32) -> bool {
        self.below(1_000_000) < u64::from(ppm)
    }
}

/// Counts notifications (nothing listens: the simulated device looks at
/// its queues every step).
#[derive(Default)]
struct Bell(Cell<u64>);

impl Doorbell for Bell {
    fn ring(&self, _queue: u16) {
        self.0.set(self.0.get() + 1);
    }
}

/// Records which vCPUs were woken (an IPI in the kernel), and how often.
struct Woken(RefCell<Vec<u64>>);

impl Wake for Woken {
    fn wake(&self, cpu: u16) {
        self.0.borrow_mut()[usize::from(cpu)] += 1;
    }
}

/// How vCPUs without a queue pair transmit (kernel `tx-share=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Share {
    Lock,
    Handoff,
}

/// How the tap picks the receive queue of a frame from the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Policy {
    /// Linux tun's automatic queue selection: a flow goes to the queue the
    /// guest last sent it on; an unknown flow to a queue chosen by its
    /// (symmetric) hash.
    Tun,
    /// A device doing RSS with the guest's key and table (what the kernel
    /// programs): a flow lands on its owner's pair. No hash is reported.
    Rss,
    /// `Rss`, and the device reports each frame's hash in a 20-byte header
    /// (HASH_REPORT negotiated): the guest steers by it (`hash_reported`).
    RssHashReport,
    /// `RssHashReport` on a device that hashes IPv4 by address pair only
    /// (its `supported_hash_types` lack TCPv4 and UDPv4): every frame gets
    /// an IPV4 report, and all flows between two hosts share one queue.
    RssAddressesOnly,
    /// Every TCP frame goes to the queue after its owner's (with two vCPUs:
    /// the other one); everything else as with `Tun`.
    WrongQueue,
}

#[derive(Clone, Copy, Debug)]
struct Spec {
    cpus: u16,
    pairs: u16,
    share: Share,
    policy: Policy,
    /// Frames lost on the wire, each way, per million.
    loss_ppm: u32,
    seed: u64,
    /// Receive and transmit buffer of each host socket.
    host_buffer: usize,
    /// Entries of every virtio queue.
    queue_size: u16,
    /// The tap coalesces a flow's consecutive segments from the host into
    /// one of up to 64 KiB and leaves TCP checksums partial (Linux GRO
    /// with GUEST_TSO4 and GUEST_CSUM negotiated); the guest's queues and
    /// stacks are set up for it.
    gro: bool,
    /// Transmit checksum offload and TSO (CSUM and HOST_TSO4): the stacks
    /// leave TCP checksums to the device and emit segments of up to 64 KiB,
    /// which the device finishes and cuts (`Pair::take_sent`).
    tso: bool,
}

impl Spec {
    fn new(cpus: u16, pairs: u16) -> Spec {
        Spec {
            cpus,
            pairs,
            share: Share::Lock,
            policy: Policy::Tun,
            loss_ppm: 0,
            seed: 1,
            host_buffer: 256 * KIB,
            queue_size: QUEUE_SIZE,
            gro: false,
            tso: false,
        }
    }
}

/// What the tap saw of one TCP connection.
#[derive(Clone, Debug, Default)]
struct FlowLog {
    /// Frames from the host put into each receive queue.
    to_queue: Vec<u64>,
    /// Frames the guest sent, by transmit queue.
    from_queue: Vec<u64>,
    /// Frames from the guest that reached the host (not lost).
    to_host: u64,
    /// Resets the guest sent.
    guest_resets: u64,
}

/// What an RSS device reports with a frame: hash value and `hash_report` type.
type HashReport = (u32, u16);

/// The host's end of the guest's queues: a multiqueue tap.
struct Tap {
    policy: Policy,
    queues: usize,
    /// The secret of tun's flow hash.
    hashrnd: u64,
    /// tun's flow table: flow hash -> (queue, when the guest last sent on it).
    flows: HashMap<u32, (usize, Instant)>,
    loss_ppm: u32,
    loss_to_guest: Rng,
    loss_to_host: Rng,
    lost_to_guest: u64,
    lost_to_host: u64,
    /// Frames dropped because a queue's backlog was full.
    overflow: u64,
    /// Segments merged into an earlier one of their flow (`Spec::gro`).
    coalesced: u64,
    /// Per TCP connection, by (host port, guest port).
    log: BTreeMap<(u16, u16), FlowLog>,
}

impl Tap {
    /// A flow hash that is the same both ways (tun's `__skb_get_hash_symmetric`).
    fn symmetric_hash(&self, frame: &[u8]) -> u32 {
        let words = match Flow::parse(frame) {
            Some(f) => {
                let a = u64::from(u32::from_be_bytes(f.src)) << 16 | u64::from(f.src_port);
                let b = u64::from(u32::from_be_bytes(f.dst)) << 16 | u64::from(f.dst_port);
                let proto = match f.proto {
                    Proto::Tcp => 6,
                    Proto::Udp => 17,
                    Proto::Other => 0,
                };
                [a.min(b), a.max(b) ^ proto << 56]
            }
            // Not IPv4 (ARP): by EtherType.
            None => [frame.get(12..14).map_or(0, |t| u64::from(u16::from_be_bytes([t[0], t[1]]))), 0],
        };
        let mut mix = Rng(self.hashrnd);
        for w in words {
            mix.0 ^= w;
            mix.next();
        }
        (mix.next() >> 32) as u32
    }

    fn tun_queue(&self, frame: &[u8], now: Instant) -> usize {
        let hash = self.symmetric_hash(frame);
        match self.flows.get(&hash) {
            Some(&(queue, seen)) if self.queues > 1 && now - seen <= TUN_FLOW_EXPIRE => queue,
            _ => ((u64::from(hash) * self.queues as u64) >> 32) as usize,
        }
    }

    /// The receive queue a frame from the host goes to.
    fn choose(&self, frame: &[u8], steering: &Steering, now: Instant) -> usize {
        match self.policy {
            Policy::Tun => self.tun_queue(frame, now),
            Policy::Rss | Policy::RssHashReport | Policy::RssAddressesOnly => match self.device_flow(frame) {
                Some(flow) => usize::from(steering.owner_of_hash(steering.hash(&flow))) % self.queues,
                // Not IPv4: unclassified, queue 0.
                None => 0,
            },
            Policy::WrongQueue => match steering.owner(frame) {
                Some(owner) if tcp_ports(frame).is_some() => (usize::from(owner) + 1) % self.queues,
                _ => self.tun_queue(frame, now),
            },
        }
    }

    /// What an RSS device reports for `frame`: its hash and the hash type,
    /// the way `Steering` hashes it (ports for TCP and UDP, the address pair
    /// for other IPv4, nothing for the rest).
    fn hash_report(&self, frame: &[u8], steering: &Steering) -> Option<HashReport> {
        if !matches!(self.policy, Policy::RssHashReport | Policy::RssAddressesOnly) {
            return None;
        }
        let flow = self.device_flow(frame)?;
        let report = match flow.proto {
            Proto::Tcp => hash_report::TCPV4,
            Proto::Udp => hash_report::UDPV4,
            Proto::Other => hash_report::IPV4,
        };
        Some((steering.hash(&flow), report))
    }

    /// The part of a frame's flow an RSS device hashes.
    fn device_flow(&self, frame: &[u8]) -> Option<Flow> {
        let flow = Flow::parse(frame)?;
        Some(match self.policy {
            Policy::RssAddressesOnly => Flow { src_port: 0, dst_port: 0, proto: Proto::Other, ..flow },
            _ => flow,
        })
    }

    /// The guest sent `frame` on transmit queue `queue`: tun remembers it.
    fn learn(&mut self, frame: &[u8], queue: usize, now: Instant) {
        if self.queues > 1 {
            let hash = self.symmetric_hash(frame);
            self.flows.insert(hash, (queue, now));
        }
    }

    fn flow_log(&mut self, key: (u16, u16)) -> &mut FlowLog {
        let queues = self.queues;
        self.log.entry(key).or_insert_with(|| FlowLog {
            to_queue: vec![0; queues],
            from_queue: vec![0; queues],
            ..FlowLog::default()
        })
    }
}

/// How many of a queue's latest waiting frames the tap's GRO looks through
/// for the flow of a new segment (Linux keeps a list of flows per queue).
const GRO_FLOWS: usize = 8;
/// The longest IP packet a coalesced segment may become.
const GRO_MAX_IP: usize = 65_535;

/// Linux GRO: appends `next`'s payload to `last` when both are data
/// segments of the same flow (IPv4 TCP, ACK set, no SYN/FIN/RST/URG, the
/// same header lengths), `next` carries on where `last` ends, and the
/// result stays a valid IP packet. `last` takes `next`'s TCP header (its
/// acknowledgement, window and flags) but keeps its sequence number.
fn coalesce(last: &mut Vec<u8>, next: &[u8]) -> bool {
    const ETH: usize = 14;
    let shape = |f: &[u8]| -> Option<(usize, usize, [u8; 12], i32, usize)> {
        let (src, dst, tcp) = frames::tcp_in(f)?;
        let plain = tcp.ack() && !(tcp.syn() || tcp.fin() || tcp.rst() || tcp.urg());
        let ihl = usize::from(f[ETH] & 0x0f) * 4;
        let headers = ETH + ihl + usize::from(tcp.header_len());
        let mut key = [0u8; 12];
        key[..4].copy_from_slice(&src.octets());
        key[4..8].copy_from_slice(&dst.octets());
        key[8..10].copy_from_slice(&tcp.src_port().to_be_bytes());
        key[10..].copy_from_slice(&tcp.dst_port().to_be_bytes());
        let total = usize::from(u16::from_be_bytes([f[ETH + 2], f[ETH + 3]]));
        (plain && !tcp.payload().is_empty() && ihl == 20 && f.len() == ETH + total).then_some((
            ihl,
            headers,
            key,
            tcp.seq_number().0,
            tcp.payload().len(),
        ))
    };
    let (Some(a), Some(b)) = (shape(last), shape(next)) else { return false };
    let fits = last.len() - ETH + b.4 <= GRO_MAX_IP;
    if a.0 != b.0 || a.1 != b.1 || a.2 != b.2 || a.3.wrapping_add(a.4 as i32) != b.3 || !fits {
        return false;
    }
    let (tcp_at, headers) = (ETH + a.0, a.1);
    last[tcp_at + 8..headers].copy_from_slice(&next[tcp_at + 8..headers]);
    last.extend_from_slice(&next[headers..]);
    let total = (last.len() - ETH) as u16;
    last[ETH + 2..ETH + 4].copy_from_slice(&total.to_be_bytes());
    net::smoltcp::wire::Ipv4Packet::new_unchecked(&mut last[ETH..]).fill_checksum();
    true
}

/// What a tap with GUEST_CSUM/GUEST_TSO4 writes for an IPv4 TCP frame at
/// `packet[start..]` (after the header's first `start` bytes): NEEDS_CSUM
/// with the pseudo-header sum in the checksum field (the host never
/// computed the rest), and for a frame longer than one segment, gso_type
/// TCPV4 with `gso_size` and `hdr_len`. Other frames are left as they are.
fn tap_offload_header(packet: &mut [u8], start: usize) {
    let frame = &packet[start..];
    let Some((src, dst, tcp)) = frames::tcp_in(frame) else { return };
    let tcp_len = tcp.into_inner().len();
    let tcp_at = frame.len() - tcp_len;
    let headers = tcp_at + usize::from(frame[tcp_at + 12] >> 4) * 4;
    let sum = checksum::pseudo_header_v4(&src, &dst, IpProtocol::Tcp, tcp_len as u32);
    let (mss, long) = (MAX_FRAME - headers, frame.len() > MAX_FRAME);
    let field = start + tcp_at + 16;
    packet[field..field + 2].copy_from_slice(&(sum as u16).to_be_bytes());
    packet[0] = 1; // NEEDS_CSUM
    packet[6..8].copy_from_slice(&(tcp_at as u16).to_le_bytes());
    packet[8..10].copy_from_slice(&16u16.to_le_bytes());
    if long {
        packet[1] = 1; // TCPV4
        packet[2..4].copy_from_slice(&(headers as u16).to_le_bytes());
        packet[4..6].copy_from_slice(&(mss as u16).to_le_bytes());
    }
}

/// Source and destination port of a TCP segment, and whether it is a reset.
fn tcp_ports(frame: &[u8]) -> Option<(u16, u16, bool)> {
    let (_, _, tcp) = frames::tcp_in(frame)?;
    Some((tcp.src_port(), tcp.dst_port(), tcp.rst()))
}

/// A TCP segment's sequence and acknowledgement numbers and payload length.
fn tcp_numbers(frame: &[u8]) -> Option<(i32, Option<i32>, usize)> {
    let (_, _, tcp) = frames::tcp_in(frame)?;
    let ack = tcp.ack().then_some(tcp.ack_number().0);
    Some((tcp.seq_number().0, ack, tcp.payload().len()))
}

enum TxSlot {
    /// The owner's alone (or handed frames by its sharers).
    Own(TxQueue),
    /// Shared by its owner and other vCPUs under a lock.
    Shared(Mutex<TxQueue>),
}

/// One queue pair: the driver's ends and the device's.
struct Pair {
    rx: RxQueue,
    tx: TxSlot,
    rx_dev: FakeDeviceQueue<'static>,
    tx_dev: FakeDeviceQueue<'static>,
    /// The virtio-net header length of both queues.
    hdr_len: usize,
    /// Frames from the host waiting for a posted receive buffer, with the
    /// hash the device reports for each.
    backlog: VecDeque<(Vec<u8>, Option<HashReport>)>,
    /// `Spec::gro`: TCP frames go with a partial checksum, long ones as
    /// coalesced segments over as many buffers as they need.
    gro: bool,
    /// TSO frames from the guest that the device cut (`Spec::tso`), and
    /// how many of them were IPv6 (gso_type TCPV6).
    segmented: u64,
    segmented_v6: u64,
}

impl Pair {
    fn tx_stats(&mut self) -> drivers::virtio::netdev::QueueStats {
        match &mut self.tx {
            TxSlot::Own(q) => q.stats(),
            TxSlot::Shared(m) => m.lock().stats(),
        }
    }

    /// The device writes waiting frames into posted buffers: one each,
    /// except coalesced segments (`gro`), which span as many as they need
    /// (MRG_RXBUF, `num_buffers`).
    fn deliver(&mut self) {
        while let Some((frame, hash)) = self.backlog.front() {
            // virtio_net_hdr: flags at 0, gso_type 1, hdr_len 2, gso_size 4,
            // csum_start 6, csum_offset 8, num_buffers at 10; with the
            // 20-byte header, hash_value at 12 and hash_report at 16.
            let mut packet = vec![0u8; self.hdr_len];
            if let Some((value, report)) = hash {
                packet[12..16].copy_from_slice(&value.to_le_bytes());
                packet[16..18].copy_from_slice(&report.to_le_bytes());
            }
            let start = packet.len();
            packet.extend_from_slice(frame);
            if self.gro {
                tap_offload_header(&mut packet, start);
            }
            let count = packet.len().div_ceil(BUF_SIZE);
            if usize::from(self.rx_dev.avail_idx().wrapping_sub(self.rx_dev.last_avail)) < count {
                break;
            }
            packet[10..12].copy_from_slice(&(count as u16).to_le_bytes());
            for chunk in packet.chunks(BUF_SIZE) {
                let (head, segs) = self.rx_dev.pop_avail().expect("counted");
                let written = self.rx_dev.fill(&segs, chunk);
                self.rx_dev.write_used(u32::from(head), written);
            }
            let idx = self.rx_dev.used_idx;
            self.rx_dev.set_used_idx(idx);
            self.backlog.pop_front();
        }
    }

    /// The device takes everything queued for transmission, finishing
    /// partial checksums (NEEDS_CSUM) and cutting TSO frames (gso_type
    /// TCPV4 or TCPV6) into segments of `gso_size` as QEMU and the host do.
    fn take_sent(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some((head, segs)) = self.tx_dev.pop_avail() {
            let bytes = self.tx_dev.read(&segs);
            self.tx_dev.push_used(u32::from(head), 0);
            let (header, frame) = bytes.split_at(self.hdr_len);
            let mut frame = frame.to_vec();
            let le16 = |at: usize| usize::from(u16::from_le_bytes([header[at], header[at + 1]]));
            if header[0] & 1 != 0 {
                // NEEDS_CSUM: the sum from csum_start to the end, the
                // pseudo-header sum in the field included, complemented.
                let (start, field) = (le16(6), le16(6) + le16(8));
                let sum = !checksum::data(&frame[start..]);
                frame[field..field + 2].copy_from_slice(&sum.to_be_bytes());
            }
            match header[1] {
                0 => out.push(frame),
                gso @ (1 | 4) => {
                    let ethertype = if gso == 1 { [0x08, 0x00] } else { [0x86, 0xdd] };
                    assert_eq!(frame[12..14], ethertype, "gso_type {gso} for the frame's IP version");
                    let max = le16(2) + le16(4);
                    let mut piece = vec![0u8; max];
                    net::segment::split_tcp(&frame, max, &mut piece, |p| out.push(p.to_vec())).expect("a TSO frame");
                    self.segmented += 1;
                    self.segmented_v6 += u64::from(gso == 4);
                }
                other => panic!("the guest sent gso_type {other}"),
            }
        }
        out
    }
}

/// vCPU `index`'s view of its pair, as the kernel gives it.
fn queues_of<'a>(fabric: &'a Fabric, pair: &'a mut Pair, owns_pair: bool, index: usize) -> Queues<'a> {
    if owns_pair {
        let (tx, outbox) = match &mut pair.tx {
            // Owners of a pair others hand frames to drain their outbox.
            TxSlot::Own(q) => (TxPath::Own(q), fabric.outboxes.get(index)),
            TxSlot::Shared(m) => (TxPath::Shared(m), None),
        };
        Queues { rx: Some(&mut pair.rx), tx, outbox }
    } else {
        let tx = match &pair.tx {
            TxSlot::Shared(m) => TxPath::Shared(m),
            TxSlot::Own(_) => TxPath::Handoff(&fabric.outboxes[index]),
        };
        Queues { rx: None, tx, outbox: None }
    }
}

struct Vcpu {
    net: CpuNet,
    /// The pair it uses: its own, or the one it shares.
    pair: usize,
    owns_pair: bool,
    /// Not polled (a vCPU busy elsewhere, or halted with its wake-up lost).
    paused: bool,
    last: Option<Round>,
}

/// The host's NIC: frames from and to the wire.
struct HostNic<'a> {
    rx: &'a mut VecDeque<Vec<u8>>,
    tx: &'a mut VecDeque<Vec<u8>>,
}

struct HostRx(Vec<u8>);
struct HostTx<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for HostRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for HostTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let r = f(&mut frame);
        self.0.push_back(frame);
        r
    }
}

impl phy::Device for HostNic<'_> {
    type RxToken<'b>
        = HostRx
    where
        Self: 'b;
    type TxToken<'b>
        = HostTx<'b>
    where
        Self: 'b;

    fn receive(&mut self, _now: Instant) -> Option<(HostRx, HostTx<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((HostRx(frame), HostTx(self.tx)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<HostTx<'_>> {
        Some(HostTx(self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}

/// The simulated machine and its host.
struct Sim {
    spec: Spec,
    now: Instant,
    fabric: Fabric,
    pairs: Vec<Pair>,
    cpus: Vec<Vcpu>,
    bell: Bell,
    woken: Woken,
    host: Interface,
    host_sockets: SocketSet<'static>,
    /// The wire between the host and the tap.
    to_guest: VecDeque<Vec<u8>>,
    to_host: VecDeque<Vec<u8>>,
    tap: Tap,
    rng: Rng,
}

impl Sim {
    fn new(spec: Spec) -> Sim {
        let (cpus, pairs) = (spec.cpus, spec.pairs);
        assert!((1..=cpus).contains(&pairs), "{spec:?}");
        // The fake device resolves descriptor addresses through it for as
        // long as the queues live (and it never frees its blocks anyway).
        let dma: &'static TestDma = Box::leak(Box::default());
        let mut rng = Rng(spec.seed);
        let key: [u8; KEY_LEN] = core::array::from_fn(|_| rng.next() as u8);
        // As the kernel does: pair p is shared when some vCPU n >= pairs
        // maps onto it (n mod pairs), and handoff mode has one outbox per
        // shared pair.
        let shared = |p: u16| cpus > pairs && p < cpus - pairs;
        let outboxes = match spec.share {
            Share::Handoff => (cpus - pairs).min(pairs),
            Share::Lock => 0,
        };
        let mut fabric = Fabric::new(GUEST, key, cpus, outboxes);
        let hdr_len = match spec.policy {
            Policy::RssHashReport | Policy::RssAddressesOnly => HASH_HDR_LEN,
            _ => HDR_LEN,
        };
        fabric.hash_reported = hdr_len == HASH_HDR_LEN;
        fabric.checksums.rx = spec.gro;
        fabric.checksums.tx = spec.tso;
        fabric.tso = if spec.tso { TxTso { v4: true, v6: true } } else { TxTso::NONE };
        let bell = Bell::default();
        let now = Instant::from_millis(1);
        let mut pair_list: Vec<Pair> = (0..pairs)
            .map(|p| {
                let mut rx =
                    RxQueue::with_header(dma, 2 * p, spec.queue_size, true, true, hdr_len).expect("receive queue");
                if spec.gro {
                    rx.set_offloads(RxOffloads { csum: true, tso4: true, tso6: false });
                }
                let mut tx =
                    TxQueue::with_header(dma, 2 * p + 1, spec.queue_size, true, hdr_len).expect("transmit queue");
                tx.set_batched(true, &bell);
                if spec.tso {
                    tx.set_csum_offload(true);
                    assert!(tx.set_tso(dma, TxTso { v4: true, v6: true }));
                }
                let rx_dev = FakeDeviceQueue::new(dma, rx.queue());
                let tx_dev = FakeDeviceQueue::new(dma, tx.queue());
                rx.refill(&bell);
                let tx = match (shared(p), spec.share) {
                    (true, Share::Lock) => TxSlot::Shared(Mutex::new(tx)),
                    _ => TxSlot::Own(tx),
                };
                Pair {
                    rx,
                    tx,
                    rx_dev,
                    tx_dev,
                    hdr_len,
                    backlog: VecDeque::new(),
                    gro: spec.gro,
                    segmented: 0,
                    segmented_v6: 0,
                }
            })
            .collect();
        let cpu_list: Vec<Vcpu> = (0..cpus)
            .map(|n| {
                let (pair, owns_pair) = (usize::from(n % pairs), n < pairs);
                let mut services = Services::new(TcpConfig::default());
                services.add(Box::new(Echo));
                services.add(Box::new(Discard));
                let mut queues = queues_of(&fabric, &mut pair_list[pair], owns_pair, pair);
                let net = CpuNet::new(n, &fabric, services, &mut queues, &bell, now, rng.next());
                Vcpu { net, pair, owns_pair, paused: false, last: None }
            })
            .collect();
        let (mut to_guest, mut to_host) = (VecDeque::new(), VecDeque::new());
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(HOST_MAC)));
        config.random_seed = rng.next();
        let mut host = Interface::new(config, &mut HostNic { rx: &mut to_host, tx: &mut to_guest }, now);
        host.update_ip_addrs(|addrs| addrs.push(IpCidr::new(host_ip(), 24)).unwrap());
        let tap = Tap {
            policy: spec.policy,
            queues: usize::from(pairs),
            hashrnd: rng.next(),
            flows: HashMap::new(),
            loss_ppm: spec.loss_ppm,
            loss_to_guest: Rng(rng.next()),
            loss_to_host: Rng(rng.next()),
            lost_to_guest: 0,
            lost_to_host: 0,
            overflow: 0,
            coalesced: 0,
            log: BTreeMap::new(),
        };
        Sim {
            spec,
            now,
            fabric,
            pairs: pair_list,
            cpus: cpu_list,
            bell,
            woken: Woken(RefCell::new(vec![0; usize::from(cpus)])),
            host,
            host_sockets: SocketSet::new(Vec::new()),
            to_guest,
            to_host,
            tap,
            rng,
        }
    }

    /// The vCPU that owns the connection from host port `host_port` to
    /// guest port `guest_port`, from the 4-tuple as the guest receives it.
    fn owner(&self, host_port: u16, guest_port: u16) -> u16 {
        let flow = Flow { src: HOST_IP, dst: GUEST.ip, src_port: host_port, dst_port: guest_port, proto: Proto::Tcp };
        self.fabric.steering.owner_of_hash(self.fabric.steering.hash(&flow))
    }

    /// `count` distinct random host ports for connections to `guest_port`,
    /// the i-th owned by vCPU `owner_of(i)`.
    fn ports_owned_by(&mut self, count: usize, guest_port: u16, owner_of: impl Fn(usize) -> u16) -> Vec<u16> {
        let mut ports: Vec<u16> = Vec::new();
        for i in 0..count {
            loop {
                let port = 20_000 + self.rng.below(40_000) as u16;
                if !ports.contains(&port) && self.owner(port, guest_port) == owner_of(i) {
                    ports.push(port);
                    break;
                }
            }
        }
        ports
    }

    /// The host's turn: what it received, its sockets, what it sends.
    fn host_poll(&mut self) {
        let mut nic = HostNic { rx: &mut self.to_host, tx: &mut self.to_guest };
        self.host.poll(self.now, &mut nic, &mut self.host_sockets);
    }

    /// The tap takes the frames off the wire (some are lost on the way)
    /// and puts each into the receive queue its policy picks.
    fn tap_to_guest(&mut self) {
        while let Some(frame) = self.to_guest.pop_front() {
            let loss = self.tap.loss_ppm;
            if self.tap.loss_to_guest.chance(loss) {
                self.tap.lost_to_guest += 1;
                continue;
            }
            let queue = self.tap.choose(&frame, &self.fabric.steering, self.now);
            let pair = &mut self.pairs[queue];
            if pair.backlog.len() >= TAP_BACKLOG {
                self.tap.overflow += 1;
                continue;
            }
            if let Some((src, dst, _)) = tcp_ports(&frame) {
                self.tap.flow_log((src, dst)).to_queue[queue] += 1;
            }
            if self.spec.gro && pair.backlog.iter_mut().rev().take(GRO_FLOWS).any(|(last, _)| coalesce(last, &frame)) {
                self.tap.coalesced += 1;
                continue;
            }
            let hash = self.tap.hash_report(&frame, &self.fabric.steering);
            pair.backlog.push_back((frame, hash));
        }
        for pair in &mut self.pairs {
            pair.deliver();
        }
    }

    /// One poll round of vCPU `n` at the current time (its cycle counts
    /// come from [`ticks`], a counter: the simulation has no clock).
    fn poll_cpu(&mut self, n: usize) -> Round {
        let Sim { fabric, pairs, cpus, bell, woken, now, spec, .. } = self;
        let v = &mut cpus[n];
        let mut queues = queues_of(fabric, &mut pairs[v.pair], v.owns_pair, v.pair);
        let round = v.net.poll(fabric, &mut queues, bell, *now, woken, ticks);
        // As the kernel does after a round: a vCPU that handed frames over
        // wakes the pair's owner.
        if !v.owns_pair && spec.share == Share::Handoff && !fabric.outboxes[v.pair].is_empty() {
            woken.wake(v.pair as u16);
        }
        v.last = Some(round);
        round
    }

    /// Every vCPU's turn, in order: like the kernel's run loop, it polls
    /// again while the round says it is busy (up to [`ROUNDS_PER_STEP`]).
    fn poll_guests(&mut self) {
        for n in 0..self.cpus.len() {
            if self.cpus[n].paused {
                continue;
            }
            for _ in 0..ROUNDS_PER_STEP {
                if !self.poll_cpu(n).busy {
                    break;
                }
            }
        }
    }

    /// The tap takes what the guest queued on every transmit queue, learns
    /// the flows, and puts the frames on the wire (some are lost).
    fn tap_to_host(&mut self) {
        for queue in 0..self.pairs.len() {
            for frame in self.pairs[queue].take_sent() {
                self.tap.learn(&frame, queue, self.now);
                let lost = self.tap.loss_to_host.chance(self.tap.loss_ppm);
                if let Some((src, dst, rst)) = tcp_ports(&frame) {
                    let log = self.tap.flow_log((dst, src));
                    log.from_queue[queue] += 1;
                    log.guest_resets += u64::from(rst);
                    log.to_host += u64::from(!lost);
                }
                if lost {
                    self.tap.lost_to_host += 1;
                } else {
                    self.to_host.push_back(frame);
                }
            }
        }
    }

    /// One tick of the clock.
    fn step(&mut self) {
        self.host_poll();
        self.tap_to_guest();
        self.poll_guests();
        self.tap_to_host();
        self.now += STEP;
    }

    /// Steps until `done` (asked before every step) says so; panics after
    /// `limit` of virtual time. Returns the virtual time it took.
    fn drive(&mut self, limit: Duration, mut done: impl FnMut(&mut Sim) -> bool) -> Duration {
        let start = self.now;
        while !done(self) {
            assert!(self.now - start < limit, "not done after {limit} (virtual)\n{}", self.report());
            self.step();
        }
        self.now - start
    }

    fn wait(&mut self, time: Duration) {
        let end = self.now + time;
        self.drive(time + STEP, |s| s.now >= end);
    }

    fn connections(&self, n: usize) -> ConnCounters {
        self.cpus[n].net.connections()
    }

    /// No connection open on any vCPU.
    fn guest_idle(&self) -> bool {
        self.cpus.iter().all(|v| v.net.connections().active == 0)
    }

    /// What every vCPU and the tap have counted, for failure messages.
    fn report(&self) -> String {
        let mut s = format!("{:?}\n", self.spec);
        for v in &self.cpus {
            let _ = writeln!(
                s,
                "cpu{}: {:?} {:?} {:?}",
                v.net.cpu,
                v.net.connections(),
                v.net.counters(),
                v.net.inbox_stats(&self.fabric)
            );
        }
        let t = &self.tap;
        let _ = writeln!(
            s,
            "tap: lost {} to guest, {} to host, {} overflowed; woken {:?}",
            t.lost_to_guest,
            t.lost_to_host,
            t.overflow,
            self.woken.0.borrow()
        );
        s
    }

    /// Every frame a vCPU steered away went into its owner's inbox (a split
    /// one as its pieces) or was counted as dropped there, and every vCPU
    /// took from its inbox exactly what it popped.
    fn check_steering_books(&self) {
        let misses: u64 = self
            .cpus
            .iter()
            .map(|v| {
                let c = v.net.counters();
                c.misses - c.splits + c.split_pieces
            })
            .sum();
        let offered: u64 = self
            .cpus
            .iter()
            .map(|v| {
                let s = v.net.inbox_stats(&self.fabric);
                s.pushed + s.dropped()
            })
            .sum();
        assert_eq!(misses, offered, "every miss was offered to an inbox\n{}", self.report());
        for v in &self.cpus {
            assert_eq!(v.net.counters().inbox_in, v.net.inbox_stats(&self.fabric).popped, "cpu{}", v.net.cpu);
        }
    }
}

/// A host client: sends `total` pseudo-random bytes, closes once they are
/// all acknowledged, and (for echo) checks that exactly those bytes come back.
struct Client {
    handle: SocketHandle,
    host_port: u16,
    guest_port: u16,
    echoed: bool,
    stream: StreamCheck,
    /// Whether `pump` reads the echo (a client that stops reading closes
    /// its receive window).
    reading: bool,
}

impl Client {
    fn new(sim: &mut Sim, guest_port: u16, host_port: u16, total: usize, seed: u64) -> Client {
        Client::to(sim, guest_ip(), guest_port, host_port, total, seed)
    }

    /// [`Client::new`] to the guest's address `guest`.
    fn to(sim: &mut Sim, guest: IpAddress, guest_port: u16, host_port: u16, total: usize, seed: u64) -> Client {
        let buffer = sim.spec.host_buffer;
        let mut socket =
            tcp::Socket::new(tcp::SocketBuffer::new(vec![0; buffer]), tcp::SocketBuffer::new(vec![0; buffer]));
        socket.connect(sim.host.context(), (guest, guest_port), host_port).unwrap();
        Client {
            handle: sim.host_sockets.add(socket),
            host_port,
            guest_port,
            echoed: guest_port == Echo::PORT,
            stream: StreamCheck::new(total, seed),
            reading: true,
        }
    }

    /// Sends what fits, reads what is there.
    fn pump(&mut self, sockets: &mut SocketSet<'static>) {
        let read_limit = if self.reading { usize::MAX } else { 0 };
        self.stream.pump(sockets.get_mut::<tcp::Socket>(self.handle), read_limit);
    }

    /// Everything sent (and echoed, for echo), and both sides closed.
    fn finished(&self, sockets: &SocketSet<'static>) -> bool {
        let StreamCheck { total, sent, received, .. } = self.stream;
        let expected = if self.echoed { total } else { 0 };
        sent == total && received == expected && !sockets.get::<tcp::Socket>(self.handle).is_open()
    }

    fn assert_intact(&self) {
        let expected = if self.echoed { self.stream.total } else { 0 };
        assert_eq!(self.stream.received, expected, "client {} got every byte back", self.host_port);
        assert_eq!(
            self.stream.first_wrong_byte, None,
            "client {} got its bytes unchanged and in order",
            self.host_port
        );
    }
}

/// Runs `clients` to the end: every one finished and no connection left
/// open in the guest.
fn run_clients(sim: &mut Sim, clients: &mut [Client], limit: Duration) -> Duration {
    let took = sim.drive(limit, |s| {
        clients.iter_mut().for_each(|c| c.pump(&mut s.host_sockets));
        clients.iter().all(|c| c.finished(&s.host_sockets)) && s.guest_idle()
    });
    clients.iter().for_each(Client::assert_intact);
    took
}

/// Per vCPU, how many of `clients` it owns.
fn owned_per_cpu(sim: &Sim, clients: &[Client]) -> Vec<u64> {
    let mut owned = vec![0u64; sim.cpus.len()];
    for c in clients {
        owned[usize::from(sim.owner(c.host_port, c.guest_port))] += 1;
    }
    owned
}

/// Every connection was accepted by its owner and ended in order.
fn assert_served_by_owners(sim: &Sim, clients: &[Client]) {
    let owned = owned_per_cpu(sim, clients);
    for (n, &count) in owned.iter().enumerate() {
        let c = sim.connections(n);
        assert_eq!(c.accepted, count, "cpu{n} accepted the flows it owns\n{}", sim.report());
        let all = count + c.connected;
        assert_eq!((c.closed, c.reset, c.active), (all, 0, 0), "cpu{n}: all closed in order\n{}", sim.report());
    }
}

#[test]
fn tcp_echo_over_four_vcpus_with_loss() {
    let mut sim = Sim::new(Spec { loss_ppm: 10_000, seed: 0x5eed_0001, ..Spec::new(4, 4) });
    // Random ports: whichever vCPU the hash makes their owner.
    let mut rng = Rng(42);
    let mut ports = BTreeSet::new();
    while ports.len() < 16 {
        ports.insert(30_000 + rng.below(30_000) as u16);
    }
    let mut clients: Vec<Client> = ports
        .iter()
        .enumerate()
        .map(|(i, &p)| Client::new(&mut sim, Echo::PORT, p, 256 * KIB, 1000 + i as u64))
        .collect();
    let owned = owned_per_cpu(&sim, &clients);
    assert!(owned.iter().all(|&n| n > 0), "the ports give every vCPU a flow: {owned:?}");

    let took = run_clients(&mut sim, &mut clients, Duration::from_secs(120));

    assert!(sim.tap.lost_to_guest > 0 && sim.tap.lost_to_host > 0, "{}", sim.report());
    assert_served_by_owners(&sim, &clients);
    for n in 0..4 {
        assert_eq!(sim.connections(n).failed, 0, "cpu{n}\n{}", sim.report());
        assert_eq!(sim.cpus[n].net.services.bytes_sent_by(Echo::PORT), owned[n] * 256 * KIB as u64);
    }
    // tun sends each SYN to a queue of its own choosing: some land on
    // another vCPU's queue and are steered.
    let misses: u64 = sim.cpus.iter().map(|v| v.net.counters().misses).sum();
    assert!(misses > 0, "{}", sim.report());
    sim.check_steering_books();
    eprintln!("16 x 256 KiB echoed with 1% loss in {took} (virtual)\n{}", sim.report());
}

#[test]
fn a_flow_on_the_wrong_queue_is_served_by_its_owner() {
    let mut sim = Sim::new(Spec { policy: Policy::WrongQueue, seed: 2, ..Spec::new(2, 2) });
    let port = sim.ports_owned_by(1, Echo::PORT, |_| 1)[0];
    let (owner, other) = (1usize, 0usize);
    let mut client = Client::new(&mut sim, Echo::PORT, port, 128 * KIB, 7);
    // Midway, the connection lives in the owner's stack only.
    let has_socket = |sim: &Sim, n: usize| {
        sim.cpus[n].net.stack.sockets.iter().any(|(_, s)| match s {
            net::smoltcp::socket::Socket::Tcp(s) => s.remote_endpoint().is_some_and(|e| e.port == port),
            #[allow(unreachable_patterns)]
            _ => false,
        })
    };
    sim.drive(Duration::from_secs(5), |s| {
        client.pump(&mut s.host_sockets);
        client.stream.received > 0
    });
    assert!(has_socket(&sim, owner) && !has_socket(&sim, other));

    run_clients(&mut sim, std::slice::from_mut(&mut client), Duration::from_secs(30));

    let log = &sim.tap.log[&(port, Echo::PORT)];
    assert_eq!(log.to_queue[owner], 0, "the tap never used the owner's queue");
    let frames = log.to_queue[other];
    assert!(frames > 100, "{frames} frames");
    assert_eq!(log.guest_resets, 0, "the non-owner's stack never answered with a reset");
    assert_eq!(sim.cpus[other].net.counters().misses, frames, "every frame of the flow was a miss there");
    assert_eq!(sim.cpus[owner].net.counters().inbox_in, frames, "and reached the owner through its inbox");
    assert_eq!(sim.cpus[owner].net.counters().misses, 0);
    assert_eq!(sim.connections(other), ConnCounters::default(), "no connection on the non-owner");
    let expected = ConnCounters { accepted: 1, closed: 1, ..ConnCounters::default() };
    assert_eq!(sim.connections(owner), expected);
    assert!(sim.woken.0.borrow()[owner] > 0, "the non-owner woke the owner");
    assert_eq!(sim.woken.0.borrow()[other], 0);
    sim.check_steering_books();
}

#[test]
fn fewer_queues_than_vcpus_all_vcpus_serve() {
    for (pairs, share) in [(1, Share::Lock), (1, Share::Handoff), (2, Share::Lock), (2, Share::Handoff)] {
        let mut sim = Sim::new(Spec { share, seed: 3 + u64::from(pairs), ..Spec::new(4, pairs) });
        // Two flows for every vCPU.
        let ports = sim.ports_owned_by(8, Echo::PORT, |i| (i % 4) as u16);
        let mut clients: Vec<Client> =
            ports.iter().enumerate().map(|(i, &p)| Client::new(&mut sim, Echo::PORT, p, 64 * KIB, i as u64)).collect();
        let took = run_clients(&mut sim, &mut clients, Duration::from_secs(30));
        let what = format!("{pairs} pair(s), {share:?}");

        assert_served_by_owners(&sim, &clients);
        for c in &clients {
            let owner = sim.owner(c.host_port, c.guest_port);
            let log = &sim.tap.log[&(c.host_port, c.guest_port)];
            // 64 KiB of echo is at least 45 full-sized segments.
            assert!(log.to_host >= 45, "{what}: cpu{owner}'s frames reached the host: {log:?}");
            assert_eq!(log.guest_resets, 0, "{what}");
        }
        for v in &sim.cpus {
            let handed = v.net.counters().handoff_out;
            match (share, v.owns_pair) {
                // At least the echo of one flow of a vCPU without a pair.
                (Share::Handoff, true) => assert!(handed >= 45, "{what}: cpu{} moved {handed}", v.net.cpu),
                _ => assert_eq!(handed, 0, "{what}: cpu{}", v.net.cpu),
            }
        }
        for outbox in &sim.fabric.outboxes {
            let stats = outbox.stats();
            assert_eq!((stats.dropped_full, stats.pushed), (0, stats.popped), "{what}");
        }
        sim.check_steering_books();
        eprintln!("{what}: 8 x 64 KiB in {took} (virtual)");
    }
}

#[test]
fn discard_sinks_everything() {
    let mut sim = Sim::new(Spec { seed: 4, ..Spec::new(4, 4) });
    let ports = sim.ports_owned_by(4, Discard::PORT, |i| i as u16);
    let mut clients: Vec<Client> =
        ports.iter().enumerate().map(|(i, &p)| Client::new(&mut sim, Discard::PORT, p, MIB, 50 + i as u64)).collect();
    run_clients(&mut sim, &mut clients, Duration::from_secs(30));
    let sunk: Vec<u64> = sim.cpus.iter().map(|v| v.net.services.bytes_received_by(Discard::PORT)).collect();
    assert_eq!(sunk.iter().sum::<u64>(), 4 * MIB as u64);
    assert_eq!(sunk, [MIB as u64; 4], "each vCPU sank its own flow");
    assert!(sim.cpus.iter().all(|v| v.net.services.bytes_sent_by(Discard::PORT) == 0));
    assert_served_by_owners(&sim, &clients);
}

/// The host end of connections the guest opens: it says something, checks
/// the echo, and closes.
struct Server {
    handle: SocketHandle,
    said: bool,
    heard: Vec<u8>,
}

const SERVER_PORT: u16 = 5001;

fn listen_on_host(sim: &mut Sim, count: usize) -> Vec<Server> {
    (0..count)
        .map(|_| {
            let mut socket =
                tcp::Socket::new(tcp::SocketBuffer::new(vec![0; 8192]), tcp::SocketBuffer::new(vec![0; 8192]));
            socket.listen(SERVER_PORT).unwrap();
            Server { handle: sim.host_sockets.add(socket), said: false, heard: Vec::new() }
        })
        .collect()
}

fn greeting(guest_port: u16) -> Vec<u8> {
    format!("hello, guest port {guest_port}").into_bytes()
}

impl Server {
    fn pump(&mut self, sockets: &mut SocketSet<'static>) {
        let s = sockets.get_mut::<tcp::Socket>(self.handle);
        let Some(remote) = s.remote_endpoint() else { return };
        let message = greeting(remote.port);
        if s.state() == tcp::State::Established && !self.said {
            self.said = s.send_slice(&message).unwrap() == message.len();
        }
        while let Ok(1..) = s.recv(|b| {
            self.heard.extend_from_slice(b);
            (b.len(), b.len())
        }) {}
        if self.heard.len() >= message.len() {
            s.close();
        }
    }
}

#[test]
fn outgoing_connections_pick_ports_that_come_home() {
    for policy in [Policy::Rss, Policy::Tun] {
        let mut sim = Sim::new(Spec { policy, seed: 5, ..Spec::new(4, 4) });
        let mut servers = listen_on_host(&mut sim, 4);
        let mut local_ports = Vec::new();
        for n in 0..4 {
            let start = sim.rng.next() as u32;
            let Sim { cpus, fabric, .. } = &mut sim;
            let net = &mut cpus[n].net;
            let handle = net.connect(fabric, HOST_IP, SERVER_PORT, start, Box::new(EchoConnection)).unwrap();
            let local = net.stack.sockets.get::<tcp::Socket>(handle).local_endpoint().unwrap().port;
            local_ports.push(local);
        }
        sim.drive(Duration::from_secs(10), |s| {
            servers.iter_mut().for_each(|srv| srv.pump(&mut s.host_sockets));
            let done = servers.iter().all(|srv| !s.host_sockets.get::<tcp::Socket>(srv.handle).is_open());
            done && s.guest_idle() && s.cpus.iter().all(|v| v.net.connections().connected == 1)
        });

        let what = format!("{policy:?}");
        for (n, &local) in local_ports.iter().enumerate() {
            assert_eq!(sim.owner(SERVER_PORT, local), n as u16, "{what}: the replies to cpu{n} are its own flow");
            let log = &sim.tap.log[&(SERVER_PORT, local)];
            assert!(log.to_queue.iter().sum::<u64>() >= 3, "{what}: {log:?}");
            if policy == Policy::Rss {
                // The device sends each reply to the queue of the vCPU that
                // owns its flow: the connecting vCPU's.
                assert_eq!(log.to_queue.iter().sum::<u64>(), log.to_queue[n], "{what}: {log:?}");
            }
            assert_eq!(log.from_queue.iter().sum::<u64>(), log.from_queue[n], "{what}: sent on its own queue");
            let expected = ConnCounters { connected: 1, closed: 1, ..ConnCounters::default() };
            assert_eq!(sim.connections(n), expected, "{what}");
        }
        for srv in &servers {
            let heard = String::from_utf8(srv.heard.clone()).unwrap();
            assert!(heard.starts_with("hello, guest port "), "{what}: {heard:?}");
            let port: u16 = heard["hello, guest port ".len()..].parse().unwrap();
            assert!(local_ports.contains(&port), "{what}: echoed {heard:?}");
        }
        for v in &sim.cpus {
            assert_eq!(v.net.counters().misses, 0, "{what}: no reply needed steering\n{}", sim.report());
        }
    }
}

/// What picking the port is for: a connection from vCPU 0 from a port
/// whose replies hash to vCPU 1 gets its SYN-ACK delivered to vCPU 1, whose
/// stack has no such connection and answers with a reset.
#[test]
fn a_local_port_that_does_not_come_home_is_reset_by_the_other_stack() {
    let mut sim = Sim::new(Spec { policy: Policy::Rss, seed: 6, ..Spec::new(2, 2) });
    let _servers = listen_on_host(&mut sim, 1);
    let stray = sim.fabric.steering.pick_local_port(1, GUEST.ip, HOST_IP, SERVER_PORT, 99, |_| false).unwrap();
    let net = &mut sim.cpus[0].net;
    let cx = net.stack.iface.context();
    net.services
        .connect(cx, &mut net.stack.sockets, (host_ip(), SERVER_PORT), stray, Box::new(EchoConnection))
        .unwrap();
    sim.drive(Duration::from_secs(3), |s| s.tap.log.get(&(SERVER_PORT, stray)).is_some_and(|l| l.guest_resets > 0));
    let log = &sim.tap.log[&(SERVER_PORT, stray)];
    assert_eq!(log.to_queue, [0, 1], "the SYN-ACK went to vCPU 1's queue");
    assert_eq!(log.from_queue, [1, 1], "vCPU 0 sent the SYN, vCPU 1 the reset");
    assert_eq!(sim.connections(0).connected, 0);
}

#[test]
fn a_vcpu_whose_ports_are_all_taken_gets_no_free_port() {
    let mut sim = Sim::new(Spec { seed: 7, ..Spec::new(4, 4) });
    let reply_owner = |sim: &Sim, port: u16| sim.owner(SERVER_PORT, port);
    let mine: Vec<u16> = (49152..=65535).filter(|&p| reply_owner(&sim, p) == 3).collect();
    assert!(mine.len() > 3000, "{} ports come home to cpu3", mine.len());
    let mut taken = Vec::new();
    for &port in &mine {
        let mut socket = tcp::Socket::new(tcp::SocketBuffer::new(Vec::new()), tcp::SocketBuffer::new(Vec::new()));
        socket.listen(port).unwrap();
        taken.push(sim.cpus[3].net.stack.sockets.add(socket));
    }
    let Sim { cpus, fabric, .. } = &mut sim;
    let refused = cpus[3].net.connect(fabric, HOST_IP, SERVER_PORT, 1234, Box::new(EchoConnection));
    assert_eq!(refused.err(), Some(ConnectError::NoFreePort));
    assert!(cpus[2].net.connect(fabric, HOST_IP, SERVER_PORT, 1234, Box::new(EchoConnection)).is_ok());
    // One port comes free: that is the one picked.
    let freed = mine.len() / 2;
    cpus[3].net.stack.sockets.remove(taken[freed]);
    let handle = cpus[3].net.connect(fabric, HOST_IP, SERVER_PORT, 1234, Box::new(EchoConnection)).unwrap();
    let local = cpus[3].net.stack.sockets.get::<tcp::Socket>(handle).local_endpoint().unwrap().port;
    assert_eq!(local, mine[freed]);
}

#[test]
fn idle_stack_fires_its_own_timers() {
    let mut sim = Sim::new(Spec { seed: 8, ..Spec::new(2, 2) });
    let port = sim.ports_owned_by(1, Discard::PORT, |_| 1)[0];
    let owner = 1usize;
    let mut client = Client::new(&mut sim, Discard::PORT, port, 100, 9);
    // Connect, and let everything settle.
    sim.drive(Duration::from_secs(5), |s| s.connections(owner).accepted == 1);
    sim.wait(Duration::from_millis(20));

    // The host sends 100 bytes and goes quiet; the owner takes them in.
    client.pump(&mut sim.host_sockets);
    sim.host_poll();
    let data = sim.to_guest.iter().find_map(|f| tcp_numbers(f).filter(|&(_, _, len)| len == 100)).expect("data");
    sim.tap_to_guest();
    let round = sim.poll_cpu(owner);
    assert_eq!(sim.cpus[owner].net.services.bytes_received_by(Discard::PORT), 100);
    let due = round.poll_at.expect("the stack has a timer running");
    assert!(due > sim.now && due <= sim.now + Duration::from_millis(1), "due {due} at {}", sim.now);
    assert!(sim.pairs[owner].take_sent().is_empty(), "the ACK is delayed");

    // Polled again and again without the clock moving: nothing.
    for _ in 0..10 {
        let again = sim.poll_cpu(owner);
        assert_eq!(again.poll_at, Some(due));
        assert!(sim.pairs[owner].take_sent().is_empty(), "nothing is sent before the timer is due");
    }

    // The caller's timer fires: the delayed ACK goes out.
    sim.now = due;
    sim.poll_cpu(owner);
    let sent = sim.pairs[owner].take_sent();
    assert_eq!(sent.len(), 1, "one frame");
    let (_, ack, len) = tcp_numbers(&sent[0]).expect("a TCP segment");
    assert_eq!(len, 0, "a pure ACK");
    assert_eq!(ack, Some(data.0.wrapping_add(100)), "acknowledging the 100 bytes");
    assert_eq!(tcp_ports(&sent[0]), Some((Discard::PORT, port, false)));
    let next = sim.cpus[owner].last.unwrap().poll_at;
    assert!(next.is_none_or(|t| t > sim.now + Duration::from_secs(1)), "nothing else is due soon: {next:?}");

    // And the connection finishes normally.
    sim.tap_to_host();
    run_clients(&mut sim, std::slice::from_mut(&mut client), Duration::from_secs(5));
}

/// A device whose RSS hashes IPv4 by address pair only reports an IPV4
/// hash for TCP frames, and puts every flow from the host on one queue:
/// the guest must still steer each frame to its flow's owner.
#[test]
fn a_device_that_hashes_addresses_only_still_gets_flows_to_their_owners() {
    let mut sim = Sim::new(Spec { policy: Policy::RssAddressesOnly, seed: 11, ..Spec::new(4, 4) });
    let ports = sim.ports_owned_by(8, Echo::PORT, |i| (i % 4) as u16);
    let mut clients: Vec<Client> =
        ports.iter().enumerate().map(|(i, &p)| Client::new(&mut sim, Echo::PORT, p, 32 * KIB, i as u64)).collect();
    let mut servers = listen_on_host(&mut sim, 4);
    for n in 0..4 {
        let start = sim.rng.next() as u32;
        let Sim { cpus, fabric, .. } = &mut sim;
        cpus[n].net.connect(fabric, HOST_IP, SERVER_PORT, start, Box::new(EchoConnection)).unwrap();
    }
    sim.drive(Duration::from_secs(10), |s| {
        clients.iter_mut().for_each(|c| c.pump(&mut s.host_sockets));
        servers.iter_mut().for_each(|srv| srv.pump(&mut s.host_sockets));
        let served = servers.iter().all(|srv| !s.host_sockets.get::<tcp::Socket>(srv.handle).is_open());
        served && clients.iter().all(|c| c.finished(&s.host_sockets)) && s.guest_idle()
    });
    clients.iter().for_each(Client::assert_intact);
    assert_served_by_owners(&sim, &clients);
    for n in 0..4 {
        assert_eq!(sim.connections(n).connected, 1, "cpu{n}'s own connection got its replies\n{}", sim.report());
    }
    let queues: BTreeSet<usize> = sim
        .tap
        .log
        .values()
        .flat_map(|l| l.to_queue.iter().enumerate().filter(|&(_, &n)| n > 0).map(|(q, _)| q))
        .collect();
    assert_eq!(queues.len(), 1, "one address pair, one queue: {queues:?}");
    let busy = *queues.first().unwrap();
    let misses: Vec<u64> = sim.cpus.iter().map(|v| v.net.counters().misses).collect();
    assert!(misses.iter().enumerate().all(|(n, &m)| (m > 0) == (n == busy)), "{misses:?}");
    sim.check_steering_books();
}

#[test]
fn a_full_inbox_drops_and_tcp_recovers() {
    let mut sim = Sim::new(Spec { policy: Policy::WrongQueue, seed: 10, ..Spec::new(2, 2) });
    // Four connections owned by vCPU 0, all delivered to vCPU 1's queue.
    let ports = sim.ports_owned_by(4, Discard::PORT, |_| 0);
    let total = 512 * KIB;
    let mut clients: Vec<Client> =
        ports.iter().enumerate().map(|(i, &p)| Client::new(&mut sim, Discard::PORT, p, total, 70 + i as u64)).collect();
    // Until the guest has acknowledged some data on every connection: its
    // ACKs open the window beyond the SYN-ACK's unscaled 64 KiB.
    let acked = |c: &Client, s: &Sim| c.stream.sent - s.host_sockets.get::<tcp::Socket>(c.handle).send_queue();
    sim.drive(Duration::from_secs(5), |s| {
        clients.iter_mut().for_each(|c| c.pump(&mut s.host_sockets));
        clients.iter().all(|c| acked(c, s) >= 16 * KIB)
    });
    assert_eq!(sim.connections(0).accepted, 4);

    // vCPU 0 is not polled while the host sends as much as the windows let
    // it: vCPU 1 steers four windows' worth of frames (256 KiB each) into
    // its inbox, which holds fewer.
    sim.cpus[0].paused = true;
    let before = sim.cpus[0].net.inbox_stats(&sim.fabric);
    assert_eq!(before.dropped_full, 0, "no drop so far");
    let woken_before = sim.woken.0.borrow()[0];
    for _ in 0..100 {
        clients.iter_mut().for_each(|c| c.pump(&mut sim.host_sockets));
        sim.step();
    }
    let inbox = sim.cpus[0].net.inbox_stats(&sim.fabric);
    assert_eq!(inbox.pushed - inbox.popped, INBOX_SLOTS as u64, "the inbox filled up: {inbox:?}");
    assert!(inbox.dropped_full > 0, "{inbox:?}");
    assert_eq!(inbox.popped, before.popped);
    assert!(sim.woken.0.borrow()[0] > woken_before, "vCPU 1 woke vCPU 0 (which did not answer)");

    // vCPU 0 polls again: it drains its inbox, and the host retransmits
    // what was dropped.
    sim.cpus[0].paused = false;
    run_clients(&mut sim, &mut clients, Duration::from_secs(60));
    assert_eq!(sim.cpus[0].net.services.bytes_received_by(Discard::PORT), 4 * total as u64);
    assert_eq!(sim.connections(1), ConnCounters::default());
    let expected = ConnCounters { accepted: 4, closed: 4, ..ConnCounters::default() };
    assert_eq!(sim.connections(0), expected);
    assert_eq!(sim.tap.overflow, 0, "the drops were the inbox's, not the tap's");
    sim.check_steering_books();
}

/// Every way the kernel can lay out 2 to 4 vCPUs over their queue pairs,
/// under every tap policy in turn, with loss: every flow is served intact
/// by its owner.
#[test]
fn every_layout_serves_every_flow_on_its_owner() {
    let policies = [Policy::Tun, Policy::Rss, Policy::RssHashReport, Policy::RssAddressesOnly];
    let mut layouts = Vec::new();
    for cpus in 2..=4u16 {
        for pairs in 1..=cpus {
            layouts.push((cpus, pairs, Share::Lock));
            if pairs < cpus {
                layouts.push((cpus, pairs, Share::Handoff));
            }
        }
    }
    for (i, &(cpus, pairs, share)) in layouts.iter().enumerate() {
        let policy = policies[i % policies.len()];
        let spec = Spec { share, policy, loss_ppm: 10_000, seed: 100 + i as u64, ..Spec::new(cpus, pairs) };
        let mut sim = Sim::new(spec);
        let ports = sim.ports_owned_by(usize::from(cpus) * 2, Echo::PORT, |i| (i % usize::from(cpus)) as u16);
        let mut clients: Vec<Client> =
            ports.iter().enumerate().map(|(i, &p)| Client::new(&mut sim, Echo::PORT, p, 32 * KIB, i as u64)).collect();
        run_clients(&mut sim, &mut clients, Duration::from_secs(60));
        assert_served_by_owners(&sim, &clients);
        sim.check_steering_books();
    }
}

// A window probe into a zero window (see net/src/zerowin.rs): smoltcp 0.14
// drops a segment with data that arrives while its receive window is zero,
// ACK included. An echo whose transmit buffer is full of data the host has
// acknowledged, but whose pure ACKs were lost, then never learns it: the
// ACK comes only on the host's window probes, and those are dropped whole.

/// The fields of a TCP segment the window story is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seg {
    src_port: u16,
    dst_port: u16,
    seq: TcpSeqNumber,
    ack: Option<TcpSeqNumber>,
    /// The window field as sent (not scaled).
    window: u16,
    len: usize,
    syn: bool,
}

impl Seg {
    fn parse(frame: &[u8]) -> Option<Seg> {
        let (_, _, tcp) = frames::tcp_in(frame)?;
        Some(Seg {
            src_port: tcp.src_port(),
            dst_port: tcp.dst_port(),
            seq: tcp.seq_number(),
            ack: tcp.ack().then(|| tcp.ack_number()),
            window: tcp.window_len(),
            len: tcp.payload().len(),
            syn: tcp.syn(),
        })
    }

    /// The sequence number after its data.
    fn end(&self) -> TcpSeqNumber {
        self.seq + self.len
    }
}

/// A segment from the host to the guest made by hand, valid checksums and
/// all: the window probe Linux sends when it believes a few bytes of the
/// window are open (new data at `seq`, carrying the ACK).
fn host_segment(
    host_port: u16,
    guest_port: u16,
    seq: TcpSeqNumber,
    ack: TcpSeqNumber,
    window: u16,
    payload: &[u8],
) -> Vec<u8> {
    frames::tcp_frame(
        End { mac: HOST_MAC, ip: Ipv4Address::from(HOST_IP), port: host_port },
        End { mac: GUEST.mac, ip: Ipv4Address::from(GUEST.ip), port: guest_port },
        TcpControl::Psh,
        seq,
        ack,
        window,
        payload,
    )
}

/// `n` bytes of the stream `Stream::new(seed)` from `offset` on.
fn stream_bytes(seed: u64, offset: usize, n: usize) -> Vec<u8> {
    let mut stream = Stream::new(seed);
    (0..offset).for_each(|_| {
        stream.byte();
    });
    (0..n).map(|_| stream.byte()).collect()
}

/// What the tap saw of one connection to the guest's echo, both ways
/// (frames from the host counted whether or not they got through).
#[derive(Debug, Default)]
struct Watch {
    host_port: u16,
    host_isn: Option<TcpSeqNumber>,
    from_host: Option<Seg>,
    from_guest: Option<Seg>,
    /// The end of the furthest data the guest sent, and of what the host
    /// acknowledged.
    guest_sent: Option<TcpSeqNumber>,
    host_acked: Option<TcpSeqNumber>,
    /// Data segments from the guest that the host had acknowledged in full
    /// before they were sent: retransmissions of acknowledged data.
    resent_acked: u64,
}

impl Watch {
    fn host_frame(&mut self, s: Seg) {
        if s.syn {
            self.host_isn = Some(s.seq);
        }
        if let Some(ack) = s.ack {
            self.host_acked = Some(self.host_acked.map_or(ack, |a| a.max(ack)));
        }
        self.from_host = Some(s);
    }

    fn guest_frame(&mut self, s: Seg) {
        if s.len > 0 {
            if self.host_acked.is_some_and(|a| s.end() <= a) {
                self.resent_acked += 1;
            }
            self.guest_sent = Some(self.guest_sent.map_or(s.end(), |e| e.max(s.end())));
        }
        self.from_guest = Some(s);
    }
}

impl Sim {
    /// A `step` in which `w` sees every frame of its connection, and the
    /// frames from the host that `lose` picks are lost on the way to the
    /// guest.
    fn step_watched(&mut self, w: &mut Watch, lose: &dyn Fn(&Seg) -> bool) {
        self.host_poll();
        self.to_guest.retain(|f| match Seg::parse(f) {
            Some(s) if (s.src_port, s.dst_port) == (w.host_port, Echo::PORT) => {
                w.host_frame(s);
                !lose(&s)
            }
            _ => true,
        });
        self.tap_to_guest();
        self.poll_guests();
        let seen = self.to_host.len();
        self.tap_to_host();
        for s in self.to_host.iter().skip(seen).filter_map(|f| Seg::parse(f)) {
            if (s.src_port, s.dst_port) == (Echo::PORT, w.host_port) {
                w.guest_frame(s);
            }
        }
        self.now += STEP;
    }
}

/// Steps (pumping `client`) until `done`; panics after `limit` of virtual
/// time.
fn watch_until(
    sim: &mut Sim,
    client: &mut Client,
    w: &mut Watch,
    limit: Duration,
    lose: &dyn Fn(&Seg) -> bool,
    mut done: impl FnMut(&Sim, &Watch) -> bool,
) {
    let start = sim.now;
    while !done(sim, w) {
        assert!(sim.now - start < limit, "not done after {limit} (virtual): {w:?}\n{}", sim.report());
        client.pump(&mut sim.host_sockets);
        sim.step_watched(w, lose);
    }
}

/// vCPU 0's socket of the connection from `host_port`.
fn guest_socket(sim: &Sim, host_port: u16) -> Option<&tcp::Socket<'static>> {
    sim.cpus[0].net.stack.sockets.iter().find_map(|(_, s)| match s {
        Socket::Tcp(s) if s.remote_endpoint().is_some_and(|e| e.port == host_port) => Some(s),
        _ => None,
    })
}

/// The stall as seen on a real run, end to end through `CpuNet`: the echo's
/// transmit buffer is full of data the host has acknowledged, its receive
/// buffer is full (window zero), the host's pure ACKs were all lost, and
/// the host's ACK comes on a 4-byte window probe at the guest's `RCV.NXT`.
/// The guard hands that ACK to smoltcp: the guest's next data is new (not
/// a retransmission of what the host acknowledged), and the echo completes.
/// A guest echo stalled behind its own zero window with the host's ACKs of
/// its whole transmit buffer lost (see the tests below).
struct Stalled {
    sim: Sim,
    client: Client,
    w: Watch,
    /// What the host has acknowledged (all the guest sent).
    acked: TcpSeqNumber,
    stalled: Duration,
}

fn stall_behind_zero_window(port: u16, seed: u64) -> Stalled {
    let mut sim = Sim::new(Spec { seed, ..Spec::new(1, 1) });
    let mut client = Client::new(&mut sim, Echo::PORT, port, MIB, seed);
    let mut w = Watch { host_port: port, ..Watch::default() };
    let keep = |_: &Seg| false;
    let lose = |_: &Seg| true;

    // The client stops reading: the host's receive buffer fills, then the
    // echo's transmit buffer (the echo cannot go out), then its receive
    // buffer: the guest advertises a zero window.
    client.reading = false;
    watch_until(&mut sim, &mut client, &mut w, Duration::from_secs(10), &keep, |sim, w| {
        let full = guest_socket(sim, port).is_some_and(|s| s.send_queue() == s.send_capacity());
        full && w.from_guest.is_some_and(|s| s.window == 0)
    });
    let s = guest_socket(&sim, port).unwrap();
    let (tx_cap, rx_free) = (s.send_capacity(), s.recv_capacity() - s.recv_queue());
    assert!(rx_free < 8, "the receive buffer is full ({rx_free} bytes free; window scale 3)");
    let una = w.host_acked.unwrap();

    // The client reads again; its window update reaches the guest, which
    // starts sending its transmit buffer...
    client.reading = true;
    watch_until(&mut sim, &mut client, &mut w, Duration::from_secs(1), &keep, |_, w| {
        w.guest_sent.is_some_and(|e| e - una > 1)
    });
    // ... and from now on nothing reaches the guest, the host's ACKs of all
    // that data included, until the guest is retransmitting data the host
    // has acknowledged.
    let stalled_at = sim.now;
    watch_until(&mut sim, &mut client, &mut w, Duration::from_secs(10), &lose, |_, w| {
        w.host_acked == w.guest_sent && w.resent_acked > 0
    });
    let stalled = sim.now - stalled_at;
    let acked = w.host_acked.unwrap();
    assert_eq!(acked - una, tx_cap, "the host acknowledged the guest's whole transmit buffer");
    let s = guest_socket(&sim, port).unwrap();
    assert_eq!(s.send_queue(), tx_cap, "the guest saw none of it");
    assert_eq!(w.from_guest.unwrap().window, 0);
    Stalled { sim, client, w, acked, stalled }
}

/// Hands `frame` to the guest's only vCPU and returns the segments it
/// sends back, with how many payload-less copies the guard made for it.
fn deliver_one(sim: &mut Sim, frame: Vec<u8>) -> (Vec<Seg>, u64) {
    let before = sim.cpus[0].net.counters();
    sim.pairs[0].backlog.push_back((frame, None));
    sim.pairs[0].deliver();
    sim.poll_guests();
    let seen = sim.to_host.len();
    sim.tap_to_host();
    let replies: Vec<Seg> = sim.to_host.iter().skip(seen).filter_map(|f| Seg::parse(f)).collect();
    (replies, sim.cpus[0].net.counters().zero_window_acks - before.zero_window_acks)
}

/// The guest's answer to an ACK of everything it sent: new data right
/// after it, no retransmission, and (the echo emptying its receive buffer)
/// an open window; then the echo completes, intact.
fn assert_unstalled(mut st: Stalled, replies: &[Seg], port: u16) {
    let data: Vec<&Seg> = replies.iter().filter(|s| s.len > 0).collect();
    assert!(!data.is_empty(), "the guest sends data at once: {replies:?}");
    assert_eq!(data[0].seq, st.acked, "its next data is new, right after what the host acknowledged: {replies:?}");
    assert!(data.iter().all(|s| s.seq >= st.acked), "no retransmission of acknowledged data: {replies:?}");
    assert!(replies.iter().any(|s| s.window > 0), "the echo emptied the receive buffer: the window opens");
    run_clients(&mut st.sim, std::slice::from_mut(&mut st.client), Duration::from_secs(60));
    assert_served_by_owners(&st.sim, std::slice::from_ref(&st.client));
    assert_eq!(st.sim.cpus[0].net.services.bytes_sent_by(Echo::PORT), MIB as u64);
    let copies = st.sim.cpus[0].net.counters().zero_window_acks;
    eprintln!(
        "port {port}: ACKs lost for {} (virtual), {} acknowledged segments resent; {copies} payload-less copies",
        st.stalled, st.w.resent_acked
    );
}

#[test]
fn a_window_probe_into_a_zero_window_gets_its_ack_through() {
    let (port, seed) = (40_007, 12);
    let mut st = stall_behind_zero_window(port, seed);
    // The probe: new data at the guest's RCV.NXT (the client's next bytes),
    // carrying the ACK of everything, put straight into the receive queue.
    let w = &st.w;
    let rcv_nxt = w.from_guest.unwrap().ack.unwrap();
    let offset = rcv_nxt - (w.host_isn.unwrap() + 1);
    let probe =
        host_segment(port, Echo::PORT, rcv_nxt, st.acked, w.from_host.unwrap().window, &stream_bytes(seed, offset, 4));
    let (replies, copies) = deliver_one(&mut st.sim, probe);
    assert_eq!(copies, 1, "the probe reached smoltcp as a payload-less copy first");
    assert_unstalled(st, &replies, port);
}

/// The same stall, but the host's sequence numbers ran ahead of the
/// guest's `RCV.NXT` (its probe bytes were lost too): its ACK comes on a
/// pure ACK that starts 4 bytes past the guest's zero window, which smoltcp
/// drops whole. The guard hands it over as a copy at `RCV.NXT`.
#[test]
fn an_ack_from_past_a_zero_window_gets_through() {
    let (port, seed) = (40_011, 14);
    let mut st = stall_behind_zero_window(port, seed);
    let w = &st.w;
    let rcv_nxt = w.from_guest.unwrap().ack.unwrap();
    let dup_ack = host_segment(port, Echo::PORT, rcv_nxt + 4, st.acked, w.from_host.unwrap().window, &[]);
    let (replies, copies) = deliver_one(&mut st.sim, dup_ack);
    assert_eq!(copies, 1, "the ACK reached smoltcp as a copy at RCV.NXT");
    assert_unstalled(st, &replies, port);
}

/// The host and one guest stack over a plain `NetDevice`, the guard on or
/// off, with a socket the test drives by hand (no `CpuNet`, no services).
struct Bare {
    now: Instant,
    host: Interface,
    host_sockets: SocketSet<'static>,
    host_socket: SocketHandle,
    to_guest: VecDeque<Vec<u8>>,
    to_host: VecDeque<Vec<u8>>,
    pair: Pair,
    bell: Bell,
    scratch: Box<net::device::Scratch>,
    guest: Stack,
    socket: SocketHandle,
    zero_windows: Option<ZeroWindows>,
    /// Every segment the guest sent; the last one from the host.
    from_guest: Vec<Seg>,
    from_host: Option<Seg>,
}

const BARE_HOST_PORT: u16 = 40_000;
const BARE_BUFFER: usize = 4096;

impl Bare {
    fn new(guard: bool) -> Bare {
        let dma: &'static TestDma = Box::leak(Box::default());
        let bell = Bell::default();
        let now = Instant::from_millis(1);
        let mut rx = RxQueue::new(dma, 0, 64, true, true).expect("receive queue");
        let mut tx = TxQueue::new(dma, 1, 64, true).expect("transmit queue");
        let rx_dev = FakeDeviceQueue::new(dma, rx.queue());
        let tx_dev = FakeDeviceQueue::new(dma, tx.queue());
        rx.refill(&bell);
        let mut scratch = net::device::new_scratch();
        let mut guest = {
            let mut dev = NetDevice::new(Some(&mut rx), TxPath::Own(&mut tx), &bell, &mut scratch);
            Stack::new(&GUEST, &mut dev, now, 21)
        };
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; BARE_BUFFER]),
            tcp::SocketBuffer::new(vec![0; BARE_BUFFER]),
        );
        // As the services make them: no Nagle (the last, short, segment of
        // the guest's data goes out without waiting for an ACK).
        socket.set_nagle_enabled(false);
        socket.listen(Echo::PORT).unwrap();
        let socket = guest.sockets.add(socket);

        let (mut to_guest, mut to_host) = (VecDeque::new(), VecDeque::new());
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(HOST_MAC)));
        config.random_seed = 22;
        let mut host = Interface::new(config, &mut HostNic { rx: &mut to_host, tx: &mut to_guest }, now);
        host.update_ip_addrs(|addrs| addrs.push(IpCidr::new(host_ip(), 24)).unwrap());
        let mut host_sockets = SocketSet::new(Vec::new());
        let mut s =
            tcp::Socket::new(tcp::SocketBuffer::new(vec![0; 64 * KIB]), tcp::SocketBuffer::new(vec![0; 64 * KIB]));
        s.connect(host.context(), (guest_ip(), Echo::PORT), BARE_HOST_PORT).unwrap();
        let host_socket = host_sockets.add(s);
        Bare {
            now,
            host,
            host_sockets,
            host_socket,
            to_guest,
            to_host,
            pair: Pair {
                rx,
                tx: TxSlot::Own(tx),
                rx_dev,
                tx_dev,
                hdr_len: HDR_LEN,
                backlog: VecDeque::new(),
                gro: false,
                segmented: 0,
                segmented_v6: 0,
            },
            bell,
            scratch,
            guest,
            socket,
            zero_windows: guard.then(ZeroWindows::new),
            from_guest: Vec::new(),
            from_host: None,
        }
    }

    fn host_socket(&mut self) -> &mut tcp::Socket<'static> {
        self.host_sockets.get_mut(self.host_socket)
    }

    fn guest_socket(&mut self) -> &mut tcp::Socket<'static> {
        self.guest.sockets.get_mut(self.socket)
    }

    /// The guest's stack takes what its receive queue holds; the frames it
    /// sends are recorded and put on the wire to the host.
    fn poll_guest(&mut self) -> Vec<Seg> {
        let TxSlot::Own(tx) = &mut self.pair.tx else { unreachable!() };
        tx.reclaim();
        let mut dev = NetDevice::new(Some(&mut self.pair.rx), TxPath::Own(tx), &self.bell, &mut self.scratch);
        dev.zero_windows = self.zero_windows.as_mut();
        while self.guest.poll(&mut dev, self.now) {}
        self.pair.rx.refill(&self.bell);
        let mut sent = Vec::new();
        for frame in self.pair.take_sent() {
            sent.extend(Seg::parse(&frame));
            self.to_host.push_back(frame);
        }
        self.from_guest.extend(&sent);
        sent
    }

    /// One millisecond: the host, the wire (every frame to the guest lost
    /// if `lose`), the guest.
    fn step(&mut self, lose: bool) {
        let mut nic = HostNic { rx: &mut self.to_host, tx: &mut self.to_guest };
        self.host.poll(self.now, &mut nic, &mut self.host_sockets);
        for frame in self.to_guest.drain(..) {
            self.from_host = Seg::parse(&frame).or(self.from_host);
            if !lose {
                self.pair.backlog.push_back((frame, None));
            }
        }
        self.pair.deliver();
        self.poll_guest();
        self.now += STEP;
    }

    fn until(&mut self, lose: bool, mut done: impl FnMut(&mut Bare) -> bool) {
        for _ in 0..1000 {
            if done(self) {
                return;
            }
            self.step(lose);
        }
        panic!("not done after 1 s (virtual): host {:?}, guest {:?}", self.from_host, self.from_guest);
    }
}

/// What the guest did with a window probe into its zero window.
struct ProbeOutcome {
    /// Everything the guest sent before the probe.
    before: Vec<Seg>,
    probe: Seg,
    /// The guest's send queue before and after the probe.
    queued: (usize, usize),
    replies: Vec<Seg>,
    copies: Option<u64>,
}

/// The stall at smoltcp level: the guest's socket has 4 KiB of received
/// data it does not read (window zero) and has sent 4 KiB the host
/// acknowledged in ACKs that were all lost; then the host's probe comes: 4
/// new bytes at the guest's RCV.NXT with the ACK.
fn probe_a_zero_window(guard: bool) -> ProbeOutcome {
    let mut b = Bare::new(guard);
    b.until(false, |b| {
        b.host_socket().state() == tcp::State::Established && b.guest_socket().state() == tcp::State::Established
    });
    assert_eq!(b.host_socket().send_slice(&[b'h'; BARE_BUFFER]), Ok(BARE_BUFFER));
    b.until(false, |b| {
        b.guest_socket().recv_queue() == BARE_BUFFER && b.from_guest.last().is_some_and(|s| s.window == 0)
    });
    assert_eq!(b.guest_socket().send_slice(&[b'g'; BARE_BUFFER]), Ok(BARE_BUFFER));
    b.until(true, |b| b.host_socket().recv_queue() == BARE_BUFFER);
    // A little longer: the host's last ACKs go out (and are lost).
    (0..20).for_each(|_| b.step(true));
    let last = *b.from_guest.last().unwrap();
    let sent = b.from_guest.iter().map(Seg::end).fold(last.end(), TcpSeqNumber::max);
    assert_eq!(b.from_host.unwrap().ack, Some(sent), "the host acknowledged everything the guest sent");
    let rcv_nxt = last.ack.unwrap();
    let frame = host_segment(BARE_HOST_PORT, Echo::PORT, rcv_nxt, sent, b.from_host.unwrap().window, b"next");
    let probe = Seg::parse(&frame).unwrap();
    let before = b.from_guest.clone();
    let queued_before = b.guest_socket().send_queue();
    b.pair.backlog.push_back((frame, None));
    b.pair.deliver();
    let replies = b.poll_guest();
    ProbeOutcome {
        before,
        probe,
        queued: (queued_before, b.guest_socket().send_queue()),
        replies,
        copies: b.zero_windows.as_ref().map(|z| z.copies),
    }
}

/// Without the guard smoltcp drops the probe whole, ACK included: the
/// acknowledged 4 KiB stay in the send queue (to be retransmitted for ever,
/// as long as the ACK only ever comes on probes). With the guard, fed the
/// very same frames, the ACK is taken and the send queue empties.
#[test]
fn a_probes_ack_into_a_zero_window_is_lost_without_the_guard() {
    let without = probe_a_zero_window(false);
    let with = probe_a_zero_window(true);
    assert_eq!(without.before, with.before, "the same frames up to the probe");
    assert_eq!(without.probe, with.probe);
    assert_eq!(without.before.last().unwrap().window, 0, "the guest advertised a zero window");

    assert_eq!(without.queued, (BARE_BUFFER, BARE_BUFFER), "without the guard the ACK is thrown away");
    assert!(without.copies.is_none());
    assert!(
        without.replies.iter().all(|s| s.len == 0 && s.window == 0 && s.ack == Some(without.probe.seq)),
        "only an ACK of nothing new, window still zero: {:?}",
        without.replies
    );

    assert_eq!(with.queued, (BARE_BUFFER, 0), "with the guard the ACK frees the send queue");
    assert_eq!(with.copies, Some(1));
}

/// The simulated rounds' cycle counter: one tick per reading.
fn ticks() -> u64 {
    static TICKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    TICKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// GUEST_TSO4 and GUEST_CSUM: the tap coalesces the host's segments into
/// ones of up to 64 KiB with partial checksums. A coalesced segment reaches
/// its owner's stack whole from the owner's own queue, or cut to inbox
/// slots (`net::segment`) from another vCPU's queue, and every byte of
/// every echo arrives intact.
#[test]
fn coalesced_segments_reach_their_owners_whole_or_split() {
    for (cpus, pairs, policy) in [(2, 2, Policy::Rss), (2, 1, Policy::Tun), (2, 2, Policy::WrongQueue)] {
        let what = format!("{cpus} vCPUs, {pairs} pair(s), {policy:?}");
        let mut sim = Sim::new(Spec { gro: true, policy, seed: 11, ..Spec::new(cpus, pairs) });
        let ports = sim.ports_owned_by(4, Echo::PORT, |i| (i % usize::from(cpus)) as u16);
        let mut clients: Vec<Client> =
            ports.iter().enumerate().map(|(i, &p)| Client::new(&mut sim, Echo::PORT, p, 512 * KIB, i as u64)).collect();
        run_clients(&mut sim, &mut clients, Duration::from_secs(60));
        assert_served_by_owners(&sim, &clients);
        let stats: Vec<_> = sim.pairs.iter_mut().map(|p| p.rx.stats()).collect();
        let large: u64 = stats.iter().map(|s| s.large).sum();
        let splits: u64 = sim.cpus.iter().map(|v| v.net.counters().splits).sum();
        let pieces: u64 = sim.cpus.iter().map(|v| v.net.counters().split_pieces).sum();
        assert!(sim.tap.coalesced > 100 && large > 10, "{what}: {} merged into {large}", sim.tap.coalesced);
        assert!(stats.iter().all(|s| s.drop_offload + s.drop_csum + s.drop_too_long == 0), "{what}: {stats:?}");
        if policy == Policy::Rss {
            assert_eq!(splits, 0, "{what}: every segment arrived on its owner's queue");
        } else {
            assert!(splits > 0 && pieces > 2 * splits, "{what}: {splits} split into {pieces}");
        }
        for c in &clients {
            assert_eq!(sim.tap.log[&(c.host_port, c.guest_port)].guest_resets, 0, "{what}");
        }
        sim.check_steering_books();
    }
}

/// HOST_TSO4: the stacks hand their transmit queues TCP segments of up to
/// 64 KiB with partial checksums; the device cuts and finishes them, and
/// every echoed byte arrives intact, with coalesced receive or without.
#[test]
fn the_stacks_emit_64_kib_segments_that_the_device_cuts() {
    for (gro, pairs) in [(true, 2), (false, 2), (true, 1)] {
        let what = format!("gro {gro}, {pairs} pair(s)");
        let mut sim = Sim::new(Spec { gro, tso: true, policy: Policy::Tun, seed: 12, ..Spec::new(2, pairs) });
        let ports = sim.ports_owned_by(4, Echo::PORT, |i| (i % 2) as u16);
        let mut clients: Vec<Client> =
            ports.iter().enumerate().map(|(i, &p)| Client::new(&mut sim, Echo::PORT, p, 512 * KIB, i as u64)).collect();
        run_clients(&mut sim, &mut clients, Duration::from_secs(60));
        assert_served_by_owners(&sim, &clients);
        let large: u64 = sim.pairs.iter_mut().map(|p| p.tx_stats().large).sum();
        let cut: u64 = sim.pairs.iter().map(|p| p.segmented).sum();
        assert!(large > 10 && cut == large, "{what}: {large} large frames sent, {cut} cut");
        for c in &clients {
            assert_eq!(sim.tap.log[&(c.host_port, c.guest_port)].guest_resets, 0, "{what}");
        }
        sim.check_steering_books();
    }
}

/// HOST_TSO6, through the patched smoltcp (net/vendor/README.md): a stack
/// with an IPv6 address hands its transmit queue IPv6 TCP segments of up to
/// 64 KiB (gso_type TCPV6, partial checksum); the device cuts and finishes
/// them and the host, which checks every checksum, gets every echoed and
/// discarded byte intact. One vCPU: the stacks do not share IPv6
/// neighbours or steer IPv6 flows, so a guest speaks IPv6 on one vCPU only.
#[test]
fn an_ipv6_stack_emits_64_kib_segments_that_the_device_cuts() {
    let guest6 = IpAddress::v6(0xfd00, 0x99, 0, 0, 0, 0, 0, 2);
    let mut sim = Sim::new(Spec { tso: true, seed: 16, ..Spec::new(1, 1) });
    sim.cpus[0].net.stack.iface.update_ip_addrs(|a| a.push(IpCidr::new(guest6, 64)).unwrap());
    sim.host.update_ip_addrs(|a| a.push(IpCidr::new(IpAddress::v6(0xfd00, 0x99, 0, 0, 0, 0, 0, 1), 64)).unwrap());
    let mut clients = vec![
        Client::to(&mut sim, guest6, Echo::PORT, 40_001, 2 * MIB, 1),
        Client::to(&mut sim, guest6, Echo::PORT, 40_002, 2 * MIB, 2),
        Client::to(&mut sim, guest6, Discard::PORT, 40_003, 2 * MIB, 3),
    ];
    run_clients(&mut sim, &mut clients, Duration::from_secs(60));
    let large = sim.pairs[0].tx_stats().large;
    let (cut, cut_v6) = (sim.pairs[0].segmented, sim.pairs[0].segmented_v6);
    assert!(large > 10 && cut == large && cut_v6 == large, "{large} large frames sent, {cut} cut, {cut_v6} IPv6");
    let c = sim.connections(0);
    assert_eq!((c.accepted, c.closed, c.reset, c.active), (3, 3, 0, 0), "{}", sim.report());
    assert_eq!(sim.pairs[0].tx_stats().drop_too_long, 0);
}
