//! Ethernet frames carrying IPv4 and TCP: made by hand (valid checksums and
//! all), and taken apart.

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpProtocol, Ipv4Address, Ipv4Packet, Ipv4Repr,
    TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};

/// The TCP segment in an Ethernet frame, with its IPv4 source and
/// destination addresses.
pub fn tcp_in(frame: &[u8]) -> Option<(Ipv4Address, Ipv4Address, TcpPacket<&[u8]>)> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    if ip.next_header() != IpProtocol::Tcp {
        return None;
    }
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    Some((ip.src_addr(), ip.dst_addr(), tcp))
}

/// One end of a TCP segment.
pub struct End {
    pub mac: [u8; 6],
    pub ip: Ipv4Address,
    pub port: u16,
}

/// A TCP segment from `src` to `dst` (no options) in an Ethernet frame.
pub fn tcp_frame(
    src: End,
    dst: End,
    control: TcpControl,
    seq: TcpSeqNumber,
    ack: TcpSeqNumber,
    window: u16,
    payload: &[u8],
) -> Vec<u8> {
    let tcp = TcpRepr {
        src_port: src.port,
        dst_port: dst.port,
        control,
        seq_number: seq,
        ack_number: Some(ack),
        window_len: window,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload,
    };
    let ip = Ipv4Repr {
        src_addr: src.ip,
        dst_addr: dst.ip,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress(src.mac),
        dst_addr: EthernetAddress(dst.mac),
        ethertype: EthernetProtocol::Ipv4,
    };
    let mut frame = vec![0u8; eth.buffer_len() + ip.buffer_len() + tcp.buffer_len()];
    let mut f = EthernetFrame::new_unchecked(&mut frame[..]);
    eth.emit(&mut f);
    let mut p = Ipv4Packet::new_unchecked(f.payload_mut());
    let checksums = ChecksumCapabilities::default();
    ip.emit(&mut p, &checksums);
    tcp.emit(&mut TcpPacket::new_unchecked(p.payload_mut()), &src.ip.into(), &dst.ip.into(), &checksums);
    frame
}
