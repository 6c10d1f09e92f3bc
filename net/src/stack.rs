//! One smoltcp interface and socket set per CPU.

use alloc::vec::Vec;

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::Device;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address};

/// Network settings shared by every CPU's stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfig {
    pub mac: [u8; 6],
    pub ip: [u8; 4],
    pub prefix_len: u8,
    /// Where packets for addresses off the subnet go (none: they cannot be
    /// sent).
    pub gateway: Option<[u8; 4]>,
}

impl NetConfig {
    /// The guest's default address inside the test namespace.
    pub const DEFAULT_IP: [u8; 4] = [10, 99, 0, 2];
    pub const DEFAULT_PREFIX: u8 = 24;
}

pub struct Stack {
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
}

impl Stack {
    /// A stack answering ARP and ICMP echo for `cfg.ip` on `device`.
    /// `seed` randomises TCP initial sequence numbers and local ports: give
    /// every stack its own, from a hardware random source where there is one
    /// (a shared or guessable seed makes sequence numbers predictable).
    pub fn new<D: Device + ?Sized>(cfg: &NetConfig, device: &mut D, now: Instant, seed: u64) -> Stack {
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(cfg.mac)));
        config.random_seed = seed;
        let mut iface = Interface::new(config, device, now);
        let [a, b, c, d] = cfg.ip;
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(Ipv4Address::new(a, b, c, d)), cfg.prefix_len));
        });
        if let Some([a, b, c, d]) = cfg.gateway {
            // Only fails when the route table is full; it starts empty.
            let _ = iface.routes_mut().add_default_ipv4_route(Ipv4Address::new(a, b, c, d));
        }
        Stack { iface, sockets: SocketSet::new(Vec::new()) }
    }

    /// Processes everything pending on `device`; true if anything happened.
    pub fn poll<D: Device + ?Sized>(&mut self, device: &mut D, now: Instant) -> bool {
        !matches!(self.iface.poll(now, device, &mut self.sockets), smoltcp::iface::PollResult::None)
    }
}
