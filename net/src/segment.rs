//! Splitting a coalesced TCP segment back into smaller ones.
//!
//! With GUEST_TSO the device hands a queue TCP segments of up to 64 KiB
//! (the host's segments joined, see `drivers::virtio::netdev::RxOffloads`).
//! A stack takes such a segment whole, but one that arrived on another
//! vCPU's queue has to cross an inbox, whose slots hold ordinary frames
//! (`inbox::SLOT_BYTES`). It is cut into segments that fit a slot, each a
//! valid TCP segment of its own: the headers (options included) copied,
//! the IP length rewritten (and for IPv4 the identification and header
//! checksum), the TCP sequence number and checksum rewritten, and FIN/PSH
//! kept for the last piece only. This is the software half of what a NIC
//! does with TSO; smoltcp only parses and emits whole segments, so it is
//! here.

use smoltcp::wire::{EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket};

/// Ethernet header length.
const ETH: usize = 14;
/// IPv6 fixed header length.
const IPV6_HDR: usize = 40;

/// Why a frame was not split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitError {
    /// Not a whole IPv4 or IPv6 TCP segment (another protocol, an IPv6
    /// extension header, a fragment, a SYN or RST, or lengths that do not
    /// hold together).
    NotSplittable,
    /// Its headers alone fill `max` bytes.
    HeadersTooLong,
}

/// Where a splittable segment's parts lie.
struct Layout {
    /// Ethernet, IP and TCP headers.
    headers: usize,
    /// The end of the IP packet (padding after it is not data).
    end: usize,
    tcp_at: usize,
    src: IpAddress,
    dst: IpAddress,
    /// IPv4's identification; `None` for IPv6.
    ident: Option<u16>,
}

/// Cuts `frame`, an Ethernet + IPv4 or IPv6 + TCP segment, into segments of
/// at most `max` bytes each (their frames), built one at a time in `buf` (at
/// least `max` long) and handed to `out` in sequence order. Returns how
/// many. A frame that already fits is handed over as it is.
pub fn split_tcp(frame: &[u8], max: usize, buf: &mut [u8], mut out: impl FnMut(&[u8])) -> Result<usize, SplitError> {
    if frame.len() <= max {
        out(frame);
        return Ok(1);
    }
    let Layout { headers, end, tcp_at, src, dst, ident } = tcp_layout(frame).ok_or(SplitError::NotSplittable)?;
    let data = &frame[headers..end];
    if headers >= max || buf.len() < max {
        return Err(SplitError::HeadersTooLong);
    }
    let chunk = max - headers;
    let tcp = TcpPacket::new_unchecked(&frame[tcp_at..]);
    let (seq, fin, psh) = (tcp.seq_number(), tcp.fin(), tcp.psh());
    let pieces = data.len().div_ceil(chunk);
    for (i, piece) in data.chunks(chunk).enumerate() {
        let len = headers + piece.len();
        buf[..headers].copy_from_slice(&frame[..headers]);
        buf[headers..len].copy_from_slice(piece);
        let last = i + 1 == pieces;
        match ident {
            Some(ident) => {
                let mut ip = Ipv4Packet::new_unchecked(&mut buf[ETH..len]);
                ip.set_total_len((len - ETH) as u16);
                ip.set_ident(ident.wrapping_add(i as u16));
                ip.fill_checksum();
            }
            None => Ipv6Packet::new_unchecked(&mut buf[ETH..len]).set_payload_len((len - ETH - IPV6_HDR) as u16),
        }
        let mut tcp = TcpPacket::new_unchecked(&mut buf[tcp_at..len]);
        tcp.set_seq_number(seq + i * chunk);
        tcp.set_fin(fin && last);
        tcp.set_psh(psh && last);
        tcp.fill_checksum(&src, &dst);
        out(&buf[..len]);
    }
    Ok(pieces)
}

/// The layout of a whole IPv4 or IPv6 TCP segment (TCP right after the
/// IPv6 header) that carries data and neither SYN nor RST.
fn tcp_layout(frame: &[u8]) -> Option<Layout> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let (tcp_at, end, src, dst, ident, l4) = match eth.ethertype() {
        EthernetProtocol::Ipv4 => {
            let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
            if ip.next_header() != IpProtocol::Tcp || ip.more_frags() || ip.frag_offset() != 0 {
                return None;
            }
            let tcp_at = ETH + usize::from(ip.header_len());
            let end = ETH + usize::from(ip.total_len());
            (tcp_at, end, ip.src_addr().into(), ip.dst_addr().into(), Some(ip.ident()), ip.payload())
        }
        EthernetProtocol::Ipv6 => {
            let ip = Ipv6Packet::new_checked(eth.payload()).ok()?;
            if ip.next_header() != IpProtocol::Tcp {
                return None;
            }
            let end = ETH + IPV6_HDR + usize::from(ip.payload_len());
            (ETH + IPV6_HDR, end, ip.src_addr().into(), ip.dst_addr().into(), None, ip.payload())
        }
        _ => return None,
    };
    let tcp = TcpPacket::new_checked(l4).ok()?;
    if tcp.syn() || tcp.rst() || tcp.payload().is_empty() {
        return None;
    }
    Some(Layout { headers: tcp_at + usize::from(tcp.header_len()), end, tcp_at, src, dst, ident })
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        EthernetAddress, EthernetRepr, IpRepr, Ipv4Address, Ipv6Address, TcpControl, TcpRepr, TcpSeqNumber,
        TcpTimestampRepr,
    };
    use std::vec;
    use std::vec::Vec;

    const SRC: Ipv4Address = Ipv4Address::new(10, 99, 0, 1);
    const DST: Ipv4Address = Ipv4Address::new(10, 99, 0, 2);
    const SRC6: Ipv6Address = Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
    const DST6: Ipv6Address = Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);

    /// The addresses of a test segment over IPv`version`.
    fn addresses(version: u8) -> (IpAddress, IpAddress) {
        if version == 4 {
            (SRC.into(), DST.into())
        } else {
            (SRC6.into(), DST6.into())
        }
    }

    /// The IP header's length over IPv`version`.
    fn ip_header(version: u8) -> usize {
        if version == 4 {
            20
        } else {
            IPV6_HDR
        }
    }

    /// A checksummed Ethernet + IPv4 + TCP frame carrying `payload` at
    /// sequence number `seq`, with a timestamp option, PSH and maybe FIN.
    fn segment(payload: &[u8], seq: i32, fin: bool) -> Vec<u8> {
        segment_over(4, payload, seq, fin)
    }

    /// [`segment`] over IPv`version`.
    fn segment_over(version: u8, payload: &[u8], seq: i32, fin: bool) -> Vec<u8> {
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
        let (src, dst) = addresses(version);
        let ip = IpRepr::new(src, dst, IpProtocol::Tcp, tcp.buffer_len(), 64);
        let eth = EthernetRepr {
            src_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
            dst_addr: EthernetAddress([2, 0, 0, 0, 0, 2]),
            ethertype: if version == 4 { EthernetProtocol::Ipv4 } else { EthernetProtocol::Ipv6 },
        };
        let mut f = vec![0u8; ETH + ip.buffer_len()];
        let mut e = EthernetFrame::new_unchecked(&mut f[..]);
        eth.emit(&mut e);
        let caps = ChecksumCapabilities::default();
        ip.emit(e.payload_mut(), &caps);
        let tcp_at = ETH + ip_header(version);
        tcp.emit(&mut TcpPacket::new_unchecked(&mut f[tcp_at..]), &src, &dst, &caps);
        f
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 13 + i / 977) as u8).collect()
    }

    /// Splits `frame` into pieces of at most `max` bytes and checks each:
    /// valid checksums, the same addresses and ports, contiguous sequence
    /// numbers; returns the pieces' payloads and flags (PSH, FIN).
    fn split_and_check(frame: &[u8], max: usize) -> Vec<(Vec<u8>, bool, bool)> {
        let version = frame[ETH] >> 4;
        let (src, dst) = addresses(version);
        let tcp_at = ETH + ip_header(version);
        let whole_tcp = TcpPacket::new_checked(&frame[tcp_at..]).unwrap();
        let mut buf = vec![0u8; max];
        let mut pieces = Vec::new();
        let mut next_seq = whole_tcp.seq_number();
        let n = split_tcp(frame, max, &mut buf, |p| {
            assert!(p.len() <= max);
            let l4 = if version == 4 {
                let ip = Ipv4Packet::new_checked(&p[ETH..]).expect("a whole IPv4 packet");
                assert!(ip.verify_checksum(), "IP header checksum");
                assert_eq!(usize::from(ip.total_len()), p.len() - ETH);
                ip.payload()
            } else {
                let ip = Ipv6Packet::new_checked(&p[ETH..]).expect("a whole IPv6 packet");
                assert_eq!(usize::from(ip.payload_len()), p.len() - ETH - IPV6_HDR);
                ip.payload()
            };
            let tcp = TcpPacket::new_checked(l4).unwrap();
            assert!(tcp.verify_checksum(&src, &dst), "TCP checksum");
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
        for version in [4, 6] {
            let payload = data(65_535 - 20 - 32);
            let frame = segment_over(version, &payload, 1_000_000, false);
            assert_eq!(frame.len(), ETH + ip_header(version) + 32 + payload.len());
            let pieces = split_and_check(&frame, 2048);
            let chunk = 2048 - (ETH + ip_header(version) + 32);
            assert_eq!(pieces.len(), payload.len().div_ceil(chunk), "IPv{version}");
            let joined: Vec<u8> = pieces.iter().flat_map(|(d, _, _)| d.iter().copied()).collect();
            assert!(joined == payload, "IPv{version}: the payload, in order");
            assert!(pieces[..pieces.len() - 1].iter().all(|(d, psh, fin)| d.len() == chunk && !psh && !fin));
            assert!(pieces.last().unwrap().1, "IPv{version}: PSH on the last piece only");
        }
    }

    #[test]
    fn fin_stays_on_the_last_piece_and_sequence_numbers_wrap() {
        for version in [4, 6] {
            let payload = data(5000);
            let pieces = split_and_check(&segment_over(version, &payload, -2000, true), 1514);
            assert_eq!(pieces.len(), 4, "IPv{version}");
            let fins: Vec<bool> = pieces.iter().map(|p| p.2).collect();
            assert_eq!(fins, [false, false, false, true], "IPv{version}");
        }
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
        cases.push(("an IPv4 packet typed IPv6", ipv6, SplitError::NotSplittable));
        let good6 = segment_over(6, &data(3000), 5, false);
        let mut extension = good6.clone();
        extension[ETH + 6] = 0; // hop-by-hop options first
        cases.push(("an IPv6 extension header", extension, SplitError::NotSplittable));
        let mut long6 = good6.clone();
        long6[ETH + 4..ETH + 6].copy_from_slice(&u16::MAX.to_be_bytes());
        cases.push(("IPv6 payload length beyond the frame", long6, SplitError::NotSplittable));
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
