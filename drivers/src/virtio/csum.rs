//! Checksum offload both ways. Transmit (VIRTIO_NET_F_CSUM): what the
//! driver does so that the device finishes a frame's TCP or UDP checksum.
//! Receive (VIRTIO_NET_F_GUEST_CSUM): the check the driver makes itself on
//! frames the device neither verified (DATA_VALID) nor left partial
//! (NEEDS_CSUM), because the stacks no longer check TCP and UDP sums.
//!
//! With NEEDS_CSUM in the `virtio_net_hdr`, the device sums the frame from
//! `csum_start` to its end (the checksum field included) and stores the
//! complement of that sum at `csum_start + csum_offset`. So the field must
//! hold the sum of the pseudo-header, folded and not complemented, and the
//! stack must not have computed the checksum itself. (No crate here does
//! this for a virtio header; smoltcp leaves the field 0 when its TCP/UDP
//! transmit checksums are off, and this fills in the rest.)

/// Ethernet header length.
const ETH: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
/// IPv6 fixed header length.
const IPV6_HDR: usize = 40;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
/// Where the checksum sits in the TCP and UDP headers.
const TCP_CSUM_OFFSET: u16 = 16;
const UDP_CSUM_OFFSET: u16 = 6;

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Folds a one's-complement sum to 16 bits.
fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The one's-complement sum of `bytes` (an odd last byte padded with a
/// zero) added to `sum`, not yet folded. Words are summed 32 bits at a time
/// into 64 bits (the carries fold back in at the end), which is the same
/// one's-complement sum with a quarter of the additions: receive checks run
/// over whole 64 KiB segments.
fn add_bytes(mut sum: u64, bytes: &[u8]) -> u64 {
    let (words, rest) = bytes.as_chunks::<4>();
    for w in words {
        sum += u64::from(u32::from_be_bytes(*w));
    }
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    sum + u64::from(u32::from_be_bytes(tail))
}

/// Folds a 64-bit one's-complement accumulator to 16 bits.
fn fold64(sum: u64) -> u16 {
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    fold((sum & 0xffff) as u32 + (sum >> 16) as u32)
}

/// What a receive check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A whole TCP or UDP datagram whose checksum is right (or a UDP one
    /// sent without a checksum, which IPv4 allows).
    Good,
    /// A whole TCP or UDP datagram whose checksum is wrong: drop it.
    Bad,
    /// Not something this check covers: not IPv4/IPv6, not TCP/UDP right
    /// after the IP header (an IPv6 extension header), an IP fragment, or
    /// lengths that do not fit. Delivered as it is; the stack drops what is
    /// malformed (fragments, once reassembled, are not checked again).
    NotChecked,
}

/// Checks the TCP or UDP checksum of a received Ethernet frame in full.
pub fn verify(frame: &[u8]) -> Verdict {
    let Some((start, end, proto, pseudo)) = transport_span(frame) else { return Verdict::NotChecked };
    let l4 = &frame[start..end];
    let Some((min_header, field)) = l4_checksum(proto) else { return Verdict::NotChecked };
    let field = usize::from(field);
    if l4.len() < min_header {
        return Verdict::NotChecked;
    }
    // A zero UDP checksum means "none" (IPv4 only; IPv6 forbids it).
    if proto == PROTO_UDP && be16(l4, field) == 0 && be16(frame, 12) == ETHERTYPE_IPV4 {
        return Verdict::Good;
    }
    let sum = add_bytes(pseudo + u64::from(proto) + l4.len() as u64, l4);
    if fold64(sum) == 0xffff {
        Verdict::Good
    } else {
        Verdict::Bad
    }
}

/// Where the transport header and payload of a whole, unfragmented IPv4
/// or IPv6 datagram lie in `frame` (`start..end`), its protocol, and the
/// sum of its addresses (the rest of the pseudo-header is the protocol and
/// `end - start`). `None` for anything else.
fn transport_span(frame: &[u8]) -> Option<(usize, usize, u8, u64)> {
    if frame.len() < ETH + 20 {
        return None;
    }
    match be16(frame, 12) {
        ETHERTYPE_IPV4 => {
            let ihl = usize::from(frame[ETH] & 0x0f) * 4;
            let total = usize::from(be16(frame, ETH + 2));
            let fragment = be16(frame, ETH + 6) & 0x3fff != 0;
            if frame[ETH] >> 4 != 4 || ihl < 20 || total < ihl || ETH + total > frame.len() || fragment {
                return None;
            }
            Some((ETH + ihl, ETH + total, frame[ETH + 9], add_bytes(0, &frame[ETH + 12..ETH + 20])))
        }
        ETHERTYPE_IPV6 => {
            if frame.len() < ETH + IPV6_HDR || frame[ETH] >> 4 != 6 {
                return None;
            }
            let end = ETH + IPV6_HDR + usize::from(be16(frame, ETH + 4));
            if end > frame.len() {
                return None;
            }
            Some((ETH + IPV6_HDR, end, frame[ETH + 6], add_bytes(0, &frame[ETH + 8..ETH + IPV6_HDR])))
        }
        _ => None,
    }
}

/// For a whole IPv4 or IPv6 TCP segment: the length of its headers
/// (Ethernet, IP, TCP with options), if the TCP header fits the segment.
pub fn tcp_headers_len(frame: &[u8]) -> Option<(u16, IpVersion)> {
    let (start, end, proto, _) = transport_span(frame)?;
    let data_offset = usize::from(*frame.get(start + 12)? >> 4) * 4;
    let headers = start + data_offset;
    let version = if be16(frame, 12) == ETHERTYPE_IPV6 { IpVersion::V6 } else { IpVersion::V4 };
    (proto == PROTO_TCP && data_offset >= 20 && headers <= end).then_some((headers as u16, version))
}

/// The IP version of a frame [`transport_span`] accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpVersion {
    V4,
    V6,
}

/// Whether a NEEDS_CSUM request from the device makes sense for `frame`:
/// the checksum field (`csum_offset` past `csum_start`) lies within the
/// frame, after the Ethernet header.
pub fn partial_in_bounds(frame: &[u8], csum_start: u16, csum_offset: u16) -> bool {
    let start = usize::from(csum_start);
    start >= ETH && start + usize::from(csum_offset) + 2 <= frame.len()
}

/// Prepares an IPv4 or IPv6 TCP or UDP frame (Ethernet header first) for
/// the device to finish its checksum: writes the pseudo-header sum into the
/// checksum field and returns `(csum_start, csum_offset)` for the header.
/// `None` (the frame untouched) for anything else: not IP, not TCP or UDP
/// right after the IP header (an IPv6 extension header), an IP fragment (a
/// UDP checksum covers the whole datagram), a header length or total length
/// that does not fit the frame.
pub fn prepare_partial(frame: &mut [u8]) -> Option<(u16, u16)> {
    let (start, end, proto, addresses) = transport_span(frame)?;
    let (min_header, offset) = l4_checksum(proto)?;
    let l4_len = end - start;
    if l4_len < min_header {
        return None;
    }
    let field = start + usize::from(offset);
    let sum = fold64(addresses + u64::from(proto) + l4_len as u64);
    frame[field..field + 2].copy_from_slice(&sum.to_be_bytes());
    Some((start as u16, offset))
}

/// For TCP and UDP: the shortest header and where the checksum sits in it.
fn l4_checksum(proto: u8) -> Option<(usize, u16)> {
    match proto {
        PROTO_TCP => Some((20, TCP_CSUM_OFFSET)),
        PROTO_UDP => Some((8, UDP_CSUM_OFFSET)),
        _ => None,
    }
}

/// Test frames: IPv4 and IPv6 TCP/UDP datagrams in Ethernet, with their
/// checksums computed the plain way (for the receive and transmit tests
/// here and in `netdev`).
#[cfg(test)]
pub(crate) mod frames {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    /// The one's-complement sum of `b` (odd length padded with a zero).
    pub fn sum(b: &[u8]) -> u32 {
        b.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum()
    }

    /// An Ethernet + IPv4 (`options` bytes of options) + `proto` frame with
    /// an `l4` segment whose checksum field is zero, and `pad` bytes after
    /// the IP datagram.
    pub fn frame(proto: u8, options: usize, l4: &[u8], pad: usize) -> Vec<u8> {
        let ihl = 20 + options;
        let total = ihl + l4.len();
        let mut f = vec![0u8; ETH + total + pad];
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        f[ETH] = 0x40 | (ihl / 4) as u8;
        f[ETH + 2..ETH + 4].copy_from_slice(&(total as u16).to_be_bytes());
        f[ETH + 6] = 0x40; // don't fragment
        f[ETH + 8] = 64;
        f[ETH + 9] = proto;
        f[ETH + 12..ETH + 16].copy_from_slice(&[10, 99, 0, 2]);
        f[ETH + 16..ETH + 20].copy_from_slice(&[10, 99, 0, 1]);
        f[ETH + ihl..ETH + total].copy_from_slice(l4);
        f
    }

    /// The checksum computed in full, as a stack without offload would.
    pub fn full_checksum(f: &[u8], proto: u8) -> u16 {
        let ihl = usize::from(f[ETH] & 0x0f) * 4;
        let total = usize::from(be16(f, ETH + 2));
        let l4 = &f[ETH + ihl..ETH + total];
        let pseudo = sum(&f[ETH + 12..ETH + 20]) + u32::from(proto) + l4.len() as u32;
        !fold(pseudo + sum(l4))
    }

    /// What the device does with NEEDS_CSUM: sums from `start` to the end
    /// of the buffer and stores the complement at `start + offset`.
    pub fn device_finishes(f: &mut [u8], start: u16, offset: u16) {
        let (start, field) = (usize::from(start), usize::from(start + offset));
        let c = !fold(sum(&f[start..]));
        f[field..field + 2].copy_from_slice(&c.to_be_bytes());
    }

    pub fn segment(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    /// Where the checksum field of `proto` sits in its header.
    pub fn csum_field(proto: u8) -> usize {
        usize::from(if proto == PROTO_TCP { TCP_CSUM_OFFSET } else { UDP_CSUM_OFFSET })
    }

    /// An IPv4 `proto` frame carrying `l4` (its checksum field is
    /// overwritten) with the checksum a stack computes in full.
    pub fn checksummed_v4(proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut f = frame(proto, 0, l4, 0);
        let field = ETH + 20 + csum_field(proto);
        f[field..field + 2].fill(0);
        let c = full_checksum(&f, proto);
        f[field..field + 2].copy_from_slice(&c.to_be_bytes());
        f
    }

    /// The same over IPv6 (no extension headers).
    pub fn checksummed_v6(proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; ETH + IPV6_HDR + l4.len()];
        f[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        f[ETH] = 0x60;
        f[ETH + 4..ETH + 6].copy_from_slice(&(l4.len() as u16).to_be_bytes());
        f[ETH + 6] = proto;
        f[ETH + 7] = 64;
        f[ETH + 8] = 0xfd;
        f[ETH + 23] = 2;
        f[ETH + 24] = 0xfd;
        f[ETH + 39] = 1;
        f[ETH + IPV6_HDR..].copy_from_slice(l4);
        let field = ETH + IPV6_HDR + csum_field(proto);
        f[field..field + 2].fill(0);
        let pseudo = sum(&f[ETH + 8..ETH + IPV6_HDR]) + u32::from(proto) + l4.len() as u32;
        let c = !fold(pseudo + sum(&f[ETH + IPV6_HDR..]));
        f[field..field + 2].copy_from_slice(&c.to_be_bytes());
        f
    }
}

#[cfg(test)]
mod tests {
    use super::frames::*;
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn the_device_finishes_the_checksum_a_stack_would_have_computed() {
        for (proto, offset, header) in [(PROTO_TCP, TCP_CSUM_OFFSET, 20), (PROTO_UDP, UDP_CSUM_OFFSET, 8)] {
            for len in [header, header + 1, header + 2, 100, 537, 1460, 1480] {
                for options in [0, 12] {
                    let mut l4 = segment(len, len as u8);
                    l4[usize::from(offset)..usize::from(offset) + 2].fill(0);
                    let mut f = frame(proto, options, &l4, 0);
                    let want = full_checksum(&f, proto);
                    let (start, off) = prepare_partial(&mut f).expect("an IPv4 TCP/UDP frame");
                    assert_eq!((start as usize, off), (ETH + 20 + options, offset));
                    device_finishes(&mut f, start, off);
                    let field = usize::from(start + off);
                    assert_eq!(be16(&f, field), want, "proto {proto}, {len} bytes, {options} bytes of options");
                }
            }
        }
    }

    #[test]
    fn over_ipv6_the_device_finishes_the_checksum_a_stack_would_have_computed() {
        for (proto, offset) in [(PROTO_TCP, TCP_CSUM_OFFSET), (PROTO_UDP, UDP_CSUM_OFFSET)] {
            for len in [20usize, 21, 1440, 65_475] {
                let mut f = checksummed_v6(proto, &segment(len, len as u8));
                let field = ETH + IPV6_HDR + usize::from(offset);
                let want = be16(&f, field);
                f[field..field + 2].fill(0);
                let (start, off) = prepare_partial(&mut f).expect("an IPv6 TCP/UDP frame");
                assert_eq!((usize::from(start), off), (ETH + IPV6_HDR, offset));
                device_finishes(&mut f, start, off);
                assert_eq!(be16(&f, field), want, "proto {proto}, {len} bytes");
            }
        }
    }

    #[test]
    fn padding_after_the_datagram_does_not_change_the_result() {
        let mut l4 = segment(40, 7);
        l4[16..18].fill(0);
        let mut f = frame(PROTO_TCP, 0, &l4, 6);
        let want = full_checksum(&f, PROTO_TCP);
        let (start, off) = prepare_partial(&mut f).unwrap();
        device_finishes(&mut f, start, off);
        assert_eq!(be16(&f, usize::from(start + off)), want);
    }

    #[test]
    fn other_frames_are_left_alone() {
        let tcp = || {
            let mut l4 = segment(40, 3);
            l4[16..18].fill(0);
            frame(PROTO_TCP, 0, &l4, 0)
        };
        let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
        let mut arp = tcp();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        cases.push(("ARP", arp));
        let mut ipv6 = tcp();
        ipv6[ETH] = 0x60;
        cases.push(("IP version 6 in an IPv4 frame", ipv6));
        let mut icmp = tcp();
        icmp[ETH + 9] = 1;
        cases.push(("ICMP", icmp));
        let mut more = tcp();
        more[ETH + 6] = 0x20;
        cases.push(("more fragments", more));
        let mut later = tcp();
        later[ETH + 7] = 1;
        cases.push(("a later fragment", later));
        let mut long = tcp();
        long[ETH + 2..ETH + 4].copy_from_slice(&2000u16.to_be_bytes());
        cases.push(("total length beyond the frame", long));
        let mut short_ihl = tcp();
        short_ihl[ETH] = 0x44;
        cases.push(("header length under 20", short_ihl));
        let mut short_l4 = tcp();
        short_l4[ETH + 2..ETH + 4].copy_from_slice(&30u16.to_be_bytes());
        cases.push(("a TCP header cut short", short_l4));
        cases.push(("a runt", tcp()[..30].to_vec()));
        let v6 = || checksummed_v6(PROTO_TCP, &segment(40, 3));
        let mut extension = v6();
        extension[ETH + 6] = 0; // a hop-by-hop options header first
        cases.push(("an IPv6 extension header", extension));
        let mut fragment = v6();
        fragment[ETH + 6] = 44;
        cases.push(("an IPv6 fragment", fragment));
        let mut long6 = v6();
        long6[ETH + 4..ETH + 6].copy_from_slice(&2000u16.to_be_bytes());
        cases.push(("IPv6 payload length beyond the frame", long6));
        for (what, mut f) in cases {
            let before = f.clone();
            assert_eq!(prepare_partial(&mut f), None, "{what}");
            assert_eq!(f, before, "{what}: untouched");
        }
    }
}

#[cfg(test)]
mod receive_tests {
    use super::frames::*;
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn whole_datagrams_with_the_right_checksum_are_good_and_any_flipped_bit_is_bad() {
        for proto in [PROTO_TCP, PROTO_UDP] {
            for len in [20usize, 21, 57, 1460, 9000, 65_515] {
                let l4 = segment(len, len as u8);
                for (version, f) in [(4, checksummed_v4(proto, &l4)), (6, checksummed_v6(proto, &l4))] {
                    assert_eq!(verify(&f), Verdict::Good, "IPv{version} proto {proto}, {len} bytes");
                    let start = if version == 4 { ETH + 20 } else { ETH + IPV6_HDR };
                    // A flipped bit in the payload, the header, the
                    // checksum or the addresses is caught.
                    for at in [f.len() - 1, start + len / 2, start + csum_field(proto), ETH + 15 + version] {
                        let mut bad = f.clone();
                        bad[at] ^= 0x10;
                        assert_eq!(verify(&bad), Verdict::Bad, "IPv{version} proto {proto}, {len} bytes, byte {at}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_udp_datagram_without_a_checksum_is_good_over_ipv4_only() {
        let mut l4 = segment(30, 1);
        l4[6..8].fill(0);
        assert_eq!(verify(&frame(PROTO_UDP, 0, &l4, 0)), Verdict::Good);
        let mut v6 = checksummed_v6(PROTO_UDP, &l4);
        v6[ETH + IPV6_HDR + 6..ETH + IPV6_HDR + 8].fill(0);
        assert_eq!(verify(&v6), Verdict::Bad, "IPv6 requires the checksum");
    }

    #[test]
    fn what_the_check_does_not_cover_is_passed_through() {
        let good = checksummed_v4(PROTO_TCP, &segment(40, 3));
        let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
        let mut arp = good.clone();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        cases.push(("ARP", arp));
        let mut icmp = good.clone();
        icmp[ETH + 9] = 1;
        cases.push(("ICMP", icmp));
        let mut fragment = good.clone();
        fragment[ETH + 6] = 0x20;
        fragment[ETH + 20 + 5] ^= 0xff;
        cases.push(("a fragment, even with a wrong sum", fragment));
        let mut long = good.clone();
        long[ETH + 2..ETH + 4].copy_from_slice(&2000u16.to_be_bytes());
        cases.push(("total length beyond the frame", long));
        let mut short_l4 = good.clone();
        short_l4[ETH + 2..ETH + 4].copy_from_slice(&30u16.to_be_bytes());
        cases.push(("a TCP header cut short", short_l4));
        let mut ext = checksummed_v6(PROTO_TCP, &segment(40, 3));
        ext[ETH + 6] = 0; // hop-by-hop options first
        cases.push(("an IPv6 extension header", ext));
        let mut v6_long = checksummed_v6(PROTO_TCP, &segment(40, 3));
        v6_long[ETH + 4] = 0x10;
        cases.push(("an IPv6 payload length beyond the frame", v6_long));
        cases.push(("a runt", good[..30].to_vec()));
        for (what, f) in cases {
            assert_eq!(verify(&f), Verdict::NotChecked, "{what}");
        }
    }

    #[test]
    fn a_partial_checksum_field_must_lie_within_the_frame() {
        let f = checksummed_v4(PROTO_TCP, &segment(40, 3));
        assert!(partial_in_bounds(&f, 34, 16));
        assert!(partial_in_bounds(&f, 34, (f.len() - 36) as u16), "the last two bytes");
        assert!(!partial_in_bounds(&f, 34, (f.len() - 35) as u16), "one byte past the end");
        assert!(!partial_in_bounds(&f, 13, 0), "inside the Ethernet header");
        assert!(!partial_in_bounds(&f, u16::MAX, u16::MAX), "no overflow");
    }

    #[test]
    fn the_wide_sum_equals_the_plain_one() {
        for len in 0..64 {
            let b = segment(len, 9);
            assert_eq!(fold64(add_bytes(0, &b)), fold(sum(&b)), "{len} bytes");
        }
        let ones = alloc::vec![0xffu8; 65_536];
        assert_eq!(fold64(add_bytes(0, &ones)), fold(sum(&ones)));
    }
}
