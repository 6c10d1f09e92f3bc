//! Splitting a coalesced TCP segment back into smaller ones.
//!
//! With GUEST_TSO the device hands a queue TCP segments of up to 64 KiB
//! (the host's segments joined, see `drivers::virtio::netdev::RxOffloads`).
//! A stack takes such a segment whole, but one that arrived on another
//! vCPU's queue has to cross an inbox, whose slots hold ordinary frames
//! (`inbox::SLOT_BYTES`). It is cut into segments that fit a slot, each a
//! valid TCP segment of its own: the headers (options included) copied,
//! the IP total length, identification and header checksum, the TCP
//! sequence number and checksum rewritten, and FIN/PSH kept for the last
//! piece only. This is the software half of what a NIC does with TSO;
//! smoltcp only parses and emits whole segments, so it is here.

use smoltcp::wire::{EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv4Packet, TcpPacket};

/// Ethernet header length.
const ETH: usize = 14;

/// Why a frame was not split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitError {
    /// Not a whole IPv4 TCP segment (another protocol, IPv6, a fragment, a
    /// SYN or RST, or lengths that do not hold together).
    NotSplittable,
    /// Its headers alone fill `max` bytes.
    HeadersTooLong,
}

/// Cuts `frame`, an Ethernet + IPv4 + TCP segment, into segments of at most
/// `max` bytes each (their frames), built one at a time in `buf` (at least
/// `max` long) and handed to `out` in sequence order. Returns how many.
/// A frame that already fits is handed over as it is.
pub fn split_tcp(frame: &[u8], max: usize, buf: &mut [u8], mut out: impl FnMut(&[u8])) -> Result<usize, SplitError> {
    if frame.len() <= max {
        out(frame);
        return Ok(1);
    }
    let (headers, ip_len, tcp_at) = tcp_layout(frame).ok_or(SplitError::NotSplittable)?;
    let data = &frame[headers..ETH + ip_len];
    if headers >= max || buf.len() < max {
        return Err(SplitError::HeadersTooLong);
    }
    let chunk = max - headers;
    let ip = Ipv4Packet::new_unchecked(&frame[ETH..]);
    let (src, dst, ident) = (IpAddress::Ipv4(ip.src_addr()), IpAddress::Ipv4(ip.dst_addr()), ip.ident());
    let tcp = TcpPacket::new_unchecked(&frame[tcp_at..]);
    let (seq, fin, psh) = (tcp.seq_number(), tcp.fin(), tcp.psh());
    let pieces = data.len().div_ceil(chunk);
    for (i, piece) in data.chunks(chunk).enumerate() {
        let len = headers + piece.len();
        buf[..headers].copy_from_slice(&frame[..headers]);
        buf[headers..len].copy_from_slice(piece);
        let last = i + 1 == pieces;
        let mut ip = Ipv4Packet::new_unchecked(&mut buf[ETH..len]);
        ip.set_total_len((len - ETH) as u16);
        ip.set_ident(ident.wrapping_add(i as u16));
        ip.fill_checksum();
        let mut tcp = TcpPacket::new_unchecked(&mut buf[tcp_at..len]);
        tcp.set_seq_number(seq + i * chunk);
        tcp.set_fin(fin && last);
        tcp.set_psh(psh && last);
        tcp.fill_checksum(&src, &dst);
        out(&buf[..len]);
    }
    Ok(pieces)
}

/// For a whole IPv4 TCP segment that carries data and neither SYN nor RST:
/// the length of its headers (Ethernet, IP and TCP), the IP total length
/// and where the TCP header starts.
fn tcp_layout(frame: &[u8]) -> Option<(usize, usize, usize)> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    if ip.next_header() != IpProtocol::Tcp || ip.more_frags() || ip.frag_offset() != 0 {
        return None;
    }
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    if tcp.syn() || tcp.rst() || tcp.payload().is_empty() {
        return None;
    }
    let tcp_at = ETH + usize::from(ip.header_len());
    Some((tcp_at + usize::from(tcp.header_len()), usize::from(ip.total_len()), tcp_at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        EthernetAddress, EthernetRepr, Ipv4Address, Ipv4Repr, TcpControl, TcpRepr, TcpSeqNumber, TcpTimestampRepr,
    };
    use std::vec;
    use std::vec::Vec;

    const SRC: Ipv4Address = Ipv4Address::new(10, 99, 0, 1);
    const DST: Ipv4Address = Ipv4Address::new(10, 99, 0, 2);

    /// A checksummed Ethernet + IPv4 + TCP frame carrying `payload` at
    /// sequence number `seq`, with a timestamp option, PSH and maybe FIN.
    fn segment(payload: &[u8], seq: i32, fin: bool) -> Vec<u8> {
        let tcp = TcpRepr {
            src_port: 40000,
            dst_port: 5201,
            control: if fin { TcpControl::Fin } else { TcpControl::Psh },
            seq_number: TcpSeqNumber(seq),
            ack_number: Some(TcpSeqNumber(77)),
            window_len: 1000,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: Some(TcpTimestampRepr::new(5, 6)),
            payload,
        };
        let ip = Ipv4Repr {
            src_addr: SRC,
            dst_addr: DST,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let eth = EthernetRepr {
            src_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
            dst_addr: EthernetAddress([2, 0, 0, 0, 0, 2]),
            ethertype: EthernetProtocol::Ipv4,
        };
        let mut f = vec![0u8; ETH + ip.buffer_len() + tcp.buffer_len()];
        let mut e = EthernetFrame::new_unchecked(&mut f[..]);
        eth.emit(&mut e);
        let caps = ChecksumCapabilities::default();
        let mut p = Ipv4Packet::new_unchecked(e.payload_mut());
        ip.emit(&mut p, &caps);
        tcp.emit(&mut TcpPacket::new_unchecked(p.payload_mut()), &SRC.into(), &DST.into(), &caps);
        f
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 13 + i / 977) as u8).collect()
    }

    /// Splits `frame` into pieces of at most `max` bytes and checks each:
    /// valid checksums, the same addresses and ports, contiguous sequence
    /// numbers; returns the pieces' payloads and flags (PSH, FIN).
    fn split_and_check(frame: &[u8], max: usize) -> Vec<(Vec<u8>, bool, bool)> {
        let whole = Ipv4Packet::new_checked(&frame[ETH..]).unwrap();
        let whole_tcp = TcpPacket::new_checked(whole.payload()).unwrap();
        let mut buf = vec![0u8; max];
        let mut pieces = Vec::new();
        let mut next_seq = whole_tcp.seq_number();
        let n = split_tcp(frame, max, &mut buf, |p| {
            assert!(p.len() <= max);
            let ip = Ipv4Packet::new_checked(&p[ETH..]).expect("a whole IPv4 packet");
            assert!(ip.verify_checksum(), "IP header checksum");
            assert_eq!(usize::from(ip.total_len()), p.len() - ETH);
            let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
            assert!(tcp.verify_checksum(&SRC.into(), &DST.into()), "TCP checksum");
            assert_eq!((tcp.src_port(), tcp.dst_port(), tcp.ack_number()), (40000, 5201, whole_tcp.ack_number()));
            assert_eq!(tcp.header_len(), whole_tcp.header_len(), "options kept");
            assert_eq!(tcp.seq_number(), next_seq, "contiguous");
            next_seq += tcp.payload().len();
            pieces.push((tcp.payload().to_vec(), tcp.psh(), tcp.fin()));
        })
        .expect("split");
        assert_eq!(n, pieces.len());
        pieces
    }

    #[test]
    fn a_64_kib_segment_becomes_slot_sized_segments_carrying_the_same_bytes() {
        let payload = data(65_535 - 20 - 32);
        let frame = segment(&payload, 1_000_000, false);
        assert_eq!(frame.len(), 65_549);
        let pieces = split_and_check(&frame, 2048);
        let chunk = 2048 - (ETH + 20 + 32);
        assert_eq!(pieces.len(), payload.len().div_ceil(chunk));
        let joined: Vec<u8> = pieces.iter().flat_map(|(d, _, _)| d.iter().copied()).collect();
        assert!(joined == payload, "the payload, in order");
        assert!(pieces[..pieces.len() - 1].iter().all(|(d, psh, fin)| d.len() == chunk && !psh && !fin));
        assert!(pieces.last().unwrap().1, "PSH on the last piece only");
    }

    #[test]
    fn fin_stays_on_the_last_piece_and_sequence_numbers_wrap() {
        let payload = data(5000);
        let pieces = split_and_check(&segment(&payload, -2000, true), 1514);
        assert_eq!(pieces.len(), 4);
        let fins: Vec<bool> = pieces.iter().map(|p| p.2).collect();
        assert_eq!(fins, [false, false, false, true]);
    }

    #[test]
    fn a_frame_that_fits_is_passed_as_it_is() {
        let frame = segment(&data(100), 5, false);
        let mut got = Vec::new();
        assert_eq!(split_tcp(&frame, 2048, &mut [0u8; 2048], |p| got.push(p.to_vec())), Ok(1));
        assert_eq!(got, [frame]);
    }

    #[test]
    fn what_cannot_be_split_is_refused_untouched() {
        let good = segment(&data(3000), 5, false);
        let mut cases: Vec<(&str, Vec<u8>, SplitError)> = Vec::new();
        let mut udp = good.clone();
        udp[ETH + 9] = 17;
        cases.push(("UDP", udp, SplitError::NotSplittable));
        let mut fragment = good.clone();
        fragment[ETH + 6] = 0x20;
        cases.push(("a fragment", fragment, SplitError::NotSplittable));
        let mut syn = good.clone();
        syn[ETH + 20 + 13] |= 0x02;
        cases.push(("SYN with data", syn, SplitError::NotSplittable));
        let mut ipv6 = good.clone();
        ipv6[12..14].copy_from_slice(&[0x86, 0xdd]);
        cases.push(("IPv6", ipv6, SplitError::NotSplittable));
        let mut long = good.clone();
        long[ETH + 2..ETH + 4].copy_from_slice(&u16::MAX.to_be_bytes());
        cases.push(("total length beyond the frame", long, SplitError::NotSplittable));
        cases.push(("headers as long as a piece", good.clone(), SplitError::HeadersTooLong));
        for (what, f, want) in cases {
            let max = if want == SplitError::HeadersTooLong { ETH + 20 + 32 } else { 1514 };
            let mut called = false;
            assert_eq!(split_tcp(&f, max, &mut vec![0u8; max], |_| called = true), Err(want), "{what}");
            assert!(!called, "{what}: nothing handed out");
        }
    }
}
