//! Transmit checksum offload (VIRTIO_NET_F_CSUM): what the driver does so
//! that the device finishes a frame's TCP or UDP checksum.
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

/// Prepares an IPv4 TCP or UDP frame (Ethernet header first) for the device
/// to finish its checksum: writes the pseudo-header sum into the checksum
/// field and returns `(csum_start, csum_offset)` for the header. `None`
/// (the frame untouched) for anything else: not IPv4, not TCP or UDP, an IP
/// fragment (a UDP checksum covers the whole datagram), a header length or
/// total length that does not fit the frame.
pub fn prepare_partial(frame: &mut [u8]) -> Option<(u16, u16)> {
    if frame.len() < ETH + 20 || be16(frame, 12) != ETHERTYPE_IPV4 || frame[ETH] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(frame[ETH] & 0x0f) * 4;
    let total = usize::from(be16(frame, ETH + 2));
    // More-fragments flag or a fragment offset: not a whole datagram.
    let fragment = be16(frame, ETH + 6) & 0x3fff != 0;
    if ihl < 20 || total < ihl || ETH + total > frame.len() || fragment {
        return None;
    }
    let (offset, min_header) = match frame[ETH + 9] {
        PROTO_TCP => (TCP_CSUM_OFFSET, 20),
        PROTO_UDP => (UDP_CSUM_OFFSET, 8),
        _ => return None,
    };
    let l4_len = total - ihl;
    if l4_len < min_header {
        return None;
    }
    let mut sum = u32::from(frame[ETH + 9]) + l4_len as u32;
    for at in (ETH + 12..ETH + 20).step_by(2) {
        sum += u32::from(be16(frame, at));
    }
    let start = ETH + ihl;
    let field = start + usize::from(offset);
    frame[field..field + 2].copy_from_slice(&fold(sum).to_be_bytes());
    Some((start as u16, offset))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    /// The one's-complement sum of `b` (odd length padded with a zero).
    fn sum(b: &[u8]) -> u32 {
        b.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum()
    }

    /// An Ethernet + IPv4 (`options` bytes of options) + `proto` frame with
    /// an `l4` segment whose checksum field is zero, and `pad` bytes after
    /// the IP datagram.
    fn frame(proto: u8, options: usize, l4: &[u8], pad: usize) -> Vec<u8> {
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
    fn full_checksum(f: &[u8], proto: u8) -> u16 {
        let ihl = usize::from(f[ETH] & 0x0f) * 4;
        let total = usize::from(be16(f, ETH + 2));
        let l4 = &f[ETH + ihl..ETH + total];
        let pseudo = sum(&f[ETH + 12..ETH + 20]) + u32::from(proto) + l4.len() as u32;
        !fold(pseudo + sum(l4))
    }

    /// What the device does with NEEDS_CSUM: sums from `start` to the end
    /// of the buffer and stores the complement at `start + offset`.
    fn device_finishes(f: &mut [u8], start: u16, offset: u16) {
        let (start, field) = (usize::from(start), usize::from(start + offset));
        let c = !fold(sum(&f[start..]));
        f[field..field + 2].copy_from_slice(&c.to_be_bytes());
    }

    fn segment(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

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
        for (what, mut f) in cases {
            let before = f.clone();
            assert_eq!(prepare_partial(&mut f), None, "{what}");
            assert_eq!(f, before, "{what}: untouched");
        }
    }
}
