//! The multiqueue virtio-net NIC: probe, bring-up and the per-CPU data path.
//!
//! Bring-up (on the boot CPU): PCI enumeration, virtio-pci transport,
//! feature negotiation, N = min(max pairs, online CPUs, `queues=`) queue
//! pairs, one MSI-X vector per queue aimed at the CPU that owns the queue,
//! the control queue, DRIVER_OK, VQ_PAIRS_SET, receive buffers posted.
//! Then each CPU i < N claims pair i and polls it from its own event loop,
//! NAPI style: the queue's interrupt only wakes the CPU; the loop keeps
//! interrupts off while it finds work and turns them back on (re-checking
//! for a race) before it halts. Before it halts it also makes sure the
//! device has heard of every buffer it was given (`flush`), and while frames
//! sit with the device a watchdog on the CPU's own timer checks that the
//! device makes progress. A device that breaks the ring protocol is reset and
//! the network stopped, loudly.

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
use drivers::virtio::netdev::{
    plan_vectors, CtrlQueue, CtrlResult, PlanKind, QueueStats, RxQueue, TxQueue, Watchdog, MAX_FRAME, STALL_TICKS,
};
use drivers::virtio::queue::BrokenRing;
use drivers::virtio::transport::{read_layout, Region, Transport, NO_VECTOR};
use drivers::virtio::{pci_kind, PciKind, DEVICE_TYPE_NET};
use kernel::cmdline::NetFault;
use kernel::timers::Expired;
use log::{error, info, warn};
use net::device::{Doorbell, QueuePair};
use net::neighbours::{arp_reply_frame, arp_sender, NeighbourBoard};
use net::stack::{NetConfig, Stack};
use spin::{Mutex, Once};

use crate::arch::mmio::Mmio;
use crate::arch::pci::{EcamConfig, PortConfig};
use crate::arch::percpu::{self, CpuStats};
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
/// smoltcp polls per loop iteration before other work gets a turn.
const POLL_BUDGET: usize = 64;
/// Without MSI-X, how often an owning CPU polls its queues.
const POLL_INTERVAL_NS: u64 = 1_000_000;
const NET_STATS_TIMER: u32 = 4;
const POLL_TIMER: u32 = 5;
const WATCHDOG_TIMER: u32 = 6;
/// How often the transmit watchdog looks while frames sit with the device.
const WATCHDOG_PERIOD_NS: u64 = 5_000_000;
/// How long to wait for the device to answer a control command.
const CTRL_TIMEOUT_NS: u64 = 100_000_000;

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

/// What a CPU owns of the NIC, once it has claimed its pair.
pub struct CpuNic {
    rx: RxQueue,
    tx: TxQueue,
    stack: Stack,
    scratch: Box<[u8; MAX_FRAME]>,
    cfg: NetConfig,
    /// The neighbour board's generation this stack has caught up with.
    neighbours_seen: u32,
    watchdog_armed: bool,
}

struct Nic {
    pairs: u16,
    doorbells: Doorbells,
    mac: [u8; 6],
    /// Pair i's queues, until CPU i claims them.
    unclaimed: Vec<Mutex<Option<(RxQueue, TxQueue)>>>,
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
}

/// Set by the configuration-change interrupt (on the boot CPU).
static CONFIG_CHANGED: AtomicBool = AtomicBool::new(false);

/// Interrupt context: the device changed its configuration.
pub fn config_changed() {
    CONFIG_CHANGED.store(true, Ordering::Release);
}

/// Boot CPU: reports link changes after a configuration-change interrupt.
fn watch_link(_local: &mut Local) -> Poll {
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

/// Neighbour bindings learned by one CPU's stack, for all the others (see
/// `net::neighbours`): an ARP request is answered once, by the stack it
/// reached, and no CPU is interrupted for it.
static NEIGHBOURS: NeighbourBoard = NeighbourBoard::new();

static NIC_DONE: AtomicBool = AtomicBool::new(false);
/// `net-fault=used-index-jump` has been acted out.
static FAULT_ACTED: AtomicBool = AtomicBool::new(false);

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
    let wanted = if allow_mq { vnet::WANTED } else { vnet::WANTED & !vnet::feature::MQ };
    let features = t.negotiate(wanted).map_err(|e| e.to_string())?;
    let event_idx = features & drivers::virtio::feature::EVENT_IDX != 0;
    let mergeable = features & vnet::feature::MRG_RXBUF != 0;
    let dev = t.read_device_config(|d| DeviceConfig::read(d, features)).ok_or("no (stable) device configuration")?;
    info!("virtio-net {}: offered {}", f.bdf, FeatureNames(offered));
    info!("virtio-net {}: negotiated {}", f.bdf, FeatureNames(features));
    let mac = dev.mac.unwrap_or([0x52, 0x54, 0x00, 0x6d, 0x71, 0x01]);
    let has_ctrl = features & vnet::feature::CTRL_VQ != 0;
    let mq = features & vnet::feature::MQ != 0 && has_ctrl;
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
    let cpu_apic = |cpu: u16| percpu::all().get(cpu as usize).map_or(0, |c| c.apic_id);
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
        let rx = RxQueue::new(&dma, rxq, size(rxq)?, event_idx, mergeable).ok_or("out of DMA memory")?;
        let tx = TxQueue::new(&dma, txq, size(txq)?, event_idx).ok_or("out of DMA memory")?;
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
                let until = time::now().plus_nanos(CTRL_TIMEOUT_NS, time::clock());
                loop {
                    if let Some(a) = c.poll() {
                        break Some(a);
                    }
                    if time::now() > until {
                        break None;
                    }
                    core::hint::spin_loop();
                }
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
                        if outcome.is_some() { "completed without an answer" } else { "no answer within 100 ms" }
                    )));
                }
            }
        }
    }
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
    if cpus > pairs as usize {
        info!(
            "virtio-net {}: cpus {}..{} have no queue pair of their own and stay off the network",
            f.bdf,
            pairs,
            cpus - 1
        );
    }
    let unclaimed = queues.into_iter().map(|pair| Mutex::new(Some(pair))).collect();
    Ok(Nic {
        pairs,
        doorbells,
        mac,
        unclaimed,
        polled: plan.kind == PlanKind::Polling,
        transport: t,
        features,
        link_up: AtomicBool::new(dev.link_up),
        failed: AtomicBool::new(false),
    })
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

fn now() -> net::smoltcp::time::Instant {
    net::smoltcp::time::Instant::from_micros((time::nanos_since_entry() / 1000) as i64)
}

/// Every CPU: once the NIC is up, take this CPU's queue pair (if any) and
/// start polling it.
pub fn claim(local: &mut Local) -> Poll {
    if !NIC_DONE.load(Ordering::Acquire) {
        return Poll::Idle;
    }
    let Some(nic) = NIC.get() else { return Poll::Done };
    if nic.failed.load(Ordering::Acquire) {
        return Poll::Done;
    }
    let Some(slot) = nic.unclaimed.get(local.cpu.index as usize) else { return Poll::Done };
    let Some((mut rx, mut tx)) = slot.lock().take() else { return Poll::Done };
    let (ip, prefix_len) = crate::boot_options().ip.unwrap_or((NetConfig::DEFAULT_IP, NetConfig::DEFAULT_PREFIX));
    let cfg = NetConfig { mac: nic.mac, ip, prefix_len };
    let mut scratch = Box::new([0; MAX_FRAME]);
    let (seed, source) = crate::arch::random::stack_seed(local.cpu.index);
    let stack = Stack::new(&cfg, &mut QueuePair::new(&mut rx, &mut tx, &nic.doorbells, &mut scratch), now(), seed);
    if nic.polled {
        let period = crate::arch::time::clock().nanos_to_ticks(POLL_INTERVAL_NS);
        local.add_timer(POLL_TIMER, time::rdtsc() + period, period, |_, _| {});
    }
    if let Some(ms) = crate::boot_options().net_stats_ms {
        let period = crate::arch::time::clock().nanos_to_ticks(ms as u64 * 1_000_000);
        local.add_timer(NET_STATS_TIMER, time::rdtsc() + period, period, |l, _| report(l));
    }
    local.nic = Some(CpuNic { rx, tx, stack, scratch, cfg, neighbours_seen: 0, watchdog_armed: false });
    local.add_work(poll);
    if local.cpu.index == 0 {
        local.add_work(watch_link);
        info!(
            "net: {} stacks up, {}.{}.{}.{}/{} on every queue pair; stack seeds from {}",
            nic.pairs,
            cfg.ip[0],
            cfg.ip[1],
            cfg.ip[2],
            cfg.ip[3],
            cfg.prefix_len,
            source.name()
        );
    }
    Poll::Done
}

/// The NAPI-style poll of this CPU's queue pair.
fn poll(local: &mut Local) -> Poll {
    let Some(nic) = NIC.get() else { return Poll::Done };
    if nic.failed.load(Ordering::Relaxed) {
        // The device was reset: these queues are dead memory now.
        local.nic = None;
        local.cancel_timer(WATCHDOG_TIMER);
        return Poll::Done;
    }
    let Some(mine) = local.nic.as_mut() else { return Poll::Done };
    mine.rx.queue_mut().disable_interrupts();
    let mut busy = false;
    let now = now();
    let addr = mine.cfg;
    // Neighbour bindings other CPUs' stacks learned (one atomic load when
    // there are none).
    if NEIGHBOURS.generation() != mine.neighbours_seen {
        mine.neighbours_seen = NEIGHBOURS.catch_up(mine.neighbours_seen, |binding| {
            let frame = arp_reply_frame(binding, &addr);
            let mut dev = QueuePair::new(&mut mine.rx, &mut mine.tx, &nic.doorbells, &mut mine.scratch);
            dev.injected = Some(&frame);
            mine.stack.poll(&mut dev, now);
        });
        busy = true;
    }
    let now_ms = (now.total_millis()).max(0) as u64;
    let post = |f: &[u8]| {
        if net::device::is_arp(f) {
            if let Some(binding) = arp_sender(f, &addr) {
                NEIGHBOURS.post(binding, now_ms);
            }
        }
    };
    let mut dev = QueuePair::new(&mut mine.rx, &mut mine.tx, &nic.doorbells, &mut mine.scratch);
    dev.observer = Some(&post);
    for _ in 0..POLL_BUDGET {
        if !mine.stack.poll(&mut dev, now) {
            break;
        }
        busy = true;
    }
    mine.rx.refill(&nic.doorbells);
    mine.tx.reclaim();
    if crate::boot_options().net_fault == Some(NetFault::UsedIndexJump) && local.cpu.index == 0 {
        act_out_used_index_jump(&mut mine.rx);
    }
    let broken = match (mine.rx.broken(), mine.tx.broken()) {
        (Some(b), _) => Some((mine.rx.index, b)),
        (_, Some(b)) => Some((mine.tx.index, b)),
        _ => None,
    };
    if let Some((queue, why)) = broken {
        fail(nic, local.cpu.index, queue, why);
        return Poll::Busy;
    }
    let arm = mine.tx.needs_watchdog() && !mine.watchdog_armed;
    if busy {
        if arm {
            arm_watchdog(local);
        }
        return Poll::Busy;
    }
    // Going idle: the device must have heard of every buffer and frame it
    // was given (a lost notification would leave both ends waiting).
    mine.rx.flush(&nic.doorbells);
    mine.tx.flush(&nic.doorbells);
    // Interrupts back on; completions that raced in mean another round.
    let again = mine.rx.queue_mut().enable_interrupts();
    if arm {
        arm_watchdog(local);
    }
    if again {
        Poll::Busy
    } else {
        Poll::Idle
    }
}

/// `net-fault=used-index-jump`: once 10 frames have arrived, a used index
/// one and a half rings ahead, as a device that lost track would write.
fn act_out_used_index_jump(rx: &mut RxQueue) {
    if rx.stats().packets < 10 || FAULT_ACTED.swap(true, Ordering::Relaxed) {
        return;
    }
    let s = rx.ring_state();
    let idx = s.last_used.wrapping_add(s.size + s.size / 2);
    warn!("net-fault=used-index-jump: writing used index {idx} into rxq {} ({s})", rx.index);
    rx.queue_mut().inject_device_used_idx(idx);
}

fn arm_watchdog(local: &mut Local) {
    if let Some(mine) = local.nic.as_mut() {
        mine.watchdog_armed = true;
    }
    let period = crate::arch::time::clock().nanos_to_ticks(WATCHDOG_PERIOD_NS);
    local.add_timer(WATCHDOG_TIMER, time::rdtsc() + period, period, watchdog);
}

/// The transmit watchdog's tick (every 5 ms while frames sit with the
/// device); it stops itself once nothing is left with the device.
fn watchdog(local: &mut Local, _: Expired) {
    let Some(nic) = NIC.get() else { return };
    let cpu = local.cpu.index;
    let Some(mine) = local.nic.as_mut() else {
        local.cancel_timer(WATCHDOG_TIMER);
        return;
    };
    let verdict = mine.tx.watchdog_tick(&nic.doorbells);
    let txq = mine.tx.index;
    match verdict {
        Watchdog::Idle => {
            mine.watchdog_armed = false;
            local.cancel_timer(WATCHDOG_TIMER);
        }
        Watchdog::Progress => {}
        Watchdog::Silent => {
            if mine.tx.stats().watchdog == 1 {
                info!(
                    "virtio-net: cpu{cpu} txq {txq}: no progress for {} ms: notified the device again ({}); \
                     later ones are counted in net-stats",
                    WATCHDOG_PERIOD_NS / 1_000_000,
                    mine.tx.ring_state()
                );
            }
        }
        Watchdog::Stalled(state) => warn!(
            "virtio-net: cpu{cpu} txq {txq}: the device has sent nothing for {} ms despite {} notifications \
             ({state}); frames are dropped while the ring is full",
            STALL_TICKS as u64 * WATCHDOG_PERIOD_NS / 1_000_000,
            mine.tx.stats().watchdog
        ),
    }
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

fn drops(s: &QueueStats) -> [(&'static str, u64); 5] {
    [
        ("bad_len", s.drop_bad_len),
        ("bad_id", s.drop_bad_id),
        ("header", s.drop_header),
        ("merge", s.drop_merge),
        ("too_long", s.drop_too_long),
    ]
}

/// Logs this CPU's queue counters and interrupt counts.
fn report(local: &mut Local) {
    let Some(mine) = local.nic.as_mut() else { return };
    let cpu = local.cpu;
    let (r, t) = (mine.rx.stats(), mine.tx.stats());
    let irqs = |q: u16| cpu.stats.queue_irqs.get(q as usize).map_or(0, |a| a.load(Ordering::Relaxed));
    let mut line = alloc::format!(
        "net-stats: cpu{} rxq {} packets {} bytes {} irqs {} polls {} kicks {} no_buffers {} merged {} rescues {} watchdog {} drops",
        cpu.index, mine.rx.index, r.packets, r.bytes, irqs(mine.rx.index), r.polls, r.kicks, r.no_buffers, r.merged,
        r.rescues, r.watchdog,
    );
    for (name, n) in drops(&r) {
        line.push_str(&alloc::format!(" {name} {n}"));
    }
    line.push_str(&alloc::format!(
        " | txq {} packets {} bytes {} irqs {} full {} kicks {} rescues {} watchdog {} drops",
        mine.tx.index,
        t.packets,
        t.bytes,
        irqs(mine.tx.index),
        t.full,
        t.kicks,
        t.rescues,
        t.watchdog
    ));
    for (name, n) in drops(&t).into_iter().filter(|(name, _)| matches!(*name, "bad_len" | "bad_id" | "too_long")) {
        line.push_str(&alloc::format!(" {name} {n}"));
    }
    info!("{line}");
    let foreign: u64 = cpu
        .stats
        .queue_irqs
        .iter()
        .enumerate()
        .filter(|(q, _)| *q as u16 != mine.rx.index && *q as u16 != mine.tx.index)
        .map(|(_, a)| a.load(Ordering::Relaxed))
        .sum();
    if foreign > 0 {
        warn!("net-stats: cpu{} took {foreign} interrupts of other CPUs' queues", cpu.index);
    }
}

/// Counts an interrupt of queue `q` on this CPU (interrupt context).
pub fn count_queue_irq(q: usize) {
    if let Some(cpu) = percpu::current() {
        CpuStats::add(&cpu.stats.interrupts, 1);
        if let Some(c) = cpu.stats.queue_irqs.get(q) {
            CpuStats::add(c, 1);
        }
    }
}
