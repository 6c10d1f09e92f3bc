//! Flow ownership: which vCPU's stack a TCP or UDP flow lives on.
//!
//! Every vCPU runs its own smoltcp interface, and a connection exists in
//! exactly one of them. A segment that reaches a stack which does not hold
//! its connection is answered with a reset, so every frame of a flow must
//! reach the same stack. The device does not guarantee that by itself: a
//! multiqueue tap delivers a flow on the queue the guest last transmitted it
//! on (its flow learning follows transmissions), which says nothing about
//! the first SYN, and nothing once two vCPUs have sent on the flow.
//!
//! So ownership is a pure function of the flow, known to every vCPU without
//! any shared state: the Toeplitz hash of the addresses and ports, looked up
//! in a 128-entry indirection table. It is the function virtio-net RSS (and
//! Microsoft's RSS, which it copies) computes, so when the device is given
//! the same key, table and [`hash_type::STEERED`], frames arrive on the
//! owner's queue already and hardware and software steering agree; when it
//! is not (no RSS), the stack a frame lands on forwards it to the owner.
//!
//! The hash of a flow and of its reverse differ, so a connection we open is
//! not automatically owned by the vCPU that opens it: [`Steering::pick_local_port`]
//! chooses the local port so that the replies hash back to it.

/// Length of the Toeplitz key (the virtio-net and Microsoft RSS key size).
pub const KEY_LEN: usize = 40;
/// Entries of the indirection table: QEMU's maximum, a power of two.
pub const TABLE_LEN: usize = 128;
/// The longest input a 40-byte key covers (an IPv6 address pair and ports).
pub const MAX_INPUT: usize = KEY_LEN - 4;

/// virtio-net hash type bits (RSS_CONFIG hash_types).
pub mod hash_type {
    pub const IPV4: u32 = 1;
    pub const TCPV4: u32 = 2;
    pub const UDPV4: u32 = 4;
    /// What the device must hash for its hash to equal [`super::Steering::hash`]:
    /// ports for TCP and UDP, the address pair for the rest of IPv4.
    pub const STEERED: u32 = IPV4 | TCPV4 | UDPV4;
}

/// The key from Microsoft's RSS verification suite, used as our default key.
pub const DEFAULT_KEY: [u8; KEY_LEN] = [
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0, 0xd0, 0xca, 0x2b,
    0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac,
    0x01, 0xfa,
];

/// The ephemeral port range (RFC 6335) outgoing connections take ports from.
const EPHEMERAL_FIRST: u16 = 49152;
const EPHEMERAL_COUNT: u32 = 65536 - EPHEMERAL_FIRST as u32;

/// Offset of the destination port in the hash input.
const DST_PORT_AT: usize = 10;

/// The Toeplitz hash of `input` (at most [`MAX_INPUT`] bytes) under `key`.
pub fn toeplitz(key: &[u8; KEY_LEN], input: &[u8]) -> u32 {
    toeplitz_at(key, 0, input)
}

/// Toeplitz's contribution of `input` placed `offset` bytes into the hash
/// input. The hash XORs one 32-bit key window per set input bit, so it is
/// linear: the hash of an input is the XOR of the contributions of its parts.
/// Key bits past the key count as zero.
fn toeplitz_at(key: &[u8; KEY_LEN], offset: usize, input: &[u8]) -> u32 {
    let key_byte = |i: usize| u64::from(key.get(i).copied().unwrap_or(0));
    // The 64 key bits from the current input byte's position on: the window
    // of its bit b is the 32 of them that start b bits from the top.
    let mut window = (0..8).fold(0u64, |w, i| (w << 8) | key_byte(offset + i));
    let mut hash = 0;
    for (i, &byte) in input.iter().enumerate() {
        for bit in 0..8 {
            if byte & (0x80 >> bit) != 0 {
                hash ^= (window >> (32 - bit)) as u32;
            }
        }
        window = (window << 8) | key_byte(offset + i + 8);
    }
    hash
}

/// Transport protocol, as far as steering cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    /// Anything hashed by its address pair only.
    Other,
}

/// An IPv4 flow as seen in one direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: Proto,
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

fn ip4(bytes: &[u8], at: usize) -> Option<[u8; 4]> {
    bytes.get(at..at + 4)?.try_into().ok()
}

impl Flow {
    /// The flow of an Ethernet II frame carrying IPv4 (None for anything
    /// else: ARP, IPv6, VLAN tags, runts, bad version or IHL).
    ///
    /// TCP and UDP get their ports when the whole fixed transport header (20
    /// or 8 bytes) is in the frame, as the device requires before it hashes
    /// ports. Fragments (the first one too) and other protocols are
    /// [`Proto::Other`] with ports 0, hashed by address pair only: that is
    /// what the device does with every fragment (QEMU's RSS checks the MF
    /// flag and the offset), which keeps all fragments of a datagram on one
    /// queue where they can be reassembled. Never panics.
    pub fn parse(frame: &[u8]) -> Option<Flow> {
        const IPV4: u16 = 0x0800;
        if be16(frame, 12)? != IPV4 {
            return None;
        }
        let ip = frame.get(14..)?;
        let version_ihl = *ip.first()?;
        let header_len = usize::from(version_ihl & 0x0f) * 4;
        if version_ihl >> 4 != 4 || header_len < 20 || ip.len() < header_len {
            return None;
        }
        let (src, dst) = (ip4(ip, 12)?, ip4(ip, 16)?);
        // More-fragments flag or a fragment offset; Don't-fragment is 0x4000.
        let fragment = be16(ip, 6)? & 0x3fff != 0;
        // The IP total length is not consulted: the device hashes the bytes
        // that are there, and a valid segment has its header inside both.
        let l4 = &ip[header_len..];
        let proto = match ip[9] {
            6 if !fragment && l4.len() >= 20 => Proto::Tcp,
            17 if !fragment && l4.len() >= 8 => Proto::Udp,
            _ => return Some(Flow { src, dst, src_port: 0, dst_port: 0, proto: Proto::Other }),
        };
        Some(Flow { src, dst, src_port: be16(l4, 0)?, dst_port: be16(l4, 2)?, proto })
    }

    /// The Toeplitz input RSS uses: source and destination address, then for
    /// TCP and UDP source and destination port, all big-endian. Written into
    /// `buf`; returns the used prefix.
    pub fn hash_input<'a>(&self, buf: &'a mut [u8; 12]) -> &'a [u8] {
        buf[..4].copy_from_slice(&self.src);
        buf[4..8].copy_from_slice(&self.dst);
        buf[8..10].copy_from_slice(&self.src_port.to_be_bytes());
        buf[DST_PORT_AT..].copy_from_slice(&self.dst_port.to_be_bytes());
        let used = if self.proto == Proto::Other { 8 } else { 12 };
        &buf[..used]
    }

    /// The same flow seen from the other end.
    pub fn reversed(&self) -> Flow {
        Flow { src: self.dst, dst: self.src, src_port: self.dst_port, dst_port: self.src_port, proto: self.proto }
    }
}

/// No ephemeral port makes the replies come home (or all that do are taken).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoFreePort;

/// Key and indirection table shared read-only by all vCPUs (built once at
/// boot, and given to the device as its RSS configuration).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Steering {
    key: [u8; KEY_LEN],
    table: [u16; TABLE_LEN],
    cpus: u16,
}

impl Steering {
    /// Spreads flows over `cpus` vCPUs: `table[i] = i % cpus`. 0 is taken as
    /// 1; above [`TABLE_LEN`], the vCPUs past it own no flow.
    pub fn new(key: [u8; KEY_LEN], cpus: u16) -> Steering {
        let cpus = cpus.max(1);
        let table = core::array::from_fn(|i| (i % usize::from(cpus)) as u16);
        Steering { key, table, cpus }
    }

    pub fn key(&self) -> &[u8; KEY_LEN] {
        &self.key
    }

    /// Entry i is the vCPU (and so the queue pair) of the hashes whose low
    /// bits are i.
    pub fn table(&self) -> &[u16; TABLE_LEN] {
        &self.table
    }

    pub fn cpus(&self) -> u16 {
        self.cpus
    }

    /// The hash the device computes for `flow` (with [`hash_type::STEERED`]).
    pub fn hash(&self, flow: &Flow) -> u32 {
        toeplitz(&self.key, flow.hash_input(&mut [0; 12]))
    }

    pub fn owner_of_hash(&self, hash: u32) -> u16 {
        self.table[hash as usize & (TABLE_LEN - 1)]
    }

    /// Owner of a received frame: `Some(cpu)` for IPv4 TCP and UDP, the flows
    /// that must live on one stack; `None` for everything else (ARP, ICMP,
    /// IPv6, fragments...), which any stack may handle where it arrived.
    pub fn owner(&self, frame: &[u8]) -> Option<u16> {
        let flow = Flow::parse(frame)?;
        (flow.proto != Proto::Other).then(|| self.owner_of_hash(self.hash(&flow)))
    }

    /// The device's RSS indirection table for `pairs` receive queues: each
    /// entry sends its flows to the queue of their owner, and flows of a
    /// vCPU without a queue to the pair it shares (`owner mod pairs`, as
    /// `cpu::plan_shares` assigns), whose owner hands them on.
    pub fn queue_table(&self, pairs: u16) -> [u16; TABLE_LEN] {
        self.table.map(|owner| owner % pairs.max(1))
    }

    /// A local port for a connection from `local` to `remote`:`remote_port`
    /// opened on vCPU `cpu`, such that the replies (src = remote) are owned
    /// by `cpu`. Searches the ephemeral range from a position derived from
    /// `start` (a random number from the caller, so that ports are not
    /// predictable), wrapping once, and skips ports `in_use`. TCP and UDP
    /// hash the same input, so the port suits either.
    pub fn pick_local_port(
        &self,
        cpu: u16,
        local: [u8; 4],
        remote: [u8; 4],
        remote_port: u16,
        start: u32,
        in_use: impl Fn(u16) -> bool,
    ) -> Result<u16, NoFreePort> {
        let reply = Flow { src: remote, dst: local, src_port: remote_port, dst_port: 0, proto: Proto::Tcp };
        // Hash the fixed part once; each candidate adds only its 16 bits.
        let fixed = self.hash(&reply);
        (0..EPHEMERAL_COUNT)
            .map(|i| EPHEMERAL_FIRST + ((start % EPHEMERAL_COUNT + i) % EPHEMERAL_COUNT) as u16)
            .find(|&port| {
                let hash = fixed ^ toeplitz_at(&self.key, DST_PORT_AT, &port.to_be_bytes());
                self.owner_of_hash(hash) == cpu && !in_use(port)
            })
            .ok_or(NoFreePort)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::vec::Vec;

    /// xorshift64: deterministic test data without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 32) as u32
        }
        fn flow(&mut self, proto: Proto) -> Flow {
            let (src, dst, ports) = (self.next().to_be_bytes(), self.next().to_be_bytes(), self.next());
            Flow { src, dst, src_port: ports as u16, dst_port: (ports >> 16) as u16, proto }
        }
    }

    /// Ethernet + 20-byte IPv4 header with `frag` (flags and offset) + an
    /// `l4_len`-byte transport header starting with the ports.
    fn frame(protocol: u8, flow: &Flow, frag: u16, l4_len: usize) -> Vec<u8> {
        let mut f = std::vec![0u8; 14 + 20 + l4_len];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[14 + 2..14 + 4].copy_from_slice(&((20 + l4_len) as u16).to_be_bytes());
        f[14 + 6..14 + 8].copy_from_slice(&frag.to_be_bytes());
        f[14 + 8] = 64;
        f[14 + 9] = protocol;
        f[14 + 12..14 + 16].copy_from_slice(&flow.src);
        f[14 + 16..14 + 20].copy_from_slice(&flow.dst);
        if l4_len >= 4 {
            f[34..36].copy_from_slice(&flow.src_port.to_be_bytes());
            f[36..38].copy_from_slice(&flow.dst_port.to_be_bytes());
        }
        f
    }

    const TCP: Flow =
        Flow { src: [10, 99, 0, 1], dst: [10, 99, 0, 2], src_port: 40000, dst_port: 80, proto: Proto::Tcp };

    #[test]
    fn toeplitz_matches_the_microsoft_verification_suite() {
        // The suite's table lists the destination first; the hash input
        // starts with the source. (flow, IPv4 hash, TCP/IPv4 hash):
        let tcp = |src, dst, src_port, dst_port| Flow { src, dst, src_port, dst_port, proto: Proto::Tcp };
        let rows = [
            (tcp([66, 9, 149, 187], [161, 142, 100, 80], 2794, 1766), 0x323e8fc2, 0x51ccc178),
            (tcp([199, 92, 111, 2], [65, 69, 140, 83], 14230, 4739), 0xd718262a, 0xc626b0ea),
            (tcp([24, 19, 198, 95], [12, 22, 207, 184], 12898, 38024), 0xd2d0a5de, 0x5c2b394a),
            (tcp([38, 27, 205, 30], [209, 142, 163, 6], 48228, 2217), 0x82989176, 0xafc7327f),
            (tcp([153, 39, 163, 191], [202, 188, 127, 2], 44251, 1303), 0x5d1809c5, 0x10e828a2),
        ];
        let steering = Steering::new(DEFAULT_KEY, 1);
        for (flow, ipv4_hash, tcp_hash) in rows {
            assert_eq!(steering.hash(&flow), tcp_hash, "{flow:?}");
            assert_eq!(steering.hash(&Flow { proto: Proto::Other, ..flow }), ipv4_hash, "{flow:?}");
            let parsed = Flow::parse(&frame(6, &flow, 0x4000, 20)).unwrap();
            assert_eq!(steering.hash(&parsed), tcp_hash, "from a frame");
        }
        let first = [66, 9, 149, 187, 161, 142, 100, 80, 0x0a, 0xea, 0x06, 0xe6];
        assert_eq!(toeplitz(&DEFAULT_KEY, &first), 0x51ccc178);
        assert_eq!(toeplitz(&DEFAULT_KEY, &first[..8]), 0x323e8fc2);
    }

    #[test]
    fn parses_tcp_and_udp_ports() {
        assert_eq!(Flow::parse(&frame(6, &TCP, 0, 20)), Some(TCP));
        assert_eq!(Flow::parse(&frame(6, &TCP, 0x4000, 20)), Some(TCP), "don't-fragment is no fragment");
        let udp = Flow { proto: Proto::Udp, ..TCP };
        assert_eq!(Flow::parse(&frame(17, &udp, 0, 8)), Some(udp));
        let mut options = frame(6, &TCP, 0, 24);
        options[14] = 0x46; // a 24-byte IP header: the ports move 4 bytes on
        options.copy_within(34..38, 38);
        assert_eq!(Flow::parse(&options), Some(TCP));
        assert_eq!(Flow::parse(&frame(6, &TCP, 0, 20)).unwrap().reversed().reversed(), TCP);
        let back = TCP.reversed();
        assert_eq!((back.src, back.dst, back.src_port, back.dst_port), (TCP.dst, TCP.src, 80, 40000));
    }

    #[test]
    fn fragments_and_other_protocols_hash_by_address_pair() {
        let pair = Flow { src_port: 0, dst_port: 0, proto: Proto::Other, ..TCP };
        assert_eq!(Flow::parse(&frame(1, &TCP, 0, 8)), Some(pair), "ICMP");
        assert_eq!(Flow::parse(&frame(6, &TCP, 0x00b9, 20)), Some(pair), "a later fragment has no ports");
        assert_eq!(Flow::parse(&frame(6, &TCP, 0x2000, 20)), Some(pair), "the first one is hashed like the rest");
        assert_eq!(Flow::parse(&frame(17, &TCP, 0x2000, 8)), Some(pair));
        assert_eq!(Flow::parse(&frame(6, &TCP, 0, 19)), Some(pair), "TCP header cut short");
        assert_eq!(Flow::parse(&frame(17, &TCP, 0, 7)), Some(pair), "UDP header cut short");
        assert_eq!(pair.hash_input(&mut [0xff; 12]), [10, 99, 0, 1, 10, 99, 0, 2]);
    }

    #[test]
    fn only_ipv4_has_a_flow() {
        let good = frame(6, &TCP, 0, 20);
        let with = |at: usize, byte: u8| {
            let mut f = good.clone();
            f[at] = byte;
            Flow::parse(&f)
        };
        assert_eq!(with(12, 0x86), None, "IPv6 ethertype (0x86dd)");
        assert_eq!(with(13, 0x06), None, "ARP (0x0806)");
        assert_eq!(with(12, 0x81), None, "VLAN tag (0x8100)");
        assert_eq!(with(14, 0x65), None, "version 6 in an IPv4 frame");
        assert_eq!(with(14, 0x44), None, "IHL below 5");
        assert_eq!(with(14, 0x4f), None, "IHL past the frame");
    }

    #[test]
    fn never_panics_on_truncated_or_random_frames() {
        let steering = Steering::new(DEFAULT_KEY, 4);
        for f in [frame(6, &TCP, 0, 20), frame(17, &TCP, 0, 8), frame(1, &TCP, 0, 8)] {
            for cut in 0..f.len() {
                let _ = steering.owner(&f[..cut]);
            }
            assert_eq!(Flow::parse(&f[..33]), None, "IP header cut short");
        }
        let mut rng = Rng(0x5eed);
        for _ in 0..20_000 {
            let len = rng.next() as usize % 80;
            let mut f: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if len >= 15 && rng.next().is_multiple_of(2) {
                f[12..15].copy_from_slice(&[0x08, 0x00, 0x40 | (rng.next() as u8 & 0x0f)]);
            }
            let _ = steering.owner(&f);
        }
    }

    #[test]
    fn spreads_flows_over_every_cpu() {
        let steering = Steering::new(DEFAULT_KEY, 4);
        assert_eq!(steering.table()[..6], [0, 1, 2, 3, 0, 1]);
        let mut rng = Rng(1);
        let mut per_cpu = [0u32; 4];
        for _ in 0..4000 {
            let flow = rng.flow(Proto::Tcp);
            let owner = steering.owner(&frame(6, &flow, 0, 20)).unwrap();
            assert_eq!(owner, steering.owner_of_hash(steering.hash(&flow)));
            per_cpu[usize::from(owner)] += 1;
        }
        assert!(per_cpu.iter().all(|&n| n > 600), "{per_cpu:?}");
    }

    #[test]
    fn only_tcp_and_udp_have_an_owner() {
        let steering = Steering::new(DEFAULT_KEY, 4);
        assert_eq!(steering.owner(&frame(1, &TCP, 0, 8)), None, "ICMP");
        assert_eq!(steering.owner(&frame(6, &TCP, 0x2000, 20)), None, "fragment");
        assert_eq!(steering.owner(&[0xff; 60]), None);
        let udp = Flow { proto: Proto::Udp, ..TCP };
        assert_eq!(steering.owner(&frame(17, &udp, 0, 8)), steering.owner(&frame(6, &TCP, 0, 20)), "same hash");
        let one = Steering::new(DEFAULT_KEY, 1);
        let mut rng = Rng(2);
        assert!((0..500).all(|_| one.owner(&frame(6, &rng.flow(Proto::Tcp), 0, 20)) == Some(0)));
        assert_eq!(Steering::new(DEFAULT_KEY, 0).cpus(), 1);
    }

    #[test]
    fn picked_ports_bring_the_replies_home() {
        let mut rng = Rng(3);
        let local = [10, 99, 0, 2];
        for cpus in 1..=8 {
            let steering = Steering::new(DEFAULT_KEY, cpus);
            for _ in 0..50 {
                let (remote, remote_port) = (rng.next().to_be_bytes(), rng.next() as u16);
                for cpu in 0..cpus {
                    let port =
                        steering.pick_local_port(cpu, local, remote, remote_port, rng.next(), |_| false).unwrap();
                    assert!(port >= EPHEMERAL_FIRST);
                    let reply =
                        Flow { src: remote, dst: local, src_port: remote_port, dst_port: port, proto: Proto::Tcp };
                    assert_eq!(steering.owner_of_hash(steering.hash(&reply)), cpu, "{reply:?}");
                    let udp = Flow { proto: Proto::Udp, ..reply };
                    assert_eq!(steering.owner(&frame(17, &udp, 0, 8)), Some(cpu));
                }
            }
            assert_eq!(
                steering.pick_local_port(cpus, local, [1, 2, 3, 4], 80, 0, |_| false),
                Err(NoFreePort),
                "no such cpu"
            );
        }
    }

    #[test]
    fn picking_skips_ports_in_use() {
        let steering = Steering::new(DEFAULT_KEY, 4);
        let pick = |start, in_use: &dyn Fn(u16) -> bool| {
            steering.pick_local_port(2, [10, 99, 0, 2], [10, 99, 0, 1], 443, start, in_use)
        };
        let first = pick(7, &|_| false).unwrap();
        let second = pick(7, &|p| p == first).unwrap();
        assert!(second != first);
        let odd = pick(7, &|p| p.is_multiple_of(2)).unwrap();
        assert_eq!(odd % 2, 1);
        assert_eq!(pick(7, &|_| true), Err(NoFreePort));
        // One vCPU: every port qualifies, and the search starts at `start`
        // and wraps once past 65535.
        let one = Steering::new(DEFAULT_KEY, 1);
        let pick_one = |start, in_use: &dyn Fn(u16) -> bool| one.pick_local_port(0, [1; 4], [2; 4], 80, start, in_use);
        assert_eq!(pick_one(5, &|_| false), Ok(49157));
        assert_eq!(pick_one(16383, &|_| false), Ok(65535));
        assert_eq!(pick_one(16383, &|p| p == 65535), Ok(49152));
        assert_eq!(pick_one(16383, &|p| p != 65534), Ok(65534), "the last candidate");
    }

    #[test]
    fn the_start_spreads_the_ports() {
        let steering = Steering::new(DEFAULT_KEY, 4);
        let mut rng = Rng(4);
        let ports: HashSet<u16> = (0..100)
            .map(|_| steering.pick_local_port(1, [10, 99, 0, 2], [10, 99, 0, 1], 80, rng.next(), |_| false).unwrap())
            .collect();
        assert!(ports.len() >= 90, "{} distinct", ports.len());
    }

    #[test]
    fn the_device_table_sends_each_flow_to_its_owners_queue() {
        let s = Steering::new(DEFAULT_KEY, 4);
        assert_eq!(s.queue_table(4), *s.table(), "one queue per vCPU: the owner's own");
        let two = s.queue_table(2);
        for (entry, &owner) in two.iter().zip(s.table()) {
            assert_eq!(*entry, if owner < 2 { owner } else { owner - 2 });
        }
        assert!(s.queue_table(1).iter().all(|&q| q == 0));
        assert!(s.queue_table(0).iter().all(|&q| q == 0), "no division by zero");
    }
}
