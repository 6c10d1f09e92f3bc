//! The multiqueue virtio-net NIC: probe and bring-up (this file), and each
//! vCPU's glue to its share of it (`cpu`).
//!
//! Bring-up (on the boot CPU): PCI enumeration, virtio-pci transport,
//! feature negotiation, N = min(max pairs, online CPUs, `queues=`) queue
//! pairs, one MSI-X vector per queue aimed at the online CPU that owns the
//! queue, the control queue, DRIVER_OK, VQ_PAIRS_SET, RSS_CONFIG when the
//! device offers RSS, receive buffers posted. Then every online vCPU claims
//! its share (`net::cpu::plan_shares`) and runs its stack from its own
//! event loop. A device that breaks the ring protocol is reset and the
//! network stopped, loudly.

mod cpu;
pub mod raw;

pub use cpu::{claim, count_queue_irq, CpuNic};
use cpu::{claims, create_board, create_iperf_hub, Claim};

use alloc::boxed::Box;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::alloc::Layout;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering};

use drivers::dma::{DmaAlloc, DmaBuf};
use drivers::msix::{self, MsixCapability, MsixTable};
use drivers::pci::{self, Bar, ConfigSpace, Function, CAP_MSIX};
use drivers::virtio::net::{self as vnet, FeatureNames, NetConfig as DeviceConfig};
use drivers::virtio::netdev::{plan_vectors, CtrlQueue, CtrlResult, PlanKind, RssConfig, RxQueue, TxQueue, TxTso};
use drivers::virtio::queue::BrokenRing;
use drivers::virtio::transport::{read_layout, Region, Transport, NO_VECTOR};
use drivers::virtio::{pci_kind, PciKind, DEVICE_TYPE_NET};
use kernel::cmdline::{NetFault, TxShare};
use log::{error, info, warn};
use net::cpu::Fabric;
use net::device::Doorbell;
use net::stack::NetConfig;
use net::steer::{hash_type, KEY_LEN};
use spin::{Mutex, Once};

use crate::arch::mmio::Mmio;
use crate::arch::pci::{EcamConfig, PortConfig};
use crate::arch::percpu;
use crate::arch::{acpi, paging, time};
use crate::runloop::{Local, Poll};

/// IDT vector of queue q's interrupt (on the CPU that owns the queue).
pub const QUEUE_VECTOR_BASE: u8 = 0x40;
/// Queues that can have a vector of their own.
pub const MAX_VECTORED_QUEUES: u16 = 64;
/// IDT vector of the configuration-change interrupt (boot CPU).
pub const CONFIG_VECTOR: u8 = 0x3f;
/// Entries per receive/transmit queue.
const QUEUE_SIZE: u16 = 256;
/// How long to wait for the device to answer a control command.
/// QEMU answers within microseconds; under a host busy with other
/// guests (TCG, 2 cores shared) 100 ms was seen to run out, and the NIC came
/// up with one pair instead of the ones asked for.
const CTRL_TIMEOUT_NS: u64 = 1_000_000_000;

/// Heap memory handed to the device: physically contiguous because the
/// heap is one run of frames, translated through the direct map.
struct KernelDma;

impl DmaAlloc for KernelDma {
    fn alloc(&self, len: usize, align: usize) -> Option<DmaBuf> {
        let layout = Layout::from_size_align(len.max(1), align.max(64)).ok()?;
        // SAFETY: non-zero size; the block is never freed.
        let ptr = NonNull::new(unsafe { alloc::alloc::alloc_zeroed(layout) })?;
        let phys = crate::memory::virt_to_phys(ptr.as_ptr(), len)?;
        // SAFETY: zeroed heap memory that is never freed, physically
        // contiguous (the heap is one run of frames), owned by this handle.
        Some(unsafe { DmaBuf::from_raw(ptr, len, phys) })
    }
}

/// Rings queue doorbells. Shared by all CPUs: each writes only its own
/// queues' doorbell addresses.
struct Doorbells {
    notify: Mmio,
    /// Doorbell offset per queue index.
    offsets: Vec<u32>,
}

impl Doorbell for Doorbells {
    fn ring(&self, queue: u16) {
        if let Some(&off) = self.offsets.get(queue as usize) {
            self.notify.write16(off as u64, queue);
        }
    }
}

/// The control queue's doorbell (it sits after the maximum pairs, not
/// among the data queues' offsets), rung through the transport.
struct CtrlBell<'a> {
    transport: &'a Transport<Mmio>,
    offset: u32,
}

impl Doorbell for CtrlBell<'_> {
    fn ring(&self, queue: u16) {
        self.transport.notify(self.offset, queue);
    }
}

struct Nic {
    pairs: u16,
    doorbells: Doorbells,
    /// By network vCPU index: what it has not claimed yet.
    unclaimed: Vec<Mutex<Option<Claim>>>,
    /// The per-CPU index (`percpu`) of each network vCPU: the online CPUs
    /// in order.
    cpus: Vec<u32>,
    fabric: &'static Fabric,
    /// No MSI-X for the queues: owners poll on a timer.
    polled: bool,
    /// For re-reading the device configuration (link status) on a
    /// configuration-change interrupt.
    transport: Transport<Mmio>,
    features: u64,
    link_up: AtomicBool,
    /// Set (once) when a queue broke the ring protocol and the device was
    /// reset: every CPU drops its queues.
    failed: AtomicBool,
    /// Network vCPUs whose stack is up (the last one ends the boot's
    /// services phase).
    claimed: core::sync::atomic::AtomicUsize,
}

/// Whether the NIC is up for the stacks, so that the boot's last phase is
/// their services listening (else the boot ends with the NIC's phase).
pub fn serving() -> bool {
    NIC.get().is_some_and(|n| !n.failed.load(Ordering::Acquire)) && crate::boot_options().raw.mode.is_none()
}

/// Set by the configuration-change interrupt (on the boot CPU).
static CONFIG_CHANGED: AtomicBool = AtomicBool::new(false);

/// Interrupt context: the device changed its configuration.
pub fn config_changed() {
    CONFIG_CHANGED.store(true, Ordering::Release);
}

/// Boot CPU: reports link changes after a configuration-change interrupt.
fn watch_link<S>(_local: &mut Local<S>) -> Poll {
    if !CONFIG_CHANGED.swap(false, Ordering::AcqRel) {
        return Poll::Idle;
    }
    let Some(nic) = NIC.get() else { return Poll::Done };
    let Some(cfg) = nic.transport.read_device_config(|d| DeviceConfig::read(d, nic.features)) else {
        return Poll::Idle;
    };
    if nic.link_up.swap(cfg.link_up, Ordering::AcqRel) != cfg.link_up {
        info!("virtio-net: link {}", if cfg.link_up { "up" } else { "down" });
    }
    Poll::Busy
}

static NIC: Once<Nic> = Once::new();

static NIC_DONE: AtomicBool = AtomicBool::new(false);

fn config_space() -> &'static dyn ConfigSpace {
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

/// Enumerates PCI and brings up the first virtio-net; afterwards every
/// CPU's loop may claim its queue pair. `cpus` is the number online.
pub fn init(cpus: usize, max_pairs: Option<u16>) {
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
    let nic = functions.iter().find(|f| {
        matches!(
            pci_kind(f.vendor, f.device),
            PciKind::Modern { device_type: DEVICE_TYPE_NET } | PciKind::Transitional { pci_device_id: 0x1000 }
        )
    });
    match nic {
        None => info!("net: no virtio-net NIC"),
        Some(f) if matches!(pci_kind(f.vendor, f.device), PciKind::Transitional { .. }) => warn!(
            "virtio-net {}: transitional device (id {:04x}) is not supported; start QEMU with \
             `-device virtio-net-pci,disable-legacy=on`",
            f.bdf, f.device
        ),
        Some(f) => {
            // Minimal firmware (qboot) leaves 64-bit BARs unassigned.
            match pci::assign_memory_bars(cfg, &functions, f.bdf, pci::MMIO_WINDOW_32) {
                Ok(placed) => {
                    for (bar, at) in placed {
                        info!("pci: {} BAR {bar} left unassigned by the firmware: placed at {at:#x}", f.bdf);
                    }
                }
                Err(e) => warn!("pci: {}: {e}", f.bdf),
            }
            let result = match bring_up(cfg, f, cpus, max_pairs, true) {
                Err(BringUpError::RetryWithoutMq(why)) => {
                    warn!("virtio-net {}: {why}; the device was reset: setting it up again with one queue pair", f.bdf);
                    bring_up(cfg, f, cpus, max_pairs, false)
                }
                other => other,
            };
            match result {
                Ok(nic) => {
                    NIC.call_once(|| nic);
                }
                Err(BringUpError::Fatal(e) | BringUpError::RetryWithoutMq(e)) => {
                    warn!("virtio-net {}: {e}; running without a network", f.bdf)
                }
            }
        }
    }
    NIC_DONE.store(true, Ordering::Release);
    for c in percpu::online() {
        c.wake();
    }
}

fn map_region(cfg: &dyn ConfigSpace, f: &Function, bar: u8, offset: u64, length: u64) -> Result<Mmio, String> {
    let Some(Bar::Memory { address, size, .. }) = pci::read_bar(cfg, f.bdf, bar) else {
        return Err(alloc::format!("BAR {bar} is not a memory BAR"));
    };
    if address == 0 || offset.checked_add(length).is_none_or(|end| end > size) {
        return Err(alloc::format!("a register block lies outside BAR {bar}"));
    }
    let virt = paging::map_mmio(address + offset, length)?;
    // SAFETY: just mapped uncached, for good, inside the BAR.
    Ok(unsafe { Mmio::new(virt, length) })
}

fn map(cfg: &dyn ConfigSpace, f: &Function, r: Region) -> Result<Mmio, String> {
    map_region(cfg, f, r.bar, r.offset as u64, r.length as u64)
}

/// Why bring-up stopped.
enum BringUpError {
    Fatal(String),
    /// A multiqueue command went unanswered; the device has been reset so it
    /// cannot apply it later, and bring-up can start over without MQ.
    RetryWithoutMq(String),
}

impl From<String> for BringUpError {
    fn from(e: String) -> Self {
        BringUpError::Fatal(e)
    }
}

impl From<&str> for BringUpError {
    fn from(e: &str) -> Self {
        BringUpError::Fatal(e.into())
    }
}

/// Brings the device up. With `allow_mq` false, MQ is not negotiated: one
/// pair. (DMA memory of an attempt that is abandoned is not reused; it is a
/// few hundred KiB, once.)
fn bring_up(
    cfg: &dyn ConfigSpace,
    f: &Function,
    cpus: usize,
    max_pairs: Option<u16>,
    allow_mq: bool,
) -> Result<Nic, BringUpError> {
    let caps = pci::capabilities(cfg, f.bdf);
    let layout = read_layout(cfg, f.bdf, &caps).map_err(|e| e.to_string())?;
    let msix = caps.iter().find(|c| c.id == CAP_MSIX).map(|c| MsixCapability::read(cfg, f.bdf, c.offset));
    pci::enable_memory_and_dma(cfg, f.bdf);
    let t = Transport::new(
        map(cfg, f, layout.common)?,
        map(cfg, f, layout.notify)?,
        &layout,
        layout.device.map(|r| map(cfg, f, r)).transpose()?,
    );
    let offered = t.device_features();
    // RSS (when offered: QEMU `rss=on`) steers each flow's first packet to
    // its owner's queue; the reported hash saves computing it again.
    let wanted = if allow_mq {
        vnet::WANTED | vnet::WANTED_RSS | vnet::WANTED_HASH_REPORT
    } else {
        vnet::WANTED & !vnet::feature::MQ
    };
    // Checksum offloads and large receive segments, for the stacks (raw
    // mode forwards frames as they are).
    let opts = crate::boot_options();
    let stacks = opts.raw.mode.is_none();
    let choice = vnet::OffloadChoice {
        tx_csum: stacks && opts.tx_csum,
        tx_tso: opts.tx_tso,
        rx_csum: stacks && opts.rx_csum,
        rx_tso: opts.rx_tso,
    };
    let offloads = vnet::wanted_offloads(offered, choice);
    let features = t.negotiate(wanted | offloads).map_err(|e| e.to_string())?;
    let tx_csum = features & vnet::feature::CSUM != 0;
    let rx_offloads = vnet::rx_offloads(features);
    let tx_tso = vnet::tx_tso(features);
    let event_idx = features & drivers::virtio::feature::EVENT_IDX != 0;
    let mergeable = features & vnet::feature::MRG_RXBUF != 0;
    let hdr_len = vnet::header_len(features);
    let dev = t.read_device_config(|d| DeviceConfig::read(d, features)).ok_or("no (stable) device configuration")?;
    info!("virtio-net {}: offered {}", f.bdf, FeatureNames(offered));
    info!("virtio-net {}: negotiated {}", f.bdf, FeatureNames(features));
    let mac = dev.mac.unwrap_or([0x52, 0x54, 0x00, 0x6d, 0x71, 0x01]);
    let has_ctrl = features & vnet::feature::CTRL_VQ != 0;
    let mq = features & vnet::feature::MQ != 0 && has_ctrl;
    let rss = features & vnet::feature::RSS != 0 && has_ctrl;
    // Queue pairs go to the online CPUs in order (pair p to the p-th).
    let online: Vec<u32> = percpu::online().map(|c| c.index).collect();
    let cpus = cpus.min(online.len()).max(1);
    let mut pairs =
        vnet::pairs_to_use(if mq { dev.max_pairs } else { 1 }, cpus, max_pairs).min(MAX_VECTORED_QUEUES / 2);

    // MSI-X: one entry per queue, aimed at the owning CPU. The mapping
    // starts at the table, which is where `MsixTable` expects its block to.
    let table = match msix {
        Some(cap) => {
            let (bar, offset, len) = cap.table_window();
            Some((cap, map_region(cfg, f, bar, offset, len)?))
        }
        None => None,
    };
    let table_size = table.as_ref().map_or(0, |(c, _)| c.table_size);
    let mut plan = plan_vectors(pairs, table_size, crate::boot_options().msix_per_pair);
    if plan.kind == PlanKind::Polling {
        warn!("virtio-net {}: {} MSI-X vectors for {pairs} pairs: falling back to polling", f.bdf, table_size);
    }
    if let Some((cap, regs)) = &table {
        let t = MsixTable::new(regs, *cap);
        for i in 0..cap.table_size {
            let _ = t.set_masked(i, true);
        }
        cap.set_control(cfg, f.bdf, true, false);
    }
    let msix_table = table.as_ref().map(|(c, r)| MsixTable::new(r, *c));
    let cpu_apic =
        |n: u16| online.get(n as usize).and_then(|&i| percpu::all().get(i as usize)).map_or(0, |c| c.apic_id);
    let program = |entry: u16, cpu: u16, vector: u8| -> Result<(), String> {
        let Some(t) = &msix_table else { return Ok(()) };
        let m = msix::message(cpu_apic(cpu), vector).map_err(|e| e.to_string())?;
        t.program(entry, m, false).map_err(|e| e.to_string())
    };
    if plan.config != NO_VECTOR {
        program(plan.config, 0, CONFIG_VECTOR)?;
        if t.set_config_vector(plan.config).is_err() {
            warn!("virtio-net {}: device refused the config-change vector; config changes are not signalled", f.bdf);
        }
    }

    let dma = KernelDma;
    let mut queues = Vec::new();
    let mut offsets = alloc::vec![0u32; 2 * pairs as usize + 1];
    for p in 0..pairs {
        let (rxq, txq) = (vnet::rx_queue(p), vnet::tx_queue(p));
        let size = |q: u16| -> Result<u16, String> {
            match t.queue_max_size(q).map_err(|e| e.to_string())?.min(QUEUE_SIZE) {
                0 => Err(alloc::format!("queue {q} is not available")),
                n => Ok(prev_pow2(n)),
            }
        };
        let mut rx =
            RxQueue::with_header(&dma, rxq, size(rxq)?, event_idx, mergeable, hdr_len).ok_or("out of DMA memory")?;
        let mut tx = TxQueue::with_header(&dma, txq, size(txq)?, event_idx, hdr_len).ok_or("out of DMA memory")?;
        tx.set_csum_offload(tx_csum);
        rx.set_offloads(rx_offloads);
        if tx_tso.any() && !tx.set_tso(&dma, tx_tso) {
            warn!("virtio-net {}: txq {txq}: no DMA memory for large transmit buffers: TSO off", f.bdf);
        }
        let (rv, tv) = plan.pairs[p as usize];
        for (queue, entry, addrs) in [(rxq, rv, rx.queue().addresses()), (txq, tv, tx.queue().addresses())] {
            if entry != NO_VECTOR {
                program(entry, p, queue_vector(plan.kind, p, queue))?;
            }
            let size = if queue == rxq { rx.queue().size() } else { tx.queue().size() };
            let off = match t.setup_queue(queue, size, addrs, entry) {
                Ok(off) => off,
                Err(drivers::virtio::transport::TransportError::VectorRefused { .. }) => {
                    warn!("virtio-net {}: queue {queue} refused MSI-X entry {entry}: polling it", f.bdf);
                    plan.kind = PlanKind::Polling;
                    t.setup_queue(queue, size, addrs, NO_VECTOR).map_err(|e| e.to_string())?
                }
                Err(e) => return Err(e.to_string().into()),
            };
            offsets[queue as usize] = off;
        }
        queues.push((rx, tx));
    }
    let mut ctrl = if has_ctrl {
        let index = vnet::ctrl_queue(if mq { dev.max_pairs } else { 1 });
        let c = CtrlQueue::new(&dma, index, 16).ok_or("out of DMA memory")?;
        let addrs = c.queue().addresses();
        let off = t.setup_queue(index, c.queue().size(), addrs, NO_VECTOR).map_err(|e| e.to_string())?;
        Some((c, off))
    } else {
        None
    };
    t.driver_ok();
    let doorbells = Doorbells { notify: t.notify, offsets };

    if mq && pairs > 1 {
        if let Some((c, off)) = ctrl.as_mut() {
            let bell = CtrlBell { transport: &t, offset: *off };
            let answer = c.pairs_set(pairs, &bell).map(|()| {
                if crate::boot_options().net_fault == Some(NetFault::CtrlUnanswered) {
                    warn!("virtio-net {}: net-fault=ctrl-unanswered: not waiting for the answer", f.bdf);
                    return None;
                }
                await_answer(c)
            });
            match answer {
                Ok(Some(CtrlResult::Ok)) => info!("virtio-net {}: VQ_PAIRS_SET {pairs}: acknowledged", f.bdf),
                // Refused: the device keeps using one pair.
                Ok(Some(CtrlResult::Refused(ack))) => {
                    warn!("virtio-net {}: VQ_PAIRS_SET {pairs}: refused (ack {ack}); using one pair", f.bdf);
                    pairs = 1;
                    queues.truncate(1);
                }
                // Never reached the device, which keeps using one pair.
                Err(e) => {
                    warn!("virtio-net {}: VQ_PAIRS_SET {pairs} could not be queued ({e:?}); using one pair", f.bdf);
                    pairs = 1;
                    queues.truncate(1);
                }
                // Completed without an answer, or still with the device: it
                // may apply the command later, behind our back. Only a reset
                // makes sure it will not.
                Ok(outcome) => {
                    let _ = t.reset();
                    return Err(BringUpError::RetryWithoutMq(alloc::format!(
                        "VQ_PAIRS_SET {pairs}: {}",
                        if outcome.is_some() { "completed without an answer" } else { "no answer within 1 s" }
                    )));
                }
            }
        }
    }
    let (ip, prefix_len) = crate::boot_options().ip.unwrap_or((NetConfig::DEFAULT_IP, NetConfig::DEFAULT_PREFIX));
    let share = crate::boot_options().tx_share;
    let shared_pairs = (cpus as u16).saturating_sub(pairs).min(pairs);
    let outboxes = if share == TxShare::Handoff { shared_pairs } else { 0 };
    // Shared by every vCPU for good (the NIC is never torn down).
    let mut fabric = Fabric::new(
        NetConfig { mac, ip, prefix_len, gateway: crate::boot_options().gateway },
        steering_key(),
        cpus as u16,
        outboxes,
    );
    fabric.checksums = net::device::Checksums { tx: tx_csum, rx: rx_offloads.csum };
    // Only if every queue got its large buffers.
    fabric.tso = if queues.iter().all(|(_, tx)| tx.tso() == tx_tso) { tx_tso } else { TxTso::NONE };
    // RSS goes after VQ_PAIRS_SET: QEMU turns RSS off when it gets one.
    if rss {
        if let Some((c, off)) = ctrl.as_mut() {
            let programmed = program_rss(c, &CtrlBell { transport: &t, offset: *off }, &fabric, pairs, &dev, f);
            // Until RSS is acknowledged the reported hash is whatever the
            // tap left in the header: only then is it ours.
            fabric.hash_reported = programmed && hdr_len == drivers::virtio::netdev::HASH_HDR_LEN;
        }
    }
    let fabric: &'static Fabric = Box::leak(Box::new(fabric));
    for (rx, _) in queues.iter_mut() {
        rx.refill(&doorbells);
    }
    info!(
        "virtio-net {}: MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}, link {}, {} pairs offered, {pairs} in use, {} MSI-X entries ({:?})",
        f.bdf, mac[0], mac[1], mac[2], mac[3], mac[4], mac[5],
        if dev.link_up { "up" } else { "down" },
        dev.max_pairs,
        table_size,
        plan.kind,
    );
    for p in 0..pairs {
        let (rv, tv) = plan.pairs[p as usize];
        let (rxq, txq) = (vnet::rx_queue(p), vnet::tx_queue(p));
        let vec = |q: u16, e: u16| {
            if e == NO_VECTOR || plan.kind == PlanKind::Polling {
                String::from("polled")
            } else {
                alloc::format!("MSI-X entry {e} -> vector {:#x}", queue_vector(plan.kind, p, q))
            }
        };
        info!(
            "virtio-net {}: pair {p}: rxq {rxq} {}, txq {txq} {}, cpu{p} (APIC id {})",
            f.bdf,
            vec(rxq, rv),
            vec(txq, tv),
            cpu_apic(p)
        );
    }
    // Raw mode (`raw=`): every pair to its owner alone; no stacks to serve.
    let raw = crate::boot_options().raw.mode.is_some();
    if cpus > pairs as usize && !raw {
        info!(
            "virtio-net {}: cpus {}..{} have no queue pair of their own: they receive their flows from the \
             pairs' owners and transmit {}",
            f.bdf,
            pairs,
            cpus - 1,
            match share {
                TxShare::Lock => "on a pair they share under a lock (tx-share=lock)",
                TxShare::Handoff => "by handing frames to the pair's owner (tx-share=handoff)",
            }
        );
    }
    let net_cpus: Vec<u32> = online.iter().copied().take(cpus).collect();
    create_board(&net_cpus, pairs);
    create_iperf_hub(cpus as u16);
    let claimers = if raw { pairs } else { cpus as u16 };
    let unclaimed = claims(queues, claimers, share, fabric).into_iter().map(|c| Mutex::new(Some(c))).collect();
    Ok(Nic {
        pairs,
        doorbells,
        unclaimed,
        cpus: online.into_iter().take(cpus).collect(),
        fabric,
        polled: plan.kind == PlanKind::Polling,
        transport: t,
        features,
        link_up: AtomicBool::new(dev.link_up),
        failed: AtomicBool::new(false),
        claimed: core::sync::atomic::AtomicUsize::new(0),
    })
}

/// Waits (spinning, at bring-up) up to 1 s for the answer to the
/// control command just submitted.
fn await_answer(c: &mut CtrlQueue) -> Option<CtrlResult> {
    let until = time::now().plus_nanos(CTRL_TIMEOUT_NS, time::clock());
    loop {
        if let Some(a) = c.poll() {
            return Some(a);
        }
        if time::now() > until {
            return None;
        }
        core::hint::spin_loop();
    }
}

/// A random steering key (RSS's Toeplitz key): a key an outsider knows
/// lets them aim every flow at one vCPU. `steer-key=` sets it instead (tests
/// and benchmarks that pick their client ports so that flows spread).
fn steering_key() -> [u8; KEY_LEN] {
    if let Some(key) = crate::boot_options().steer_key {
        info!("net: steering key from steer-key=");
        return key;
    }
    let mut key = [0u8; KEY_LEN];
    for (i, chunk) in key.chunks_mut(8).enumerate() {
        let (v, _) = crate::arch::random::stack_seed(0x5eed_0000 + i as u32);
        chunk.copy_from_slice(&v.to_le_bytes()[..chunk.len()]);
    }
    key
}

/// Programs the device's RSS with the steering key and table, so that a
/// flow's first packet already lands on its owner's queue. A flow whose
/// owner has no queue of its own is sent to the queue of the pair it
/// shares (its owner's inbox is fed from there). Without an answer, or
/// with limits our table does not fit, software steering does the work.
/// Returns whether the device took it.
fn program_rss(
    c: &mut CtrlQueue,
    bell: &dyn Doorbell,
    fabric: &Fabric,
    pairs: u16,
    dev: &DeviceConfig,
    f: &Function,
) -> bool {
    let steering = &fabric.steering;
    let table_len = steering.table().len();
    if (dev.rss_max_key_size as usize) < KEY_LEN || (dev.rss_max_table_len as usize) < table_len {
        warn!(
            "virtio-net {}: RSS limits (key {} bytes, table {}) are below ours ({KEY_LEN}, {table_len}): \
             steering in software only",
            f.bdf, dev.rss_max_key_size, dev.rss_max_table_len
        );
        return false;
    }
    let hash_types = hash_type::STEERED & dev.supported_hash_types;
    let table = steering.queue_table(pairs);
    let cfg = RssConfig { hash_types, table: &table, unclassified: 0, max_tx_vq: pairs, key: steering.key() };
    match c.rss_config(&cfg, bell).map(|()| await_answer(c)) {
        Ok(Some(CtrlResult::Ok)) => {
            info!(
                "virtio-net {}: RSS: Toeplitz key of {KEY_LEN} bytes, {table_len}-entry table over {pairs} queues \
             for {} vCPUs, hash types {hash_types:#x} (device supports {:#x})",
                f.bdf,
                steering.cpus(),
                dev.supported_hash_types
            );
            true
        }
        other => {
            warn!("virtio-net {}: RSS_CONFIG failed ({other:?}): steering in software only", f.bdf);
            false
        }
    }
}

/// The IDT vector that queue `queue` of pair `pair` raises: its own, or
/// with one vector per pair the pair's receive queue's.
fn queue_vector(kind: PlanKind, pair: u16, queue: u16) -> u8 {
    let q = if kind == PlanKind::PerPair { vnet::rx_queue(pair) } else { queue };
    QUEUE_VECTOR_BASE + q as u8
}

/// Largest power of two ≤ `n` (n ≥ 1).
fn prev_pow2(n: u16) -> u16 {
    1 << (15 - n.leading_zeros())
}

/// A queue broke the ring protocol: reset the device (so it stops using
/// memory the driver can no longer account for), stop every CPU's network,
/// and say so. Only the first report counts.
fn fail(nic: &Nic, cpu: u32, queue: u16, why: BrokenRing) {
    if nic.failed.swap(true, Ordering::AcqRel) {
        return;
    }
    error!("virtio-net: cpu{cpu} queue {queue} is broken: {why}; the device does not follow the ring protocol");
    match nic.transport.reset() {
        Ok(()) => error!("virtio-net: device reset; the network is stopped"),
        Err(e) => {
            nic.transport.fail();
            error!("virtio-net: device reset failed ({e}); marked FAILED; the network is stopped");
        }
    }
    for c in percpu::online() {
        c.wake();
    }
}
