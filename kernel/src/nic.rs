//! The multiqueue virtio-net NIC: probe, bring-up and the per-CPU data path.
//!
//! Bring-up (on the boot CPU): PCI enumeration, virtio-pci transport,
//! feature negotiation, N = min(max pairs, online CPUs, `queues=`) queue
//! pairs, one MSI-X vector per queue aimed at the CPU that owns the queue,
//! the control queue, DRIVER_OK, VQ_PAIRS_SET, receive buffers posted.
//! Then each CPU i < N claims pair i and polls it from its own event loop,
//! NAPI style: the queue's interrupt only wakes the CPU; the loop keeps
//! interrupts off while it finds work and turns them back on (re-checking
//! for a race) before it halts.

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
use drivers::virtio::netdev::{plan_vectors, CtrlQueue, CtrlResult, PlanKind, RxQueue, TxQueue, MAX_FRAME};
use drivers::virtio::transport::{read_layout, Region, Transport, NO_VECTOR};
use drivers::virtio::{pci_kind, PciKind, DEVICE_TYPE_NET};
use log::{info, warn};
use net::device::{Doorbell, QueuePair};
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

/// What a CPU owns of the NIC, once it has claimed its pair.
pub struct CpuNic {
    rx: RxQueue,
    tx: TxQueue,
    stack: Stack,
    scratch: Box<[u8; MAX_FRAME]>,
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

/// Frames one CPU hands to another: copies of ARP packets, which every
/// stack needs because each keeps its own neighbour cache. ARP is rare, so
/// this short lock is off the per-packet path.
struct Inbox {
    /// Whether `frames` may hold something: the owner's per-packet poll
    /// reads only this flag, and takes the lock only when it is set.
    pending: AtomicBool,
    frames: Mutex<([[u8; INBOX_FRAME]; INBOX_SLOTS], [u8; INBOX_SLOTS], usize)>,
}

const INBOX_FRAME: usize = 64;
const INBOX_SLOTS: usize = 8;

impl Inbox {
    const fn new() -> Inbox {
        Inbox {
            pending: AtomicBool::new(false),
            frames: Mutex::new(([[0; INBOX_FRAME]; INBOX_SLOTS], [0; INBOX_SLOTS], 0)),
        }
    }

    /// Queues a copy (dropped if the inbox is full or the frame too long).
    fn push(&self, frame: &[u8]) -> bool {
        let mut g = self.frames.lock();
        let (bufs, lens, n) = &mut *g;
        if *n == INBOX_SLOTS || frame.len() > INBOX_FRAME {
            return false;
        }
        bufs[*n][..frame.len()].copy_from_slice(frame);
        lens[*n] = frame.len() as u8;
        *n += 1;
        self.pending.store(true, Ordering::Release);
        true
    }

    /// Takes the oldest frame into `out`; returns its length.
    fn pop(&self, out: &mut [u8; INBOX_FRAME]) -> Option<usize> {
        if !self.pending.load(Ordering::Acquire) {
            return None;
        }
        let mut g = self.frames.lock();
        let (bufs, lens, n) = &mut *g;
        if *n == 0 {
            self.pending.store(false, Ordering::Release);
            return None;
        }
        let len = lens[0] as usize;
        out[..len].copy_from_slice(&bufs[0][..len]);
        bufs.copy_within(1..*n, 0);
        lens.copy_within(1..*n, 0);
        *n -= 1;
        Some(len)
    }
}

static INBOXES: Once<Vec<Inbox>> = Once::new();

/// Copies an ARP frame received by `from` to every other CPU with a stack.
fn share_arp(from: u32, frame: &[u8]) {
    let Some(nic) = NIC.get() else { return };
    let Some(inboxes) = INBOXES.get() else { return };
    for (i, inbox) in inboxes.iter().enumerate().take(nic.pairs as usize) {
        if i as u32 != from && inbox.push(frame) {
            if let Some(c) = percpu::all().get(i) {
                c.wake();
            }
        }
    }
}
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
        Some(f) => match bring_up(cfg, f, cpus, max_pairs) {
            Ok(nic) => {
                NIC.call_once(|| nic);
            }
            Err(e) => warn!("virtio-net {}: {e}; running without a network", f.bdf),
        },
    }
    INBOXES.call_once(|| (0..percpu::all().len()).map(|_| Inbox::new()).collect());
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

fn bring_up(cfg: &dyn ConfigSpace, f: &Function, cpus: usize, max_pairs: Option<u16>) -> Result<Nic, String> {
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
    let features = t.negotiate(vnet::WANTED).map_err(|e| e.to_string())?;
    let event_idx = features & drivers::virtio::feature::EVENT_IDX != 0;
    let dev = t.read_device_config(|d| DeviceConfig::read(d, features)).ok_or("no (stable) device configuration")?;
    info!("virtio-net {}: offered {}", f.bdf, FeatureNames(offered));
    info!("virtio-net {}: negotiated {}", f.bdf, FeatureNames(features));
    let mac = dev.mac.unwrap_or([0x52, 0x54, 0x00, 0x6d, 0x71, 0x01]);
    let has_ctrl = features & vnet::feature::CTRL_VQ != 0;
    let mq = features & vnet::feature::MQ != 0 && has_ctrl;
    let mut pairs =
        vnet::pairs_to_use(if mq { dev.max_pairs } else { 1 }, cpus, max_pairs).min(MAX_VECTORED_QUEUES / 2);

    // MSI-X: one entry per queue, aimed at the owning CPU.
    let table = match msix {
        Some(cap) => {
            Some((cap, map_region(cfg, f, cap.table_bar, cap.table_offset as u64, cap.table_size as u64 * 16)?))
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
        let rx = RxQueue::new(&dma, rxq, size(rxq)?, event_idx).ok_or("out of DMA memory")?;
        let mut tx = TxQueue::new(&dma, txq, size(txq)?, event_idx).ok_or("out of DMA memory")?;
        let (rv, tv) = plan.pairs[p as usize];
        for (queue, entry, addrs) in [(rxq, rv, rx.queue().addresses()), (txq, tv, tx.queue_mut().addresses())] {
            if entry != NO_VECTOR {
                program(entry, p, queue_vector(plan.kind, p, queue))?;
            }
            let size = if queue == rxq { rx.queue().size() } else { tx.queue_mut().size() };
            let off = match t.setup_queue(queue, size, addrs, entry) {
                Ok(off) => off,
                Err(drivers::virtio::transport::TransportError::VectorRefused { .. }) => {
                    warn!("virtio-net {}: queue {queue} refused MSI-X entry {entry}: polling it", f.bdf);
                    plan.kind = PlanKind::Polling;
                    t.setup_queue(queue, size, addrs, NO_VECTOR).map_err(|e| e.to_string())?
                }
                Err(e) => return Err(e.to_string()),
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
            if c.pairs_set(pairs) {
                doorbells.notify.write16(*off as u64, c.index);
            }
            let until = time::now().plus_nanos(100_000_000, time::clock());
            let answer = loop {
                if let Some(a) = c.poll() {
                    break a;
                }
                if time::now() > until {
                    break CtrlResult::NoAnswer;
                }
                core::hint::spin_loop();
            };
            match answer {
                CtrlResult::Ok => info!("virtio-net {}: VQ_PAIRS_SET {pairs}: acknowledged", f.bdf),
                other => {
                    warn!("virtio-net {}: VQ_PAIRS_SET {pairs}: {other:?}; using one pair", f.bdf);
                    pairs = 1;
                    queues.truncate(1);
                }
            }
        }
    }
    for (rx, _) in queues.iter_mut() {
        if rx.refill() {
            doorbells.ring(rx.index);
        }
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
    let Some(slot) = nic.unclaimed.get(local.cpu.index as usize) else { return Poll::Done };
    let Some((mut rx, mut tx)) = slot.lock().take() else { return Poll::Done };
    let (ip, prefix_len) = crate::boot_options().ip.unwrap_or((NetConfig::DEFAULT_IP, NetConfig::DEFAULT_PREFIX));
    let cfg = NetConfig { mac: nic.mac, ip, prefix_len };
    let mut scratch = Box::new([0; MAX_FRAME]);
    let stack = Stack::new(&cfg, &mut QueuePair::new(&mut rx, &mut tx, &nic.doorbells, &mut scratch), now());
    if nic.polled {
        let period = crate::arch::time::clock().nanos_to_ticks(POLL_INTERVAL_NS);
        local.add_timer(POLL_TIMER, time::rdtsc() + period, period, |_, _| {});
    }
    if let Some(ms) = crate::boot_options().net_stats_ms {
        let period = crate::arch::time::clock().nanos_to_ticks(ms as u64 * 1_000_000);
        local.add_timer(NET_STATS_TIMER, time::rdtsc() + period, period, |l, _| report(l));
    }
    local.nic = Some(CpuNic { rx, tx, stack, scratch });
    local.add_work(poll);
    if local.cpu.index == 0 {
        local.add_work(watch_link);
        info!(
            "net: {} stacks up, {}.{}.{}.{}/{} on every queue pair",
            nic.pairs, cfg.ip[0], cfg.ip[1], cfg.ip[2], cfg.ip[3], cfg.prefix_len
        );
    }
    Poll::Done
}

/// The NAPI-style poll of this CPU's queue pair.
fn poll(local: &mut Local) -> Poll {
    let Some(nic) = NIC.get() else { return Poll::Done };
    let Some(mine) = local.nic.as_mut() else { return Poll::Done };
    mine.rx.queue_mut().disable_interrupts();
    let mut busy = false;
    let me = local.cpu.index;
    // ARP copies from other CPUs first.
    let mut frame = [0u8; INBOX_FRAME];
    if let Some(inbox) = INBOXES.get().and_then(|i| i.get(me as usize)) {
        while let Some(len) = inbox.pop(&mut frame) {
            let mut dev = QueuePair::new(&mut mine.rx, &mut mine.tx, &nic.doorbells, &mut mine.scratch);
            dev.injected = Some(&frame[..len]);
            mine.stack.poll(&mut dev, now());
            busy = true;
        }
    }
    let share = |f: &[u8]| {
        if net::device::is_arp(f) {
            share_arp(me, f);
        }
    };
    let mut dev = QueuePair::new(&mut mine.rx, &mut mine.tx, &nic.doorbells, &mut mine.scratch);
    dev.observer = Some(&share);
    for _ in 0..POLL_BUDGET {
        if !mine.stack.poll(&mut dev, now()) {
            break;
        }
        busy = true;
    }
    if mine.rx.refill() {
        nic.doorbells.ring(mine.rx.index);
    }
    mine.tx.reclaim();
    if busy {
        return Poll::Busy;
    }
    // Interrupts back on; completions that raced in mean another round.
    if mine.rx.queue_mut().enable_interrupts() {
        Poll::Busy
    } else {
        Poll::Idle
    }
}

/// Logs this CPU's queue counters and interrupt counts.
fn report(local: &mut Local) {
    let Some(mine) = local.nic.as_mut() else { return };
    let cpu = local.cpu;
    let (r, t) = (mine.rx.stats(), mine.tx.stats());
    let irqs = |q: u16| cpu.stats.queue_irqs.get(q as usize).map_or(0, |a| a.load(Ordering::Relaxed));
    info!(
        "net-stats: cpu{} rxq {} packets {} bytes {} irqs {} polls {} no_buffers {} drops bad_len {} bad_id {} header {} | txq {} packets {} bytes {} irqs {} full {} kicks {}",
        cpu.index,
        mine.rx.index,
        r.packets,
        r.bytes,
        irqs(mine.rx.index),
        r.polls,
        r.no_buffers,
        r.drop_bad_len,
        r.drop_bad_id,
        r.drop_header,
        mine.tx.index,
        t.packets,
        t.bytes,
        irqs(mine.tx.index),
        t.full,
        t.kicks
    );
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
