//! In-kernel TCP services, run by each vCPU's event loop on its own stack.
//!
//! Every vCPU owns one [`Services`] next to its smoltcp `Stack`: nothing is
//! shared between vCPUs and nothing is locked. A service listens on its port
//! on every vCPU; flow steering delivers each connection's packets to the
//! vCPU that owns it, whose listener accepts it and whose loop serves it to
//! the end.
//!
//! The vCPU loop drives it like this:
//!
//! * [`Services::listen`] once at start;
//! * after every received packet, [`Services::listener_taken`] (a few
//!   handle look-ups) and, when it says so, [`Services::listen`] again, so a
//!   burst of SYNs finds a fresh listener for each of them: smoltcp hands a
//!   SYN to the first socket listening on the port and answers it with an
//!   RST when there is none;
//! * when a round received nothing, [`Services::needs_listeners`] and
//!   [`Services::listen`]: the backlog is filled up a listener per port at
//!   a time, off the packet path;
//! * after each batch of packets, [`Services::run`], and poll the interface
//!   again while it reports progress (what the services wrote goes out).
//!
//! Writing a service means two small impls: a [`TcpService`] that names the
//! port and makes one [`Connection`] per accepted connection, and the
//! connection's [`Connection::serve`], called every round with its socket
//! and a scratch buffer shared by all connections of the vCPU. An echo that
//! answers in upper case:
//!
//! ```
//! use net::services::{relay, close_after_peer, Connection, Services, TcpConfig, TcpService};
//! use net::smoltcp::socket::tcp;
//!
//! /// Upper-case echo on port 7007.
//! struct Shout;
//!
//! impl TcpService for Shout {
//!     fn name(&self) -> &'static str {
//!         "shout"
//!     }
//!     fn port(&self) -> u16 {
//!         7007
//!     }
//!     fn accept(&mut self) -> Box<dyn Connection> {
//!         Box::new(ShoutConn)
//!     }
//! }
//!
//! struct ShoutConn;
//!
//! impl Connection for ShoutConn {
//!     fn serve(&mut self, socket: &mut tcp::Socket, scratch: &mut [u8]) -> bool {
//!         // Received bytes go out again, transformed on the way through
//!         // `scratch`, as many as the transmit buffer has room for: the
//!         // rest wait in the receive buffer (whose window then closes, so
//!         // a fast sender is slowed down rather than dropped).
//!         let moved = relay(socket, scratch, |bytes| bytes.make_ascii_uppercase());
//!         // Once the peer has said all it will and all of it is answered,
//!         // close our side too: smoltcp sends our FIN after the queued data.
//!         let closed = close_after_peer(socket);
//!         moved > 0 || closed
//!     }
//! }
//!
//! let mut services = Services::new(TcpConfig::default());
//! services.add(Box::new(Shout));
//! assert!(services.ports().eq([7007]));
//! ```
//!
//! Memory: every socket owns its receive and transmit buffers, allocated
//! when the socket is made (a listener, kept ready before the SYN comes, or
//! an outgoing connection) and freed when it is removed from the socket set
//! at the end of the connection. Incoming connections never take a vCPU
//! past `max_connections + backlog × ports` sockets (outgoing ones come on
//! top), so with [`TcpConfig::default`] and two services that is
//! 48 × 512 KiB = 24 MiB per vCPU. Nothing is allocated per packet, and
//! nothing is logged per packet.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

use smoltcp::iface::{Context, SocketHandle, SocketSet};
use smoltcp::socket::tcp::{self, ConnectError, State};
use smoltcp::socket::Socket;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::IpAddress;

pub mod discard;
pub mod echo;
pub mod iperf;
pub mod metrics;
pub mod rr;

pub use discard::Discard;
pub use echo::Echo;

#[cfg(test)]
mod tests;

/// Size of the scratch buffer every connection of a vCPU borrows while it
/// is served: a service moves data between its socket's buffers through it.
pub const SCRATCH_SIZE: usize = 64 * 1024;

/// smoltcp refuses (panics on) receive buffers above 1 GiB: the largest
/// window a scale factor of 14 can describe.
const MAX_RX_BUFFER: usize = 1 << 30;

/// How every TCP socket of the services is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpConfig {
    /// Receive buffer per connection, in bytes: the most the peer may have
    /// in flight towards us (our advertised window). Capped at 1 GiB.
    pub rx_buffer: usize,
    /// Transmit buffer per connection: the most we may have in flight.
    pub tx_buffer: usize,
    /// Sockets kept listening on each service's port.
    pub backlog: usize,
    /// How long an ACK may wait for data to ride on (`None`: ACK at once).
    pub ack_delay: Option<Duration>,
    /// Nagle's algorithm (hold back small segments while data is in flight).
    pub nagle: bool,
    /// Connections (handshaking, open, or waiting in TIME-WAIT) past which
    /// taken listeners are not replaced: SYNs then find no listener and are
    /// answered with an RST. This bounds memory, since every connection
    /// holds `rx_buffer + tx_buffer`. Outgoing connections count towards it
    /// but are never refused by it.
    pub max_connections: usize,
    /// A handshake (SYN received or sent) whose peer stays silent this long
    /// is given up on, and its socket freed.
    pub handshake_timeout: Duration,
    /// An open connection whose peer sends nothing for this long is aborted.
    /// Keep-alive probes go out every quarter of it, so a live but idle
    /// peer, which answers them, is never cut off, until our side is closed:
    /// from then on the peer has to finish (acknowledge our FIN, send its
    /// own) within this time, as for an orphaned FIN-WAIT-2 in other stacks.
    pub peer_timeout: Duration,
}

impl Default for TcpConfig {
    /// Sized for one fast bulk connection per vCPU as well as many small
    /// request/response ones.
    fn default() -> TcpConfig {
        TcpConfig {
            // At several Gbit/s even a 100 µs round trip has 50+ KiB in
            // flight, and more when the host is busy: 256 KiB each way keeps
            // the pipe full. Window scaling follows from the receive buffer:
            // smoltcp takes its shift from the buffer's size (0 up to
            // 64 KiB - 1, then 1 more per doubling; 3 for 256 KiB, so that
            // 256 KiB fits the 16-bit window field) and offers it in the
            // SYN-ACK whenever the peer's SYN offers scaling. With buffers
            // under 64 KiB there is no scaling, and no need for it.
            rx_buffer: 256 * 1024,
            tx_buffer: 256 * 1024,
            backlog: 8,
            // smoltcp already ACKs at once every second full-sized segment,
            // so in a bulk transfer the timer only matters for the odd last
            // segment of a burst, and for small requests. Its 10 ms default
            // would stall exactly those: a peer that waits for the ACK
            // (Nagle on its side, or a window that only opens on our ACK)
            // loses 10 ms a time, a hundred round trips of a virtio link.
            // Our services answer within the same loop round (µs), so any
            // ACK that can ride on a reply does so well inside 1 ms; the
            // timer is only there to save a separate ACK for a segment that
            // gets no reply, and 1 ms does that while costing the sender
            // nothing noticeable. No timer at all would ACK every segment
            // and double the ACKs of a bulk receive.
            ack_delay: Some(Duration::from_millis(1)),
            // Echo-style replies are written as soon as the request is in:
            // with Nagle a second small reply would wait for the peer's
            // (delayed) ACK of the first.
            nagle: false,
            // 32 × 512 KiB = 16 MiB per vCPU of connection buffers, on top of
            // the listeners: what a 512 MiB guest with a handful of vCPUs
            // can give. Raise it with the memory.
            max_connections: 32,
            // smoltcp retransmits a SYN or SYN-ACK after 1, 3 and 7 s (its
            // initial timeout is 1 s, doubled each time); a peer that answered
            // none of those is gone, or never was (a spoofed SYN), and its
            // socket holds half a megabyte.
            handshake_timeout: Duration::from_secs(10),
            // Keep-alive every 15 s: three unanswered probes (or a minute of
            // unanswered retransmissions) end a connection to a dead peer.
            peer_timeout: Duration::from_secs(60),
        }
    }
}

/// What a service does with one connection.
pub trait Connection {
    /// Called every round of [`Services::run`] while the connection is open
    /// (from the end of the handshake until the socket is closed), whether
    /// or not anything arrived. `scratch` is the vCPU's shared scratch
    /// buffer ([`SCRATCH_SIZE`] bytes), free for this call only. Returns
    /// whether it made progress (moved data, closed), which keeps the vCPU
    /// polling.
    ///
    /// A connection ends when its socket reaches CLOSED or TIME-WAIT: by a
    /// normal close (see [`close_after_peer`]), by `abort()` (an RST, counted
    /// as a reset), or by the peer. It must never panic on what it receives.
    fn serve(&mut self, socket: &mut tcp::Socket, scratch: &mut [u8]) -> bool;
}

/// A TCP service: one instance per vCPU.
pub trait TcpService {
    /// A short name, for reports.
    fn name(&self) -> &'static str;
    /// The local port it listens on (not 0).
    fn port(&self) -> u16;
    /// A new connection has been established: what serves it.
    fn accept(&mut self) -> Box<dyn Connection>;
    /// Called once at the start of every [`Services::run`], before any
    /// connection is accepted or served, with the time of the round: for
    /// services whose connections work together (across vCPUs too). A
    /// service that wants to open connections itself (a client) pushes them
    /// onto `connect`; the vCPU opens them after the round (see
    /// [`Services::take_connects`]). Returns whether it did anything.
    fn poll(&mut self, _now: Instant, _connect: &mut Vec<Connect>) -> bool {
        false
    }
    /// When the service needs [`Services::run`] again although nothing
    /// arrives (a timeout of its own), if ever.
    fn poll_at(&self) -> Option<Instant> {
        None
    }
}

/// A connection a service asks its vCPU to open: to `remote`:`port`, from
/// a local port whose replies come back to this vCPU, served by `conn` once
/// established. If it cannot be opened, `conn` is dropped unserved.
pub struct Connect {
    pub remote: [u8; 4],
    pub port: u16,
    pub conn: Box<dyn Connection>,
}

/// Connection accounting of one vCPU's services.
///
/// Connections are counted once their handshake is complete, so at every
/// moment `accepted + connected == active + closed + reset`. A handshake
/// that fails (the peer resets it in SYN-RECEIVED, which smoltcp turns back
/// into a listener; it times out; an outgoing SYN is refused) never was a
/// connection: it is counted in `failed` only. A handshake that starts and
/// fails between two calls of [`Services::listen`] / [`Services::run`] is
/// not seen at all (smoltcp puts the listener straight back).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnCounters {
    /// Incoming connections established.
    pub accepted: u64,
    /// Outgoing connections (from [`Services::connect`]) established.
    pub connected: u64,
    /// Connections open now.
    pub active: u64,
    /// Connections that ended in order: both sides closed (after the peer's
    /// FIN and ours; our TIME-WAIT, if any, is not waited for).
    pub closed: u64,
    /// Connections that ended any other way: reset by the peer, aborted by
    /// the service, or given up after [`TcpConfig::peer_timeout`].
    pub reset: u64,
    /// Handshakes that never completed.
    pub failed: u64,
    /// SYNs a listener took for a 4-tuple that already has a connection
    /// here (a late duplicate of its SYN): dropped unanswered, see
    /// [`Services::listen`].
    pub duplicate_syns: u64,
}

/// One service and its listening sockets.
struct Port {
    service: Box<dyn TcpService>,
    port: u16,
    listeners: Vec<SocketHandle>,
    /// Bytes the service's connections read, and wrote.
    received: u64,
    sent: u64,
}

/// Who serves a connection once its handshake completes.
enum Origin {
    /// Accepted by the service at this index of `Services::ports`.
    Service(usize),
    /// Made by [`Services::connect`], served by this.
    Outgoing(Box<dyn Connection>),
}

/// A connection in its handshake.
struct Pending {
    handle: SocketHandle,
    origin: Origin,
}

/// An established connection.
struct Open {
    handle: SocketHandle,
    /// Index of its service in `Services::ports`; `None` when outgoing.
    service: Option<usize>,
    conn: Box<dyn Connection>,
    /// Its state as last seen (after it was last served): how it ends tells
    /// a close from a reset.
    seen: State,
}

/// One vCPU's TCP services, their listeners and connections.
pub struct Services {
    cfg: TcpConfig,
    scratch: Vec<u8>,
    ports: Vec<Port>,
    pending: Vec<Pending>,
    open: Vec<Open>,
    /// Sockets whose connection has been counted as ended but that are
    /// still needed: in TIME-WAIT, or CLOSED with an RST still to send.
    lingering: Vec<SocketHandle>,
    counters: ConnCounters,
    /// Connections the services asked for this round.
    connects: Vec<Connect>,
}

impl Services {
    /// No services yet; allocates the scratch buffer once.
    pub fn new(mut cfg: TcpConfig) -> Services {
        cfg.rx_buffer = cfg.rx_buffer.min(MAX_RX_BUFFER);
        // Room for the usual number of connections up front, so that the
        // lists only grow (at accept time) past it.
        let conns = cfg.max_connections.min(1024);
        Services {
            cfg,
            scratch: vec![0; SCRATCH_SIZE],
            ports: Vec::new(),
            pending: Vec::with_capacity(conns),
            open: Vec::with_capacity(conns),
            lingering: Vec::with_capacity(conns),
            counters: ConnCounters::default(),
            connects: Vec::new(),
        }
    }

    /// The configuration sockets are made with.
    pub fn config(&self) -> &TcpConfig {
        &self.cfg
    }

    /// Adds a service; it listens from the next [`Services::listen`].
    ///
    /// # Panics
    /// If its port is 0 or already served (a programming error: both would
    /// listen and the first socket in the set would take every SYN).
    pub fn add(&mut self, service: Box<dyn TcpService>) {
        let port = service.port();
        assert!(port != 0, "service {} has no port", service.name());
        assert!(
            self.ports.iter().all(|p| p.port != port),
            "port {port} is already served; {} cannot listen there too",
            service.name()
        );
        let listeners = Vec::with_capacity(self.cfg.backlog);
        self.ports.push(Port { service, port, listeners, received: 0, sent: 0 });
    }

    /// The ports served, in the order the services were added.
    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.ports.iter().map(|p| p.port)
    }

    /// Keeps `backlog` sockets listening on every service's port, making
    /// sockets with the configured buffers and options (listeners that were
    /// taken by a SYN become handshakes, and are replaced), at most one per
    /// port per call: each listener's buffers are zeroed when it is made
    /// (512 KiB by default, some 2.5 ms under TCG), so a stack starts with
    /// one per port, listening at once, and its vCPU makes the rest when
    /// idle. Call it at start, whenever [`Services::listener_taken`] says
    /// so after a received packet (a SYN that took a listener gets its
    /// replacement before the next packet), and when idle and
    /// [`Services::needs_listeners`] says so.
    pub fn listen(&mut self, sockets: &mut SocketSet<'static>) {
        self.collect_handshakes(sockets);
        self.refill(sockets);
    }

    /// Whether [`Services::listen`] has anything to do: a listener has been
    /// taken by a SYN, or there are fewer than `backlog` and room for more
    /// (what an idle vCPU makes).
    pub fn needs_listeners(&self, sockets: &SocketSet<'static>) -> bool {
        let room = self.has_room();
        self.listener_taken(sockets) || (room && self.ports.iter().any(|p| p.listeners.len() < self.cfg.backlog))
    }

    /// Whether a SYN has taken a listener since the last [`Services::listen`]:
    /// then it must be replaced before the next packet. Looks at the
    /// listeners' handles only: cheap enough for after every received
    /// packet (a backlog still filling up is not, each listener's buffers
    /// being zeroed when it is made).
    pub fn listener_taken(&self, sockets: &SocketSet<'static>) -> bool {
        self.ports.iter().any(|p| p.listeners.iter().any(|&h| !sockets.get::<tcp::Socket>(h).is_listening()))
    }

    /// One round: notices connections whose handshake completed (counting
    /// them, and attaching the service's [`TcpService::accept`]), serves
    /// every open connection, removes the finished ones from `sockets`
    /// (freeing their buffers), and listens again. Returns whether anything
    /// progressed.
    pub fn run(&mut self, sockets: &mut SocketSet<'static>, now: Instant) -> bool {
        let mut progress = false;
        for port in &mut self.ports {
            progress |= port.service.poll(now, &mut self.connects);
        }
        progress |= self.collect_handshakes(sockets);
        progress |= self.settle_handshakes(sockets);
        progress |= self.serve(sockets);
        progress |= self.reap(sockets);
        progress |= self.refill(sockets);
        progress
    }

    /// The connections the services asked for in the last rounds, for the
    /// vCPU to open ([`crate::cpu::CpuNet`] does, with
    /// [`Services::connect`]).
    pub fn take_connects(&mut self) -> Vec<Connect> {
        core::mem::take(&mut self.connects)
    }

    /// Whether a service asked for a connection.
    pub fn connects_pending(&self) -> bool {
        !self.connects.is_empty()
    }

    /// The earliest time a service wants [`Services::run`] again without
    /// anything arriving (see [`TcpService::poll_at`]).
    pub fn poll_at(&self) -> Option<Instant> {
        self.ports.iter().filter_map(|p| p.service.poll_at()).min()
    }

    /// The connection counters.
    pub fn counters(&self) -> ConnCounters {
        self.counters
    }

    /// Bytes the connections of the service on `port` read from their
    /// sockets, in total (0 for a port no service has). Measured around
    /// every call of [`Connection::serve`] (how much the socket's receive
    /// queue shrank), so every service is counted the same way and none has
    /// to report anything: for [`Discard`], the bytes it sank.
    pub fn bytes_received_by(&self, port: u16) -> u64 {
        self.ports.iter().find(|p| p.port == port).map_or(0, |p| p.received)
    }

    /// Bytes the connections of the service on `port` wrote to their
    /// sockets, in total (queued for sending; measured like
    /// [`Services::bytes_received_by`]).
    pub fn bytes_sent_by(&self, port: u16) -> u64 {
        self.ports.iter().find(|p| p.port == port).map_or(0, |p| p.sent)
    }

    /// An outgoing connection from this vCPU to `remote`, served by `conn`
    /// once established. `local_port` is chosen by the caller, so that the
    /// replies hash to this vCPU (see [`Services::ports_in_use`]). The
    /// socket is made like the listeners' and added to `sockets`; smoltcp's
    /// errors (port 0, an unspecified or unreachable address) are returned
    /// and nothing is kept.
    ///
    /// The handle stays this connection's while [`Services::is_live`] says
    /// so; afterwards the socket set may give it to another socket.
    pub fn connect(
        &mut self,
        cx: &mut Context,
        sockets: &mut SocketSet<'static>,
        remote: (IpAddress, u16),
        local_port: u16,
        conn: Box<dyn Connection>,
    ) -> Result<SocketHandle, ConnectError> {
        let mut socket = self.new_socket();
        socket.connect(cx, remote, local_port)?;
        // After connect(), which resets the socket's timers.
        handshake_options(&self.cfg, &mut socket);
        let handle = sockets.add(socket);
        self.pending.push(Pending { handle, origin: Origin::Outgoing(conn) });
        Ok(handle)
    }

    /// Whether local `port` is taken: a service's, or that of any TCP or
    /// UDP socket in `sockets` (listening, connected or in TIME-WAIT). For
    /// choosing the local port of [`Services::connect`]; it walks the whole
    /// socket set.
    pub fn ports_in_use(&self, sockets: &SocketSet<'static>, port: u16) -> bool {
        self.ports.iter().any(|p| p.port == port)
            || sockets.iter().any(|(_, socket)| match socket {
                Socket::Tcp(s) => {
                    s.listen_endpoint().port == port || s.local_endpoint().is_some_and(|e| e.port == port)
                }
                Socket::Udp(s) => s.endpoint().port == port,
                // ICMP, and whatever else smoltcp's features bring.
                #[allow(unreachable_patterns)]
                _ => false,
            })
    }

    /// Whether `handle` is one of this vCPU's connections still (in its
    /// handshake or open).
    pub fn is_live(&self, handle: SocketHandle) -> bool {
        self.pending.iter().any(|p| p.handle == handle) || self.open.iter().any(|o| o.handle == handle)
    }

    /// Sockets held for connections (handshaking, open, lingering).
    fn held(&self) -> usize {
        self.pending.len() + self.open.len() + self.lingering.len()
    }

    fn has_room(&self) -> bool {
        self.held() < self.cfg.max_connections
    }

    fn new_socket(&self) -> tcp::Socket<'static> {
        let rx = tcp::SocketBuffer::new(vec![0u8; self.cfg.rx_buffer]);
        let tx = tcp::SocketBuffer::new(vec![0u8; self.cfg.tx_buffer]);
        let mut socket = tcp::Socket::new(rx, tx);
        socket.set_ack_delay(self.cfg.ack_delay);
        socket.set_nagle_enabled(self.cfg.nagle);
        socket
    }

    /// Listeners taken by a SYN become handshakes in progress, unless the
    /// SYN belongs to a connection we already have.
    ///
    /// smoltcp hands a segment to the first socket in the set that accepts
    /// it, and a listener accepts any SYN to its port, whether or not another
    /// socket already has that 4-tuple. The set reuses freed slots, so a
    /// listener often sits before an open connection's socket: a late
    /// duplicate of that connection's SYN (a retransmission the network or
    /// the device held back; QEMU's software RSS can hold a redirected frame
    /// behind another queue for a long time) then makes a second socket for
    /// the same 4-tuple, which from then on is first to get every segment of
    /// the flow and answers each with an RST (the ACKs are not for its
    /// SYN-ACK): the peer's connection is reset in mid-stream. Such a
    /// duplicate is removed here, before its SYN-ACK goes out (this runs
    /// after every received packet and before the stack transmits), so the
    /// SYN is dropped unanswered, as the open connection would have
    /// ignored it too, and the connection goes on untouched.
    fn collect_handshakes(&mut self, sockets: &mut SocketSet<'static>) -> bool {
        let mut progress = false;
        let Services { ports, pending, open, counters, .. } = self;
        for (index, port) in ports.iter_mut().enumerate() {
            let mut i = 0;
            while i < port.listeners.len() {
                let handle = port.listeners[i];
                let socket = sockets.get::<tcp::Socket>(handle);
                if socket.is_listening() {
                    i += 1;
                    continue;
                }
                port.listeners.swap_remove(i);
                progress = true;
                let tuple = (socket.local_endpoint(), socket.remote_endpoint());
                let duplicate = socket.state() == State::SynReceived
                    && pending.iter().map(|p| p.handle).chain(open.iter().map(|o| o.handle)).any(|h| {
                        let other = sockets.get::<tcp::Socket>(h);
                        (other.local_endpoint(), other.remote_endpoint()) == tuple
                    });
                if duplicate {
                    // Removed, not aborted: an abort would send an RST.
                    sockets.remove(handle);
                    counters.duplicate_syns += 1;
                } else {
                    pending.push(Pending { handle, origin: Origin::Service(index) });
                }
            }
        }
        progress
    }

    /// Makes one more listener on every port that has fewer than
    /// `backlog`, while the connection cap allows (port by port, so that
    /// the cap shares them out).
    fn refill(&mut self, sockets: &mut SocketSet<'static>) -> bool {
        let mut added = false;
        for index in 0..self.ports.len() {
            if self.ports[index].listeners.len() >= self.cfg.backlog || !self.has_room() {
                continue;
            }
            let mut socket = self.new_socket();
            if socket.listen(self.ports[index].port).is_err() {
                // Only port 0 fails, and add() refuses it.
                continue;
            }
            handshake_options(&self.cfg, &mut socket);
            self.ports[index].listeners.push(sockets.add(socket));
            added = true;
        }
        added
    }

    /// Handshakes that completed become open connections; failed ones are
    /// counted and dropped.
    fn settle_handshakes(&mut self, sockets: &mut SocketSet<'static>) -> bool {
        let mut progress = false;
        let mut i = 0;
        while i < self.pending.len() {
            let handle = self.pending[i].handle;
            let socket = sockets.get_mut::<tcp::Socket>(handle);
            let state = socket.state();
            match state {
                State::SynReceived | State::SynSent => {
                    i += 1;
                    continue;
                }
                // Reset in SYN-RECEIVED: smoltcp made it a listener again.
                // It may keep details of the failed handshake (the peer's
                // window scale, say), so it listens afresh: abort() sends
                // nothing now that it has no peer, and listen() resets it.
                State::Listen => {
                    let pending = self.pending.swap_remove(i);
                    self.counters.failed += 1;
                    socket.abort();
                    // (An outgoing socket has no port to listen on, and
                    // never gets here: smoltcp closes it instead.)
                    let port = match pending.origin {
                        Origin::Service(index) => Some(&mut self.ports[index]),
                        Origin::Outgoing(_) => None,
                    };
                    match port {
                        Some(port) if port.listeners.len() < self.cfg.backlog && socket.listen(port.port).is_ok() => {
                            handshake_options(&self.cfg, socket);
                            port.listeners.push(handle);
                        }
                        _ => {
                            sockets.remove(handle);
                        }
                    }
                }
                // Timed out, refused, or reset before we saw it established.
                State::Closed | State::TimeWait => {
                    self.pending.swap_remove(i);
                    self.counters.failed += 1;
                    Self::release(&mut self.lingering, sockets, handle);
                }
                // Established, or already further on: a connection.
                _ => {
                    let pending = self.pending.swap_remove(i);
                    // The peer has just been heard from (its handshake
                    // ACK), so from here the idle timeout applies.
                    socket.set_timeout(Some(self.cfg.peer_timeout));
                    let (service, conn) = match pending.origin {
                        Origin::Service(index) => {
                            self.counters.accepted += 1;
                            (Some(index), self.ports[index].service.accept())
                        }
                        Origin::Outgoing(conn) => {
                            self.counters.connected += 1;
                            (None, conn)
                        }
                    };
                    self.counters.active += 1;
                    self.open.push(Open { handle, service, conn, seen: state });
                }
            }
            progress = true;
        }
        progress
    }

    /// Serves every open connection; ends the finished ones.
    fn serve(&mut self, sockets: &mut SocketSet<'static>) -> bool {
        let mut progress = false;
        let mut i = 0;
        while i < self.open.len() {
            let open = &mut self.open[i];
            let socket = sockets.get_mut::<tcp::Socket>(open.handle);
            let state = socket.state();
            if matches!(state, State::Closed | State::TimeWait) {
                // TIME-WAIT is reached only after both FINs; CLOSED in order
                // only from LAST-ACK (our FIN acknowledged) or at the end of
                // TIME-WAIT. Any other way to CLOSED is an RST, sent or
                // received, or a timeout.
                let in_order = state == State::TimeWait || matches!(open.seen, State::LastAck | State::TimeWait);
                if in_order {
                    self.counters.closed += 1;
                } else {
                    self.counters.reset += 1;
                }
                self.counters.active -= 1;
                let handle = self.open.swap_remove(i).handle;
                Self::release(&mut self.lingering, sockets, handle);
                progress = true;
                continue;
            }
            // No packet is processed while the service runs, so the queues
            // change only by what it reads and writes.
            let (queued_in, queued_out) = (socket.recv_queue(), socket.send_queue());
            progress |= open.conn.serve(socket, &mut self.scratch);
            if let Some(index) = open.service {
                let port = &mut self.ports[index];
                port.received += queued_in.saturating_sub(socket.recv_queue()) as u64;
                port.sent += socket.send_queue().saturating_sub(queued_out) as u64;
            }
            let now = socket.state();
            if ours_closed(now) && !ours_closed(open.seen) {
                // Our side is closed: from now on the peer only has to
                // acknowledge our FIN and send its own. Keep-alives would
                // let a peer that answers them but never closes (or a
                // socket whose FIN smoltcp 0.14 fails to retransmit, after
                // duplicate ACKs) hold the socket for ever; without them, a
                // silent peer times out after `peer_timeout`, like an
                // orphaned FIN-WAIT-2 in other stacks.
                socket.set_keep_alive(None);
            }
            open.seen = now;
            i += 1;
        }
        progress
    }

    /// Removes lingering sockets that are done.
    fn reap(&mut self, sockets: &mut SocketSet<'static>) -> bool {
        let before = self.lingering.len();
        self.lingering.retain(|&handle| {
            let done = Self::removable(sockets.get::<tcp::Socket>(handle));
            if done {
                sockets.remove(handle);
            }
            !done
        });
        before != self.lingering.len()
    }

    /// A socket can go once it is CLOSED and has nothing left to say: an
    /// aborted socket keeps its peer until its RST is out, and a socket in
    /// TIME-WAIT still answers a retransmitted FIN (smoltcp closes it after
    /// 10 s).
    fn removable(socket: &tcp::Socket) -> bool {
        socket.state() == State::Closed && socket.remote_endpoint().is_none()
    }

    /// Removes a finished connection's socket now, or once it is removable.
    fn release(lingering: &mut Vec<SocketHandle>, sockets: &mut SocketSet<'static>, handle: SocketHandle) {
        if Self::removable(sockets.get::<tcp::Socket>(handle)) {
            sockets.remove(handle);
        } else {
            lingering.push(handle);
        }
    }
}

/// Whether we have sent (or queued) our FIN.
fn ours_closed(state: State) -> bool {
    matches!(state, State::FinWait1 | State::FinWait2 | State::Closing | State::LastAck | State::TimeWait)
}

/// The handshake's timeout, and the keep-alive for the connection after it.
/// Set after listen()/connect(), which reset the socket's timers, so that
/// the keep-alive interval starts counting when the handshake is over
/// instead of sending a probe at once.
fn handshake_options(cfg: &TcpConfig, socket: &mut tcp::Socket) {
    socket.set_timeout(Some(cfg.handshake_timeout));
    socket.set_keep_alive(Some(cfg.peer_timeout / 4));
}

/// Moves received bytes to the transmit side through `scratch`, passing
/// them through `transform` on the way (an echo passes `|_| {}`); returns
/// how many moved. Bounded by the free transmit space: bytes leave the
/// receive buffer only once they are queued for sending, so nothing is
/// dropped or reordered, and a peer that sends faster than it reads is
/// slowed down by our closing receive window. `transform` sees each byte
/// once per attempt and must not depend on earlier calls (a byte that could
/// not be queued is transformed again next time, from the original).
pub fn relay(socket: &mut tcp::Socket, scratch: &mut [u8], mut transform: impl FnMut(&mut [u8])) -> usize {
    let mut moved = 0;
    while socket.may_send() && socket.recv_queue() > 0 {
        let room = socket.send_capacity() - socket.send_queue();
        let want = room.min(scratch.len());
        if want == 0 {
            break;
        }
        let Ok(got) = socket.peek_slice(&mut scratch[..want]) else { break };
        if got == 0 {
            break;
        }
        transform(&mut scratch[..got]);
        let Ok(sent) = socket.send_slice(&scratch[..got]) else { break };
        consume(socket, sent);
        moved += sent;
        if sent < got {
            break;
        }
    }
    moved
}

/// Drops the first `count` received bytes (already dealt with).
fn consume(socket: &mut tcp::Socket, mut count: usize) {
    // The receive buffer is a ring: its first bytes come in at most two
    // contiguous pieces.
    while count > 0 {
        match socket.recv(|bytes| {
            let n = bytes.len().min(count);
            (n, n)
        }) {
            Ok(n) if n > 0 => count -= n,
            _ => break,
        }
    }
}

/// Closes our side once the peer has closed its side, everything it sent has
/// been read, and everything we sent has been acknowledged (CLOSE-WAIT, both
/// queues empty); the connection ends when our FIN is acknowledged. Returns
/// whether it closed.
///
/// Waiting for the acknowledgements costs one round trip at the end, and
/// works around smoltcp 0.14 losing a FIN that follows unacknowledged data:
/// when a retransmission timeout resends data the peer already has, the
/// peer answers each old segment with a duplicate ACK, and once only the
/// FIN is outstanding those duplicate ACKs start a fast retransmit that
/// finds no data to resend and leaves the FIN without a retransmission
/// timer, for good. A FIN sent alone is retransmitted normally.
pub fn close_after_peer(socket: &mut tcp::Socket) -> bool {
    if socket.state() == State::CloseWait && socket.recv_queue() == 0 && socket.send_queue() == 0 {
        socket.close();
        true
    } else {
        false
    }
}
