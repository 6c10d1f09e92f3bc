//! One vCPU's glue to the NIC: claiming its share, running its poll round
//! (`net::cpu`) from its event loop, the transmit watchdog and the
//! counters it reports.
//!
//! NAPI style: a queue's interrupt only wakes its vCPU; the loop keeps
//! interrupts off while it finds work and turns them back on (re-checking
//! for a race) before it halts. Before it halts it also makes sure the
//! device has heard of every buffer it was given (`flush`), and while frames
//! sit with the device a watchdog on the vCPU's own timer checks that the
//! device makes progress. smoltcp's own deadlines (delayed ACKs,
//! retransmits) arm a one-shot timer, so an idle vCPU still meets them.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};

use drivers::virtio::moderation::{Moderator, RxModeration};
use drivers::virtio::netdev::{QueueStats, RxQueue, TxQueue, Watchdog, STALL_TICKS};
use kernel::cmdline::{IperfMode, NetFault, RxCoalesce, TxShare};
use kernel::timers::Expired;
use log::{info, warn};
use net::cpu::{plan_shares, CpuNet, Fabric, Queues, Share, Wake};
use net::device::{Doorbell, TxPath};
use net::inbox::Inbox;
use net::services::iperf::proto::Params;
use net::services::iperf::{ClientConfig, ClientOutcome, CpuLoad, Hub, Iperf};
use net::services::metrics::{Board, Metrics, Series};
use net::services::{discard::Discard, echo::Echo, Services, TcpConfig};
use spin::Mutex;

use super::{fail, watch_link, NIC, NIC_DONE};
use crate::arch::percpu::{self, CpuStats};
use crate::arch::time;
use crate::runloop::{Local, Poll};

/// Without MSI-X, how often an owning CPU polls its queues.
const POLL_INTERVAL_NS: u64 = 1_000_000;
const NET_STATS_TIMER: u32 = 4;
/// Copies this vCPU's counters into the metrics board.
const METRICS_TIMER: u32 = 8;
const METRICS_PERIOD_NS: u64 = 100_000_000;
const POLL_TIMER: u32 = 5;
const WATCHDOG_TIMER: u32 = 6;
/// When smoltcp wants to be polled again (delayed ACKs, retransmits).
const POLL_AT_TIMER: u32 = 7;
/// Receive interrupt moderation's look-again timer (`rx-coalesce=`).
const COALESCE_TIMER: u32 = 9;
/// A stack that wants to be polled now but could not make progress (its
/// transmit queue is full) is looked at again after this long at the
/// latest; the queue's interrupt usually comes first.
const RETRY_NS: u64 = 1_000_000;
/// How often the transmit watchdog looks while frames sit with the device.
const WATCHDOG_PERIOD_NS: u64 = 5_000_000;

/// `net-fault=used-index-jump` has been acted out.
static FAULT_ACTED: AtomicBool = AtomicBool::new(false);

/// Where a vCPU's frames go out (see `net::device::TxPath`).
// One per vCPU, built once and never moved on the data path: boxing the
// queue would only add a pointer chase per frame.
#[allow(clippy::large_enum_variant)]
enum CpuTx {
    Own(TxQueue),
    Shared(&'static Mutex<TxQueue>),
    Handoff { outbox: &'static Inbox, owner: u16 },
}

/// What a vCPU owns of the NIC once it has claimed its share: its queue
/// pair if it has one, its way to transmit, and its network stack.
pub struct CpuNic {
    /// This vCPU's index among the network's vCPUs.
    id: u16,
    rx: Option<RxQueue>,
    tx: CpuTx,
    /// Frames other vCPUs hand over for this vCPU's queue (handoff mode).
    outbox: Option<&'static Inbox>,
    net: CpuNet,
    watchdog_armed: bool,
    /// When its receive queue interrupts once it goes idle.
    moderator: Moderator,
    /// `RxQueue::starved_refills` as last seen (see `nudge_parked`).
    starved_seen: u64,
    /// Other receive queues notified by `nudge_parked`.
    nudges: u64,
    /// TSC ticks of its network rounds: the receive side (`Round::
    /// ingress_cycles`) and the rest (services, egress, transmit).
    ingress_cycles: u64,
    egress_cycles: u64,
}

impl CpuNic {
    fn queues(&mut self) -> (Queues<'_>, &mut CpuNet) {
        let tx = match &mut self.tx {
            CpuTx::Own(q) => TxPath::Own(q),
            CpuTx::Shared(m) => TxPath::Shared(m),
            CpuTx::Handoff { outbox, .. } => TxPath::Handoff(outbox),
        };
        (Queues { rx: self.rx.as_mut(), tx, outbox: self.outbox }, &mut self.net)
    }

    /// Runs `f` on the transmit queue this vCPU looks after (its own, or
    /// the shared one of the pair it owns).
    fn with_tx<R>(&mut self, f: impl FnOnce(&mut TxQueue) -> R) -> Option<R> {
        match &mut self.tx {
            CpuTx::Own(q) => Some(f(q)),
            CpuTx::Shared(m) if self.rx.is_some() => Some(f(&mut m.lock())),
            _ => None,
        }
    }
}

/// Per-CPU state that carries the NIC's (composed in `main.rs`).
pub trait HasNic: AsMut<Option<CpuNic>> {}
impl<S: AsMut<Option<CpuNic>>> HasNic for S {}

/// What vCPU n takes when it claims its share.
pub(super) struct Claim {
    rx: Option<RxQueue>,
    tx: CpuTx,
    outbox: Option<&'static Inbox>,
}

impl Claim {
    /// The queue pair of a vCPU that owns one alone (raw mode hands every
    /// pair to its owner: nobody shares).
    pub(super) fn into_pair(self) -> Option<(RxQueue, TxQueue)> {
        match (self.rx, self.tx) {
            (Some(rx), CpuTx::Own(tx)) => Some((rx, tx)),
            _ => None,
        }
    }
}

/// For queue operations that cannot need a notification (nothing queued).
struct NoBell;

impl Doorbell for NoBell {
    fn ring(&self, _: u16) {}
}

/// Wakes network vCPUs by IPI (their inbox or outbox has frames).
struct Waker<'a>(&'a [u32]);

impl Wake for Waker<'_> {
    fn wake(&self, cpu: u16) {
        if let Some(c) = self.0.get(cpu as usize).and_then(|&i| percpu::all().get(i as usize)) {
            c.wake();
        }
    }
}

/// What each of `cpus` network vCPUs gets (see `net::cpu::plan_shares`):
/// the queues of the pair it owns, and how it transmits.
pub(super) fn claims(
    queues: Vec<(RxQueue, TxQueue)>,
    cpus: u16,
    share: TxShare,
    fabric: &'static Fabric,
) -> Vec<Claim> {
    let plan = plan_shares(queues.len() as u16, cpus);
    let mut owned: Vec<Option<(RxQueue, TxQueue)>> = queues.into_iter().map(Some).collect();
    let mut locks: Vec<Option<&'static Mutex<TxQueue>>> = alloc::vec![None; owned.len()];
    let mut out = Vec::new();
    for s in plan {
        let claim = match s {
            Share::Owner { pair, shared } => {
                let Some((rx, mut tx)) = owned.get_mut(pair as usize).and_then(Option::take) else { continue };
                // Frames are published once per poll round (see `net::cpu`).
                tx.set_batched(true, &NoBell);
                match (shared, share) {
                    (true, TxShare::Lock) => {
                        let m: &'static Mutex<TxQueue> = Box::leak(Box::new(Mutex::new(tx)));
                        locks[pair as usize] = Some(m);
                        Claim { rx: Some(rx), tx: CpuTx::Shared(m), outbox: None }
                    }
                    (true, TxShare::Handoff) => {
                        Claim { rx: Some(rx), tx: CpuTx::Own(tx), outbox: fabric.outboxes.get(pair as usize) }
                    }
                    (false, _) => Claim { rx: Some(rx), tx: CpuTx::Own(tx), outbox: None },
                }
            }
            Share::Sharer { pair } => {
                let tx = match (locks.get(pair as usize).copied().flatten(), fabric.outboxes.get(pair as usize)) {
                    (Some(m), _) => CpuTx::Shared(m),
                    (None, Some(outbox)) => CpuTx::Handoff { outbox, owner: pair },
                    (None, None) => continue,
                };
                Claim { rx: None, tx, outbox: None }
            }
        };
        out.push(claim);
    }
    out
}

fn now() -> net::smoltcp::time::Instant {
    net::smoltcp::time::Instant::from_micros((time::nanos_since_entry() / 1000) as i64)
}

/// Share of the heap that TCP connection buffers may take, in all.
const TCP_HEAP_SHARE: u64 = 2;

/// The services every vCPU runs, from the boot options. Each vCPU may hold
/// as many connections as its share of half the heap buffers (a SYN flood
/// beyond that is refused, not an out-of-memory panic).
fn services(id: u16, cpus: usize) -> Services {
    let options = crate::boot_options();
    let mut cfg = TcpConfig::default();
    if let Some(n) = options.tcp_buffer {
        cfg.rx_buffer = n as usize;
        cfg.tx_buffer = n as usize;
    }
    if let Some(us) = options.ack_delay_us {
        cfg.ack_delay = (us > 0).then(|| net::smoltcp::time::Duration::from_micros(u64::from(us)));
    }
    let per_conn = (cfg.rx_buffer + cfg.tx_buffer).max(1) as u64;
    let budget = crate::memory::heap_bytes() / TCP_HEAP_SHARE / cpus.max(1) as u64;
    // The listeners (`backlog` per service) hold buffers too.
    let listeners = (cfg.backlog * options.services.count()) as u64;
    cfg.max_connections = (budget / per_conn).saturating_sub(listeners).clamp(8, 1024) as usize;
    let mut s = Services::new(cfg);
    if options.services.echo {
        s.add(Box::new(Echo));
    }
    if options.services.discard {
        s.add(Box::new(Discard));
    }
    if let (true, Some(board)) = (options.services.metrics, METRICS.get()) {
        s.add(Box::new(Metrics::new(board)));
    }
    if let (true, Some(hub)) = (options.services.iperf, IPERF.get()) {
        let mut iperf = Iperf::new(hub, id);
        // The guest's own client test runs from the first network vCPU.
        if let Some(c) = options.iperf_client.filter(|c| id == 0 && c.server != [0; 4]) {
            let params = Params {
                parallel: c.parallel,
                len: c.len,
                time: c.time,
                omit: c.omit,
                reverse: c.mode == IperfMode::Reverse,
                bidirectional: c.mode == IperfMode::Bidir,
                ..Params::default()
            };
            iperf.start_client(ClientConfig { server: c.server, port: c.port, params }, now());
        }
        s.add(Box::new(iperf));
    }
    if options.services.rr {
        s.add(Box::new(net::services::rr::Rr));
    }
    s
}

/// The iperf3 server's registry and mailboxes (set once at bring-up).
static IPERF: spin::Once<Hub> = spin::Once::new();

/// Wakes a network vCPU for the iperf3 server's messages.
struct HubWaker;

impl Wake for HubWaker {
    fn wake(&self, cpu: u16) {
        if let Some(nic) = NIC.get() {
            Waker(&nic.cpus).wake(cpu);
        }
    }
}

/// The network vCPUs' busy time and all their time, in TSC ticks, for the
/// iperf3 server's CPU figure.
struct GuestLoad;

impl CpuLoad for GuestLoad {
    fn sample(&self) -> (u64, u64) {
        let Some(nic) = NIC.get() else { return (0, 0) };
        let all = percpu::all();
        nic.cpus.iter().filter_map(|&c| all.get(c as usize)).fold((0, 0), |(b, t), c| {
            let busy = c.stats.busy_tsc.load(Ordering::Relaxed);
            (b + busy, t + busy + c.stats.halted_tsc.load(Ordering::Relaxed))
        })
    }
}

/// Creates the iperf3 server's hub for `cpus` network vCPUs.
pub(super) fn create_iperf_hub(cpus: u16) {
    IPERF.call_once(|| {
        Hub::new(cpus, Box::new(HubWaker), Some(Box::new(GuestLoad))).on_client_done(Box::new(report_client))
    });
}

/// The guest's iperf3 client test is over: one line for people, one JSON
/// line for tools (`cargo xtask bench`).
fn report_client(o: &ClientOutcome) {
    let [a, b, c, d] = o.config.server;
    let p = &o.config.params;
    let mode = if p.bidirectional {
        "bidir"
    } else if p.reverse {
        "reverse"
    } else {
        "send"
    };
    match &o.error {
        None => info!(
            "iperf3-client: done: {mode} to {a}.{b}.{c}.{d}:{}, {} streams on vCPUs {:?}, {:.2} s: sent {} bytes \
             (server received {}), received {} bytes (server sent {}): {:.1} Mbit/s, guest CPU {:.1}%",
            o.config.port,
            p.streams(),
            o.stream_cpus,
            o.seconds,
            o.sent,
            o.server_received,
            o.received,
            o.server_sent,
            o.bits_per_second() / 1e6,
            o.cpu_util
        ),
        Some(e) => warn!("iperf3-client: failed: {mode} to {a}.{b}.{c}.{d}:{}: {e}", o.config.port),
    }
    info!(
        "iperf3-client-json: {{\"ok\":{},\"mode\":\"{mode}\",\"streams\":{},\"len\":{},\"seconds\":{:.6},\"sent\":{},\
         \"received\":{},\"server_received\":{},\"server_sent\":{},\"bits_per_second\":{:.0},\"cpu_util\":{:.2}}}",
        o.error.is_none(),
        p.streams(),
        p.len,
        o.seconds,
        o.sent,
        o.received,
        o.server_received,
        o.server_sent,
        o.bits_per_second(),
        o.cpu_util
    );
}

/// Every CPU: once the NIC is up, take this vCPU's share (its queue pair,
/// or its way to a shared one) and start its stack.
pub fn claim<S: HasNic>(local: &mut Local<S>) -> Poll {
    if !NIC_DONE.load(Ordering::Acquire) {
        return Poll::Idle;
    }
    let Some(nic) = NIC.get() else { return Poll::Done };
    if nic.failed.load(Ordering::Acquire) {
        return Poll::Done;
    }
    let Some(id) = nic.cpus.iter().position(|&c| c == local.cpu.index) else { return Poll::Done };
    let Some(Claim { mut rx, mut tx, outbox }) = nic.unclaimed.get(id).and_then(|slot| slot.lock().take()) else {
        return Poll::Done;
    };
    let id = id as u16;
    let (seed, source) = crate::arch::random::stack_seed(local.cpu.index);
    let net = {
        let txp = match &mut tx {
            CpuTx::Own(q) => TxPath::Own(q),
            CpuTx::Shared(m) => TxPath::Shared(m),
            CpuTx::Handoff { outbox, .. } => TxPath::Handoff(outbox),
        };
        let mut queues = Queues { rx: rx.as_mut(), tx: txp, outbox };
        CpuNet::new(id, nic.fabric, services(id, nic.cpus.len()), &mut queues, &nic.doorbells, now(), seed)
    };
    let has_pair = rx.is_some();
    if nic.polled && has_pair {
        let period = crate::arch::time::clock().nanos_to_ticks(POLL_INTERVAL_NS);
        local.add_timer(POLL_TIMER, time::rdtsc() + period, period, |_, _| {});
    }
    if METRICS.get().is_some() {
        let period = crate::arch::time::clock().nanos_to_ticks(METRICS_PERIOD_NS);
        local.add_timer(METRICS_TIMER, time::rdtsc() + period, period, |l, _| publish(l));
    }
    if let Some(ms) = crate::boot_options().net_stats_ms {
        let period = crate::arch::time::clock().nanos_to_ticks(ms as u64 * 1_000_000);
        local.add_timer(NET_STATS_TIMER, time::rdtsc() + period, period, |l, _| report(l));
    }
    let moderator = Moderator::new(match crate::boot_options().rx_coalesce {
        RxCoalesce::Off => RxModeration::Off,
        RxCoalesce::Auto => RxModeration::DEFAULT,
        RxCoalesce::Fixed(frames, us) => RxModeration::Fixed { frames, us },
    });
    *local.state.as_mut() = Some(CpuNic {
        id,
        rx,
        tx,
        outbox,
        net,
        watchdog_armed: false,
        moderator,
        starved_seen: 0,
        nudges: 0,
        ingress_cycles: 0,
        egress_cycles: 0,
    });
    local.add_work(poll);
    if local.cpu.index == nic.cpus[0] {
        local.add_work(watch_link);
    }
    // The last vCPU to make its stack says they are up (the host's tools
    // start their traffic on these lines), and the boot is over.
    if nic.claimed.fetch_add(1, Ordering::AcqRel) + 1 == nic.cpus.len() {
        crate::boot::boot_over(kernel::phases::Phase::Services);
        let cfg = nic.fabric.cfg;
        info!(
            "net: {} stacks up, on {} queue pairs, {}.{}.{}.{}/{}; flows steered by Toeplitz hash over all \
             vCPUs; stack seeds from {}",
            nic.cpus.len(),
            nic.pairs,
            cfg.ip[0],
            cfg.ip[1],
            cfg.ip[2],
            cfg.ip[3],
            cfg.prefix_len,
            source.name()
        );
        if let Some(mine) = local.state.as_mut().as_ref() {
            let tcp = mine.net.services.config();
            let mut ports = String::new();
            for p in mine.net.services.ports() {
                ports.push_str(&alloc::format!(" {p}"));
            }
            info!(
                "net: TCP services on ports{} on every vCPU; buffers {} KiB in, {} KiB out per connection, \
                 at most {} connections per vCPU",
                if ports.is_empty() { " (none)" } else { &ports },
                tcp.rx_buffer >> 10,
                tcp.tx_buffer >> 10,
                tcp.max_connections
            );
        }
    }
    Poll::Done
}

/// A workaround for QEMU's software RSS (`rss=on` without vhost; read in
/// QEMU 7.2's `virtio_net_receive_rcu`): a frame read from tap queue X that
/// RSS sends to receive queue Y is delivered through Y, and when Y has no
/// buffer the "cannot take it" answer goes back to X: the frame is parked on
/// X and X's tap is not read again until the guest notifies X's receive
/// queue (only `virtio_net_handle_rx` of X flushes it). Y's owner notifies
/// only Y; X's owner has no reason to notify X, its ring is full. So every
/// flow on X stalls until something rings X (seen: a minute, until the
/// peer timeout reset the connections).
///
/// The moment Y ran out is known exactly: with EVENT_IDX the device asks
/// for a receive notification only once it has taken every posted buffer,
/// and a dry ring is rescued at refill (`RxQueue::starved_refills` counts
/// both). After such a refill the owner notifies every other receive queue
/// once, which makes QEMU retry what it parked there, now that Y has
/// buffers. It costs nothing while rings keep up, and `pairs - 1`
/// doorbells per starved refill when they do not.
fn nudge_parked(mine: &mut CpuNic, nic: &super::Nic) {
    let Some(rx) = mine.rx.as_ref() else { return };
    let starved = rx.starved_refills();
    if starved == mine.starved_seen {
        return;
    }
    mine.starved_seen = starved;
    for pair in 0..nic.pairs {
        let q = drivers::virtio::net::rx_queue(pair);
        if q != rx.index {
            nic.doorbells.ring(q);
            mine.nudges += 1;
        }
    }
}

/// One poll round of this vCPU's network (see `net::cpu`), NAPI style: the
/// queue's interrupt stays off while there is work, and goes back on
/// (re-checking for a race) before the CPU halts.
fn poll<S: HasNic>(local: &mut Local<S>) -> Poll {
    let Some(nic) = NIC.get() else { return Poll::Done };
    if nic.failed.load(Ordering::Relaxed) {
        // The device was reset: these queues are dead memory now.
        *local.state.as_mut() = None;
        local.cancel_timer(WATCHDOG_TIMER);
        local.cancel_timer(POLL_AT_TIMER);
        return Poll::Done;
    }
    let Some(mine) = local.state.as_mut().as_mut() else { return Poll::Done };
    if let Some(rx) = mine.rx.as_mut() {
        rx.queue_mut().disable_interrupts();
    }
    let now = now();
    let start = time::rdtsc();
    let round = {
        let (mut queues, net) = mine.queues();
        net.poll(nic.fabric, &mut queues, &nic.doorbells, now, &Waker(&nic.cpus), time::rdtsc)
    };
    let spent = time::rdtsc().wrapping_sub(start);
    mine.ingress_cycles += round.ingress_cycles.min(spent);
    mine.egress_cycles += spent.saturating_sub(round.ingress_cycles);
    if nic.fabric.hash_reported {
        nudge_parked(mine, nic);
    }
    // Frames handed to the pair's owner: it drains them in its round.
    if let CpuTx::Handoff { outbox, owner } = &mine.tx {
        if !outbox.is_empty() {
            Waker(&nic.cpus).wake(*owner);
        }
    }
    if let Some(rx) = mine.rx.as_mut() {
        if crate::boot_options().net_fault == Some(NetFault::UsedIndexJump) && mine.id == 0 {
            act_out_used_index_jump(rx);
        }
    }
    let broken = match (
        mine.rx.as_ref().and_then(|r| r.broken().map(|b| (r.index, b))),
        mine.with_tx(|t| t.broken().map(|b| (t.index, b))),
    ) {
        (Some(b), _) => Some(b),
        (_, Some(Some(b))) => Some(b),
        _ => None,
    };
    if let Some((queue, why)) = broken {
        fail(nic, local.cpu.index, queue, why);
        return Poll::Busy;
    }
    let arm = mine.with_tx(|t| t.needs_watchdog()).unwrap_or(false) && !mine.watchdog_armed;
    // smoltcp's next deadline: a one-shot timer, so that an idle vCPU still
    // sends its delayed ACKs and retransmits.
    match round.poll_at {
        Some(at) if round.busy || at > now => {
            let wait = (at - now.min(at)).total_micros();
            let ticks = crate::arch::time::clock().nanos_to_ticks(wait * 1000);
            local.add_timer(POLL_AT_TIMER, time::rdtsc() + ticks, 0, |_, _| {});
        }
        // Due now, yet the round made no progress (its transmit queue is
        // full): the queue's interrupt or this retry brings it back.
        Some(_) => {
            let ticks = crate::arch::time::clock().nanos_to_ticks(RETRY_NS);
            local.add_timer(POLL_AT_TIMER, time::rdtsc() + ticks, 0, |_, _| {});
        }
        None => local.cancel_timer(POLL_AT_TIMER),
    }
    let halts = local.halts_when_idle;
    let Some(mine) = local.state.as_mut().as_mut() else { return Poll::Done };
    if round.busy {
        if arm {
            arm_watchdog(local);
        }
        return Poll::Busy;
    }
    if !halts {
        // Polling on (`haltpoll=`): interrupts stay off until the loop is
        // about to halt, when this runs once more and takes the path below.
        if arm {
            arm_watchdog(local);
        }
        return Poll::Idle;
    }
    // Going idle: the device must have heard of every buffer and frame it
    // was given (a lost notification would leave both ends waiting).
    let mut again = false;
    if let Some(rx) = mine.rx.as_mut() {
        rx.flush(&nic.doorbells);
    }
    mine.with_tx(|t| t.flush(&nic.doorbells));
    let mut wait = None;
    if let Some(rx) = mine.rx.as_mut() {
        // Interrupts back on (after `n` frames when moderated); completions
        // that raced in mean another round.
        wait = mine.moderator.on_idle(rx.stats().packets, now.total_micros() as u64);
        again = match wait {
            Some((n, _)) => rx.queue_mut().enable_interrupts_after(n),
            None => rx.queue_mut().enable_interrupts(),
        };
    }
    match (wait, again) {
        // Fewer than `n` frames raise no interrupt: look again by then.
        (Some((_, us)), false) => {
            let ticks = crate::arch::time::clock().nanos_to_ticks(u64::from(us) * 1000);
            local.add_timer(COALESCE_TIMER, time::rdtsc() + ticks, 0, |_, _| {});
        }
        (None, _) => local.cancel_timer(COALESCE_TIMER),
        _ => {}
    }
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

fn arm_watchdog<S: HasNic>(local: &mut Local<S>) {
    if let Some(mine) = local.state.as_mut().as_mut() {
        mine.watchdog_armed = true;
    }
    let period = crate::arch::time::clock().nanos_to_ticks(WATCHDOG_PERIOD_NS);
    local.add_timer(WATCHDOG_TIMER, time::rdtsc() + period, period, watchdog);
}

/// The transmit watchdog's tick (every 5 ms while frames sit with the
/// device); it stops itself once nothing is left with the device.
fn watchdog<S: HasNic>(local: &mut Local<S>, _: Expired) {
    let Some(nic) = NIC.get() else { return };
    let cpu = local.cpu.index;
    let Some(mine) = local.state.as_mut().as_mut() else {
        local.cancel_timer(WATCHDOG_TIMER);
        return;
    };
    let Some((verdict, txq, state, count)) = mine.with_tx(|t| {
        let v = t.watchdog_tick(&nic.doorbells);
        (v, t.index, t.ring_state(), t.stats().watchdog)
    }) else {
        local.cancel_timer(WATCHDOG_TIMER);
        return;
    };
    match verdict {
        Watchdog::Idle => {
            mine.watchdog_armed = false;
            local.cancel_timer(WATCHDOG_TIMER);
        }
        Watchdog::Progress => {}
        Watchdog::Silent => {
            if count == 1 {
                info!(
                    "virtio-net: cpu{cpu} txq {txq}: no progress for {} ms: notified the device again ({state}); \
                     later ones are counted in net-stats",
                    WATCHDOG_PERIOD_NS / 1_000_000,
                );
            }
        }
        Watchdog::Stalled(state) => warn!(
            "virtio-net: cpu{cpu} txq {txq}: the device has sent nothing for {} ms despite {} notifications \
             ({state}); frames are dropped while the ring is full",
            STALL_TICKS as u64 * WATCHDOG_PERIOD_NS / 1_000_000,
            count
        ),
    }
}

fn drops(s: &QueueStats) -> [(&'static str, u64); 7] {
    [
        ("bad_len", s.drop_bad_len),
        ("bad_id", s.drop_bad_id),
        ("header", s.drop_header),
        ("merge", s.drop_merge),
        ("too_long", s.drop_too_long),
        ("offload", s.drop_offload),
        ("csum", s.drop_csum),
    ]
}

/// Logs this vCPU's queue counters and interrupt counts (`net-stats:`,
/// when it owns a pair) and its steering and connection counters
/// (`net-cpu:`).
fn report<S: HasNic>(local: &mut Local<S>) {
    let Some(nic) = NIC.get() else { return };
    let cpu = local.cpu;
    let Some(mine) = local.state.as_mut().as_mut() else { return };
    let irqs = |q: u16| cpu.stats.queue_irqs.get(q as usize).map_or(0, |a| a.load(Ordering::Relaxed));
    let mut own = [u16::MAX; 2];
    let tx = mine.with_tx(|t| (t.index, t.stats()));
    if let (Some(rx), Some((txq, t))) = (mine.rx.as_mut(), tx) {
        let r = rx.stats();
        own = [rx.index, txq];
        let mut line = alloc::format!(
            "net-stats: cpu{} rxq {} packets {} bytes {} irqs {} polls {} kicks {} no_buffers {} merged {} large {} csum_checked {} rescues {} watchdog {} starved {} nudges {} drops",
            cpu.index, rx.index, r.packets, r.bytes, irqs(rx.index), r.polls, r.kicks, r.no_buffers, r.merged,
            r.large, r.csum_checked, r.rescues, r.watchdog, rx.starved_refills(), mine.nudges,
        );
        for (name, n) in drops(&r) {
            line.push_str(&alloc::format!(" {name} {n}"));
        }
        line.push_str(&alloc::format!(
            " | txq {} packets {} bytes {} large {} irqs {} full {} kicks {} rescues {} watchdog {} drops",
            txq,
            t.packets,
            t.bytes,
            t.large,
            irqs(txq),
            t.full,
            t.kicks,
            t.rescues,
            t.watchdog
        ));
        for (name, n) in drops(&t).into_iter().filter(|(name, _)| matches!(*name, "bad_len" | "bad_id" | "too_long")) {
            line.push_str(&alloc::format!(" {name} {n}"));
        }
        info!("{line}");
    }
    let (c, k, inbox) = (mine.net.connections(), mine.net.counters(), mine.net.inbox_stats(nic.fabric));
    let outbox = mine.outbox.map(|o| o.stats()).unwrap_or_default();
    info!(
        "net-cpu: cpu{} accepted {} active {} closed {} reset {} misses {} splits {} split_pieces {} inbox_in {} inbox_drops {} handoff_out {} handoff_drops {} resets_sent {} resets_unowned {} zero_window_acks {} duplicate_syns {}",
        cpu.index,
        c.accepted,
        c.active,
        c.closed,
        c.reset,
        k.misses,
        k.splits,
        k.split_pieces,
        k.inbox_in,
        inbox.dropped(),
        k.handoff_out,
        outbox.dropped(),
        k.resets,
        k.resets_unowned,
        k.zero_window_acks,
        c.duplicate_syns,
    );
    let foreign: u64 = cpu
        .stats
        .queue_irqs
        .iter()
        .enumerate()
        .filter(|(q, _)| !own.contains(&(*q as u16)))
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

/// What `GET /metrics` (port 9100) shows, one row per network vCPU; the
/// values are published in this order by [`publish`].
static SERIES: [Series; 31] = [
    Series::counter("rx_packets", "Frames received on the vCPU's own receive queue."),
    Series::counter("rx_bytes", "Bytes received on the vCPU's own receive queue."),
    Series::counter("rx_kicks", "Receive queue notifications to the device."),
    Series::counter("rx_irqs", "Receive queue interrupts."),
    Series::counter("rx_drops", "Received frames dropped (bad device input, too long, bad checksum)."),
    Series::counter("rx_large", "Coalesced segments received (GUEST_TSO: up to 64 KiB each)."),
    Series::counter("rx_csum_checked", "Received frames whose TCP/UDP checksum the driver checked itself."),
    Series::counter("tx_packets", "Frames queued on the transmit queue this vCPU owns."),
    Series::counter("tx_bytes", "Bytes queued on the transmit queue this vCPU owns."),
    Series::counter("tx_large", "TCP segments of up to 64 KiB handed to the device to cut (HOST_TSO4/6)."),
    Series::counter("tx_kicks", "Transmit queue notifications to the device."),
    Series::counter("tx_irqs", "Transmit queue interrupts."),
    Series::counter("tx_full", "Frames dropped because the transmit ring was full."),
    Series::counter("tx_drops", "Transmit completions dropped (bad device input)."),
    Series::counter("rescues", "Notifications the device did not ask for (lost-notification rescues)."),
    Series::counter("tx_watchdog", "Transmit watchdog notifications."),
    Series::counter("tcp_accepted", "TCP connections accepted by this vCPU's services."),
    Series::gauge("tcp_active", "TCP connections open on this vCPU."),
    Series::counter("tcp_closed", "TCP connections closed in order."),
    Series::counter("tcp_reset", "TCP connections reset or timed out."),
    Series::counter("steer_misses", "Frames of another vCPU's flow received here and handed to its inbox."),
    Series::counter("steer_splits", "Coalesced segments of another vCPU's flow split to fit its inbox."),
    Series::counter("inbox_in", "Frames this vCPU took from its inbox."),
    Series::counter("inbox_drops", "Frames other vCPUs could not hand to this vCPU (inbox full)."),
    Series::counter("cpu_busy_ns", "Time the vCPU spent working."),
    Series::counter("cpu_halted_ns", "Time the vCPU spent halted."),
    Series::counter("interrupts", "Interrupts the vCPU took."),
    Series::counter("timer_writes", "Halts that wrote the APIC timer (deadline changed or spent)."),
    Series::counter("timer_unchanged", "Halts that found the APIC timer armed for their deadline."),
    Series::counter(
        "ingress_cycles",
        "TSC ticks of network rounds spent receiving: taking frames from the queue and inbox through the stack.",
    ),
    Series::counter(
        "egress_cycles",
        "TSC ticks of network rounds spent on the rest: services, the stack's egress, transmitting.",
    ),
];

/// The metrics board, one row per network vCPU (set once at bring-up).
static METRICS: spin::Once<Board> = spin::Once::new();

/// Creates the board for the network vCPUs `cpus` (per-CPU indices), of
/// which the first `pairs` own a queue pair.
pub(super) fn create_board(cpus: &[u32], pairs: u16) {
    let labels = cpus
        .iter()
        .enumerate()
        .map(|(n, &c)| match u16::try_from(n).ok().filter(|&p| p < pairs) {
            Some(p) => alloc::format!(
                "cpu=\"{c}\",rxq=\"{}\",txq=\"{}\"",
                drivers::virtio::net::rx_queue(p),
                drivers::virtio::net::tx_queue(p)
            ),
            None => alloc::format!("cpu=\"{c}\""),
        })
        .collect();
    METRICS.call_once(|| Board::new(&SERIES, labels));
}

/// Copies this vCPU's counters into its row of the board.
fn publish<S: HasNic>(local: &mut Local<S>) {
    let (Some(board), Some(nic)) = (METRICS.get(), NIC.get()) else { return };
    let cpu = local.cpu;
    let Some(mine) = local.state.as_mut().as_mut() else { return };
    let irqs = |q: u16| cpu.stats.queue_irqs.get(q as usize).map_or(0, |a| a.load(Ordering::Relaxed));
    let (r, rxq) = match mine.rx.as_mut() {
        Some(rx) => (rx.stats(), Some(rx.index)),
        None => (QueueStats::default(), None),
    };
    let (t, txq) = match mine.with_tx(|t| (t.stats(), t.index)) {
        Some((t, q)) => (t, Some(q)),
        None => (QueueStats::default(), None),
    };
    let (c, k, inbox) = (mine.net.connections(), mine.net.counters(), mine.net.inbox_stats(nic.fabric));
    let clock = crate::arch::time::clock();
    let values = [
        r.packets,
        r.bytes,
        r.kicks,
        rxq.map_or(0, irqs),
        r.dropped(),
        r.large,
        r.csum_checked,
        t.packets,
        t.bytes,
        t.large,
        t.kicks,
        txq.map_or(0, irqs),
        t.full,
        // Only these three can happen on transmit.
        t.dropped(),
        r.rescues + t.rescues,
        t.watchdog,
        c.accepted,
        c.active,
        c.closed,
        c.reset,
        k.misses,
        k.splits,
        k.inbox_in,
        inbox.dropped(),
        clock.ticks_to_nanos(cpu.stats.busy_tsc.load(Ordering::Relaxed)),
        clock.ticks_to_nanos(cpu.stats.halted_tsc.load(Ordering::Relaxed)),
        cpu.stats.interrupts.load(Ordering::Relaxed),
        cpu.stats.timer_writes.load(Ordering::Relaxed),
        cpu.stats.timer_unchanged.load(Ordering::Relaxed),
        mine.ingress_cycles,
        mine.egress_cycles,
    ];
    board.publish(mine.id as usize, &values);
}
