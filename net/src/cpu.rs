//! One vCPU's network: its smoltcp stack, its services, and the steering of
//! the frames it receives.
//!
//! Every online vCPU runs one [`CpuNet`], whether or not it has a queue
//! pair of its own. A poll round:
//!
//! 1. learns neighbour bindings other vCPUs posted (no frame crosses for it);
//! 2. moves frames other vCPUs handed it for its transmit queue (handoff
//!    mode) onto that queue;
//! 3. receives up to [`BUDGET`] frames, one `poll_ingress_single` each: from
//!    its inbox first (frames of its flows that arrived on another vCPU's
//!    queue), then from its own receive queue, where each TCP/UDP frame's
//!    owner is looked up ([`Steering::owner`]) and frames of other vCPUs'
//!    flows go to their inbox (a steering miss) instead of to this stack;
//!    receive buffers are reposted every [`REFILL_EVERY`] frames, and the
//!    services get fresh listeners as soon as one is taken by a SYN;
//! 4. runs the services (echo, discard, ...) on their connections;
//! 5. transmits what the sockets have to send;
//! 6. reposts receive buffers, takes back sent ones, wakes the vCPUs whose
//!    inbox it filled (once each, at the end), and reports when smoltcp
//!    wants to be polled again (delayed ACKs, retransmits) so the caller
//!    can arm its timer.
//!
//! Nothing here takes a lock shared with another vCPU on the per-packet
//! path except [`TxPath::Shared`] (a transmit queue shared by design) and
//! nothing allocates per packet (accepting a connection allocates its
//! socket buffers).

use alloc::boxed::Box;
use alloc::vec::Vec;

use drivers::virtio::netdev::{hash_report, RxQueue, TxTso};
use smoltcp::iface::{PollIngressSingleResult, PollResult, SocketHandle};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{IpAddress, Ipv4Address};

use crate::device::{is_arp, new_scratch, Checksums, Doorbell, NetDevice, Scratch, TxPath};
use crate::inbox::{Inbox, InboxStats, SLOT_BYTES};
use crate::neighbours::{arp_reply_frame, arp_sender, NeighbourBoard};
use crate::segment::split_tcp;
use crate::services::{ConnCounters, Connection, Services};
use crate::stack::{NetConfig, Stack};
use crate::steer::{NoFreePort, Steering};
use crate::zerowin::ZeroWindows;

/// Frames received per poll round before the round moves on (the stack's
/// transmissions and the services get their turn at least this often).
pub const BUDGET: usize = 64;
/// Receive buffers go back to the device after this many frames, so a
/// burst longer than the ring does not find it without buffers.
pub const REFILL_EVERY: usize = 32;
/// Frames each vCPU's inbox holds.
pub const INBOX_SLOTS: usize = 512;

/// What every vCPU's network shares: read-only after boot, except the
/// inboxes (lock-free) and the neighbour board.
pub struct Fabric {
    pub cfg: NetConfig,
    pub steering: Steering,
    /// One per vCPU: frames of its flows that arrived elsewhere.
    pub inboxes: Vec<Inbox>,
    /// One per queue pair when vCPUs without a queue hand their frames to
    /// the queue's owner ([`TxPath::Handoff`]); empty otherwise.
    pub outboxes: Vec<Inbox>,
    pub neighbours: NeighbourBoard,
    /// The device reports each frame's Toeplitz hash with our key (RSS
    /// programmed and acknowledged): use it instead of computing it.
    pub hash_reported: bool,
    /// Which TCP/UDP checksums the queues take off the stacks' hands (see
    /// [`Checksums`]): the same for every vCPU.
    pub checksums: Checksums,
    /// The IP versions whose 64 KiB TCP segments every transmit queue's
    /// device cuts (HOST_TSO4/6, `TxQueue::set_tso`): the stacks of vCPUs
    /// that transmit on a queue emit them (see `NetDevice::tso`).
    pub tso: TxTso,
}

impl Fabric {
    /// `cpus` vCPUs (≥ 1), flows spread over all of them with `key`;
    /// `outboxes` handoff rings (0 unless vCPUs hand frames over).
    pub fn new(cfg: NetConfig, key: [u8; crate::steer::KEY_LEN], cpus: u16, outboxes: u16) -> Fabric {
        let cpus = cpus.max(1);
        Fabric {
            cfg,
            steering: Steering::new(key, cpus),
            inboxes: (0..cpus).map(|_| Inbox::new(INBOX_SLOTS)).collect(),
            outboxes: (0..outboxes).map(|_| Inbox::new(INBOX_SLOTS)).collect(),
            neighbours: NeighbourBoard::new(),
            hash_reported: false,
            checksums: Checksums::default(),
            tso: TxTso::NONE,
        }
    }
}

/// What one vCPU gets of the NIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Share {
    /// Owns queue pair `pair`; `shared` when vCPUs without a pair transmit
    /// on it too.
    Owner { pair: u16, shared: bool },
    /// Has no pair: receives its flows through its inbox (steered there by
    /// the pairs' owners) and transmits through pair `pair`.
    Sharer { pair: u16 },
}

/// How `pairs` queue pairs serve `cpus` vCPUs: vCPU p < pairs owns pair p;
/// each other vCPU n shares pair n mod pairs, so the sharers spread evenly
/// over the pairs. Every vCPU serves (flows are steered over all of them).
pub fn plan_shares(pairs: u16, cpus: u16) -> Vec<Share> {
    let pairs = pairs.clamp(1, cpus.max(1));
    (0..cpus.max(1))
        .map(|n| match n.checked_sub(pairs) {
            None => Share::Owner { pair: n, shared: n < cpus.saturating_sub(pairs) },
            Some(_) => Share::Sharer { pair: n % pairs },
        })
        .collect()
}

/// Wakes another vCPU (an IPI in the kernel) so that it looks at its inbox.
pub trait Wake {
    fn wake(&self, cpu: u16);
}

/// One vCPU's queues, as it reaches them this round.
pub struct Queues<'a> {
    /// Its own receive queue; `None` for a vCPU without a pair (it receives
    /// through its inbox only).
    pub rx: Option<&'a mut RxQueue>,
    pub tx: TxPath<'a>,
    /// The outbox it drains onto its own transmit queue (handoff mode, for
    /// the owner of a shared pair).
    pub outbox: Option<&'a Inbox>,
}

impl Queues<'_> {
    fn tx(&mut self) -> TxPath<'_> {
        self.parts().1
    }

    /// Both queues, reborrowed for one device.
    fn parts(&mut self) -> (Option<&mut RxQueue>, TxPath<'_>) {
        let tx = match &mut self.tx {
            TxPath::Own(q) => TxPath::Own(q),
            TxPath::Shared(m) => TxPath::Shared(m),
            TxPath::Handoff(o) => TxPath::Handoff(o),
        };
        (self.rx.as_deref_mut(), tx)
    }
}

/// Puts a frame of another vCPU's flow into that vCPU's inbox; a full
/// inbox drops it and counts it (TCP retransmits it). A coalesced segment
/// too long for a slot goes in pieces (see `segment`): returns how many.
/// One that cannot be cut is refused, and counted, by the inbox.
fn hand_over(inbox: &Inbox, frame: &[u8]) -> Option<usize> {
    if frame.len() > SLOT_BYTES {
        let mut piece = [0u8; SLOT_BYTES];
        if let Ok(pieces) = split_tcp(frame, SLOT_BYTES, &mut piece, |p| {
            let _ = inbox.push(p);
        }) {
            return Some(pieces);
        }
    }
    let _ = inbox.push(frame);
    None
}

/// Per-vCPU steering and handoff counters (the queues count their own).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuCounters {
    /// Frames from this vCPU's receive queue that belonged to another
    /// vCPU's flow and were handed to its inbox.
    pub misses: u64,
    /// Frames this vCPU took from its inbox.
    pub inbox_in: u64,
    /// Frames this vCPU moved from its outbox onto its transmit queue.
    pub handoff_out: u64,
    /// TCP resets this vCPU's stack sent, and how many of them answered a
    /// flow another vCPU owns (a steering failure: must stay 0).
    pub resets: u64,
    pub resets_unowned: u64,
    /// Payload-less copies of segments that arrived into a zero window
    /// (see `zerowin`).
    pub zero_window_acks: u64,
    /// Coalesced segments (GUEST_TSO) for another vCPU's flow, too long for
    /// its inbox, that were split (see `segment`), and the pieces made.
    pub splits: u64,
    pub split_pieces: u64,
}

/// What a poll round did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Round {
    /// Something happened: poll again before halting.
    pub busy: bool,
    /// When smoltcp next wants to be polled (a delayed ACK, a retransmit,
    /// a keep-alive), if ever.
    pub poll_at: Option<Instant>,
    /// Cycles (of the `cycles` clock given to [`CpuNet::poll`]) the round
    /// spent on its receive side: neighbour and outbox upkeep, then taking
    /// frames from the queue and the inbox through the stack's ingress. The
    /// rest of the round (services, egress, transmit) is the caller's total
    /// minus this.
    pub ingress_cycles: u64,
}

/// Why an outgoing connection could not be opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectError {
    /// No local port whose replies hash to this vCPU is free.
    NoFreePort,
    Tcp(tcp::ConnectError),
}

impl From<NoFreePort> for ConnectError {
    fn from(_: NoFreePort) -> Self {
        ConnectError::NoFreePort
    }
}

/// One vCPU's network.
pub struct CpuNet {
    /// This vCPU's index among the network's vCPUs (its steering id).
    pub cpu: u16,
    pub stack: Stack,
    pub services: Services,
    counters: CpuCounters,
    neighbours_seen: u32,
    scratch: Box<Scratch>,
    inbox_buf: Box<[u8; SLOT_BYTES]>,
    /// vCPUs whose inbox this round filled: woken once at its end.
    to_wake: Vec<bool>,
    zero_windows: ZeroWindows,
}

impl CpuNet {
    /// vCPU `cpu`'s stack over `queues`, with `services` listening.
    pub fn new<B: Doorbell>(
        cpu: u16,
        fabric: &Fabric,
        mut services: Services,
        queues: &mut Queues<'_>,
        bell: &B,
        now: Instant,
        seed: u64,
    ) -> CpuNet {
        let mut scratch = new_scratch();
        let mut stack = {
            let (rx, tx) = queues.parts();
            let mut dev = NetDevice::new(rx, tx, bell, &mut scratch);
            // smoltcp reads a device's capabilities once, here: the
            // devices of later rounds need not say them again.
            dev.checksums = fabric.checksums;
            dev.tso = fabric.tso;
            Stack::new(&fabric.cfg, &mut dev, now, seed)
        };
        services.listen(&mut stack.sockets);
        CpuNet {
            cpu,
            stack,
            services,
            counters: CpuCounters::default(),
            neighbours_seen: 0,
            scratch,
            inbox_buf: Box::new([0u8; SLOT_BYTES]),
            to_wake: alloc::vec![false; fabric.inboxes.len()],
            zero_windows: ZeroWindows::new(),
        }
    }

    pub fn counters(&self) -> CpuCounters {
        CpuCounters { zero_window_acks: self.zero_windows.copies, ..self.counters }
    }

    pub fn connections(&self) -> ConnCounters {
        self.services.counters()
    }

    /// This vCPU's inbox counters (drops are frames others could not hand
    /// to it).
    pub fn inbox_stats(&self, fabric: &Fabric) -> InboxStats {
        fabric.inboxes[self.cpu as usize].stats()
    }

    /// One poll round (see the module documentation).
    pub fn poll<B: Doorbell>(
        &mut self,
        fabric: &Fabric,
        queues: &mut Queues<'_>,
        bell: &B,
        now: Instant,
        waker: &dyn Wake,
        cycles: fn() -> u64,
    ) -> Round {
        let start = cycles();
        let mut busy = self.catch_up_neighbours(fabric, queues, bell, now);
        busy |= self.drain_outbox(queues, bell);

        let me = self.cpu;
        let cfg = fabric.cfg;
        let now_ms = now.total_millis().max(0) as u64;
        let CpuNet { stack, services, counters, scratch, inbox_buf, to_wake, zero_windows, neighbours_seen, .. } = self;
        let (mut misses, mut splits, mut split_pieces) = (0u64, 0u64, 0u64);
        let mut filter = |frame: &[u8], hash: Option<(u32, u16)>| -> bool {
            if is_arp(frame) {
                if let Some(binding) = arp_sender(frame, &cfg) {
                    fabric.neighbours.post(binding, now_ms);
                }
                return true;
            }
            let owner = match hash.filter(|_| fabric.hash_reported) {
                Some((h, hash_report::TCPV4 | hash_report::UDPV4)) => Some(fabric.steering.owner_of_hash(h)),
                // No hash, or one of the addresses only: ICMP or a fragment
                // (no owner), or TCP/UDP from a device that does not hash
                // ports (its supported hash types lack them), which must
                // still reach its owner. `owner` tells them apart.
                _ => fabric.steering.owner(frame),
            };
            match owner {
                Some(owner) if owner != me => {
                    misses += 1;
                    if let Some(inbox) = fabric.inboxes.get(owner as usize) {
                        if let Some(pieces) = hand_over(inbox, frame) {
                            splits += 1;
                            split_pieces += pieces as u64;
                        }
                        to_wake[owner as usize] = true;
                    }
                    false
                }
                _ => true,
            }
        };
        let (from_inbox, resets, ingress_cycles) = {
            let (rx, tx) = queues.parts();
            let mut dev = NetDevice::new(rx, tx, bell, scratch);
            dev.inbox = Some((&fabric.inboxes[me as usize], inbox_buf));
            dev.filter = Some(&mut filter);
            dev.resets.owner = Some((&fabric.steering, me));
            dev.zero_windows = Some(zero_windows);
            for _ in 0..BUDGET {
                // A binding another vCPU learned meanwhile (its stack
                // answered the host's ARP request, so the host may be
                // pinging this one already): the next round takes it in
                // before the next frame, which could need it for its answer.
                if fabric.neighbours.generation() != *neighbours_seen {
                    busy = true;
                    break;
                }
                if stack.iface.poll_ingress_single(now, &mut dev, &mut stack.sockets) == PollIngressSingleResult::None {
                    break;
                }
                busy = true;
                if services.listener_taken(&stack.sockets) {
                    services.listen(&mut stack.sockets);
                }
                if dev.received.is_multiple_of(REFILL_EVERY) {
                    if let Some(rx) = dev.rx.as_deref_mut() {
                        rx.refill(bell);
                    }
                }
            }
            // The frame behind a zero-window copy (see `zerowin`) is not
            // left behind when the budget ends between the two.
            if dev.has_pending() {
                stack.iface.poll_ingress_single(now, &mut dev, &mut stack.sockets);
            }
            // Idle: the listeners a new stack has yet to make (see
            // `Services::listen`), a few per round.
            if !busy && services.needs_listeners(&stack.sockets) {
                services.listen(&mut stack.sockets);
                busy = true;
            }
            let ingress = cycles().wrapping_sub(start);
            busy |= services.run(&mut stack.sockets, now);
            busy |= stack.iface.poll_egress(now, &mut dev, &mut stack.sockets) != PollResult::None;
            (dev.from_inbox, (dev.resets.count, dev.resets.unowned), ingress)
        };

        counters.misses += misses;
        counters.splits += splits;
        counters.split_pieces += split_pieces;
        counters.inbox_in += from_inbox as u64;
        counters.resets += resets.0 as u64;
        counters.resets_unowned += resets.1 as u64;

        if let Some(rx) = queues.rx.as_deref_mut() {
            rx.refill(bell);
        }
        // One deferred notification for everything this round queued.
        match &mut queues.tx {
            TxPath::Own(q) => {
                q.publish(bell);
                q.reclaim();
            }
            TxPath::Shared(m) => {
                let mut q = m.lock();
                q.publish(bell);
                q.reclaim();
            }
            TxPath::Handoff(_) => {}
        }
        // Connections the services asked for (an iperf3 client's streams):
        // opened now, their SYNs sent in the next round, which comes at once.
        if self.services.connects_pending() {
            busy = true;
            let start = now.total_micros() as u32 ^ u32::from(self.cpu).rotate_left(16);
            for c in self.services.take_connects() {
                let _ = self.connect(fabric, c.remote, c.port, start, c.conn);
            }
        }
        for (cpu, wake) in self.to_wake.iter_mut().enumerate() {
            if core::mem::take(wake) {
                waker.wake(cpu as u16);
            }
        }
        let poll_at = match (self.stack.iface.poll_at(now, &self.stack.sockets), self.services.poll_at()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Round { busy, poll_at, ingress_cycles }
    }

    /// Bindings other vCPUs learned, fed to this stack as ARP replies
    /// addressed to it (they fill its neighbour cache and send nothing).
    fn catch_up_neighbours<B: Doorbell>(
        &mut self,
        fabric: &Fabric,
        queues: &mut Queues<'_>,
        bell: &B,
        now: Instant,
    ) -> bool {
        if fabric.neighbours.generation() == self.neighbours_seen {
            return false;
        }
        let cfg = fabric.cfg;
        let CpuNet { stack, scratch, neighbours_seen, .. } = self;
        *neighbours_seen = fabric.neighbours.catch_up(*neighbours_seen, |binding| {
            let frame = arp_reply_frame(binding, &cfg);
            let mut dev = NetDevice::new(None, queues.tx(), bell, scratch);
            dev.injected = Some(&frame);
            stack.iface.poll_ingress_single(now, &mut dev, &mut stack.sockets);
        });
        true
    }

    /// Handoff mode, on the owner of a shared pair: frames other vCPUs
    /// handed over go out on this vCPU's queue.
    fn drain_outbox<B: Doorbell>(&mut self, queues: &mut Queues<'_>, bell: &B) -> bool {
        let Some(outbox) = queues.outbox else { return false };
        let mut moved = 0u64;
        while !outbox.is_empty() {
            let room = match &mut queues.tx {
                TxPath::Own(q) => q.has_room(bell),
                _ => false,
            };
            if !room {
                break;
            }
            let Some(len) = outbox.pop(&mut self.inbox_buf[..]) else { break };
            if let TxPath::Own(q) = &mut queues.tx {
                let frame = &self.inbox_buf[..len];
                let _ = q.send(len, bell, |buf| buf.copy_from_slice(frame));
            }
            moved += 1;
        }
        self.counters.handoff_out += moved;
        moved > 0
    }

    /// Opens a TCP connection from this vCPU to `remote`:`port`, from a
    /// local port whose replies hash to this vCPU (so they need no
    /// steering), served by `conn`. `start` is a random number that spreads
    /// the port search.
    pub fn connect(
        &mut self,
        fabric: &Fabric,
        remote: [u8; 4],
        port: u16,
        start: u32,
        conn: Box<dyn Connection>,
    ) -> Result<SocketHandle, ConnectError> {
        let (services, sockets) = (&self.services, &self.stack.sockets);
        let local = fabric
            .steering
            .pick_local_port(self.cpu, fabric.cfg.ip, remote, port, start, |p| services.ports_in_use(sockets, p))?;
        let [a, b, c, d] = remote;
        let remote = (IpAddress::Ipv4(Ipv4Address::new(a, b, c, d)), port);
        let cx = self.stack.iface.context();
        self.services.connect(cx, &mut self.stack.sockets, remote, local, conn).map_err(ConnectError::Tcp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_vcpu_serves_and_sharers_spread_over_the_pairs() {
        use Share::*;
        assert_eq!(plan_shares(4, 4), [0, 1, 2, 3].map(|pair| Owner { pair, shared: false }));
        assert_eq!(
            plan_shares(2, 4),
            [Owner { pair: 0, shared: true }, Owner { pair: 1, shared: true }, Sharer { pair: 0 }, Sharer { pair: 1 }]
        );
        assert_eq!(
            plan_shares(1, 4),
            [Owner { pair: 0, shared: true }, Sharer { pair: 0 }, Sharer { pair: 0 }, Sharer { pair: 0 }]
        );
        assert_eq!(
            plan_shares(2, 3),
            [Owner { pair: 0, shared: true }, Owner { pair: 1, shared: false }, Sharer { pair: 0 }]
        );
        // More pairs than vCPUs: the extra pairs are not used.
        assert_eq!(plan_shares(8, 2), [Owner { pair: 0, shared: false }, Owner { pair: 1, shared: false }]);
        for pairs in 1..=8u16 {
            for cpus in 1..=16u16 {
                let plan = plan_shares(pairs, cpus);
                assert_eq!(plan.len(), cpus as usize);
                let usable = pairs.min(cpus);
                let mut load = std::vec![0usize; usable as usize];
                for s in &plan {
                    let (Owner { pair, .. } | Sharer { pair }) = *s;
                    assert!(pair < usable);
                    load[pair as usize] += 1;
                }
                let (lo, hi) = (load.iter().min().unwrap(), load.iter().max().unwrap());
                assert!(hi - lo <= 1, "{pairs} pairs, {cpus} cpus: {load:?}");
                for (p, &n) in load.iter().enumerate() {
                    assert_eq!(plan[p], Owner { pair: p as u16, shared: n > 1 });
                }
            }
        }
    }
}
