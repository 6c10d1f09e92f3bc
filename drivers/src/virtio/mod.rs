//! virtio over PCI: the modern transport (device-independent) and the
//! network device on top of it.

pub mod csum;
pub mod moderation;
pub mod net;
pub mod netdev;
pub mod queue;
pub mod transport;

/// Device status bits.
pub mod status {
    pub const ACKNOWLEDGE: u8 = 1;
    pub const DRIVER: u8 = 2;
    pub const DRIVER_OK: u8 = 4;
    pub const FEATURES_OK: u8 = 8;
    pub const DEVICE_NEEDS_RESET: u8 = 64;
    pub const FAILED: u8 = 128;
}

/// Device-independent feature bits.
pub mod feature {
    pub const INDIRECT_DESC: u64 = 1 << 28;
    pub const EVENT_IDX: u64 = 1 << 29;
    pub const VERSION_1: u64 = 1 << 32;
    pub const RING_PACKED: u64 = 1 << 34;
}

/// The PCI vendor of every virtio device.
pub const PCI_VENDOR: u16 = 0x1af4;

/// What a virtio PCI device id says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PciKind {
    /// 0x1040 + device type: modern only.
    Modern {
        device_type: u16,
    },
    /// 0x1000–0x103f: transitional (or legacy-only) devices.
    Transitional {
        pci_device_id: u16,
    },
    NotVirtio,
}

pub fn pci_kind(vendor: u16, device: u16) -> PciKind {
    match (vendor, device) {
        (PCI_VENDOR, 0x1040..=0x107f) => PciKind::Modern { device_type: device - 0x1040 },
        (PCI_VENDOR, 0x1000..=0x103f) => PciKind::Transitional { pci_device_id: device },
        _ => PciKind::NotVirtio,
    }
}

/// virtio device type of a network card.
pub const DEVICE_TYPE_NET: u16 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_ids() {
        assert_eq!(pci_kind(0x1af4, 0x1041), PciKind::Modern { device_type: DEVICE_TYPE_NET });
        assert_eq!(pci_kind(0x1af4, 0x1000), PciKind::Transitional { pci_device_id: 0x1000 });
        assert_eq!(pci_kind(0x8086, 0x1041), PciKind::NotVirtio);
        assert_eq!(pci_kind(0x1af4, 0x1100), PciKind::NotVirtio);
    }
}
