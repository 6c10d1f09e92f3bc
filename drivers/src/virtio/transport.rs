//! The virtio-pci modern transport: the vendor capabilities that locate the
//! common, notify, ISR and device configuration structures, and the
//! initialisation the spec prescribes (reset, ACKNOWLEDGE, DRIVER, feature
//! negotiation with FEATURES_OK read back, MSI-X vectors with read back,
//! queue set-up, DRIVER_OK).

use core::fmt;

use super::{feature, status};
use crate::pci::{Bdf, Capability, ConfigSpace, CAP_VENDOR};
use crate::regs::RegisterBlock;

/// `cfg_type` values of the virtio vendor capability.
pub mod cfg_type {
    pub const COMMON: u8 = 1;
    pub const NOTIFY: u8 = 2;
    pub const ISR: u8 = 3;
    pub const DEVICE: u8 = 4;
    pub const PCI: u8 = 5;
}

/// One structure's location: `length` bytes at `offset` into BAR `bar`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub bar: u8,
    pub offset: u32,
    pub length: u32,
}

/// Where the device's structures are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub common: Region,
    pub notify: Region,
    pub notify_multiplier: u32,
    pub isr: Region,
    /// Absent for devices without device-specific configuration.
    pub device: Option<Region>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportError {
    /// A required structure has no (valid) capability.
    Missing(&'static str),
    /// The device does not offer VIRTIO_F_VERSION_1: a legacy device.
    NotModern,
    /// The device cleared FEATURES_OK: it rejected our feature subset.
    FeaturesRejected,
    /// The device did not finish a reset.
    ResetTimeout,
    /// The device refused an MSI-X vector (read back NO_VECTOR).
    VectorRefused { queue: Option<u16>, vector: u16 },
    /// Queue index beyond `num_queues`.
    NoSuchQueue(u16),
    /// The queue's maximum size is 0 (not available) or too small.
    QueueUnavailable(u16),
    /// A notification offset times the multiplier lands outside the notify region.
    BadNotifyOffset(u16),
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportError::Missing(what) => write!(f, "no valid virtio {what} capability"),
            TransportError::NotModern => f.write_str("device does not offer VIRTIO_F_VERSION_1 (legacy device)"),
            TransportError::FeaturesRejected => f.write_str("device rejected the negotiated features"),
            TransportError::ResetTimeout => f.write_str("device did not complete a reset"),
            TransportError::VectorRefused { queue: Some(q), vector } => {
                write!(f, "device refused MSI-X vector {vector} for queue {q}")
            }
            TransportError::VectorRefused { queue: None, vector } => {
                write!(f, "device refused MSI-X vector {vector} for configuration changes")
            }
            TransportError::NoSuchQueue(q) => write!(f, "queue {q} does not exist"),
            TransportError::QueueUnavailable(q) => write!(f, "queue {q} is not available"),
            TransportError::BadNotifyOffset(q) => {
                write!(f, "queue {q}'s notification address is outside the notify region")
            }
        }
    }
}

/// Reads the virtio vendor capabilities of a function. The first valid
/// capability of each type wins, as the spec asks.
pub fn read_layout(cfg: &dyn ConfigSpace, bdf: Bdf, caps: &[Capability]) -> Result<Layout, TransportError> {
    let (mut common, mut notify, mut isr, mut device) = (None, None, None, None);
    for cap in caps.iter().filter(|c| c.id == CAP_VENDOR) {
        let o = cap.offset;
        let cap_len = cfg.read8(bdf, o + 2);
        let kind = cfg.read8(bdf, o + 3);
        let bar = cfg.read8(bdf, o + 4);
        if cap_len < 16 || bar > 5 {
            continue;
        }
        let region = Region { bar, offset: cfg.read32(bdf, o + 8), length: cfg.read32(bdf, o + 12) };
        match kind {
            cfg_type::COMMON if common.is_none() && region.length >= COMMON_LEN => common = Some(region),
            cfg_type::NOTIFY if notify.is_none() && cap_len >= 20 => {
                notify = Some((region, cfg.read32(bdf, o + 16)));
            }
            cfg_type::ISR if isr.is_none() && region.length >= 1 => isr = Some(region),
            cfg_type::DEVICE if device.is_none() => device = Some(region),
            _ => {}
        }
    }
    let (notify, notify_multiplier) = notify.ok_or(TransportError::Missing("notify"))?;
    Ok(Layout {
        common: common.ok_or(TransportError::Missing("common configuration"))?,
        notify,
        notify_multiplier,
        isr: isr.ok_or(TransportError::Missing("ISR"))?,
        device,
    })
}

/// Common configuration structure offsets.
mod common {
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    pub const DEVICE_FEATURE: u64 = 0x04;
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    pub const DRIVER_FEATURE: u64 = 0x0c;
    pub const MSIX_CONFIG: u64 = 0x10;
    pub const NUM_QUEUES: u64 = 0x12;
    pub const DEVICE_STATUS: u64 = 0x14;
    pub const CONFIG_GENERATION: u64 = 0x15;
    pub const QUEUE_SELECT: u64 = 0x16;
    pub const QUEUE_SIZE: u64 = 0x18;
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    pub const QUEUE_ENABLE: u64 = 0x1c;
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    pub const QUEUE_DESC: u64 = 0x20;
    pub const QUEUE_DRIVER: u64 = 0x28;
    pub const QUEUE_DEVICE: u64 = 0x30;
}
const COMMON_LEN: u32 = 0x38;

/// "No MSI-X vector" for `msix_config` and `queue_msix_vector`.
pub const NO_VECTOR: u16 = 0xffff;
/// Attempts at a consistent device-configuration read.
const CONFIG_READ_TRIES: u32 = 64;
/// Polls of the status register while waiting for a reset.
const RESET_POLLS: u32 = 1_000_000;

/// Physical addresses of a split virtqueue's three parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueAddresses {
    pub descriptors: u64,
    pub driver: u64,
    pub device: u64,
}

/// A modern virtio-pci device's register blocks: common configuration,
/// notification doorbells and device-specific configuration.
pub struct Transport<C: RegisterBlock, N: RegisterBlock = C, D: RegisterBlock = C> {
    pub common: C,
    pub notify: N,
    pub notify_multiplier: u32,
    pub device: Option<D>,
    notify_len: u32,
}

impl<C: RegisterBlock, N: RegisterBlock, D: RegisterBlock> Transport<C, N, D> {
    pub fn new(common: C, notify: N, layout: &Layout, device: Option<D>) -> Self {
        Transport {
            common,
            notify,
            notify_multiplier: layout.notify_multiplier,
            device,
            notify_len: layout.notify.length,
        }
    }

    pub fn status(&self) -> u8 {
        self.common.read8(common::DEVICE_STATUS)
    }

    fn add_status(&self, bits: u8) {
        self.common.write8(common::DEVICE_STATUS, self.status() | bits);
    }

    /// Writes 0 and waits (bounded) until the device reads back 0.
    pub fn reset(&self) -> Result<(), TransportError> {
        self.common.write8(common::DEVICE_STATUS, 0);
        for _ in 0..RESET_POLLS {
            if self.status() == 0 {
                return Ok(());
            }
            core::hint::spin_loop();
        }
        Err(TransportError::ResetTimeout)
    }

    pub fn fail(&self) {
        self.add_status(status::FAILED);
    }

    pub fn device_features(&self) -> u64 {
        let mut f = 0;
        for half in 0..2u32 {
            self.common.write32(common::DEVICE_FEATURE_SELECT, half);
            f |= (self.common.read32(common::DEVICE_FEATURE) as u64) << (32 * half);
        }
        f
    }

    fn write_driver_features(&self, features: u64) {
        for half in 0..2u32 {
            self.common.write32(common::DRIVER_FEATURE_SELECT, half);
            self.common.write32(common::DRIVER_FEATURE, (features >> (32 * half)) as u32);
        }
    }

    /// Reset, ACKNOWLEDGE, DRIVER, then accept `wanted ∩ offered` (which
    /// must include VERSION_1) and check FEATURES_OK sticks. Returns the
    /// negotiated features. On failure the device is marked FAILED.
    pub fn negotiate(&self, wanted: u64) -> Result<u64, TransportError> {
        self.reset()?;
        self.add_status(status::ACKNOWLEDGE);
        self.add_status(status::DRIVER);
        let offered = self.device_features();
        if offered & feature::VERSION_1 == 0 {
            self.fail();
            return Err(TransportError::NotModern);
        }
        let features = offered & (wanted | feature::VERSION_1);
        self.write_driver_features(features);
        self.add_status(status::FEATURES_OK);
        if self.status() & status::FEATURES_OK == 0 {
            self.fail();
            return Err(TransportError::FeaturesRejected);
        }
        Ok(features)
    }

    /// Sets the configuration-change vector, checking the device took it.
    pub fn set_config_vector(&self, vector: u16) -> Result<(), TransportError> {
        self.common.write16(common::MSIX_CONFIG, vector);
        if vector != NO_VECTOR && self.common.read16(common::MSIX_CONFIG) != vector {
            return Err(TransportError::VectorRefused { queue: None, vector });
        }
        Ok(())
    }

    pub fn num_queues(&self) -> u16 {
        self.common.read16(common::NUM_QUEUES)
    }

    fn select(&self, queue: u16) -> Result<(), TransportError> {
        if queue >= self.num_queues() {
            return Err(TransportError::NoSuchQueue(queue));
        }
        self.common.write16(common::QUEUE_SELECT, queue);
        Ok(())
    }

    /// The largest size the device allows for `queue` (0: unavailable).
    pub fn queue_max_size(&self, queue: u16) -> Result<u16, TransportError> {
        self.select(queue)?;
        Ok(self.common.read16(common::QUEUE_SIZE))
    }

    /// Sets up `queue` with `size` entries at `addrs`, interrupting through
    /// MSI-X entry `vector` (or NO_VECTOR), and enables it. Returns the
    /// byte offset of its doorbell in the notify region.
    pub fn setup_queue(
        &self,
        queue: u16,
        size: u16,
        addrs: QueueAddresses,
        vector: u16,
    ) -> Result<u32, TransportError> {
        self.select(queue)?;
        let max = self.common.read16(common::QUEUE_SIZE);
        if max == 0 || size == 0 || size > max {
            return Err(TransportError::QueueUnavailable(queue));
        }
        self.common.write16(common::QUEUE_SIZE, size);
        self.common.write16(common::QUEUE_MSIX_VECTOR, vector);
        if vector != NO_VECTOR && self.common.read16(common::QUEUE_MSIX_VECTOR) != vector {
            return Err(TransportError::VectorRefused { queue: Some(queue), vector });
        }
        self.common.write64_split(common::QUEUE_DESC, addrs.descriptors);
        self.common.write64_split(common::QUEUE_DRIVER, addrs.driver);
        self.common.write64_split(common::QUEUE_DEVICE, addrs.device);
        let off = self.common.read16(common::QUEUE_NOTIFY_OFF) as u64 * self.notify_multiplier as u64;
        if off + 2 > self.notify_len as u64 {
            return Err(TransportError::BadNotifyOffset(queue));
        }
        self.common.write16(common::QUEUE_ENABLE, 1);
        Ok(off as u32)
    }

    /// Everything is set up: the device may start.
    pub fn driver_ok(&self) {
        self.add_status(status::DRIVER_OK);
    }

    /// Rings `queue`'s doorbell at `doorbell` (from `setup_queue`).
    pub fn notify(&self, doorbell: u32, queue: u16) {
        self.notify.write16(doorbell as u64, queue);
    }

    pub fn config_generation(&self) -> u8 {
        self.common.read8(common::CONFIG_GENERATION)
    }

    /// Runs `read` over the device configuration until the generation
    /// counter is the same before and after (a consistent snapshot).
    /// `None` without a device configuration structure, or when the device
    /// keeps changing it (a bounded number of tries).
    pub fn read_device_config<T>(&self, read: impl Fn(&D) -> T) -> Option<T> {
        let device = self.device.as_ref()?;
        (0..CONFIG_READ_TRIES).find_map(|_| {
            let before = self.config_generation();
            let value = read(device);
            (self.config_generation() == before).then_some(value)
        })
    }
}

#[cfg(any(test, feature = "fake"))]
pub mod fake {
    //! The device side of the common configuration structure, in memory.
    use super::common::*;
    use super::*;
    use std::cell::{Cell, RefCell};
    use std::vec::Vec;

    #[derive(Clone, Debug, Default)]
    pub struct FakeQueue {
        pub max_size: u16,
        pub size: u16,
        pub vector: u16,
        pub enabled: bool,
        pub notify_off: u16,
        pub desc: u64,
        pub driver: u64,
        pub device: u64,
    }

    /// Device behaviour: offered features, how many MSI-X vectors it accepts,
    /// whether it rejects some feature subsets.
    pub struct FakeCommon {
        pub offered: u64,
        pub accepted: Cell<u64>,
        pub vectors: u16,
        /// Features that make the device clear FEATURES_OK.
        pub reject_if: u64,
        pub status: Cell<u8>,
        pub generation: Cell<u8>,
        pub msix_config: Cell<u16>,
        pub dfselect: Cell<u32>,
        pub gfselect: Cell<u32>,
        pub qselect: Cell<u16>,
        pub queues: RefCell<Vec<FakeQueue>>,
        /// A reset that never completes.
        pub stuck_reset: bool,
    }

    impl FakeCommon {
        pub fn new(offered: u64, num_queues: u16, vectors: u16) -> FakeCommon {
            FakeCommon {
                offered,
                accepted: Cell::new(0),
                vectors,
                reject_if: 0,
                status: Cell::new(0),
                generation: Cell::new(0),
                msix_config: Cell::new(NO_VECTOR),
                dfselect: Cell::new(0),
                gfselect: Cell::new(0),
                qselect: Cell::new(0),
                queues: RefCell::new(
                    (0..num_queues)
                        .map(|i| FakeQueue { max_size: 256, vector: NO_VECTOR, notify_off: i, ..Default::default() })
                        .collect(),
                ),
                stuck_reset: false,
            }
        }

        fn q<T>(&self, f: impl FnOnce(&mut FakeQueue) -> T) -> T {
            let i = self.qselect.get() as usize;
            let mut qs = self.queues.borrow_mut();
            f(&mut qs[i])
        }

        fn vector_ok(&self, v: u16) -> u16 {
            if v == NO_VECTOR || v < self.vectors {
                v
            } else {
                NO_VECTOR
            }
        }
    }

    impl RegisterBlock for FakeCommon {
        fn read32(&self, o: u64) -> u32 {
            match o {
                DEVICE_FEATURE => match self.dfselect.get() {
                    0 => self.offered as u32,
                    1 => (self.offered >> 32) as u32,
                    _ => 0,
                },
                DEVICE_FEATURE_SELECT => self.dfselect.get(),
                QUEUE_DESC => self.q(|q| q.desc as u32),
                _ => 0,
            }
        }
        fn write32(&self, o: u64, v: u32) {
            let set_half = |old: u64, hi: bool| {
                if hi {
                    (old & 0xffff_ffff) | ((v as u64) << 32)
                } else {
                    (old & !0xffff_ffff) | v as u64
                }
            };
            match o {
                DEVICE_FEATURE_SELECT => self.dfselect.set(v),
                DRIVER_FEATURE_SELECT => self.gfselect.set(v),
                DRIVER_FEATURE => {
                    let hi = self.gfselect.get() == 1;
                    self.accepted.set(set_half(self.accepted.get(), hi));
                }
                QUEUE_DESC | 0x24 => self.q(|q| q.desc = set_half(q.desc, o == 0x24)),
                QUEUE_DRIVER | 0x2c => self.q(|q| q.driver = set_half(q.driver, o == 0x2c)),
                QUEUE_DEVICE | 0x34 => self.q(|q| q.device = set_half(q.device, o == 0x34)),
                _ => panic!("unexpected 32-bit write at {o:#x}"),
            }
        }
        fn read16(&self, o: u64) -> u16 {
            match o {
                MSIX_CONFIG => self.msix_config.get(),
                NUM_QUEUES => self.queues.borrow().len() as u16,
                QUEUE_SELECT => self.qselect.get(),
                QUEUE_SIZE => self.q(|q| if q.size == 0 { q.max_size } else { q.size }),
                QUEUE_MSIX_VECTOR => self.q(|q| q.vector),
                QUEUE_ENABLE => self.q(|q| q.enabled as u16),
                QUEUE_NOTIFY_OFF => self.q(|q| q.notify_off),
                _ => 0,
            }
        }
        fn write16(&self, o: u64, v: u16) {
            match o {
                MSIX_CONFIG => self.msix_config.set(self.vector_ok(v)),
                QUEUE_SELECT => self.qselect.set(v),
                QUEUE_SIZE => self.q(|q| q.size = v),
                QUEUE_MSIX_VECTOR => {
                    let v = self.vector_ok(v);
                    self.q(|q| q.vector = v)
                }
                QUEUE_ENABLE => self.q(|q| q.enabled = v == 1),
                _ => panic!("unexpected 16-bit write at {o:#x}"),
            }
        }
        fn read8(&self, o: u64) -> u8 {
            match o {
                DEVICE_STATUS => self.status.get(),
                CONFIG_GENERATION => self.generation.get(),
                _ => 0,
            }
        }
        fn write8(&self, o: u64, v: u8) {
            assert_eq!(o, DEVICE_STATUS, "unexpected 8-bit write at {o:#x}");
            if v == 0 {
                if !self.stuck_reset {
                    self.status.set(0);
                    for q in self.queues.borrow_mut().iter_mut() {
                        *q = FakeQueue {
                            max_size: q.max_size,
                            vector: NO_VECTOR,
                            notify_off: q.notify_off,
                            ..Default::default()
                        };
                    }
                }
                return;
            }
            let mut v = v;
            if v & status::FEATURES_OK != 0 && self.accepted.get() & self.reject_if != 0 {
                v &= !status::FEATURES_OK;
            }
            if v & status::FEATURES_OK != 0 && self.accepted.get() & !self.offered != 0 {
                v &= !status::FEATURES_OK; // features the device never offered
            }
            self.status.set(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::*;
    use super::*;
    use crate::pci::fake::{FakeConfig, FakeFunction};
    use crate::pci::{capabilities, Bdf};
    use crate::regs::fake::Memory;

    fn vendor_cap(kind: u8, bar: u8, offset: u32, length: u32, extra: Option<u32>) -> std::vec::Vec<u8> {
        let cap_len = if extra.is_some() { 20 } else { 16 };
        let mut b = std::vec![cap_len, kind, bar, 0, 0, 0];
        b.extend(offset.to_le_bytes());
        b.extend(length.to_le_bytes());
        if let Some(x) = extra {
            b.extend(x.to_le_bytes());
        }
        b
    }

    /// QEMU 7.2's virtio-net-pci layout: everything in BAR 4.
    fn qemu_virtio_net() -> (FakeConfig, Bdf) {
        let cfg = FakeConfig::default();
        let bdf = Bdf::new(0, 3, 0);
        let mut f = FakeFunction::new(0x1af4, 0x1041, 2, 0);
        let caps = [
            vendor_cap(cfg_type::COMMON, 4, 0x0000, 0x1000, None),
            vendor_cap(cfg_type::ISR, 4, 0x1000, 0x1000, None),
            vendor_cap(cfg_type::DEVICE, 4, 0x2000, 0x1000, None),
            vendor_cap(cfg_type::NOTIFY, 4, 0x3000, 0x1000, Some(4)),
            vendor_cap(cfg_type::PCI, 0, 0, 0, Some(0)),
        ];
        let caps: std::vec::Vec<(u8, &[u8])> = caps.iter().map(|c| (CAP_VENDOR, c.as_slice())).collect();
        f.caps(&caps);
        cfg.add(bdf, f);
        (cfg, bdf)
    }

    #[test]
    fn layout_from_qemu_capabilities() {
        let (cfg, bdf) = qemu_virtio_net();
        let layout = read_layout(&cfg, bdf, &capabilities(&cfg, bdf)).unwrap();
        assert_eq!(layout.common, Region { bar: 4, offset: 0, length: 0x1000 });
        assert_eq!(layout.isr, Region { bar: 4, offset: 0x1000, length: 0x1000 });
        assert_eq!(layout.device, Some(Region { bar: 4, offset: 0x2000, length: 0x1000 }));
        assert_eq!(layout.notify, Region { bar: 4, offset: 0x3000, length: 0x1000 });
        assert_eq!(layout.notify_multiplier, 4);
    }

    #[test]
    fn missing_or_malformed_capabilities_are_errors() {
        let cfg = FakeConfig::default();
        let bdf = Bdf::new(0, 3, 0);
        let mut f = FakeFunction::new(0x1af4, 0x1041, 2, 0);
        let common = vendor_cap(cfg_type::COMMON, 4, 0, 0x1000, None);
        let mut bad_bar = vendor_cap(cfg_type::NOTIFY, 4, 0x3000, 0x1000, Some(4));
        bad_bar[2] = 7;
        let short_notify = vendor_cap(cfg_type::NOTIFY, 4, 0x3000, 0x1000, None);
        f.caps(&[(CAP_VENDOR, &common), (CAP_VENDOR, &bad_bar), (CAP_VENDOR, &short_notify)]);
        cfg.add(bdf, f);
        assert_eq!(read_layout(&cfg, bdf, &capabilities(&cfg, bdf)), Err(TransportError::Missing("notify")));
        assert_eq!(read_layout(&cfg, bdf, &[]), Err(TransportError::Missing("notify")));
    }

    fn layout() -> Layout {
        let r = Region { bar: 4, offset: 0, length: 0x1000 };
        Layout { common: r, notify: r, notify_multiplier: 4, isr: r, device: Some(r) }
    }

    const NET_F_MAC: u64 = 1 << 5;
    const NET_F_MQ: u64 = 1 << 22;

    #[test]
    fn negotiation_takes_the_intersection_and_sets_features_ok() {
        let dev = FakeCommon::new(feature::VERSION_1 | NET_F_MAC | feature::EVENT_IDX, 3, 4);
        let t = Transport::<_, Memory, Memory>::new(dev, Memory::new(0x1000), &layout(), None);
        let got = t.negotiate(NET_F_MAC | NET_F_MQ).unwrap();
        assert_eq!(got, feature::VERSION_1 | NET_F_MAC, "MQ not offered, EVENT_IDX not wanted");
        assert_eq!(t.common.accepted.get(), got);
        let s = t.status();
        assert_eq!(s, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
    }

    #[test]
    fn legacy_devices_and_rejections_fail_the_device() {
        let t = Transport::<_, Memory, Memory>::new(FakeCommon::new(NET_F_MAC, 3, 4), Memory::new(16), &layout(), None);
        assert_eq!(t.negotiate(NET_F_MAC), Err(TransportError::NotModern));
        assert_ne!(t.status() & status::FAILED, 0);

        let mut dev = FakeCommon::new(feature::VERSION_1 | NET_F_MQ, 3, 4);
        dev.reject_if = NET_F_MQ;
        let t = Transport::<_, Memory, Memory>::new(dev, Memory::new(16), &layout(), None);
        assert_eq!(t.negotiate(NET_F_MQ), Err(TransportError::FeaturesRejected));
        assert_ne!(t.status() & status::FAILED, 0);

        let mut dev = FakeCommon::new(feature::VERSION_1, 1, 1);
        dev.stuck_reset = true;
        dev.status.set(status::DRIVER_OK);
        let t = Transport::<_, Memory, Memory>::new(dev, Memory::new(16), &layout(), None);
        assert_eq!(t.negotiate(0), Err(TransportError::ResetTimeout));
    }

    fn addrs(i: u64) -> QueueAddresses {
        QueueAddresses { descriptors: 0x1_0000_0000 + i * 0x1000, driver: 0x2000 + i, device: 0x3000 + i }
    }

    #[test]
    fn queues_are_set_up_with_vectors_and_doorbells() {
        let t = Transport::<_, Memory, Memory>::new(
            FakeCommon::new(feature::VERSION_1, 3, 4),
            Memory::new(0x1000),
            &layout(),
            None,
        );
        t.negotiate(0).unwrap();
        t.set_config_vector(0).unwrap();
        assert_eq!(t.queue_max_size(2), Ok(256));
        let doorbell = t.setup_queue(2, 128, addrs(2), 3).unwrap();
        assert_eq!(doorbell, 2 * 4, "queue_notify_off 2 × multiplier 4");
        {
            let qs = t.common.queues.borrow();
            let q = &qs[2];
            assert_eq!((q.size, q.vector, q.enabled), (128, 3, true));
            assert_eq!((q.desc, q.driver, q.device), (0x1_0000_2000, 0x2002, 0x3002));
        }
        t.driver_ok();
        assert_ne!(t.status() & status::DRIVER_OK, 0);
        t.notify(doorbell, 2);
        assert_eq!(t.notify.read16(8), 2);
    }

    #[test]
    fn refused_vectors_and_bad_queues_are_reported() {
        let t = Transport::<_, Memory, Memory>::new(
            FakeCommon::new(feature::VERSION_1, 3, 2),
            Memory::new(0x1000),
            &layout(),
            None,
        );
        t.negotiate(0).unwrap();
        assert_eq!(t.set_config_vector(5), Err(TransportError::VectorRefused { queue: None, vector: 5 }));
        assert_eq!(t.setup_queue(0, 64, addrs(0), 2), Err(TransportError::VectorRefused { queue: Some(0), vector: 2 }));
        assert_eq!(t.setup_queue(0, 64, addrs(0), NO_VECTOR), Ok(0), "NO_VECTOR is always accepted");
        assert_eq!(t.setup_queue(3, 64, addrs(3), 0), Err(TransportError::NoSuchQueue(3)));
        assert_eq!(t.setup_queue(1, 512, addrs(1), 0), Err(TransportError::QueueUnavailable(1)));
        t.common.queues.borrow_mut()[1].notify_off = 2000;
        assert_eq!(t.setup_queue(1, 64, addrs(1), 1), Err(TransportError::BadNotifyOffset(1)));
    }

    #[test]
    fn device_config_reads_retry_until_the_generation_is_stable() {
        let dev = FakeCommon::new(feature::VERSION_1, 1, 1);
        let t = Transport::new(dev, Memory::new(16), &layout(), Some(Memory::new(64)));
        let tries = Cell::new(0);
        let v = t.read_device_config(|d| {
            tries.set(tries.get() + 1);
            if tries.get() == 1 {
                // The device changes its config mid-read.
                t.common.generation.set(t.common.generation.get() + 1);
            }
            d.read16(8)
        });
        assert_eq!(v, Some(0));
        assert_eq!(tries.get(), 2);
        let t = Transport::<_, Memory, Memory>::new(
            FakeCommon::new(feature::VERSION_1, 1, 1),
            Memory::new(16),
            &layout(),
            None,
        );
        assert_eq!(t.read_device_config(|d| d.read8(0)), None);
    }

    use std::cell::Cell;
}
