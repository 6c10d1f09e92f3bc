//! virtio-net: feature bits, the device configuration and what this driver
//! asks for.

use core::fmt;

use super::feature as common;
use super::netdev::{self, RxOffloads};
use crate::regs::RegisterBlock;

pub mod feature {
    pub const CSUM: u64 = 1 << 0;
    pub const GUEST_CSUM: u64 = 1 << 1;
    pub const CTRL_GUEST_OFFLOADS: u64 = 1 << 2;
    pub const MTU: u64 = 1 << 3;
    pub const MAC: u64 = 1 << 5;
    pub const GUEST_TSO4: u64 = 1 << 7;
    pub const GUEST_TSO6: u64 = 1 << 8;
    pub const GUEST_ECN: u64 = 1 << 9;
    pub const GUEST_UFO: u64 = 1 << 10;
    pub const HOST_TSO4: u64 = 1 << 11;
    pub const HOST_TSO6: u64 = 1 << 12;
    pub const HOST_ECN: u64 = 1 << 13;
    pub const HOST_UFO: u64 = 1 << 14;
    pub const MRG_RXBUF: u64 = 1 << 15;
    pub const STATUS: u64 = 1 << 16;
    pub const CTRL_VQ: u64 = 1 << 17;
    pub const CTRL_RX: u64 = 1 << 18;
    pub const CTRL_VLAN: u64 = 1 << 19;
    pub const GUEST_ANNOUNCE: u64 = 1 << 21;
    pub const MQ: u64 = 1 << 22;
    pub const CTRL_MAC_ADDR: u64 = 1 << 23;
    pub const HASH_REPORT: u64 = 1 << 57;
    pub const RSS: u64 = 1 << 60;
}

/// What this driver negotiates when offered. Checksum/TSO offloads come
/// later; RSS and hash reports are asked for separately ([`WANTED_RSS`],
/// [`WANTED_HASH_REPORT`]). The header is 12 bytes (VERSION_1) with these.
///
/// Not INDIRECT_DESC: every receive and transmit chain is one descriptor
/// (header and frame share a buffer, merged receive buffers are one
/// descriptor each), so an indirect table would add a DMA read per packet
/// and save nothing. It is worth asking for once transmit chains scatter.
pub const WANTED: u64 = common::VERSION_1
    | feature::MAC
    | feature::STATUS
    | feature::CTRL_VQ
    | feature::MQ
    | feature::MRG_RXBUF
    | common::EVENT_IDX;

/// What the user left on of the offloads (boot options `tx-csum=`,
/// `tx-tso=`, `rx-csum=`, `rx-tso=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffloadChoice {
    pub tx_csum: bool,
    pub tx_tso: bool,
    pub rx_csum: bool,
    pub rx_tso: bool,
}

/// The offload features to ask for on top of [`WANTED`], given what the
/// device `offered` and what the user left on: CSUM (transmit checksums)
/// and, on top of it, HOST_TSO4 and HOST_TSO6 (64 KiB TCP segments the
/// device cuts);
/// GUEST_CSUM (receive checksums) and, on top of it, GUEST_TSO4 and
/// GUEST_TSO6 (coalesced receive segments of up to 64 KiB). The spec makes
/// each TSO depend on its checksum feature. Receive TSO is asked for only
/// with MRG_RXBUF, since a 64 KiB segment must then span the queue's 2 KiB
/// buffers (without it every buffer would have to hold 64 KiB).
pub fn wanted_offloads(offered: u64, choice: OffloadChoice) -> u64 {
    let OffloadChoice { tx_csum, tx_tso, rx_csum, rx_tso } = choice;
    let mut wanted = 0;
    if tx_csum {
        wanted |= feature::CSUM;
        if tx_tso && offered & feature::CSUM != 0 {
            wanted |= feature::HOST_TSO4 | feature::HOST_TSO6;
        }
    }
    if rx_csum {
        wanted |= feature::GUEST_CSUM;
        if rx_tso && offered & feature::MRG_RXBUF != 0 && offered & feature::GUEST_CSUM != 0 {
            wanted |= feature::GUEST_TSO4 | feature::GUEST_TSO6;
        }
    }
    wanted & offered
}

/// Which TCP segments the transmit queues may leave to the device to cut
/// under the negotiated `features` (each TSO needs CSUM).
pub fn tx_tso(features: u64) -> netdev::TxTso {
    let csum = features & feature::CSUM != 0;
    netdev::TxTso { v4: csum && features & feature::HOST_TSO4 != 0, v6: csum && features & feature::HOST_TSO6 != 0 }
}

/// What received headers may ask for under the negotiated `features`.
pub fn rx_offloads(features: u64) -> RxOffloads {
    let csum = features & feature::GUEST_CSUM != 0;
    let mergeable = features & feature::MRG_RXBUF != 0;
    RxOffloads {
        csum,
        tso4: csum && mergeable && features & feature::GUEST_TSO4 != 0,
        tso6: csum && mergeable && features & feature::GUEST_TSO6 != 0,
    }
}

/// Receive-side scaling (`RSS_CONFIG`): asked for on top of [`WANTED`] only
/// when the user wants device-side steering; the kernel ORs it in.
pub const WANTED_RSS: u64 = feature::RSS;

/// Per-packet hash reports. Negotiating it makes the `virtio_net_hdr` 20
/// bytes long in both directions (see `netdev::HASH_HDR_LEN`), so the queues
/// must then be built with that header length.
pub const WANTED_HASH_REPORT: u64 = feature::HASH_REPORT;

/// The `virtio_net_hdr` length in both directions for the negotiated
/// `features`: 20 bytes with HASH_REPORT, else 12 (VERSION_1, which this
/// driver always negotiates). What the queues are built `with_header`.
pub fn header_len(features: u64) -> usize {
    if features & feature::HASH_REPORT != 0 {
        netdev::HASH_HDR_LEN
    } else {
        netdev::HDR_LEN
    }
}

/// `supported_hash_types` and `RSS_CONFIG.hash_types` bits (virtio 1.2+,
/// "Supported/enabled hash types"): bit n-1 for hash report type n.
pub mod hash_type {
    pub const IPV4: u32 = 1 << 0;
    pub const TCPV4: u32 = 1 << 1;
    pub const UDPV4: u32 = 1 << 2;
    pub const IPV6: u32 = 1 << 3;
    pub const TCPV6: u32 = 1 << 4;
    pub const UDPV6: u32 = 1 << 5;
    pub const IPV6_EX: u32 = 1 << 6;
    pub const TCPV6_EX: u32 = 1 << 7;
    pub const UDPV6_EX: u32 = 1 << 8;
}

const NAMES: [(u64, &str); 26] = [
    (feature::CSUM, "CSUM"),
    (feature::GUEST_CSUM, "GUEST_CSUM"),
    (feature::CTRL_GUEST_OFFLOADS, "CTRL_GUEST_OFFLOADS"),
    (feature::MTU, "MTU"),
    (feature::MAC, "MAC"),
    (feature::GUEST_TSO4, "GUEST_TSO4"),
    (feature::GUEST_TSO6, "GUEST_TSO6"),
    (feature::GUEST_ECN, "GUEST_ECN"),
    (feature::GUEST_UFO, "GUEST_UFO"),
    (feature::HOST_TSO4, "HOST_TSO4"),
    (feature::HOST_TSO6, "HOST_TSO6"),
    (feature::HOST_ECN, "HOST_ECN"),
    (feature::HOST_UFO, "HOST_UFO"),
    (feature::MRG_RXBUF, "MRG_RXBUF"),
    (feature::STATUS, "STATUS"),
    (feature::CTRL_VQ, "CTRL_VQ"),
    (feature::CTRL_RX, "CTRL_RX"),
    (feature::CTRL_VLAN, "CTRL_VLAN"),
    (feature::GUEST_ANNOUNCE, "GUEST_ANNOUNCE"),
    (feature::MQ, "MQ"),
    (feature::CTRL_MAC_ADDR, "CTRL_MAC_ADDR"),
    (common::INDIRECT_DESC, "INDIRECT_DESC"),
    (common::EVENT_IDX, "EVENT_IDX"),
    (common::VERSION_1, "VERSION_1"),
    (feature::HASH_REPORT, "HASH_REPORT"),
    (feature::RSS, "RSS"),
];

/// Feature bits by name, for logs: `MAC STATUS MQ ... +0x400000000` (bits
/// without a name in hex).
pub struct FeatureNames(pub u64);

impl fmt::Display for FeatureNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        let mut first = true;
        for (bit, name) in NAMES {
            if self.0 & bit != 0 {
                if !first {
                    f.write_str(" ")?;
                }
                f.write_str(name)?;
                first = false;
                rest &= !bit;
            }
        }
        if rest != 0 {
            write!(f, "{}+{rest:#x}", if first { "" } else { " " })?;
        } else if first {
            f.write_str("none")?;
        }
        Ok(())
    }
}

/// `virtio_net_config`, the fields this driver uses; each is valid only
/// with its feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfig {
    pub mac: Option<[u8; 6]>,
    /// Link up (bit 0 of `status`); assumed up without STATUS.
    pub link_up: bool,
    /// At least 1; from `max_virtqueue_pairs` with MQ or RSS.
    pub max_pairs: u16,
    pub mtu: Option<u16>,
    /// Longest RSS key the device takes (at least 40 by the spec); 0
    /// without RSS and HASH_REPORT.
    pub rss_max_key_size: u8,
    /// Most indirection-table entries the device takes (at least 128 by the
    /// spec); 0 without RSS (HASH_REPORT alone has no table).
    pub rss_max_table_len: u16,
    /// [`hash_type`] bits the device can compute; 0 without RSS and
    /// HASH_REPORT.
    pub supported_hash_types: u32,
}

impl NetConfig {
    /// Reads the configuration (call inside `Transport::read_device_config`).
    pub fn read(regs: &impl RegisterBlock, features: u64) -> NetConfig {
        let mac = (features & feature::MAC != 0).then(|| core::array::from_fn(|i| regs.read8(i as u64)));
        let link_up = features & feature::STATUS == 0 || regs.read16(6) & 1 != 0;
        let mtu = (features & feature::MTU != 0).then(|| regs.read16(10));
        let (rss_max_key_size, rss_max_table_len, supported_hash_types) = read_rss(regs, features);
        NetConfig {
            mac,
            link_up,
            max_pairs: read_max_pairs(regs, features),
            mtu,
            rss_max_key_size,
            rss_max_table_len,
            supported_hash_types,
        }
    }
}

/// `max_virtqueue_pairs` exists with MQ *or* RSS (the spec's queue
/// numbering takes N from it with either). The spec bounds it to
/// 1..=0x8000; anything else is treated as one pair.
fn read_max_pairs(regs: &impl RegisterBlock, features: u64) -> u16 {
    if features & (feature::MQ | feature::RSS) == 0 {
        return 1;
    }
    match regs.read16(8) {
        p @ 1..=0x8000 => p,
        _ => 1,
    }
}

/// `(rss_max_key_size, rss_max_indirection_table_length,
/// supported_hash_types)`: the key size and hash types exist with RSS or
/// HASH_REPORT, the table length only with RSS; absent fields read as 0.
/// Values are passed on as the device gives them: they only bound what the
/// driver sends, and the device refuses an RSS_CONFIG beyond its limits.
fn read_rss(regs: &impl RegisterBlock, features: u64) -> (u8, u16, u32) {
    if features & (feature::RSS | feature::HASH_REPORT) == 0 {
        return (0, 0, 0);
    }
    let table_len = if features & feature::RSS != 0 { regs.read16(18) } else { 0 };
    (regs.read8(17), table_len, regs.read32(20))
}

/// How many queue pairs to use: min(device's maximum, CPUs, configured
/// limit), at least 1.
pub fn pairs_to_use(max_pairs: u16, cpus: usize, limit: Option<u16>) -> u16 {
    let cpus = cpus.clamp(1, u16::MAX as usize) as u16;
    max_pairs.min(cpus).min(limit.unwrap_or(u16::MAX)).max(1)
}

/// Queue numbering: receiveq(k) = 2k, transmitq(k) = 2k+1, and the control
/// queue after the *maximum* number of pairs.
pub const fn rx_queue(pair: u16) -> u16 {
    2 * pair
}
pub const fn tx_queue(pair: u16) -> u16 {
    2 * pair + 1
}
pub const fn ctrl_queue(max_pairs: u16) -> u16 {
    2 * max_pairs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regs::fake::Memory;
    use std::string::ToString;

    #[test]
    fn offloads_are_asked_for_only_when_offered_and_consistent() {
        use feature::*;
        let qemu = CSUM
            | GUEST_CSUM
            | GUEST_TSO4
            | GUEST_TSO6
            | GUEST_ECN
            | GUEST_UFO
            | HOST_TSO4
            | HOST_TSO6
            | HOST_UFO
            | MRG_RXBUF;
        let host_tso = HOST_TSO4 | HOST_TSO6;
        let all = CSUM | host_tso | GUEST_CSUM | GUEST_TSO4 | GUEST_TSO6;
        let on = OffloadChoice { tx_csum: true, tx_tso: true, rx_csum: true, rx_tso: true };
        assert_eq!(wanted_offloads(qemu, on), all, "never ECN or UFO");
        assert_eq!(wanted_offloads(qemu, OffloadChoice { tx_csum: false, ..on }), all & !CSUM & !host_tso);
        assert_eq!(wanted_offloads(qemu, OffloadChoice { tx_tso: false, ..on }), all & !host_tso);
        let rx_csum_off = OffloadChoice { rx_csum: false, ..on };
        assert_eq!(wanted_offloads(qemu, rx_csum_off), CSUM | host_tso, "TSO needs GUEST_CSUM");
        assert_eq!(wanted_offloads(qemu, OffloadChoice { rx_tso: false, ..on }), all & !GUEST_TSO4 & !GUEST_TSO6);
        let no_mrg = wanted_offloads(qemu & !MRG_RXBUF, on);
        assert_eq!(no_mrg, CSUM | host_tso | GUEST_CSUM, "no 64 KiB buffers");
        let no_guest_csum = wanted_offloads(qemu & !GUEST_CSUM, on);
        assert_eq!(no_guest_csum, CSUM | host_tso, "TSO without GUEST_CSUM is invalid");
        assert_eq!(wanted_offloads(qemu & !CSUM, on), all & !CSUM & !host_tso, "HOST_TSO without CSUM is invalid");
        assert_eq!(wanted_offloads(qemu & !HOST_TSO6, on), all & !HOST_TSO6, "each TSO where offered");
        assert_eq!(wanted_offloads(0, on), 0);

        use netdev::TxTso;
        assert_eq!(tx_tso(all), TxTso { v4: true, v6: true });
        assert_eq!(tx_tso(all & !HOST_TSO4), TxTso { v4: false, v6: true });
        assert_eq!(tx_tso(host_tso), TxTso::NONE, "a device that broke the rules (no CSUM)");

        let on = rx_offloads(all | MRG_RXBUF);
        assert_eq!(on, RxOffloads { csum: true, tso4: true, tso6: true });
        assert_eq!(rx_offloads(GUEST_TSO4 | MRG_RXBUF), RxOffloads::default(), "a device that broke the rules");
        assert_eq!(rx_offloads(all), RxOffloads { csum: true, ..RxOffloads::default() }, "no MRG_RXBUF");
    }

    #[test]
    fn feature_names() {
        assert_eq!(FeatureNames(feature::MAC | feature::MQ | common::VERSION_1).to_string(), "MAC MQ VERSION_1");
        assert_eq!(FeatureNames(0).to_string(), "none");
        assert_eq!(FeatureNames(1 << 40).to_string(), "+0x10000000000");
        assert_eq!(FeatureNames(feature::CSUM | 1 << 40).to_string(), "CSUM +0x10000000000");
    }

    fn config(mac: [u8; 6], status: u16, pairs: u16, mtu: u16) -> Memory {
        let m = Memory::new(24);
        for (i, b) in mac.iter().enumerate() {
            m.write8(i as u64, *b);
        }
        m.write16(6, status);
        m.write16(8, pairs);
        m.write16(10, mtu);
        m
    }

    #[test]
    fn config_fields_follow_their_features() {
        let regs = config([0x52, 0x54, 0, 0x12, 0x34, 0x56], 1, 4, 1500);
        let all = feature::MAC | feature::STATUS | feature::MQ | feature::MTU;
        assert_eq!(
            NetConfig::read(&regs, all),
            NetConfig {
                mac: Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
                link_up: true,
                max_pairs: 4,
                mtu: Some(1500),
                ..NONE
            }
        );
        assert_eq!(NetConfig::read(&regs, 0), NONE);
        let down = config([0; 6], 0, 4, 0);
        assert!(!NetConfig::read(&down, feature::STATUS).link_up);
    }

    /// What a device with no optional feature reads as.
    const NONE: NetConfig = NetConfig {
        mac: None,
        link_up: true,
        max_pairs: 1,
        mtu: None,
        rss_max_key_size: 0,
        rss_max_table_len: 0,
        supported_hash_types: 0,
    };

    /// QEMU's `rss=on,hash=on` answers: 40-byte key, 128 entries, every
    /// IPv4/IPv6 hash type.
    fn rss_config() -> Memory {
        let m = config([0; 6], 1, 4, 1500);
        m.write8(17, 40);
        m.write16(18, 128);
        m.write32(20, 0x1ff);
        m
    }

    #[test]
    fn rss_fields_are_read_with_rss() {
        let c = NetConfig::read(&rss_config(), feature::RSS);
        assert_eq!((c.rss_max_key_size, c.rss_max_table_len, c.supported_hash_types), (40, 128, 0x1ff));
        assert_eq!(c.max_pairs, 4, "max_virtqueue_pairs exists with RSS as with MQ");
    }

    #[test]
    fn hash_report_alone_has_no_indirection_table() {
        let c = NetConfig::read(&rss_config(), feature::HASH_REPORT);
        assert_eq!((c.rss_max_key_size, c.rss_max_table_len, c.supported_hash_types), (40, 0, 0x1ff));
        assert_eq!(c.max_pairs, 1, "HASH_REPORT alone does not make the pair count valid");
    }

    #[test]
    fn rss_fields_are_zero_without_the_features() {
        let all_but = feature::MAC | feature::STATUS | feature::MQ | feature::MTU;
        let c = NetConfig::read(&rss_config(), all_but);
        assert_eq!((c.rss_max_key_size, c.rss_max_table_len, c.supported_hash_types), (0, 0, 0));
        assert_eq!(c.max_pairs, 4);
    }

    #[test]
    fn wanted_features() {
        assert_eq!(WANTED & (WANTED_RSS | WANTED_HASH_REPORT), 0, "asked for only when the user wants RSS");
        assert_eq!(FeatureNames(WANTED_RSS | WANTED_HASH_REPORT).to_string(), "HASH_REPORT RSS");
        // Hash type bit n-1 is hash report type n (spec, "Hash reporting").
        assert_eq!(hash_type::TCPV4, 1 << (2 - 1));
        assert_eq!(hash_type::UDPV4, 1 << (3 - 1));
    }

    #[test]
    fn header_length_follows_hash_report() {
        assert_eq!(header_len(WANTED), 12);
        assert_eq!(header_len(WANTED | WANTED_RSS), 12, "RSS alone keeps the short header");
        assert_eq!(header_len(WANTED | WANTED_HASH_REPORT), 20);
    }

    #[test]
    fn out_of_spec_pair_counts_mean_one_pair() {
        assert_eq!(NetConfig::read(&config([0; 6], 1, 0, 0), feature::MQ).max_pairs, 1);
        assert_eq!(NetConfig::read(&config([0; 6], 1, 0x8001, 0), feature::MQ).max_pairs, 1);
        assert_eq!(NetConfig::read(&config([0; 6], 1, 0x8000, 0), feature::MQ).max_pairs, 0x8000);
    }

    #[test]
    fn pair_choice_and_queue_numbers() {
        assert_eq!(pairs_to_use(8, 4, None), 4);
        assert_eq!(pairs_to_use(1, 4, None), 1);
        assert_eq!(pairs_to_use(8, 2, Some(1)), 1);
        assert_eq!(pairs_to_use(4, 0, Some(0)), 1);
        assert_eq!((rx_queue(3), tx_queue(3)), (6, 7));
        assert_eq!(ctrl_queue(8), 16, "after the maximum pairs, not the used ones");
    }
}
