//! Raw driver mode (`raw=rxonly|txonly|macswap`): each vCPU that owns a
//! queue pair moves frames on it with no TCP/IP stack and no services
//! (`net::raw` is the data path; `kernel::raw` the options, the frame and
//! the counter line). The rest of the vCPUs stay idle.
//!
//! Like the stack path (`cpu`), the loop keeps the receive interrupt off
//! while rounds move frames and turns it back on, re-checking for a race,
//! before the vCPU halts; a full transmit ring asks for a completion
//! interrupt; a watchdog on the vCPU's timer renotifies a silent device;
//! a queue that breaks the ring protocol stops the network. Every
//! `net-stats=` period (1 s by default here) each vCPU prints its pair's
//! `raw-stats:` line.

use alloc::boxed::Box;
use core::sync::atomic::Ordering;

use drivers::virtio::netdev::{RxQueue, TxQueue, Watchdog, STALL_TICKS};
use kernel::raw::{
    peer_ip, Mac, Origin, RawCounters, RawMode, StatsLine, UdpFrame, COUNT_REACHED, DISCARD_PORT, READY, TX_PORT_BASE,
};
use log::{error, info, warn};
use net::raw::{Mode, RawPair};

use super::cpu::Claim;
use super::{fail, watch_link, Nic, NIC, NIC_DONE};
use crate::arch::time;
use crate::runloop::{Local, Poll};

const STATS_TIMER: u32 = 4;
const POLL_TIMER: u32 = 5;
const WATCHDOG_TIMER: u32 = 6;
const START_TIMER: u32 = 7;
/// Counter lines every this often unless `net-stats=` says otherwise.
const DEFAULT_STATS_MS: u64 = 1000;
/// Without MSI-X, how often an owner polls its queues.
const POLL_INTERVAL_NS: u64 = 1_000_000;
/// How often the transmit watchdog looks while frames sit with the device.
const WATCHDOG_PERIOD_NS: u64 = 5_000_000;

/// One vCPU's queue pair in raw mode.
pub struct RawNic {
    cpu: u32,
    rx: RxQueue,
    tx: TxQueue,
    pair: RawPair,
    mode: RawMode,
    watchdog_armed: bool,
}

/// Per-CPU state that carries a raw pair (composed in `main.rs`).
pub trait HasRaw: AsMut<Option<RawNic>> {}
impl<S: AsMut<Option<RawNic>>> HasRaw for S {}

fn ticks(ns: u64) -> u64 {
    time::clock().nanos_to_ticks(ns)
}

/// Every CPU, instead of `cpu::claim` when `raw=` is set: once the NIC is
/// up, take this vCPU's pair (if it owns one) and start polling it.
pub fn claim<S: HasRaw>(local: &mut Local<S>) -> Poll {
    if !NIC_DONE.load(Ordering::Acquire) {
        return Poll::Idle;
    }
    let Some(nic) = NIC.get() else { return Poll::Done };
    let options = crate::boot_options().raw;
    let (Some(mode), false) = (options.mode, nic.failed.load(Ordering::Acquire)) else { return Poll::Done };
    let Some(id) = nic.cpus.iter().position(|&c| c == local.cpu.index) else { return Poll::Done };
    if id == 0 {
        local.add_work(watch_link);
        announce(nic, mode);
    }
    let Some((rx, tx)) = nic.unclaimed.get(id).and_then(|slot| slot.lock().take()).and_then(Claim::into_pair) else {
        return Poll::Done;
    };
    let frame = match mode {
        RawMode::TxOnly => {
            let cfg = nic.fabric.cfg;
            let mut frame = alloc::vec![0u8; usize::from(options.len)].into_boxed_slice();
            let spec = UdpFrame {
                dst_mac: options.destination(),
                src_mac: cfg.mac,
                src_ip: cfg.ip,
                dst_ip: peer_ip(cfg.ip, cfg.prefix_len),
                src_port: TX_PORT_BASE.wrapping_add(id as u16),
                dst_port: DISCARD_PORT,
                origin: Origin::Guest,
                seq: 0,
            };
            if let Err(e) = spec.write(&mut frame) {
                error!("raw: cpu{}: cannot build the txonly frame ({e:?}); this pair stays idle", local.cpu.index);
                return Poll::Done;
            }
            frame
        }
        RawMode::RxOnly | RawMode::MacSwap => Box::default(),
    };
    let net_mode = match mode {
        RawMode::RxOnly => Mode::RxOnly,
        RawMode::TxOnly => Mode::TxOnly,
        RawMode::MacSwap => Mode::MacSwap,
    };
    let limit = options.count.filter(|_| mode == RawMode::TxOnly);
    let mut pair = RawPair::new(net_mode, frame, limit);
    if mode == RawMode::TxOnly && options.delay_ms > 0 {
        pair.set_transmitting(false);
        let delay = ticks(u64::from(options.delay_ms) * 1_000_000);
        local.add_timer(START_TIMER, time::rdtsc() + delay, 0, start);
    }
    if nic.polled {
        let period = ticks(POLL_INTERVAL_NS);
        local.add_timer(POLL_TIMER, time::rdtsc() + period, period, |_, _| {});
    }
    let ms = crate::boot_options().net_stats_ms.map_or(DEFAULT_STATS_MS, u64::from);
    let period = ticks(ms * 1_000_000);
    local.add_timer(STATS_TIMER, time::rdtsc() + period, period, |l, _| report(l));
    *local.state.as_mut() = Some(RawNic { cpu: local.cpu.index, rx, tx, pair, mode, watchdog_armed: false });
    local.add_work(poll);
    Poll::Done
}

/// The boot CPU's line that says raw mode runs (the host may start).
fn announce(nic: &Nic, mode: RawMode) {
    let options = crate::boot_options().raw;
    let cfg = nic.fabric.cfg;
    let what = match mode {
        RawMode::RxOnly => alloc::string::String::from("receive and count every frame, transmit nothing"),
        RawMode::MacSwap => alloc::string::String::from("send every frame back on its pair, MAC addresses swapped"),
        RawMode::TxOnly => {
            let [a, b, c, d] = cfg.ip;
            let [e, f, g, h] = peer_ip(cfg.ip, cfg.prefix_len);
            alloc::format!(
                "transmit {}-byte UDP frames {a}.{b}.{c}.{d}:{}+pair -> {e}.{f}.{g}.{h}:{DISCARD_PORT} to {}, {}, \
                 starting in {} ms",
                options.len,
                TX_PORT_BASE,
                Mac(options.destination()),
                match options.count {
                    Some(n) => alloc::format!("{n} per pair"),
                    None => alloc::string::String::from("until stopped"),
                },
                options.delay_ms
            )
        }
    };
    info!("{READY} {mode} on {} queue pairs, no TCP/IP stack: {what}", nic.pairs);
    if nic.cpus.len() > usize::from(nic.pairs) {
        info!("raw: cpus {}..{} own no queue pair and stay idle", nic.pairs, nic.cpus.len() - 1);
    }
    let txonly_options =
        options.count.is_some() || options.dst.is_some() || options.len != kernel::raw::MIN_LEN || options.delay_ms > 0;
    if mode != RawMode::TxOnly && txonly_options {
        warn!("raw: raw-len, raw-count, raw-dst and raw-delay apply to raw=txonly only; ignored in {mode}");
    }
}

/// `raw-delay` is over: txonly starts (the loop polls after every timer).
fn start<S: HasRaw>(local: &mut Local<S>, _: kernel::timers::Expired) {
    if let Some(me) = local.state.as_mut().as_mut() {
        me.pair.set_transmitting(true);
    }
}

/// One round on this vCPU's pair (`net::raw`), NAPI style.
fn poll<S: HasRaw>(local: &mut Local<S>) -> Poll {
    let Some(nic) = NIC.get() else { return Poll::Done };
    if nic.failed.load(Ordering::Relaxed) {
        // The device was reset: these queues are dead memory now.
        *local.state.as_mut() = None;
        local.cancel_timer(WATCHDOG_TIMER);
        local.cancel_timer(STATS_TIMER);
        return Poll::Done;
    }
    let Some(me) = local.state.as_mut().as_mut() else { return Poll::Done };
    let bell = &nic.doorbells;
    me.rx.queue_mut().disable_interrupts();
    let round = me.pair.poll(&mut me.rx, &mut me.tx, bell);
    if round.limit_reached {
        info!("raw: cpu{} txonly: {} frames queued on txq {}: {COUNT_REACHED}", me.cpu, me.pair.sent(), me.tx.index);
    }
    let broken = match (me.rx.broken(), me.tx.broken()) {
        (Some(why), _) => Some((me.rx.index, why)),
        (None, Some(why)) => Some((me.tx.index, why)),
        (None, None) => None,
    };
    if let Some((queue, why)) = broken {
        fail(nic, me.cpu, queue, why);
        return Poll::Busy;
    }
    let arm = me.tx.needs_watchdog() && !me.watchdog_armed;
    let state = if round.busy {
        Poll::Busy
    } else {
        // Going idle: the device must have heard of every buffer and
        // frame, and receive interrupts go back on (completions that raced
        // in mean another round).
        me.rx.flush(bell);
        me.tx.flush(bell);
        if me.rx.queue_mut().enable_interrupts() {
            Poll::Busy
        } else {
            Poll::Idle
        }
    };
    if arm {
        me.watchdog_armed = true;
        let period = ticks(WATCHDOG_PERIOD_NS);
        local.add_timer(WATCHDOG_TIMER, time::rdtsc() + period, period, watchdog);
    }
    state
}

/// Every 5 ms while frames sit with the device: renotify a silent device
/// (backing off), report a stall once, stop when nothing is in flight.
fn watchdog<S: HasRaw>(local: &mut Local<S>, _: kernel::timers::Expired) {
    let (Some(nic), Some(me)) = (NIC.get(), local.state.as_mut().as_mut()) else {
        local.cancel_timer(WATCHDOG_TIMER);
        return;
    };
    match me.tx.watchdog_tick(&nic.doorbells) {
        Watchdog::Idle => {
            me.watchdog_armed = false;
            local.cancel_timer(WATCHDOG_TIMER);
        }
        Watchdog::Progress | Watchdog::Silent => {}
        Watchdog::Stalled(state) => warn!(
            "raw: cpu{} txq {}: the device has sent nothing for {} ms despite notifications ({state})",
            me.cpu,
            me.tx.index,
            u64::from(STALL_TICKS) * WATCHDOG_PERIOD_NS / 1_000_000
        ),
    }
}

/// This vCPU's `raw-stats:` line.
fn report<S: HasRaw>(local: &mut Local<S>) {
    let stats = &local.cpu.stats;
    let Some(me) = local.state.as_mut().as_mut() else { return };
    let irqs = |q: u16| stats.queue_irqs.get(usize::from(q)).map_or(0, |a| a.load(Ordering::Relaxed));
    let (r, t) = (me.rx.stats(), me.tx.stats());
    let counters = RawCounters {
        rx: r.packets,
        rx_bytes: r.bytes,
        tx: t.packets,
        tx_bytes: t.bytes,
        drops: r.dropped() + t.drop_too_long + t.full,
        rx_kicks: r.kicks,
        tx_kicks: t.kicks,
        rx_irqs: irqs(me.rx.index),
        tx_irqs: irqs(me.tx.index),
        full: me.pair.full_rounds(),
        no_buffers: r.no_buffers,
        rescues: r.rescues + t.rescues,
        watchdog: t.watchdog,
    };
    info!("{}", StatsLine { cpu: me.cpu, mode: me.mode, rxq: me.rx.index, txq: me.tx.index, counters: &counters });
}
