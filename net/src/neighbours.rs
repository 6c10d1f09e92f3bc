//! Neighbour information shared by every CPU's stack.
//!
//! Each CPU runs its own smoltcp interface with its own neighbour cache, but
//! an ARP request from the host arrives on one queue only, and must be
//! answered once. So the stack that receives it answers it, and the binding
//! it teaches (the sender's IP and MAC) is posted here; every other stack
//! picks it up the next time it polls, as a made-up ARP reply addressed to
//! it, which fills its cache and sends nothing. No request is copied, no
//! reply is duplicated, and no CPU is interrupted: an idle stack has nobody
//! to talk to and learns the binding when it next wakes.
//!
//! Per poll, a stack reads one atomic generation counter that changes only
//! when a binding is new, changes, or is refreshed (at most every
//! [`REFRESH_MS`] per neighbour); the lock behind it is taken only then.

use core::sync::atomic::{AtomicU32, Ordering};

use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Ipv4Address,
};
use spin::Mutex;

use crate::stack::NetConfig;

/// Neighbours remembered (the test network has one: the host).
pub const CAPACITY: usize = 16;
/// A binding seen again is re-posted at most this often, so that every
/// stack's cache entry (60 s lifetime in smoltcp) is refreshed with it.
pub const REFRESH_MS: u64 = 10_000;
/// An ARP frame over Ethernet: 14 + 28 bytes.
pub const ARP_FRAME_LEN: usize = 42;

/// One IPv4 neighbour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding {
    pub ip: [u8; 4],
    pub mac: [u8; 6],
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    binding: Binding,
    /// The generation at which it was last posted.
    generation: u32,
    posted_ms: u64,
}

/// Whether `ip` is on the network of the stack configured by `local`.
fn same_network(local: &NetConfig, ip: [u8; 4]) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(local.prefix_len.min(32))).unwrap_or(0);
    u32::from_be_bytes(ip) & mask == u32::from_be_bytes(local.ip) & mask
}

/// The sender's binding of an ARP frame, when the frame is one a stack at
/// `local` learns from (smoltcp's own rule: a request or reply aimed at our
/// address, from a unicast sender on our network). Malformed frames: `None`.
pub fn arp_sender(frame: &[u8], local: &NetConfig) -> Option<Binding> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Arp {
        return None;
    }
    let arp = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).ok()?).ok()?;
    let ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request | ArpOperation::Reply,
        source_hardware_addr,
        source_protocol_addr,
        target_protocol_addr,
        ..
    } = arp
    else {
        return None;
    };
    let ip = source_protocol_addr.octets();
    let usable = target_protocol_addr.octets() == local.ip
        && source_hardware_addr.is_unicast()
        && !source_protocol_addr.is_unspecified()
        && !source_protocol_addr.is_broadcast()
        && !source_protocol_addr.is_multicast()
        && same_network(local, ip)
        && ip != local.ip;
    usable.then_some(Binding { ip, mac: source_hardware_addr.0 })
}

/// The ARP reply that teaches a stack at `local` the binding `b`.
pub fn arp_reply_frame(b: &Binding, local: &NetConfig) -> [u8; ARP_FRAME_LEN] {
    let mut out = [0u8; ARP_FRAME_LEN];
    let eth = EthernetRepr {
        src_addr: EthernetAddress(b.mac),
        dst_addr: EthernetAddress(local.mac),
        ethertype: EthernetProtocol::Arp,
    };
    let mut frame = EthernetFrame::new_unchecked(&mut out[..]);
    eth.emit(&mut frame);
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: EthernetAddress(b.mac),
        source_protocol_addr: Ipv4Address::from(b.ip),
        target_hardware_addr: EthernetAddress(local.mac),
        target_protocol_addr: Ipv4Address::from(local.ip),
    };
    arp.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
    out
}

/// The shared board of bindings.
pub struct NeighbourBoard {
    generation: AtomicU32,
    entries: Mutex<[Option<Entry>; CAPACITY]>,
}

impl Default for NeighbourBoard {
    fn default() -> Self {
        Self::new()
    }
}

impl NeighbourBoard {
    pub const fn new() -> NeighbourBoard {
        NeighbourBoard { generation: AtomicU32::new(0), entries: Mutex::new([None; CAPACITY]) }
    }

    /// The current generation: a stack that has seen it has every binding.
    pub fn generation(&self) -> u32 {
        self.generation.load(Ordering::Acquire)
    }

    /// Posts `b` (learned at `now_ms`) if it is new, changed, or due for a
    /// refresh. When the board is full the oldest binding makes room.
    /// Returns whether it was posted.
    pub fn post(&self, b: Binding, now_ms: u64) -> bool {
        let mut entries = self.entries.lock();
        let found = entries.iter().position(|e| e.is_some_and(|e| e.binding.ip == b.ip));
        if let Some(i) = found {
            let e = entries[i].as_ref().expect("found");
            if e.binding.mac == b.mac && now_ms.saturating_sub(e.posted_ms) < REFRESH_MS {
                return false;
            }
        }
        let slot = found
            .or_else(|| entries.iter().position(Option::is_none))
            .or_else(|| entries.iter().enumerate().min_by_key(|(_, e)| e.map_or(0, |e| e.posted_ms)).map(|(i, _)| i))
            .expect("capacity is not zero");
        let generation = self.generation.load(Ordering::Relaxed).wrapping_add(1);
        entries[slot] = Some(Entry { binding: b, generation, posted_ms: now_ms });
        // Published under the lock, so a reader that sees the new generation
        // and then takes the lock finds the entry.
        self.generation.store(generation, Ordering::Release);
        true
    }

    /// Calls `learn` with every binding posted after generation `seen`;
    /// returns the generation the caller has now seen.
    pub fn catch_up(&self, seen: u32, mut learn: impl FnMut(&Binding)) -> u32 {
        let now = self.generation();
        if now == seen {
            return seen;
        }
        let entries = *self.entries.lock();
        for e in entries.iter().flatten() {
            // Posted after `seen` (generations wrap: compare by distance).
            if e.generation.wrapping_sub(seen) as i32 > 0 {
                learn(&e.binding);
            }
        }
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    const LOCAL: NetConfig =
        NetConfig { mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56], ip: [10, 99, 0, 2], prefix_len: 24, gateway: None };
    const HOST: Binding = Binding { ip: [10, 99, 0, 1], mac: [2, 0, 0, 0, 0, 1] };

    fn arp(op: ArpOperation, sender: Binding, target_ip: [u8; 4]) -> Vec<u8> {
        let mut out = std::vec![0u8; ARP_FRAME_LEN];
        let mut frame = EthernetFrame::new_unchecked(&mut out[..]);
        EthernetRepr {
            src_addr: EthernetAddress(sender.mac),
            dst_addr: EthernetAddress::BROADCAST,
            ethertype: EthernetProtocol::Arp,
        }
        .emit(&mut frame);
        ArpRepr::EthernetIpv4 {
            operation: op,
            source_hardware_addr: EthernetAddress(sender.mac),
            source_protocol_addr: Ipv4Address::from(sender.ip),
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: Ipv4Address::from(target_ip),
        }
        .emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
        out
    }

    #[test]
    fn learns_like_smoltcp_does() {
        assert_eq!(arp_sender(&arp(ArpOperation::Request, HOST, LOCAL.ip), &LOCAL), Some(HOST));
        assert_eq!(arp_sender(&arp(ArpOperation::Reply, HOST, LOCAL.ip), &LOCAL), Some(HOST));
        assert_eq!(arp_sender(&arp(ArpOperation::Request, HOST, [10, 99, 0, 7]), &LOCAL), None, "not for us");
        let far = Binding { ip: [192, 168, 1, 1], ..HOST };
        assert_eq!(arp_sender(&arp(ArpOperation::Request, far, LOCAL.ip), &LOCAL), None, "another network");
        let multicast_mac = Binding { mac: [1, 0, 0x5e, 0, 0, 1], ..HOST };
        assert_eq!(arp_sender(&arp(ArpOperation::Request, multicast_mac, LOCAL.ip), &LOCAL), None);
        let zero = Binding { ip: [0, 0, 0, 0], ..HOST };
        assert_eq!(arp_sender(&arp(ArpOperation::Request, zero, LOCAL.ip), &LOCAL), None);
        let frame = arp(ArpOperation::Request, HOST, LOCAL.ip);
        for cut in 0..frame.len() {
            assert_eq!(arp_sender(&frame[..cut], &LOCAL), None, "truncated at {cut}");
        }
        assert_eq!(arp_sender(&[0xff; 60], &LOCAL), None);
    }

    #[test]
    fn the_made_up_reply_teaches_the_binding() {
        let frame = arp_reply_frame(&HOST, &LOCAL);
        assert_eq!(arp_sender(&frame, &LOCAL), Some(HOST));
        let eth = EthernetFrame::new_checked(&frame[..]).unwrap();
        assert_eq!(eth.dst_addr(), EthernetAddress(LOCAL.mac), "addressed to the stack, not broadcast");
    }

    #[test]
    fn posts_new_changed_and_stale_bindings_only() {
        let board = NeighbourBoard::new();
        assert!(board.post(HOST, 1_000));
        let g = board.generation();
        assert!(!board.post(HOST, 2_000), "seen again within the refresh interval");
        assert_eq!(board.generation(), g);
        let moved = Binding { mac: [2, 0, 0, 0, 0, 9], ..HOST };
        assert!(board.post(moved, 2_500), "the MAC changed");
        assert!(board.post(moved, 2_500 + REFRESH_MS), "refresh due");
        let mut learned = Vec::new();
        assert_eq!(board.catch_up(g, |b| learned.push(*b)), board.generation());
        assert_eq!(learned, [moved]);
        learned.clear();
        assert_eq!(board.catch_up(board.generation(), |b| learned.push(*b)), board.generation());
        assert!(learned.is_empty(), "nothing new");
    }

    #[test]
    fn a_full_board_forgets_the_oldest() {
        let board = NeighbourBoard::new();
        for i in 0..CAPACITY as u8 + 1 {
            board.post(Binding { ip: [10, 99, 0, 10 + i], mac: [2, 0, 0, 0, 0, i] }, u64::from(i));
        }
        let mut all = Vec::new();
        board.catch_up(0, |b| all.push(b.ip[3]));
        assert_eq!(all.len(), CAPACITY);
        assert!(!all.contains(&10), "the oldest made room");
        assert!(all.contains(&(10 + CAPACITY as u8)));
    }
}
