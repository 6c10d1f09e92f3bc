//! virtio-net: feature bits, the device configuration and what this driver
//! asks for.

use core::fmt;

use super::feature as common;
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

/// What this driver negotiates when offered. Checksum/TSO offloads and RSS
/// come later; the header handling is 12 bytes (VERSION_1) either way.
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
    /// At least 1; from `max_virtqueue_pairs` with MQ.
    pub max_pairs: u16,
    pub mtu: Option<u16>,
}

impl NetConfig {
    /// Reads the configuration (call inside `Transport::read_device_config`).
    pub fn read(regs: &impl RegisterBlock, features: u64) -> NetConfig {
        let mac = (features & feature::MAC != 0).then(|| core::array::from_fn(|i| regs.read8(i as u64)));
        let link_up = features & feature::STATUS == 0 || regs.read16(6) & 1 != 0;
        // The spec bounds max_virtqueue_pairs to 1..=0x8000; anything else
        // is treated as one pair.
        let max_pairs = if features & feature::MQ != 0 {
            match regs.read16(8) {
                p @ 1..=0x8000 => p,
                _ => 1,
            }
        } else {
            1
        };
        let mtu = (features & feature::MTU != 0).then(|| regs.read16(10));
        NetConfig { mac, link_up, max_pairs, mtu }
    }
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
            NetConfig { mac: Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]), link_up: true, max_pairs: 4, mtu: Some(1500) }
        );
        assert_eq!(NetConfig::read(&regs, 0), NetConfig { mac: None, link_up: true, max_pairs: 1, mtu: None });
        let down = config([0; 6], 0, 4, 0);
        assert!(!NetConfig::read(&down, feature::STATUS).link_up);
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
