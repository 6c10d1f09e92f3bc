//! A guard around a smoltcp 0.14 behaviour that can stall a connection for
//! good: the ACK carried by a segment with data that arrives while our
//! receive window is zero is thrown away with the segment.
//!
//! RFC 9293 (3.10.7.4) says a receiver with a zero window must still accept
//! valid ACKs, and Linux accepts a segment that starts at `RCV.NXT` into a
//! zero window for its ACK. smoltcp only accepts a *zero-length* segment
//! there. Seen here under load (TCP echo, `tx-share=lock`, 4 vCPUs on one
//! queue pair): our echo's transmit buffer was full, so its receive buffer
//! filled and it advertised a zero window; the host's pure ACKs that would
//! have freed the transmit buffer were lost (an inbox full under a burst);
//! from then on the host's ACKs came only on its window probes (4 bytes at
//! `RCV.NXT`, dropped whole) and on duplicate ACKs whose sequence number was
//! already past those probe bytes (outside our zero window, dropped too).
//! Our retransmissions of data the host had long acknowledged went on for
//! ever and the connection never moved again.
//!
//! The same stall comes from a peer whose sequence numbers ran ahead of our
//! `RCV.NXT` (it sent bytes that we dropped, a lost burst or a probe, and
//! carries on from there): every segment it sends then, its pure ACKs
//! included, starts past our zero window, and smoltcp drops it, ACK and
//! all. Under RSS and heavy host load this stalled a TCP echo in about one
//! run of twenty (resets after the peer gave up).
//!
//! The guard remembers, per vCPU, the flows whose last segment from us
//! advertised a zero window, with the `RCV.NXT` that segment acknowledged.
//! For a segment of such a flow that smoltcp would not take whole (one
//! with data, or one that does not start at `RCV.NXT`) it hands the stack
//! a copy first: headers only, the sequence number set to `RCV.NXT`,
//! checksums recomputed. smoltcp accepts that copy and takes its ACK and
//! window; the original follows and is judged as before. The copy claims
//! nothing the peer did not say: the ACK and window are the peer's own,
//! and a segment at `RCV.NXT` without data is one the peer could have sent.
//! The set is a table of 64 buckets of 8 flows, chosen by a hash of the
//! ports (at most 8 compares per frame), so it holds every connection a
//! vCPU is likely to have: a flow pushed out of a full bucket is stuck
//! again until we next send it a zero window (an echo under load has dozens
//! of flows in this state at once; an earlier 8-entry set lost some and
//! stalled them for minutes).
//! A flow leaves the set as soon as we advertise a window again.

use smoltcp::wire::{IpAddress, Ipv4Packet, TcpPacket};

/// Buckets of the per-vCPU table, and flows per bucket.
pub const BUCKETS: usize = 64;
pub const WAYS: usize = 8;
/// The largest payload-less copy: Ethernet, IPv4 and TCP headers with
/// their longest options.
pub const COPY_MAX: usize = 14 + 60 + 60;

/// A flow as the peer's segments carry it: (peer ip, our ip, peer port,
/// our port).
type Key = ([u8; 4], [u8; 4], u16, u16);

/// The TCP segment in an Ethernet frame: (IPv4 header length, TCP header
/// length, payload length, key as the frame's sender sees it).
fn segment(frame: &[u8]) -> Option<(usize, usize, usize, Key)> {
    if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = Ipv4Packet::new_checked(&frame[14..]).ok()?;
    if ip.next_header() != smoltcp::wire::IpProtocol::Tcp || ip.more_frags() || ip.frag_offset() != 0 {
        return None;
    }
    let ihl = usize::from(ip.header_len());
    let total = usize::from(ip.total_len());
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    let thl = usize::from(tcp.header_len());
    let payload = total.checked_sub(ihl + thl)?;
    let key = (ip.src_addr().octets(), ip.dst_addr().octets(), tcp.src_port(), tcp.dst_port());
    Some((ihl, thl, payload, key))
}

/// One bucket: up to [`WAYS`] flows, each with its `RCV.NXT`.
type Bucket = [Option<(Key, u32)>; WAYS];

/// TCP flags of a segment (the header's byte 13).
const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// A big-endian u32 at `at` (bounds checked by `segment`).
fn be32(frame: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([frame[at], frame[at + 1], frame[at + 2], frame[at + 3]])
}

/// The flows of one vCPU whose receive window we last advertised as zero,
/// each with the `RCV.NXT` we acknowledged then.
#[derive(Clone, Debug)]
pub struct ZeroWindows {
    /// Bucket [`bucket`] of a flow holds it, if anywhere.
    flows: alloc::boxed::Box<[Bucket]>,
    /// Flows in the table (the per-packet check is one compare while 0).
    len: usize,
    /// Payload-less copies handed to the stack.
    pub copies: u64,
}

impl Default for ZeroWindows {
    fn default() -> Self {
        ZeroWindows::new()
    }
}

/// A flow's bucket: its ports mixed (a vCPU's flows differ in the peer's
/// port, which the host picks).
fn bucket(key: &Key) -> usize {
    let x = (u32::from(key.2) << 16 | u32::from(key.3)).wrapping_mul(0x9e37_79b1);
    (x >> 16) as usize % BUCKETS
}

impl ZeroWindows {
    pub fn new() -> ZeroWindows {
        // Built on the heap bucket by bucket: the whole table (8 KiB) is too
        // big a temporary for a vCPU's stack.
        let flows = alloc::vec![[None; WAYS]; BUCKETS].into_boxed_slice();
        ZeroWindows { flows, len: 0, copies: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Looks at a frame we transmit: a TCP segment advertising a zero window
    /// puts its flow in the set (or updates its `RCV.NXT`), any other
    /// window takes it out.
    pub fn on_transmit(&mut self, frame: &[u8]) {
        let Some((ihl, _, _, (ours, peer, our_port, peer_port))) = segment(frame) else { return };
        let key = (peer, ours, peer_port, our_port);
        let tcp = 14 + ihl;
        let window = u16::from_be_bytes([frame[tcp + 14], frame[tcp + 15]]);
        if frame[tcp + 13] & ACK == 0 {
            return;
        }
        let rcv_nxt = be32(frame, tcp + 8);
        let ways = &mut self.flows[bucket(&key)];
        let at = ways.iter().position(|f| f.is_some_and(|(k, _)| k == key));
        match (window, at) {
            (0, None) => match ways.iter().position(Option::is_none) {
                Some(free) => {
                    ways[free] = Some((key, rcv_nxt));
                    self.len += 1;
                }
                // A full bucket: the first flow in it makes room.
                None => ways[0] = Some((key, rcv_nxt)),
            },
            (0, Some(i)) => ways[i] = Some((key, rcv_nxt)),
            (_, Some(i)) => {
                ways[i] = None;
                self.len -= 1;
            }
            (_, None) => {}
        }
    }

    /// For a received ACK of a flow in the set that smoltcp would drop whole
    /// (it carries data, or it does not start at our `RCV.NXT`): writes a
    /// copy without data, FIN or PSH, starting at `RCV.NXT`, into `out` and
    /// returns its length. SYNs and RSTs are left alone.
    pub fn strip(&mut self, frame: &[u8], out: &mut [u8; COPY_MAX]) -> Option<usize> {
        if self.is_empty() {
            return None;
        }
        let (ihl, thl, payload, key) = segment(frame)?;
        let (_, rcv_nxt) = self.flows[bucket(&key)].iter().flatten().find(|(k, _)| *k == key)?;
        let tcp_at = 14 + ihl;
        let (flags, seq) = (frame[tcp_at + 13], be32(frame, tcp_at + 4));
        if flags & (SYN | RST) != 0 || flags & ACK == 0 || (payload == 0 && seq == *rcv_nxt && flags & FIN == 0) {
            return None;
        }
        let rcv_nxt = *rcv_nxt;
        let len = 14 + ihl + thl;
        out[..len].copy_from_slice(&frame[..len]);
        let mut ip = Ipv4Packet::new_unchecked(&mut out[14..len]);
        ip.set_total_len((ihl + thl) as u16);
        ip.fill_checksum();
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        let mut tcp = TcpPacket::new_unchecked(ip.payload_mut());
        tcp.set_seq_number(smoltcp::wire::TcpSeqNumber(rcv_nxt as i32));
        tcp.set_fin(false);
        tcp.set_psh(false);
        tcp.fill_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst));
        self.copies += 1;
        Some(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::frames::{self, End};
    use smoltcp::wire::{Ipv4Address, TcpControl, TcpRepr, TcpSeqNumber};

    const HOST: Ipv4Address = Ipv4Address::new(10, 99, 0, 1);
    const GUEST: Ipv4Address = Ipv4Address::new(10, 99, 0, 2);

    fn tcp_frame(
        src: Ipv4Address,
        dst: Ipv4Address,
        ports: (u16, u16),
        window: u16,
        data: &[u8],
        fin: bool,
    ) -> Vec<u8> {
        // The host's bytes start at 1000, the guest's at 5000.
        let (seq, ack) = if src == GUEST { (5000, 1000) } else { (1000, 5000) };
        frames::tcp_frame(
            End { mac: [2, 0, 0, 0, 0, 1], ip: src, port: ports.0 },
            End { mac: [2, 0, 0, 0, 0, 2], ip: dst, port: ports.1 },
            if fin { TcpControl::Fin } else { TcpControl::None },
            TcpSeqNumber(seq),
            TcpSeqNumber(ack),
            window,
            data,
        )
    }

    /// `frame` (from [`tcp_frame`]) with sequence number `seq` instead,
    /// its checksum made good again.
    fn at_seq(mut frame: Vec<u8>, seq: i32) -> Vec<u8> {
        let mut ip = Ipv4Packet::new_unchecked(&mut frame[14..]);
        let (src, dst) = (IpAddress::Ipv4(ip.src_addr()), IpAddress::Ipv4(ip.dst_addr()));
        let mut tcp = TcpPacket::new_unchecked(ip.payload_mut());
        tcp.set_seq_number(TcpSeqNumber(seq));
        tcp.fill_checksum(&src, &dst);
        frame
    }

    #[test]
    fn a_zero_window_flow_gets_a_valid_copy_without_data() {
        let mut z = ZeroWindows::new();
        let mut out = [0u8; COPY_MAX];
        let probe = tcp_frame(HOST, GUEST, (40000, 7), 1080, b"abcd", false);
        assert_eq!(z.strip(&probe, &mut out), None, "no flow advertised a zero window yet");
        z.on_transmit(&tcp_frame(GUEST, HOST, (7, 40000), 0, b"", false));
        let n = z.strip(&probe, &mut out).expect("a copy");
        let ip = Ipv4Packet::new_checked(&out[14..n]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(usize::from(ip.total_len()), n - 14);
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(tcp.verify_checksum(&IpAddress::Ipv4(HOST), &IpAddress::Ipv4(GUEST)));
        let repr = TcpRepr::parse(&tcp, &IpAddress::Ipv4(HOST), &IpAddress::Ipv4(GUEST), &Default::default()).unwrap();
        assert_eq!(repr.payload.len(), 0);
        assert_eq!(
            (repr.seq_number, repr.ack_number, repr.window_len),
            (TcpSeqNumber(1000), Some(TcpSeqNumber(5000)), 1080)
        );
        assert_eq!(z.copies, 1);
        // A FIN is not carried over (it would occupy sequence space).
        let fin = tcp_frame(HOST, GUEST, (40000, 7), 1080, b"x", true);
        let n = z.strip(&fin, &mut out).unwrap();
        let ip = Ipv4Packet::new_checked(&out[14..n]).unwrap();
        assert!(!TcpPacket::new_checked(ip.payload()).unwrap().fin());
        // Pure ACKs at RCV.NXT need no copy (the guest acknowledged 1000
        // in its zero-window segment); other flows are left alone.
        assert_eq!(z.strip(&tcp_frame(HOST, GUEST, (40000, 7), 9, b"", false), &mut out), None);
        assert_eq!(z.strip(&tcp_frame(HOST, GUEST, (40001, 7), 9, b"zz", false), &mut out), None);
        // Once we advertise a window again the flow leaves the set.
        z.on_transmit(&tcp_frame(GUEST, HOST, (7, 40000), 512, b"", false));
        assert!(z.is_empty());
        assert_eq!(z.strip(&probe, &mut out), None);
    }

    #[test]
    fn segments_past_rcv_nxt_get_a_copy_at_rcv_nxt() {
        let mut z = ZeroWindows::new();
        let mut out = [0u8; COPY_MAX];
        // The guest advertised window 0 acknowledging the host's byte 1000.
        z.on_transmit(&tcp_frame(GUEST, HOST, (7, 40000), 0, b"", false));
        // The host ran ahead (it sent bytes 1000..1004, which were lost):
        // its pure ACKs now start at 1004, outside the zero window.
        let dup_ack = at_seq(tcp_frame(HOST, GUEST, (40000, 7), 2000, b"", false), 1004);
        let n = z.strip(&dup_ack, &mut out).expect("a copy at RCV.NXT");
        let ip = Ipv4Packet::new_checked(&out[14..n]).unwrap();
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(ip.verify_checksum() && tcp.verify_checksum(&IpAddress::Ipv4(HOST), &IpAddress::Ipv4(GUEST)));
        assert_eq!(
            (tcp.seq_number(), tcp.ack_number(), tcp.window_len()),
            (TcpSeqNumber(1000), TcpSeqNumber(5000), 2000)
        );
        // Data past RCV.NXT: the same.
        let ahead = at_seq(tcp_frame(HOST, GUEST, (40000, 7), 2000, b"later", false), 1010);
        let n = z.strip(&ahead, &mut out).unwrap();
        let ip = Ipv4Packet::new_checked(&out[14..n]).unwrap();
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!((tcp.seq_number(), tcp.payload().len()), (TcpSeqNumber(1000), 0));
        // A pure ACK at RCV.NXT is smoltcp's own; SYNs and RSTs are left alone.
        assert_eq!(z.strip(&tcp_frame(HOST, GUEST, (40000, 7), 9, b"", false), &mut out), None);
        let mut rst = dup_ack.clone();
        rst[14 + 20 + 13] |= RST;
        assert_eq!(z.strip(&rst, &mut out), None);
        let mut syn = dup_ack.clone();
        syn[14 + 20 + 13] |= SYN;
        assert_eq!(z.strip(&syn, &mut out), None);
        // A later zero-window segment of ours moves RCV.NXT along.
        let mut acked_more = tcp_frame(GUEST, HOST, (7, 40000), 0, b"", false);
        acked_more[14 + 20 + 8..14 + 20 + 12].copy_from_slice(&1004u32.to_be_bytes());
        z.on_transmit(&acked_more);
        assert_eq!(z.strip(&dup_ack, &mut out), None, "1004 is RCV.NXT now");
        assert_eq!(z.copies, 2);
    }

    #[test]
    fn every_flow_of_a_busy_vcpu_is_remembered() {
        let mut z = ZeroWindows::new();
        let mut out = [0u8; COPY_MAX];
        // 100 flows at once, on ports a host would pick.
        let ports: Vec<u16> = (0..100u16).map(|i| 32768 + i * 7).collect();
        for &p in &ports {
            z.on_transmit(&tcp_frame(GUEST, HOST, (7, p), 0, b"", false));
        }
        for &p in &ports {
            assert!(z.strip(&tcp_frame(HOST, GUEST, (p, 7), 1, b"a", false), &mut out).is_some(), "port {p}");
        }
        for &p in &ports {
            z.on_transmit(&tcp_frame(GUEST, HOST, (7, p), 64, b"", false));
        }
        assert!(z.is_empty(), "every flow left when it got a window again");
        // A full bucket makes room for a newcomer.
        let same_bucket: Vec<u16> =
            (1024..u16::MAX).filter(|&p| bucket(&(HOST.octets(), GUEST.octets(), p, 7)) == 0).take(WAYS + 1).collect();
        for &p in &same_bucket {
            z.on_transmit(&tcp_frame(GUEST, HOST, (7, p), 0, b"", false));
        }
        let newest = same_bucket[WAYS];
        assert!(z.strip(&tcp_frame(HOST, GUEST, (newest, 7), 1, b"a", false), &mut out).is_some());
        assert_eq!(z.strip(&tcp_frame(HOST, GUEST, (same_bucket[0], 7), 1, b"a", false), &mut out), None);
    }

    #[test]
    fn garbage_is_ignored() {
        let mut z = ZeroWindows::new();
        z.on_transmit(&tcp_frame(GUEST, HOST, (7, 40000), 0, b"", false));
        let good = tcp_frame(HOST, GUEST, (40000, 7), 1, b"abcd", false);
        let mut out = [0u8; COPY_MAX];
        for cut in 0..good.len() {
            let _ = z.strip(&good[..cut], &mut out);
            z.on_transmit(&good[..cut]);
        }
        let mut bad = good.clone();
        bad[14 + 2] = 0xff; // IP total length beyond the frame
        assert_eq!(z.strip(&bad, &mut out), None);
    }
}
