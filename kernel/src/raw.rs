//! Raw driver mode (`raw=rxonly|txonly|macswap`, like DPDK testpmd's
//! forwarding modes): the boot options, the UDP frames it sends, and its
//! `raw-stats:` counter line. Frames move with no TCP/IP stack, so a
//! benchmark can show what the device path alone carries.
//!
//! This module is also the contract with the host side (`xtask raw-load`,
//! `bench raw`, the `net-raw-*` boot tests): the frame layout and the
//! counter line are built and read with the same code at both ends.

use alloc::collections::BTreeMap;
use alloc::string::String;
use core::fmt;

/// What every vCPU that owns a queue pair does with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawMode {
    /// Receive and count frames, repost the buffers, transmit nothing.
    RxOnly,
    /// Transmit `raw-len` UDP frames as fast as the ring allows (and
    /// receive whatever arrives, counted like rxonly).
    TxOnly,
    /// Send every received frame back on the same pair, source and
    /// destination MAC addresses swapped (nothing else changed).
    MacSwap,
}

impl RawMode {
    pub const ALL: [RawMode; 3] = [RawMode::RxOnly, RawMode::TxOnly, RawMode::MacSwap];

    pub const fn name(self) -> &'static str {
        match self {
            RawMode::RxOnly => "rxonly",
            RawMode::TxOnly => "txonly",
            RawMode::MacSwap => "macswap",
        }
    }

    pub fn from_name(name: &str) -> Option<RawMode> {
        RawMode::ALL.into_iter().find(|m| m.name() == name)
    }
}

impl fmt::Display for RawMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Shortest frame txonly sends: Ethernet's minimum without the FCS.
pub const MIN_LEN: u16 = 60;
/// Longest: a 1500-byte IP packet and its Ethernet header.
pub const MAX_LEN: u16 = 1514;
pub const BROADCAST: [u8; 6] = [0xff; 6];
/// Longest `raw-delay`: ten minutes.
pub const MAX_DELAY_MS: u32 = 600_000;

/// The `raw*` boot options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawOptions {
    /// `raw=`: the mode; `None` runs the TCP/IP stacks as usual.
    pub mode: Option<RawMode>,
    /// `raw-len=60..1514`: txonly's frame size, bytes without the FCS.
    pub len: u16,
    /// `raw-count=N`: txonly stops after N frames per queue pair.
    pub count: Option<u64>,
    /// `raw-dst=aa:bb:cc:dd:ee:ff`: txonly's destination MAC address
    /// (broadcast by default, which every host end accepts).
    pub dst: Option<[u8; 6]>,
    /// `raw-delay=MS`: txonly starts transmitting this long after raw mode
    /// is up (a host-side counter can start first); 0 by default.
    pub delay_ms: u32,
}

impl Default for RawOptions {
    fn default() -> Self {
        RawOptions { mode: None, len: MIN_LEN, count: None, dst: None, delay_ms: 0 }
    }
}

impl RawOptions {
    /// Whether `key` is one of these options.
    pub fn is_key(key: &str) -> bool {
        matches!(key, "raw" | "raw-len" | "raw-count" | "raw-dst" | "raw-delay")
    }

    /// Applies `key=value`; `None` when the value is malformed (the option
    /// keeps its previous value).
    pub fn set(&mut self, key: &str, value: &str) -> Option<()> {
        match key {
            "raw" => {
                self.mode = match value {
                    "none" => None,
                    _ => Some(RawMode::from_name(value)?),
                }
            }
            "raw-len" => self.len = value.parse::<u16>().ok().filter(|n| (MIN_LEN..=MAX_LEN).contains(n))?,
            "raw-count" => self.count = Some(value.parse::<u64>().ok().filter(|&n| n > 0)?),
            "raw-dst" => self.dst = Some(parse_mac(value)?),
            "raw-delay" => self.delay_ms = value.parse::<u32>().ok().filter(|&ms| ms <= MAX_DELAY_MS)?,
            _ => return None,
        }
        Some(())
    }

    /// txonly's destination MAC address.
    pub fn destination(&self) -> [u8; 6] {
        self.dst.unwrap_or(BROADCAST)
    }
}

/// Parses `aa:bb:cc:dd:ee:ff` (or with `-`), hex digits in either case.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = text.split([':', '-']);
    for b in &mut out {
        let p = parts.next().filter(|p| p.len() == 2)?;
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Shows a MAC address as `aa:bb:cc:dd:ee:ff`.
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

/// The address txonly sends to: the first host address of the guest's
/// subnet (10.99.0.1 for 10.99.0.2/24), or the second when that is the
/// guest itself: the host end of `--net tap`.
pub fn peer_ip(ip: [u8; 4], prefix_len: u8) -> [u8; 4] {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix_len.clamp(1, 30))).unwrap_or(0);
    let net = u32::from_be_bytes(ip) & mask;
    let first = net | 1;
    (if first == u32::from_be_bytes(ip) { net | 2 } else { first }).to_be_bytes()
}

// ---- Frames ----------------------------------------------------------------

pub const ETH_HDR: usize = 14;
pub const IPV4_HDR: usize = 20;
pub const UDP_HDR: usize = 8;
/// Ethernet, IPv4 (no options) and UDP headers.
pub const HEADERS: usize = ETH_HDR + IPV4_HDR + UDP_HDR;
/// The start of every payload: marks the frames of this mode.
pub const MAGIC: [u8; 6] = *b"mqraw1";
/// Magic, origin, flow byte and a 64-bit sequence number.
pub const PAYLOAD_HDR: usize = 16;
const _: () = assert!(HEADERS + PAYLOAD_HDR <= MIN_LEN as usize);
/// The discard port (RFC 863): where txonly sends.
pub const DISCARD_PORT: u16 = 9;
/// txonly's UDP source port is this plus the queue pair's index, so the
/// host can tell the queues' frames apart.
pub const TX_PORT_BASE: u16 = 10_000;

/// Who built a frame (byte 6 of the payload).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The guest's txonly.
    Guest = 0,
    /// The host's `raw-load` (sent to the guest, maybe returned by macswap).
    Host = 1,
}

/// An Ethernet/IPv4/UDP frame of this mode: what is written, or what a
/// parsed frame holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpFrame {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src_ip: [u8; 4],
    pub dst_ip: [u8; 4],
    pub src_port: u16,
    pub dst_port: u16,
    pub origin: Origin,
    pub seq: u64,
}

/// Why a frame is not a well-formed frame of this mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Not IPv4/UDP with our magic: someone else's frame.
    NotOurs,
    /// Our magic, but a length or checksum that does not add up.
    Damaged(&'static str),
    /// `write` was given a buffer outside 60..=1514 bytes.
    BadLength(usize),
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// The Internet checksum's one's-complement sum of `data` (RFC 1071),
/// folded to 16 bits, starting from `sum`.
fn ones_sum(data: &[u8], mut sum: u32) -> u16 {
    let (pairs, rest) = data.as_chunks::<2>();
    for &c in pairs {
        sum += u32::from(u16::from_be_bytes(c));
        sum = (sum & 0xffff) + (sum >> 16);
    }
    if let [last] = rest {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// UDP's checksum over the IPv4 pseudo-header and `udp` (header and data).
fn udp_checksum(src: [u8; 4], dst: [u8; 4], udp: &[u8]) -> u16 {
    let sum = !ones_sum(udp, u32::from(ones_sum(&pseudo(src, dst, udp.len()), 0)));
    // 0 means "no checksum" in IPv4: a computed 0 is sent as 0xffff.
    if sum == 0 {
        0xffff
    } else {
        sum
    }
}

impl UdpFrame {
    /// Writes the whole frame into `buf` (60..=1514 bytes, the frame's
    /// length): headers with valid checksums, the payload header (magic,
    /// origin, sequence number) and a byte pattern after it.
    pub fn write(&self, buf: &mut [u8]) -> Result<(), FrameError> {
        let len = buf.len();
        if !(MIN_LEN as usize..=MAX_LEN as usize).contains(&len) {
            return Err(FrameError::BadLength(len));
        }
        buf[0..6].copy_from_slice(&self.dst_mac);
        buf[6..12].copy_from_slice(&self.src_mac);
        buf[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip = &mut buf[ETH_HDR..ETH_HDR + IPV4_HDR];
        ip.copy_from_slice(&[0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        ip[2..4].copy_from_slice(&((len - ETH_HDR) as u16).to_be_bytes());
        ip[12..16].copy_from_slice(&self.src_ip);
        ip[16..20].copy_from_slice(&self.dst_ip);
        let sum = !ones_sum(ip, 0);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        let udp = &mut buf[ETH_HDR + IPV4_HDR..];
        udp[0..2].copy_from_slice(&self.src_port.to_be_bytes());
        udp[2..4].copy_from_slice(&self.dst_port.to_be_bytes());
        udp[4..6].copy_from_slice(&((len - ETH_HDR - IPV4_HDR) as u16).to_be_bytes());
        udp[6..8].fill(0);
        let payload = &mut udp[UDP_HDR..];
        payload[..6].copy_from_slice(&MAGIC);
        payload[6] = self.origin as u8;
        payload[7] = 0;
        payload[8..16].copy_from_slice(&self.seq.to_be_bytes());
        for (i, b) in payload[PAYLOAD_HDR..].iter_mut().enumerate() {
            *b = i as u8;
        }
        let sum = udp_checksum(self.src_ip, self.dst_ip, udp);
        udp[6..8].copy_from_slice(&sum.to_be_bytes());
        Ok(())
    }

    /// Reads a frame of this mode, checking every length and checksum and
    /// the payload pattern. Frames are untrusted: nothing here panics.
    pub fn parse(frame: &[u8]) -> Result<UdpFrame, FrameError> {
        use FrameError::{Damaged, NotOurs};
        if frame.len() < HEADERS + PAYLOAD_HDR || be16(frame, 12) != 0x0800 {
            return Err(NotOurs);
        }
        let ip = &frame[ETH_HDR..ETH_HDR + IPV4_HDR];
        let udp_at = ETH_HDR + IPV4_HDR;
        if ip[0] != 0x45 || ip[9] != 17 || frame[udp_at + UDP_HDR..udp_at + UDP_HDR + 6] != MAGIC {
            return Err(NotOurs);
        }
        if ones_sum(ip, 0) != 0xffff {
            return Err(Damaged("IPv4 header checksum"));
        }
        let total = usize::from(be16(ip, 2));
        if total < IPV4_HDR + UDP_HDR + PAYLOAD_HDR || ETH_HDR + total > frame.len() {
            return Err(Damaged("IPv4 total length"));
        }
        let udp = &frame[udp_at..ETH_HDR + total];
        if usize::from(be16(udp, 4)) != udp.len() {
            return Err(Damaged("UDP length"));
        }
        let src_ip = [ip[12], ip[13], ip[14], ip[15]];
        let dst_ip = [ip[16], ip[17], ip[18], ip[19]];
        if be16(udp, 6) != 0 && ones_sum(udp, u32::from(ones_sum(&pseudo(src_ip, dst_ip, udp.len()), 0))) != 0xffff {
            return Err(Damaged("UDP checksum"));
        }
        let payload = &udp[UDP_HDR..];
        let origin = match payload[6] {
            0 => Origin::Guest,
            1 => Origin::Host,
            _ => return Err(Damaged("origin")),
        };
        if payload[PAYLOAD_HDR..].iter().enumerate().any(|(i, &b)| b != i as u8) {
            return Err(Damaged("payload"));
        }
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&payload[8..16]);
        Ok(UdpFrame {
            dst_mac: frame[0..6].try_into().map_err(|_| NotOurs)?,
            src_mac: frame[6..12].try_into().map_err(|_| NotOurs)?,
            src_ip,
            dst_ip,
            src_port: be16(udp, 0),
            dst_port: be16(udp, 2),
            origin,
            seq: u64::from_be_bytes(seq),
        })
    }
}

fn pseudo(src: [u8; 4], dst: [u8; 4], udp_len: usize) -> [u8; 12] {
    let mut p = [0u8; 12];
    p[..4].copy_from_slice(&src);
    p[4..8].copy_from_slice(&dst);
    p[9] = 17;
    p[10..12].copy_from_slice(&(udp_len as u16).to_be_bytes());
    p
}

// ---- The counter line --------------------------------------------------------

/// Prefix of each vCPU's periodic counter line.
pub const STATS_PREFIX: &str = "raw-stats: ";
/// The line the boot CPU prints once raw mode runs (traffic may start).
pub const READY: &str = "raw mode up:";
/// The line a txonly vCPU prints when `raw-count` frames are queued.
pub const COUNT_REACHED: &str = "raw-count reached";

/// One queue pair's counters, as `raw-stats:` shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawCounters {
    pub rx: u64,
    pub rx_bytes: u64,
    pub tx: u64,
    pub tx_bytes: u64,
    /// Frames lost here: received frames dropped as bad device input,
    /// frames too long to send back, frames that found the ring full.
    pub drops: u64,
    pub rx_kicks: u64,
    pub tx_kicks: u64,
    pub rx_irqs: u64,
    pub tx_irqs: u64,
    /// Rounds that found the transmit ring full (txonly, macswap).
    pub full: u64,
    /// Polls that found the device holding no receive buffer.
    pub no_buffers: u64,
    pub rescues: u64,
    pub watchdog: u64,
}

impl RawCounters {
    pub fn fields(&self) -> [(&'static str, u64); 13] {
        [
            ("rx", self.rx),
            ("rx_bytes", self.rx_bytes),
            ("tx", self.tx),
            ("tx_bytes", self.tx_bytes),
            ("drops", self.drops),
            ("rx_kicks", self.rx_kicks),
            ("tx_kicks", self.tx_kicks),
            ("rx_irqs", self.rx_irqs),
            ("tx_irqs", self.tx_irqs),
            ("full", self.full),
            ("no_buffers", self.no_buffers),
            ("rescues", self.rescues),
            ("watchdog", self.watchdog),
        ]
    }
}

/// `raw-stats: cpu=0 mode=macswap rxq=0 txq=1 rx=... tx=...` (after the
/// logger's prefix): one vCPU's queue pair.
pub struct StatsLine<'a> {
    pub cpu: u32,
    pub mode: RawMode,
    pub rxq: u16,
    pub txq: u16,
    pub counters: &'a RawCounters,
}

impl fmt::Display for StatsLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{STATS_PREFIX}cpu={} mode={} rxq={} txq={}", self.cpu, self.mode, self.rxq, self.txq)?;
        for (k, v) in self.counters.fields() {
            write!(f, " {k}={v}")?;
        }
        Ok(())
    }
}

/// A parsed `raw-stats:` line: every `key=value` in any order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedStats {
    pub cpu: u32,
    pub mode: String,
    values: BTreeMap<String, u64>,
}

impl ParsedStats {
    /// Finds the counter line in `line` (anything may come before it).
    /// `None` for other lines, or one without `cpu=` and `mode=`.
    pub fn parse(line: &str) -> Option<ParsedStats> {
        let rest = &line[line.find(STATS_PREFIX)? + STATS_PREFIX.len()..];
        let (mut cpu, mut mode, mut values) = (None, None, BTreeMap::new());
        for word in rest.split_whitespace() {
            let (k, v) = word.split_once('=')?;
            match k {
                "cpu" => cpu = v.parse().ok(),
                "mode" => mode = Some(String::from(v)),
                _ => {
                    values.insert(String::from(k), v.parse().ok()?);
                }
            }
        }
        Some(ParsedStats { cpu: cpu?, mode: mode?, values })
    }

    /// Counter `key`; 0 when the line lacks it.
    pub fn get(&self, key: &str) -> u64 {
        self.values.get(key).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let mut o = RawOptions::default();
        assert_eq!((o.mode, o.len, o.count, o.destination()), (None, 60, None, BROADCAST));
        for m in RawMode::ALL {
            assert_eq!(o.set("raw", m.name()), Some(()));
            assert_eq!(o.mode, Some(m));
        }
        assert_eq!(o.set("raw", "none"), Some(()));
        assert_eq!(o.mode, None);
        assert_eq!(o.set("raw-len", "1514"), Some(()));
        assert_eq!(o.set("raw-count", "1000000"), Some(()));
        assert_eq!(o.set("raw-dst", "02:AB:cd:00:00:01"), Some(()));
        assert_eq!(o.set("raw-delay", "1500"), Some(()));
        assert_eq!(o.delay_ms, 1500);
        assert_eq!((o.len, o.count, o.destination()), (1514, Some(1_000_000), [2, 0xab, 0xcd, 0, 0, 1]));
        for (k, v) in [
            ("raw", "rx-only"),
            ("raw", ""),
            ("raw-len", "59"),
            ("raw-len", "1515"),
            ("raw-len", "big"),
            ("raw-count", "0"),
            ("raw-count", "-1"),
            ("raw-dst", "02:00:00:00:00"),
            ("raw-dst", "02:00:00:00:00:01:02"),
            ("raw-dst", "0g:00:00:00:00:01"),
            ("raw-dst", "2:0:0:0:0:1"),
            ("raw-speed", "1"),
            ("raw-delay", "600001"),
            ("raw-delay", "-5"),
        ] {
            assert_eq!(o.set(k, v), None, "{k}={v}");
        }
        assert_eq!((o.len, o.count), (1514, Some(1_000_000)), "bad values keep the old ones");
        assert!(RawOptions::is_key("raw-len") && !RawOptions::is_key("rawlen"));
    }

    #[test]
    fn mac_addresses() {
        assert_eq!(parse_mac("52-54-00-12-34-56"), Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        assert_eq!(alloc::format!("{}", Mac([0x52, 0x54, 0, 0x12, 0x34, 0xff])), "52:54:00:12:34:ff");
    }

    #[test]
    fn the_peer_is_the_first_host_of_the_subnet() {
        assert_eq!(peer_ip([10, 99, 0, 2], 24), [10, 99, 0, 1]);
        assert_eq!(peer_ip([10, 99, 0, 1], 24), [10, 99, 0, 2]);
        assert_eq!(peer_ip([192, 168, 7, 9], 16), [192, 168, 0, 1]);
        assert_eq!(peer_ip([10, 0, 0, 6], 30), [10, 0, 0, 5]);
        assert_eq!(peer_ip([10, 0, 0, 6], 32), [10, 0, 0, 5], "clamped to /30");
    }

    fn frame(seq: u64) -> UdpFrame {
        UdpFrame {
            dst_mac: BROADCAST,
            src_mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            src_ip: [10, 99, 0, 2],
            dst_ip: [10, 99, 0, 1],
            src_port: TX_PORT_BASE + 3,
            dst_port: DISCARD_PORT,
            origin: Origin::Guest,
            seq,
        }
    }

    #[test]
    fn frames_round_trip_at_every_length() {
        for len in MIN_LEN as usize..=MAX_LEN as usize {
            let mut buf = alloc::vec![0xeeu8; len];
            let f = frame(len as u64 * 7919);
            f.write(&mut buf).unwrap();
            assert_eq!(UdpFrame::parse(&buf), Ok(f), "len {len}");
        }
        assert_eq!(frame(0).write(&mut [0u8; 59]), Err(FrameError::BadLength(59)));
        assert_eq!(frame(0).write(&mut [0u8; 1515]), Err(FrameError::BadLength(1515)));
    }

    #[test]
    fn checksums_match_a_known_frame() {
        // The IPv4 header checksum of a 60-byte frame 10.99.0.2 -> 10.99.0.1,
        // DF, TTL 64, UDP, checked by hand: 0x45 00 002e 0000 4000 4011 25f7.
        let mut buf = [0u8; 60];
        frame(0).write(&mut buf).unwrap();
        assert_eq!(&buf[14..26], &[0x45, 0, 0, 46, 0, 0, 0x40, 0, 64, 17, 0x25, 0xf7]);
        // The UDP checksum verifies (sums to 0xffff with the pseudo-header).
        let udp = &buf[34..];
        assert_eq!(ones_sum(udp, u32::from(ones_sum(&pseudo([10, 99, 0, 2], [10, 99, 0, 1], udp.len()), 0))), 0xffff);
    }

    #[test]
    fn other_and_damaged_frames_are_told_apart() {
        let mut buf = [0u8; 100];
        frame(5).write(&mut buf).unwrap();
        let good = buf;
        assert_eq!(UdpFrame::parse(&good[..57]), Err(FrameError::NotOurs), "too short");
        let mut arp = good;
        arp[12..14].copy_from_slice(&[8, 6]);
        assert_eq!(UdpFrame::parse(&arp), Err(FrameError::NotOurs));
        let mut foreign = good;
        foreign[42] = b'x';
        assert_eq!(UdpFrame::parse(&foreign), Err(FrameError::NotOurs));
        let damage = |at: usize, why: &'static str| {
            let mut f = good;
            f[at] ^= 0x10;
            assert_eq!(UdpFrame::parse(&f), Err(FrameError::Damaged(why)), "byte {at}");
        };
        damage(22, "IPv4 header checksum");
        damage(90, "UDP checksum");
        // A total length beyond the frame, with a header checksum to match.
        let mut long = good;
        long[16..18].copy_from_slice(&200u16.to_be_bytes());
        long[24..26].fill(0);
        let sum = !ones_sum(&long[14..34], 0);
        long[24..26].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(UdpFrame::parse(&long), Err(FrameError::Damaged("IPv4 total length")));
        // Without a UDP checksum the payload pattern still catches damage.
        let mut unsummed = good;
        unsummed[40..42].fill(0);
        assert!(UdpFrame::parse(&unsummed).is_ok());
        unsummed[90] ^= 1;
        assert_eq!(UdpFrame::parse(&unsummed), Err(FrameError::Damaged("payload")));
        // Padding after the IP packet (a short frame padded by a device) is fine.
        let mut padded = alloc::vec![0u8; 64];
        padded[..60].copy_from_slice(&{
            let mut b = [0u8; 60];
            frame(1).write(&mut b).unwrap();
            b
        });
        assert_eq!(UdpFrame::parse(&padded).map(|f| f.seq), Ok(1));
    }

    #[test]
    fn the_counter_line_round_trips() {
        let c = RawCounters { rx: 10, rx_bytes: 600, tx: 9, tx_bytes: 540, drops: 1, full: 3, ..Default::default() };
        let line = alloc::format!(
            "[    1.5] cpu1 INFO  {}",
            StatsLine { cpu: 1, mode: RawMode::MacSwap, rxq: 2, txq: 3, counters: &c }
        );
        assert!(line.ends_with("raw-stats: cpu=1 mode=macswap rxq=2 txq=3 rx=10 rx_bytes=600 tx=9 tx_bytes=540 drops=1 rx_kicks=0 tx_kicks=0 rx_irqs=0 tx_irqs=0 full=3 no_buffers=0 rescues=0 watchdog=0"), "{line}");
        let p = ParsedStats::parse(&line).unwrap();
        assert_eq!((p.cpu, p.mode.as_str(), p.get("rxq"), p.get("txq")), (1, "macswap", 2, 3));
        for (k, v) in c.fields() {
            assert_eq!(p.get(k), v, "{k}");
        }
        assert_eq!(p.get("future_counter"), 0);
        assert!(ParsedStats::parse("net-stats: cpu0 rxq 0 packets 1").is_none());
        assert!(ParsedStats::parse("raw-stats: mode=rxonly rx=1").is_none(), "no cpu");
        assert!(ParsedStats::parse("raw-stats: cpu=0 mode=rxonly rx=lots").is_none());
    }
}
