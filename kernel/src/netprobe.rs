//! Finding the NIC: PCI enumeration, then the virtio-net function's
//! transport layout, MSI-X capability and device configuration.

use alloc::boxed::Box;

use drivers::msix::MsixCapability;
use drivers::pci::{self, Bar, ConfigSpace, Function, CAP_MSIX};
use drivers::virtio::net::{self, FeatureNames, NetConfig};
use drivers::virtio::transport::{read_layout, Region, Transport};
use drivers::virtio::{pci_kind, PciKind, DEVICE_TYPE_NET};
use log::{info, warn};

use crate::arch::mmio::Mmio;
use crate::arch::{acpi, paging, pci::EcamConfig, pci::PortConfig};

/// The configuration mechanism: ECAM when the MCFG has a segment-0 region.
pub fn config_space() -> &'static dyn ConfigSpace {
    let ecam = acpi::info().and_then(|a| a.ecam.iter().find(|r| r.segment == 0).copied());
    match ecam {
        Some(region) => Box::leak(Box::new(EcamConfig::new(region))),
        None => Box::leak(Box::new(PortConfig::new())),
    }
}

fn describe(f: &Function) -> &'static str {
    match (f.class, f.subclass, pci_kind(f.vendor, f.device)) {
        (_, _, PciKind::Modern { device_type: DEVICE_TYPE_NET }) => "virtio-net",
        (_, _, PciKind::Transitional { pci_device_id: 0x1000 }) => "virtio-net (transitional)",
        (_, _, PciKind::Modern { .. } | PciKind::Transitional { .. }) => "virtio device",
        (0x06, 0x00, _) => "host bridge",
        (0x06, 0x01, _) => "ISA bridge",
        (0x06, 0x04, _) => "PCI bridge",
        (0x01, _, _) => "storage controller",
        (0x02, _, _) => "network controller",
        (0x03, _, _) => "display controller",
        (0x0c, 0x05, _) => "SMBus controller",
        _ => "",
    }
}

/// Enumerates PCI, logs every function and probes the first virtio-net.
pub fn probe(cpus: usize) {
    let cfg = config_space();
    let functions = pci::enumerate(cfg);
    for f in &functions {
        info!(
            "pci: {} {:04x}:{:04x} class {:02x}.{:02x} {}",
            f.bdf,
            f.vendor,
            f.device,
            f.class,
            f.subclass,
            describe(f)
        );
    }
    let Some(nic) = functions.iter().find(|f| {
        matches!(
            pci_kind(f.vendor, f.device),
            PciKind::Modern { device_type: DEVICE_TYPE_NET } | PciKind::Transitional { pci_device_id: 0x1000 }
        )
    }) else {
        info!("virtio-net: no NIC found");
        return;
    };
    if let PciKind::Transitional { .. } = pci_kind(nic.vendor, nic.device) {
        warn!(
            "virtio-net {}: transitional device (id {:04x}) is not supported; start QEMU with \
             `-device virtio-net-pci,disable-legacy=on`",
            nic.bdf, nic.device
        );
        return;
    }
    if let Err(e) = probe_virtio_net(cfg, nic, cpus) {
        warn!("virtio-net {}: {e}", nic.bdf);
    }
}

fn map_region(cfg: &dyn ConfigSpace, f: &Function, r: Region) -> Result<Mmio, &'static str> {
    let Some(Bar::Memory { address, size, .. }) = pci::read_bar(cfg, f.bdf, r.bar) else {
        return Err("a virtio structure lives in a BAR that is not a memory BAR");
    };
    if address == 0 || (r.offset as u64).checked_add(r.length as u64).is_none_or(|end| end > size) {
        return Err("a virtio structure lies outside its BAR");
    }
    let virt = paging::map_mmio(address + r.offset as u64, r.length as u64)?;
    // SAFETY: just mapped uncached, for good, and inside the BAR.
    Ok(unsafe { Mmio::new(virt, r.length as u64) })
}

fn probe_virtio_net(cfg: &dyn ConfigSpace, f: &Function, cpus: usize) -> Result<(), alloc::string::String> {
    use alloc::string::ToString;
    let caps = pci::capabilities(cfg, f.bdf);
    let layout = read_layout(cfg, f.bdf, &caps).map_err(|e| e.to_string())?;
    let msix = caps.iter().find(|c| c.id == CAP_MSIX).map(|c| MsixCapability::read(cfg, f.bdf, c.offset));
    pci::enable_memory_and_dma(cfg, f.bdf);
    let common = map_region(cfg, f, layout.common)?;
    let notify = map_region(cfg, f, layout.notify)?;
    let device = layout.device.map(|r| map_region(cfg, f, r)).transpose()?;
    let transport = Transport::new(common, notify, &layout, device);
    let offered = transport.device_features();
    let features = transport.negotiate(net::WANTED).map_err(|e| e.to_string())?;
    let config = transport.read_device_config(|d| NetConfig::read(d, features)).ok_or("no device configuration")?;
    info!("virtio-net {}: offered {}", f.bdf, FeatureNames(offered));
    info!("virtio-net {}: negotiated {}", f.bdf, FeatureNames(features));
    let pairs = net::pairs_to_use(config.max_pairs, cpus, None);
    match msix {
        Some(m) => info!(
            "virtio-net {}: MSI-X with {} vectors (table in BAR {} at {:#x})",
            f.bdf, m.table_size, m.table_bar, m.table_offset
        ),
        None => warn!("virtio-net {}: no MSI-X; interrupts would be shared", f.bdf),
    }
    if let Some(mac) = config.mac {
        info!(
            "virtio-net {}: MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}, link {}, {} queue pairs offered, {} to use, {} queues",
            f.bdf,
            mac[0],
            mac[1],
            mac[2],
            mac[3],
            mac[4],
            mac[5],
            if config.link_up { "up" } else { "down" },
            config.max_pairs,
            pairs,
            transport.num_queues()
        );
    }
    // Queue set-up and DRIVER_OK come with the virtqueues; until then the
    // device is left reset so it never touches memory.
    transport.reset().map_err(|e| e.to_string())?;
    Ok(())
}
