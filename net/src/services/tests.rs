//! The services as a client on the host sees them: a guest stack running
//! `Services` (echo and discard) and a host stack with plain smoltcp client
//! sockets, back to back over an in-memory Ethernet link, on a virtual clock
//! (1 ms per busy step; idle stretches jump straight to the next timer, so
//! retransmission timeouts and keep-alives cost no real time).
//!
//! The guest is driven the way a vCPU loop drives it: packets are taken in
//! one at a time, with listeners replaced between them when
//! `listener_taken` says so; then the services run, then everything queued
//! goes out; an idle round makes the listeners still missing
//! (`needs_listeners`).

use std::collections::VecDeque;

use smoltcp::iface::{PollIngressSingleResult, PollResult, SocketHandle, SocketSet};
use smoltcp::phy::{self, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{IpAddress, Ipv4Address, TcpControl, TcpRepr};

use super::echo::EchoConnection;
use super::*;
use crate::stack::{NetConfig, Stack};
use crate::test_support::client::StreamCheck;
use crate::test_support::frames;

const GUEST: NetConfig =
    NetConfig { mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56], ip: [10, 99, 0, 2], prefix_len: 24, gateway: None };
const HOST: NetConfig = NetConfig { mac: [0x02, 0, 0, 0, 0, 1], ip: [10, 99, 0, 1], prefix_len: 24, gateway: None };
pub(super) const GUEST_IP: IpAddress = IpAddress::Ipv4(Ipv4Address::new(10, 99, 0, 2));
const HOST_IP: IpAddress = IpAddress::Ipv4(Ipv4Address::new(10, 99, 0, 1));
const MIB: usize = 1024 * 1024;
pub(super) const MS: Duration = Duration::from_millis(1);

/// The request/response service's tests, on this file's in-memory link.
#[path = "rr_tests.rs"]
mod rr_tests;

/// The ports of a TCP segment in an Ethernet frame, and the segment.
fn tcp_of(frame: &[u8]) -> Option<(u16, u16, TcpRepr<'_>)> {
    let (src, dst, tcp) = frames::tcp_in(frame)?;
    let repr = TcpRepr::parse(&tcp, &src.into(), &dst.into(), &ChecksumCapabilities::default()).ok()?;
    Some((repr.src_port, repr.dst_port, repr))
}

/// Which frames are lost.
type Loss = Box<dyn FnMut(&[u8]) -> bool>;

/// Loses every `n`th frame, either way, whatever it carries.
fn every_nth_frame(n: usize) -> Loss {
    let mut sent = 0;
    Box::new(move |_| {
        sent += 1;
        sent % n == 0
    })
}

/// Loses every TCP segment from or to `port`.
fn blackhole(port: u16) -> Loss {
    Box::new(move |frame| tcp_of(frame).is_some_and(|(src, dst, _)| src == port || dst == port))
}

/// What happens to the frames sent on the link.
#[derive(Default)]
struct Fate {
    /// Drop every frame: the cable is pulled.
    cut: bool,
    loss: Option<Loss>,
    dropped: usize,
}

impl Fate {
    fn delivers(&mut self, frame: &[u8]) -> bool {
        let lost = self.cut || self.loss.as_mut().is_some_and(|lose| lose(frame));
        self.dropped += lost as usize;
        !lost
    }
}

/// The cable between the guest and the host.
#[derive(Default)]
pub(super) struct Link {
    to_guest: VecDeque<Vec<u8>>,
    to_host: VecDeque<Vec<u8>>,
    fate: Fate,
}

/// One end of the link as a smoltcp device: Ethernet, 1514-byte frames.
struct Nic<'a> {
    rx: &'a mut VecDeque<Vec<u8>>,
    tx: &'a mut VecDeque<Vec<u8>>,
    fate: &'a mut Fate,
}

struct RxFrame(Vec<u8>);

struct TxFrame<'a> {
    queue: &'a mut VecDeque<Vec<u8>>,
    fate: &'a mut Fate,
}

impl phy::RxToken for RxFrame {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxFrame<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let r = f(&mut frame);
        if self.fate.delivers(&frame) {
            self.queue.push_back(frame);
        }
        r
    }
}

impl phy::Device for Nic<'_> {
    type RxToken<'b>
        = RxFrame
    where
        Self: 'b;
    type TxToken<'b>
        = TxFrame<'b>
    where
        Self: 'b;

    fn receive(&mut self, _now: Instant) -> Option<(RxFrame, TxFrame<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((RxFrame(frame), TxFrame { queue: self.tx, fate: self.fate }))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxFrame<'_>> {
        Some(TxFrame { queue: self.tx, fate: self.fate })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}

/// The guest with its services, the host, and the cable.
pub(super) struct World {
    pub(super) now: Instant,
    pub(super) link: Link,
    pub(super) guest: Stack,
    pub(super) services: Services,
    pub(super) host: Stack,
    /// Re-listen after every packet the guest receives, as the vCPU loop
    /// does (off: only in `run`, after a whole batch).
    pub(super) relisten_per_packet: bool,
}

impl World {
    pub(super) fn new(cfg: TcpConfig, services: Vec<Box<dyn TcpService>>) -> World {
        let mut link = Link::default();
        let now = Instant::from_millis(1);
        let guest = {
            let mut nic = Nic { rx: &mut link.to_guest, tx: &mut link.to_host, fate: &mut link.fate };
            Stack::new(&GUEST, &mut nic, now, 0x1234_5678)
        };
        let host = {
            let mut nic = Nic { rx: &mut link.to_host, tx: &mut link.to_guest, fate: &mut link.fate };
            Stack::new(&HOST, &mut nic, now, 0x8765_4321)
        };
        let mut world = World { now, link, guest, services: Services::new(cfg), host, relisten_per_packet: true };
        for s in services {
            world.services.add(s);
        }
        world.services.listen(&mut world.guest.sockets);
        world
    }

    /// Echo and discard with the default configuration.
    pub(super) fn standard() -> World {
        World::new(TcpConfig::default(), vec![Box::new(Echo), Box::new(Discard)])
    }

    /// Sockets in the guest's set.
    pub(super) fn guest_sockets(&self) -> usize {
        self.guest.sockets.iter().count()
    }

    /// Sockets the guest keeps listening when nothing else is going on.
    pub(super) fn idle_guest_sockets(&self) -> usize {
        self.services.config().backlog * self.services.ports().count()
    }

    /// A host client socket connecting to the guest's `port`.
    pub(super) fn client(&mut self, port: u16, local_port: u16) -> SocketHandle {
        let mut socket =
            tcp::Socket::new(tcp::SocketBuffer::new(vec![0; 256 * 1024]), tcp::SocketBuffer::new(vec![0; 256 * 1024]));
        socket.connect(self.host.iface.context(), (GUEST_IP, port), local_port).unwrap();
        self.host.sockets.add(socket)
    }

    pub(super) fn host_socket(&mut self, handle: SocketHandle) -> &mut tcp::Socket<'static> {
        self.host.sockets.get_mut::<tcp::Socket>(handle)
    }

    pub(super) fn host_state(&self, handle: SocketHandle) -> tcp::State {
        self.host.sockets.get::<tcp::Socket>(handle).state()
    }

    /// The guest's turn: everything received, the services, everything to
    /// send, until nothing more happens. True if anything did.
    pub(super) fn guest_poll(&mut self) -> bool {
        let World { now, link, guest, services, relisten_per_packet, .. } = self;
        let mut nic = Nic { rx: &mut link.to_guest, tx: &mut link.to_host, fate: &mut link.fate };
        let mut busy = false;
        for _ in 0..1000 {
            let mut round = false;
            while guest.iface.poll_ingress_single(*now, &mut nic, &mut guest.sockets) != PollIngressSingleResult::None {
                round = true;
                if *relisten_per_packet && services.listener_taken(&guest.sockets) {
                    services.listen(&mut guest.sockets);
                }
            }
            if !round && services.needs_listeners(&guest.sockets) {
                services.listen(&mut guest.sockets);
                round = true;
            }
            round |= services.run(&mut guest.sockets, *now);
            while guest.iface.poll_egress(*now, &mut nic, &mut guest.sockets) == PollResult::SocketStateChanged {
                round = true;
            }
            if !round {
                return busy;
            }
            busy = true;
        }
        panic!("the guest keeps reporting progress");
    }

    /// The host's turn.
    pub(super) fn host_poll(&mut self) -> bool {
        let mut nic = Nic { rx: &mut self.link.to_host, tx: &mut self.link.to_guest, fate: &mut self.link.fate };
        self.host.iface.poll(self.now, &mut nic, &mut self.host.sockets) == PollResult::SocketStateChanged
    }

    /// One step of the clock: 1 ms when anything is going on, else straight
    /// to the next timer of either stack. The host goes first, so that
    /// between steps the frames the guest just sent are still on the link.
    pub(super) fn step(&mut self) {
        let busy = self.host_poll() | self.guest_poll();
        // A client with bytes still to read (a slow reader) reads some every
        // step: it is not idle even if the stacks are.
        let unread =
            self.host.sockets.iter().any(|(_, s)| matches!(s, smoltcp::socket::Socket::Tcp(s) if s.can_recv()));
        let next = if busy || unread || !self.link.to_guest.is_empty() || !self.link.to_host.is_empty() {
            None
        } else {
            let guest = self.guest.iface.poll_at(self.now, &self.guest.sockets);
            let host = self.host.iface.poll_at(self.now, &self.host.sockets);
            guest.into_iter().chain(host).chain(self.services.poll_at()).min()
        };
        self.now = match next {
            Some(t) if t > self.now + MS => t,
            _ => self.now + MS,
        };
    }

    /// Steps until `done` (asked before every step, where clients do their
    /// part) says so; panics after `limit` of virtual time. Returns the
    /// virtual time it took.
    pub(super) fn drive(&mut self, limit: Duration, mut done: impl FnMut(&mut World) -> bool) -> Duration {
        let start = self.now;
        while !done(self) {
            assert!(
                self.now - start < limit,
                "not done after {limit} (virtual): {:?}, {} guest sockets, {} frames dropped",
                self.services.counters(),
                self.guest_sockets(),
                self.link.fate.dropped
            );
            self.step();
        }
        self.now - start
    }

    /// Lets `time` pass (virtual), with nobody doing anything but the stacks.
    pub(super) fn wait(&mut self, time: Duration) {
        let end = self.now + time;
        self.drive(time + MS, |w| w.now >= end);
    }
}

/// A host client that sends `total` pseudo-random bytes, closes, and checks
/// that the echo is exactly those bytes.
struct EchoClient {
    handle: SocketHandle,
    stream: StreamCheck,
    /// The most it reads per step: a slow reader makes the guest's transmit
    /// buffer fill up, and the echo wait for room.
    read_limit: usize,
}

impl EchoClient {
    fn new(world: &mut World, port: u16, local_port: u16, total: usize, seed: u64, read_limit: usize) -> EchoClient {
        EchoClient { handle: world.client(port, local_port), stream: StreamCheck::new(total, seed), read_limit }
    }

    /// Sends what fits, reads what is there (up to the limit).
    fn pump(&mut self, sockets: &mut SocketSet<'static>) {
        self.stream.pump(sockets.get_mut::<tcp::Socket>(self.handle), self.read_limit);
    }

    /// Everything echoed, and the guest closed too.
    fn finished(&self, sockets: &SocketSet<'static>) -> bool {
        self.stream.received == self.stream.total && !sockets.get::<tcp::Socket>(self.handle).is_open()
    }
}

/// Eight clients echo 1 MiB each at the same time; every other one reads
/// slowly. Returns the world afterwards, and the virtual time it took.
fn eight_echo_clients(loss: Option<Loss>) -> (World, Duration) {
    let mut world = World::standard();
    world.link.fate.loss = loss;
    let mut clients: Vec<EchoClient> = (0..8)
        .map(|i| {
            let read_limit = if i % 2 == 0 { usize::MAX } else { 16 * 1024 };
            EchoClient::new(&mut world, Echo::PORT, 50_000 + i as u16, MIB, 0x9e37_79b9 + i, read_limit)
        })
        .collect();
    let took = world.drive(Duration::from_secs(120), |w| {
        clients.iter_mut().for_each(|c| c.pump(&mut w.host.sockets));
        clients.iter().all(|c| c.finished(&w.host.sockets)) && w.guest_sockets() == w.idle_guest_sockets()
    });
    for (i, c) in clients.iter().enumerate() {
        assert_eq!(c.stream.received, MIB, "client {i} got all its bytes back");
        assert_eq!(c.stream.first_wrong_byte, None, "client {i} got its bytes back unchanged and in order");
    }
    (world, took)
}

#[test]
fn eight_concurrent_echo_connections_get_their_mebibyte_back() {
    let (world, _) = eight_echo_clients(None);
    let expected = ConnCounters { accepted: 8, active: 0, closed: 8, ..ConnCounters::default() };
    assert_eq!(world.services.counters(), expected, "every connection counted once, none failed or reset");
    assert_eq!(world.services.bytes_received_by(Echo::PORT), 8 * MIB as u64);
    assert_eq!(world.services.bytes_sent_by(Echo::PORT), 8 * MIB as u64);
    assert_eq!(world.services.bytes_received_by(Discard::PORT), 0);
    assert_eq!(world.guest_sockets(), world.idle_guest_sockets(), "only the listeners are left");
}

#[test]
fn echo_survives_one_percent_loss() {
    let (world, took) = eight_echo_clients(Some(every_nth_frame(100)));
    assert!(world.link.fate.dropped > 100, "{} frames dropped", world.link.fate.dropped);
    let c = world.services.counters();
    assert_eq!((c.accepted, c.active, c.closed, c.reset), (8, 0, 8, 0), "{c:?}");
    assert_eq!(world.services.bytes_sent_by(Echo::PORT), 8 * MIB as u64);
    assert_eq!(world.guest_sockets(), world.idle_guest_sockets());
    assert!(took < Duration::from_secs(60), "recovered from the losses in {took} (virtual)");
}

#[test]
fn lost_fins_are_retransmitted_and_the_close_stays_clean() {
    let mut world = World::standard();
    // The first FIN each way is lost.
    let mut lost = [false; 2];
    world.link.fate.loss = Some(Box::new(move |frame| {
        let Some((src, _, repr)) = tcp_of(frame) else { return false };
        let side = usize::from(src == Echo::PORT);
        let fin = repr.control == TcpControl::Fin;
        fin && !std::mem::replace(&mut lost[side], true)
    }));
    let mut client = EchoClient::new(&mut world, Echo::PORT, 50_300, 10_000, 5, usize::MAX);
    world.drive(Duration::from_secs(30), |w| {
        client.pump(&mut w.host.sockets);
        client.finished(&w.host.sockets) && w.guest_sockets() == w.idle_guest_sockets()
    });
    assert_eq!((client.stream.received, client.stream.first_wrong_byte), (10_000, None));
    assert_eq!(world.link.fate.dropped, 2, "both FINs were lost once");
    let expected = ConnCounters { accepted: 1, active: 0, closed: 1, ..ConnCounters::default() };
    assert_eq!(world.services.counters(), expected);
}

/// Says hello and closes at once (like daytime, RFC 867).
struct Hello;

impl TcpService for Hello {
    fn name(&self) -> &'static str {
        "hello"
    }
    fn port(&self) -> u16 {
        13
    }
    fn accept(&mut self) -> Box<dyn Connection> {
        Box::new(HelloConnection)
    }
}

struct HelloConnection;

impl Connection for HelloConnection {
    fn serve(&mut self, socket: &mut tcp::Socket, _scratch: &mut [u8]) -> bool {
        if !socket.may_send() {
            return false;
        }
        let _ = socket.send_slice(b"hello\r\n");
        socket.close();
        true
    }
}

#[test]
fn a_peer_that_never_closes_its_side_is_given_up_after_the_peer_timeout() {
    // The service closes first; the client acknowledges our FIN (and would
    // answer keep-alives) but never closes its side. Once our side is
    // closed, keep-alives stop, so the silent peer times out rather than
    // holding the socket for ever.
    let mut world = World::new(TcpConfig::default(), vec![Box::new(Hello)]);
    let client = world.client(13, 50_400);
    let mut greeting = Vec::new();
    world.drive(Duration::from_secs(1), |w| {
        let s = w.host_socket(client);
        while let Ok(1..) = s.recv(|b| {
            greeting.extend_from_slice(b);
            (b.len(), b.len())
        }) {}
        w.host_state(client) == tcp::State::CloseWait && w.services.counters().accepted == 1
    });
    assert_eq!(greeting, b"hello\r\n");
    let took = world.drive(Duration::from_secs(120), |w| w.services.counters().active == 0);
    assert!(took >= Duration::from_secs(59), "given up after {took}");
    assert_eq!(world.services.counters().reset, 1, "a connection that did not end in order");
    assert_eq!(world.guest_sockets(), world.idle_guest_sockets());
    assert_eq!(world.services.bytes_sent_by(13), 7);
}

#[test]
fn discard_sinks_ten_mebibytes_and_counts_them() {
    let mut world = World::standard();
    let total = 10 * MIB;
    let mut client = EchoClient::new(&mut world, Discard::PORT, 50_100, total, 7, usize::MAX);
    world.drive(Duration::from_secs(60), |w| {
        client.pump(&mut w.host.sockets);
        client.stream.sent == total && !w.host.sockets.get::<tcp::Socket>(client.handle).is_open()
    });
    assert_eq!(client.stream.received, 0, "discard sends nothing");
    assert_eq!(world.services.bytes_received_by(Discard::PORT), total as u64);
    assert_eq!(world.services.bytes_sent_by(Discard::PORT), 0);
    // The guest closed after the client did: the client is in TIME-WAIT.
    assert_eq!(world.host_state(client.handle), tcp::State::TimeWait);
    world.drive(Duration::from_secs(1), |w| w.guest_sockets() == w.idle_guest_sockets());
    let expected = ConnCounters { accepted: 1, active: 0, closed: 1, ..ConnCounters::default() };
    assert_eq!(world.services.counters(), expected);
}

#[test]
fn a_client_that_resets_mid_stream_is_counted_as_reset_and_its_socket_removed() {
    let mut world = World::standard();
    let mut client = EchoClient::new(&mut world, Discard::PORT, 50_200, 4 * MIB, 3, usize::MAX);
    world.drive(Duration::from_secs(10), |w| {
        client.pump(&mut w.host.sockets);
        w.services.bytes_received_by(Discard::PORT) >= MIB as u64
    });
    assert_eq!(world.services.counters().active, 1);
    world.host_socket(client.handle).abort();
    world.drive(Duration::from_secs(1), |w| w.services.counters().active == 0);
    let expected = ConnCounters { accepted: 1, active: 0, reset: 1, ..ConnCounters::default() };
    assert_eq!(world.services.counters(), expected);
    assert_eq!(world.guest_sockets(), world.idle_guest_sockets(), "the reset connection's socket is gone");
    assert!(world.services.bytes_received_by(Discard::PORT) < 4 * MIB as u64, "it did end mid-stream");
}

/// 20 clients, more than the 8 listeners, send their SYNs in one burst.
fn syn_burst(world: &mut World) -> Vec<EchoClient> {
    (0..20).map(|i| EchoClient::new(world, Echo::PORT, 51_000 + i as u16, 100, 100 + i, usize::MAX)).collect()
}

#[test]
fn a_syn_burst_beyond_the_backlog_is_all_accepted_when_relistening_per_packet() {
    let mut world = World::standard();
    let mut clients = syn_burst(&mut world);
    let mut most_sockets = 0;
    world.drive(Duration::from_secs(10), |w| {
        most_sockets = most_sockets.max(w.guest_sockets());
        clients.iter_mut().for_each(|c| c.pump(&mut w.host.sockets));
        clients.iter().all(|c| c.finished(&w.host.sockets)) && w.guest_sockets() == w.idle_guest_sockets()
    });
    assert!(clients.iter().all(|c| c.stream.received == 100 && c.stream.first_wrong_byte.is_none()));
    let expected = ConnCounters { accepted: 20, active: 0, closed: 20, ..ConnCounters::default() };
    assert_eq!(world.services.counters(), expected);
    assert_eq!(most_sockets, 16 + 20, "every SYN took a listener, and each was replaced at once");
}

#[test]
fn without_relistening_per_packet_a_syn_burst_overflows_the_backlog() {
    // What the per-packet re-listen is for: with listeners replaced only
    // after the whole batch, the SYNs beyond the backlog find none and are
    // refused.
    let mut world = World::standard();
    world.relisten_per_packet = false;
    let clients = syn_burst(&mut world);
    world.drive(Duration::from_secs(5), |w| {
        clients.iter().all(|c| w.host_state(c.handle) != tcp::State::SynSent) && w.services.counters().accepted == 8
    });
    let refused = clients.iter().filter(|c| world.host_state(c.handle) == tcp::State::Closed).count();
    assert_eq!(refused, 12);
    assert_eq!(world.services.counters().accepted, 8);
}

#[test]
fn the_guest_offers_window_scaling_and_the_configured_socket_options() {
    let mut world = World::standard();
    let client = world.client(Discard::PORT, 52_000);
    let mut syn_ack = None;
    world.drive(Duration::from_secs(2), |w| {
        syn_ack = w.link.to_host.iter().find_map(|f| {
            let (src, _, repr) = tcp_of(f)?;
            (src == Discard::PORT && repr.control == TcpControl::Syn && repr.ack_number.is_some())
                .then_some((repr.window_scale, repr.window_len))
        });
        syn_ack.is_some()
    });
    let (scale, window) = syn_ack.expect("a SYN-ACK from the guest");
    // 256 KiB needs 19 bits; the window field has 16: a shift of 3.
    assert_eq!(scale, Some(3), "window scaling offered");
    assert_eq!(window, u16::MAX, "the SYN-ACK's own window is unscaled, so at most 64 KiB");
    // Once established, the window the guest advertises is scaled: its
    // ACK of the client's first bytes offers (nearly) the whole 256 KiB.
    let mut sent = false;
    let mut window = None;
    world.drive(Duration::from_secs(1), |w| {
        let s = w.host_socket(client);
        if !sent && s.can_send() {
            s.send_slice(&[0; 1000]).unwrap();
            sent = true;
        }
        window = w.link.to_host.iter().find_map(|f| {
            let (src, _, repr) = tcp_of(f)?;
            (src == Discard::PORT && repr.control == TcpControl::None && repr.ack_number.is_some())
                .then_some(usize::from(repr.window_len) << 3)
        });
        sent && window.is_some()
    });
    let window = window.unwrap();
    assert!(window > 255 * 1024, "advertised {window} bytes, more than a 16-bit window can say");
    let listener = world
        .guest
        .sockets
        .iter()
        .find_map(|(_, s)| match s {
            smoltcp::socket::Socket::Tcp(s) if s.is_listening() => Some(s),
            _ => None,
        })
        .unwrap();
    assert_eq!(listener.ack_delay(), Some(Duration::from_millis(1)));
    assert!(!listener.nagle_enabled());
    assert_eq!(listener.recv_capacity(), 256 * 1024);
    assert_eq!(listener.send_capacity(), 256 * 1024);
}

#[test]
fn a_handshake_that_fails_is_not_counted_as_a_connection() {
    let mut world = World::standard();
    // The client's SYN reaches the guest; the SYN-ACK is lost; the client
    // gives up with an RST, which finds the guest in SYN-RECEIVED.
    let first = world.client(Echo::PORT, 52_100);
    world.drive(Duration::from_secs(1), |w| w.link.to_host.iter().any(|f| tcp_of(f).is_some_and(|(s, _, _)| s == 7)));
    world.link.to_host.clear();
    world.host_socket(first).abort();
    world.drive(Duration::from_secs(1), |w| w.services.counters().failed == 1);
    assert_eq!(world.guest_sockets(), world.idle_guest_sockets(), "its socket listens again, or is gone");
    // A second client's SYN arrives, then the cable is pulled: the guest
    // gives the handshake up after the handshake timeout.
    let second = world.client(Echo::PORT, 52_101);
    world.drive(Duration::from_secs(1), |w| w.link.to_host.iter().any(|f| tcp_of(f).is_some_and(|(s, _, _)| s == 7)));
    // The cable is pulled: what is on it is lost too.
    world.link.fate.cut = true;
    world.link.to_host.clear();
    assert_eq!(world.guest_sockets(), world.idle_guest_sockets() + 1);
    let took = world.drive(Duration::from_secs(20), |w| w.services.counters().failed == 2);
    assert!(took >= Duration::from_secs(9), "given up after {took}, not before the timeout");
    assert_eq!(world.guest_sockets(), world.idle_guest_sockets(), "and its socket removed");
    let expected = ConnCounters { failed: 2, ..ConnCounters::default() };
    assert_eq!(world.services.counters(), expected, "no connection was accepted");
    assert_eq!(world.host_state(second), tcp::State::SynSent);
}

#[test]
fn a_silent_peer_is_aborted_after_the_peer_timeout_while_an_idle_live_one_is_kept() {
    let mut world = World::standard();
    let dead = world.client(Echo::PORT, 52_200);
    let live = world.client(Echo::PORT, 52_201);
    world.drive(Duration::from_secs(1), |w| w.services.counters().accepted == 2);
    // Everything to and from the first client is lost from now on; neither
    // client sends anything.
    world.link.fate.loss = Some(blackhole(52_200));
    let took = world.drive(Duration::from_secs(120), |w| w.services.counters().reset == 1);
    assert!(took >= Duration::from_secs(59), "aborted after {took}");
    assert_eq!(world.services.counters().active, 1, "the idle client answered the keep-alives");
    world.wait(Duration::from_secs(120));
    assert_eq!(world.services.counters().active, 1, "and still does two minutes later");
    assert_eq!(world.host_state(live), tcp::State::Established);
    assert_eq!(world.host_state(dead), tcp::State::Established, "it never heard from the guest again");
    assert_eq!(world.guest_sockets(), world.idle_guest_sockets() + 1, "the dead connection's socket is gone");
    world.host_socket(live).close();
    world.drive(Duration::from_secs(1), |w| w.services.counters().active == 0);
    let expected = ConnCounters { accepted: 2, active: 0, closed: 1, reset: 1, ..ConnCounters::default() };
    assert_eq!(world.services.counters(), expected);
}

#[test]
fn at_the_connection_cap_syns_are_refused_and_memory_stays_bounded() {
    let cfg = TcpConfig { max_connections: 2, backlog: 1, ..TcpConfig::default() };
    let mut world = World::new(cfg, vec![Box::new(Echo)]);
    let mut clients: Vec<EchoClient> =
        (0..3).map(|i| EchoClient::new(&mut world, Echo::PORT, 53_000 + i as u16, 1000, 1 + i, usize::MAX)).collect();
    let mut most_sockets = 0;
    world.drive(Duration::from_secs(5), |w| {
        most_sockets = most_sockets.max(w.guest_sockets());
        clients.iter().all(|c| w.host_state(c.handle) != tcp::State::SynSent)
    });
    let refused: Vec<_> = clients.iter().filter(|c| world.host_state(c.handle) == tcp::State::Closed).collect();
    assert_eq!(refused.len(), 1, "two connections fit, the third SYN found no listener");
    // The two accepted ones echo and finish; then there is room again.
    world.drive(Duration::from_secs(5), |w| {
        most_sockets = most_sockets.max(w.guest_sockets());
        clients.iter_mut().for_each(|c| c.pump(&mut w.host.sockets));
        clients.iter().filter(|c| c.finished(&w.host.sockets)).count() == 2 && w.guest_sockets() == 1
    });
    let mut late = EchoClient::new(&mut world, Echo::PORT, 53_010, 1000, 99, usize::MAX);
    world.drive(Duration::from_secs(5), |w| {
        most_sockets = most_sockets.max(w.guest_sockets());
        late.pump(&mut w.host.sockets);
        late.finished(&w.host.sockets) && w.services.counters().active == 0
    });
    assert_eq!(late.stream.received, 1000);
    assert!(most_sockets <= 3, "at most max_connections + backlog sockets: {most_sockets}");
    let expected = ConnCounters { accepted: 3, active: 0, closed: 3, ..ConnCounters::default() };
    assert_eq!(world.services.counters(), expected);
}

#[test]
fn an_outgoing_connection_is_served_and_counted() {
    let mut world = World::standard();
    let mut listener = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; 4096]), tcp::SocketBuffer::new(vec![0; 4096]));
    listener.listen(5001).unwrap();
    let server = world.host.sockets.add(listener);

    let before = world.guest_sockets();
    let refused = world.services.connect(
        world.guest.iface.context(),
        &mut world.guest.sockets,
        (HOST_IP, 5001),
        0,
        Box::new(EchoConnection),
    );
    assert_eq!(refused.err(), Some(tcp::ConnectError::Unaddressable), "local port 0");
    assert_eq!(world.guest_sockets(), before, "nothing kept after an error");

    assert!(!world.services.ports_in_use(&world.guest.sockets, 40_000));
    let handle = world
        .services
        .connect(
            world.guest.iface.context(),
            &mut world.guest.sockets,
            (HOST_IP, 5001),
            40_000,
            Box::new(EchoConnection),
        )
        .unwrap();
    assert!(world.services.is_live(handle));
    assert!(world.services.ports_in_use(&world.guest.sockets, 40_000));
    assert!(world.services.ports_in_use(&world.guest.sockets, Echo::PORT), "a service's port");
    assert!(!world.services.ports_in_use(&world.guest.sockets, 40_001));

    // The host's side talks first; the guest's connection echoes.
    let message = b"hello from the host";
    let mut echoed = Vec::new();
    let mut said = false;
    world.drive(Duration::from_secs(5), |w| {
        let s = w.host.sockets.get_mut::<tcp::Socket>(server);
        if s.state() == tcp::State::Established && !said {
            said = s.send_slice(message).unwrap() == message.len();
        }
        while let Ok(1..) = s.recv(|b| {
            echoed.extend_from_slice(b);
            (b.len(), b.len())
        }) {}
        if echoed.len() == message.len() {
            s.close();
        }
        !w.services.is_live(handle) && !s.is_open()
    });
    assert_eq!(echoed, message);
    let expected = ConnCounters { connected: 1, active: 0, closed: 1, ..ConnCounters::default() };
    assert_eq!(world.services.counters(), expected);
    assert!(!world.services.ports_in_use(&world.guest.sockets, 40_000), "the port is free again");
    assert_eq!(world.guest_sockets(), world.idle_guest_sockets());
}

#[test]
#[should_panic(expected = "port 7 is already served")]
fn two_services_cannot_share_a_port() {
    let mut services = Services::new(TcpConfig::default());
    services.add(Box::new(Echo));
    services.add(Box::new(Echo));
}

/// A duplicate of a connection's SYN that arrives late (a retransmitted SYN
/// that the device or the host held back while the first one was answered:
/// QEMU's software RSS can queue a redirected frame behind another queue for
/// a long time) must not start a second connection with the same 4-tuple.
/// smoltcp hands a SYN to the first socket in its set that accepts it, and a
/// listener accepts any SYN to its port: a listener in a lower slot than the
/// connection's socket (a freed slot, refilled) takes it, and from then on
/// gets every segment of the flow and answers each with an RST (their ACKs
/// are not for its SYN-ACK): the peer's connection is reset in mid-stream.
#[test]
fn a_late_duplicate_syn_does_not_hijack_an_open_connection() {
    use std::cell::RefCell;
    use std::rc::Rc;
    let mut world = World::standard();
    // Every frame on the link, either way: the victim's SYN, and any RST.
    let seen: Rc<RefCell<Vec<Vec<u8>>>> = Rc::default();
    let record = seen.clone();
    world.link.fate.loss = Some(Box::new(move |frame| {
        record.borrow_mut().push(frame.to_vec());
        false
    }));
    // B takes the first echo listener's slot, the victim A a later one.
    let mut b = EchoClient::new(&mut world, Echo::PORT, 50_300, 1000, 7, usize::MAX);
    world.drive(Duration::from_secs(5), |w| w.services.counters().accepted == 1);
    let mut a = EchoClient::new(&mut world, Echo::PORT, 50_301, 4 * MIB, 8, usize::MAX);
    world.drive(Duration::from_secs(5), |w| w.services.counters().accepted == 2);
    // B ends, freeing its slot, below A's.
    world.drive(Duration::from_secs(10), |w| {
        b.pump(&mut w.host.sockets);
        a.pump(&mut w.host.sockets);
        b.finished(&w.host.sockets) && w.services.counters().closed == 1
    });
    // C takes an echo listener: its replacement goes into B's old slot.
    let mut c = EchoClient::new(&mut world, Echo::PORT, 50_302, 1000, 9, usize::MAX);
    world.drive(Duration::from_secs(10), |w| {
        a.pump(&mut w.host.sockets);
        c.pump(&mut w.host.sockets);
        a.stream.received >= MIB && c.finished(&w.host.sockets)
    });
    let a_slot = world
        .guest
        .sockets
        .iter()
        .find_map(|(h, s)| match s {
            smoltcp::socket::Socket::Tcp(t) if t.remote_endpoint().is_some_and(|e| e.port == 50_301) => Some(h),
            _ => None,
        })
        .expect("A's socket");
    let listener_below = world.guest.sockets.iter().any(|(h, s)| {
        matches!(s, smoltcp::socket::Socket::Tcp(t) if t.is_listening() && t.listen_endpoint().port == Echo::PORT)
            && h < a_slot
    });
    assert!(listener_below, "the set-up puts an echo listener before A's socket");
    // A's SYN once more, as if it had been held back all this time.
    let syn = seen
        .borrow()
        .iter()
        .find(|f| {
            tcp_of(f).is_some_and(|(src, dst, t)| src == 50_301 && dst == Echo::PORT && t.control == TcpControl::Syn)
        })
        .cloned()
        .expect("A's SYN was seen");
    world.link.to_guest.push_back(syn);
    world.drive(Duration::from_secs(30), |w| {
        a.pump(&mut w.host.sockets);
        a.finished(&w.host.sockets) || !w.host_socket(a.handle).is_open()
    });
    let rsts = seen
        .borrow()
        .iter()
        .filter(|f| tcp_of(f).is_some_and(|(src, _, t)| src == Echo::PORT && t.control == TcpControl::Rst))
        .count();
    assert_eq!(rsts, 0, "the guest sent no RST");
    assert_eq!(a.stream.received, 4 * MIB, "A got all its bytes back");
    assert_eq!(a.stream.first_wrong_byte, None);
    world.drive(Duration::from_secs(5), |w| w.guest_sockets() == w.idle_guest_sockets());
    let expected = ConnCounters { accepted: 3, active: 0, closed: 3, duplicate_syns: 1, ..ConnCounters::default() };
    assert_eq!(world.services.counters(), expected);
}
