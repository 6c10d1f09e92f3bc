//! An iperf3 server (port 5201) that the stock `iperf3` client (3.12)
//! drives unchanged: `-P 1..128`, `-R`, `--bidir`, `-l`, `-t`, `-O`,
//! `--json` (client-side), one test at a time, a second client answered
//! "busy" as the real server does.
//!
//! One test spans vCPUs. Its control connection is served by the vCPU that
//! owns its flow; every data stream by the owner of *its* flow, as any
//! connection here is. The test's state lives with the control connection
//! (its vCPU's [`Local`]); a data stream finds it at setup through the
//! [`Hub`]'s registry (cookie → vCPU) and a [`Msg::Join`] to that vCPU's
//! mailbox; the control vCPU answers each stream with `Start` once all have
//! joined, and at the end sends `Stop`, to which each stream answers with a
//! `Report` of its byte count. Between `Start` and `Stop` a stream touches
//! nothing shared: it counts into its own vCPU's state. The registry and
//! the mailboxes are locked only at those few moments of a test.
//!
//! Data: a receiving stream drops what it reads, without copying it; a
//! sending stream queues whatever its transmit buffer holds (it only ever
//! holds bytes we sent before: no receive data leaks), so the guest's
//! throughput is the stack's and the device's, not a memcpy's. The block
//! size (`-l`) matters to the client only: our side reads and writes as
//! much as the socket takes each round.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};

use super::{close_after_peer, Connect, Connection, TcpService};
use crate::cpu::Wake;

mod client;
pub mod proto;
#[cfg(test)]
mod tests;

use client::{make_cookie, ClientControl};
pub use client::{ClientConfig, ClientOutcome, CONNECT_ATTEMPTS};
use proto::{state, Cookie, JsonReader, Params, Results, StreamResult, COOKIE_LEN};

/// iperf3's port.
pub const PORT: u16 = 5201;

/// A connection that sends no cookie (or a test whose client sends no
/// parameters) within this is dropped.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// All streams of a test must have joined within this after CREATE_STREAMS.
const STREAMS_TIMEOUT: Duration = Duration::from_secs(10);
/// A test runs at most `omit + time` plus this before the server gives up
/// on the client's TEST_END (iperf3's server has the same kind of timer).
const END_GRACE: Duration = Duration::from_secs(10);
/// Streams have this long to report their counts after `Stop`.
const REPORT_TIMEOUT: Duration = Duration::from_secs(2);
/// The client has this long for each of its last messages.
const RESULTS_TIMEOUT: Duration = Duration::from_secs(10);
/// A stream waits this long for its `Start` after joining.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Messages a vCPU's mailbox holds; a test sends at most two per stream
/// each way.
const MAILBOX_CAP: usize = 1024;

/// A message between the vCPUs of one test. `test` is the test's serial
/// number: messages of an earlier test are ignored.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Msg {
    /// stream → control: a data connection with the test's cookie,
    /// established at `at`, is `token` on vCPU `from`.
    Join {
        test: u32,
        from: u16,
        token: u32,
        at: Instant,
    },
    /// control → stream: all streams are in; count (and send, if `sends`)
    /// from now, the first `omit` not measured.
    Start {
        test: u32,
        token: u32,
        sends: bool,
        omit: Duration,
    },
    /// control → stream: not part of the test (it already has its streams,
    /// or is gone); answer ACCESS_DENIED and close.
    Deny {
        test: u32,
        token: u32,
    },
    /// control → stream: the test is over; report and close.
    Stop {
        test: u32,
        token: u32,
    },
    /// stream → control: what it counted.
    Report {
        test: u32,
        from: u16,
        token: u32,
        bytes: u64,
        elapsed: Duration,
    },
    /// client control → a vCPU: open stream `index` of our test to
    /// `remote`:`port` and send it `cookie`.
    Open {
        test: u32,
        index: u32,
        remote: [u8; 4],
        port: u16,
        cookie: Cookie,
        control: u16,
    },
    /// vCPU → client control: stream `index` is open (its cookie sent) and
    /// is `token` on `from`; or it could not be opened.
    Opened {
        test: u32,
        index: u32,
        from: u16,
        token: u32,
    },
    OpenFailed {
        test: u32,
    },
}

/// One vCPU's mailbox. `pending` lets the owner skip the lock on every
/// round that has no message (all but a few per test).
struct Mailbox {
    queue: spin::Mutex<VecDeque<Msg>>,
    pending: AtomicUsize,
}

/// The test currently registered: at most one in the whole guest.
#[derive(Clone, Copy, Debug)]
struct Active {
    cookie: Cookie,
    /// The vCPU serving its control connection.
    cpu: u16,
    serial: u32,
    /// Between CREATE_STREAMS and the last stream joining.
    joining: bool,
}

/// Busy and total time of the guest's vCPUs, in any unit (for the CPU
/// figure of the results).
pub trait CpuLoad {
    fn sample(&self) -> (u64, u64);
}

/// Counters of the iperf3 server, guest-wide.
#[derive(Debug, Default)]
pub struct HubStats {
    /// Tests that reached TEST_RUNNING, and that ended with the client's
    /// IPERF_DONE.
    pub started: AtomicU64,
    pub completed: AtomicU64,
    /// Clients answered ACCESS_DENIED (busy, or a data stream with an
    /// unknown cookie).
    pub denied: AtomicU64,
    /// Tests ended on an error (bad message, timeout, lost peer).
    pub failed: AtomicU64,
    /// Messages lost to a full mailbox.
    pub mailbox_drops: AtomicU64,
}

/// Where the outcome of the guest's client test goes.
pub type ClientReport = Box<dyn Fn(&ClientOutcome) + Send + Sync>;

/// What every vCPU's iperf3 service shares: the test registry and the
/// mailboxes. Made once at boot.
pub struct Hub {
    registry: spin::Mutex<(Option<Active>, u32)>,
    mailboxes: Vec<Mailbox>,
    waker: Box<dyn Wake + Send + Sync>,
    load: Option<Box<dyn CpuLoad + Send + Sync>>,
    /// Told how the guest's own client test went (the kernel logs it).
    on_client_done: Option<ClientReport>,
    client_outcome: spin::Mutex<Option<ClientOutcome>>,
    pub stats: HubStats,
}

/// What a new connection turns out to be, by its cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Claim {
    /// No test: this is its control connection, with this serial.
    Control(u32),
    /// A data stream of the test `serial` controlled from `cpu`.
    Stream { cpu: u16, serial: u32 },
    /// Another test runs, or it does not take streams now.
    Busy,
}

impl Hub {
    /// For `cpus` vCPUs; `waker` interrupts a vCPU so that it reads its
    /// mailbox, `load` samples the guest's busy time (no CPU figures
    /// without it).
    pub fn new(cpus: u16, waker: Box<dyn Wake + Send + Sync>, load: Option<Box<dyn CpuLoad + Send + Sync>>) -> Hub {
        Hub {
            registry: spin::Mutex::new((None, 0)),
            mailboxes: (0..cpus.max(1))
                .map(|_| Mailbox { queue: spin::Mutex::new(VecDeque::new()), pending: AtomicUsize::new(0) })
                .collect(),
            waker,
            load,
            on_client_done: None,
            client_outcome: spin::Mutex::new(None),
            stats: HubStats::default(),
        }
    }

    /// Calls `report` once the guest's own client test (see
    /// [`Iperf::start_client`]) has ended, whichever way.
    pub fn on_client_done(mut self, report: ClientReport) -> Hub {
        self.on_client_done = Some(report);
        self
    }

    /// How the guest's client test went, once it has ended.
    pub fn client_outcome(&self) -> Option<ClientOutcome> {
        self.client_outcome.lock().clone()
    }

    fn client_done(&self, outcome: ClientOutcome) {
        if let Some(report) = &self.on_client_done {
            report(&outcome);
        }
        *self.client_outcome.lock() = Some(outcome);
    }

    /// vCPUs served.
    pub fn cpus(&self) -> u16 {
        self.mailboxes.len() as u16
    }

    /// A serial number for a test of the guest's client (from the same
    /// counter as served tests, so messages never mix them up).
    fn serial(&self) -> u32 {
        let mut reg = self.registry.lock();
        reg.1 = reg.1.wrapping_add(1);
        reg.1
    }

    fn claim(&self, cookie: &Cookie, cpu: u16) -> Claim {
        let mut reg = self.registry.lock();
        match reg.0 {
            None => {
                reg.1 = reg.1.wrapping_add(1);
                reg.0 = Some(Active { cookie: *cookie, cpu, serial: reg.1, joining: false });
                Claim::Control(reg.1)
            }
            Some(a) if a.joining && a.cookie == *cookie => Claim::Stream { cpu: a.cpu, serial: a.serial },
            Some(_) => Claim::Busy,
        }
    }

    fn set_joining(&self, serial: u32, joining: bool) {
        if let Some(a) = self.registry.lock().0.as_mut().filter(|a| a.serial == serial) {
            a.joining = joining;
        }
    }

    fn release(&self, serial: u32) {
        let mut reg = self.registry.lock();
        if reg.0.is_some_and(|a| a.serial == serial) {
            reg.0 = None;
        }
    }

    /// Whether a test is registered now (for reports and tests).
    pub fn busy(&self) -> bool {
        self.registry.lock().0.is_some()
    }

    fn post(&self, to: u16, msg: Msg) {
        let Some(mb) = self.mailboxes.get(to as usize) else { return };
        {
            let mut q = mb.queue.lock();
            if q.len() >= MAILBOX_CAP {
                self.stats.mailbox_drops.fetch_add(1, Ordering::Relaxed);
                return;
            }
            q.push_back(msg);
            mb.pending.fetch_add(1, Ordering::Release);
        }
        self.waker.wake(to);
    }

    fn take(&self, cpu: u16) -> Option<Msg> {
        let mb = self.mailboxes.get(cpu as usize)?;
        if mb.pending.load(Ordering::Acquire) == 0 {
            return None;
        }
        let msg = mb.queue.lock().pop_front()?;
        mb.pending.fetch_sub(1, Ordering::Release);
        Some(msg)
    }

    fn sample(&self) -> Option<(u64, u64)> {
        self.load.as_ref().map(|l| l.sample())
    }
}

/// A data stream served on this vCPU.
#[derive(Debug)]
struct Slot {
    test: u32,
    token: u32,
    /// Where its test's control connection is.
    control: u16,
    phase: SlotPhase,
    sends: bool,
    bytes: u64,
    /// Bytes counted before the end of the omitted seconds.
    omitted: u64,
    /// When measuring starts (Start + omit), once started.
    measure_from: Option<Instant>,
    /// Its connection is still open.
    live: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotPhase {
    Waiting,
    Running,
    Denied,
    Stopped,
}

impl Slot {
    /// Moves the omitted bytes aside once measuring has begun.
    fn settle_omit(&mut self, now: Instant) {
        if self.measure_from.is_some_and(|t| now >= t) && self.omitted == u64::MAX {
            self.omitted = self.bytes;
        }
    }

    fn measured(&self) -> u64 {
        if self.omitted == u64::MAX {
            0
        } else {
            self.bytes - self.omitted
        }
    }
}

/// A stream of the test hosted here, as the control side knows it.
#[derive(Clone, Copy, Debug)]
struct Member {
    cpu: u16,
    token: u32,
    at: Instant,
    id: u32,
    sends: bool,
    report: Option<(u64, Duration)>,
}

/// A test whose control connection this vCPU serves (as the server, or as
/// the guest's client).
#[derive(Debug)]
struct Hosted {
    serial: u32,
    params: Params,
    members: Vec<Member>,
    load_at_start: Option<(u64, u64)>,
    cpu_util: f64,
    /// Client: a stream could not be opened.
    failed: bool,
    /// Client: the server asked for the results before every stream had
    /// reported.
    results_asked: bool,
    /// Client: the server's results.
    server: Option<Results>,
}

impl Hosted {
    fn new(serial: u32, params: Params) -> Hosted {
        let members = Vec::with_capacity(params.streams() as usize);
        Hosted {
            serial,
            params,
            members,
            load_at_start: None,
            cpu_util: 0.0,
            failed: false,
            results_asked: false,
            server: None,
        }
    }
}

/// One vCPU's iperf3 state, shared by its service and its connections
/// (never by another vCPU).
struct Local {
    hub: &'static Hub,
    cpu: u16,
    now: Instant,
    next_token: u32,
    slots: Vec<Slot>,
    hosted: Option<Hosted>,
    /// Connections of port 5201 open on this vCPU.
    conns: u32,
    /// The guest's client test run from this vCPU, what it runs, and when
    /// its next connection attempt is due (with the attempts left).
    client: Option<Hosted>,
    client_config: Option<ClientConfig>,
    client_attempt: Option<(Instant, u32)>,
    /// Client streams this vCPU was asked to open.
    opens: Vec<Open>,
}

/// A client stream to open (from [`Msg::Open`]).
#[derive(Clone, Copy, Debug)]
struct Open {
    test: u32,
    token: u32,
    index: u32,
    control: u16,
    remote: [u8; 4],
    port: u16,
    cookie: Cookie,
}

impl Local {
    /// A data stream of test `test` (controlled from vCPU `control`) on
    /// this vCPU, waiting for its `Start`; returns its token.
    fn new_slot(&mut self, test: u32, control: u16) -> u32 {
        let token = self.next_token;
        self.next_token = token.wrapping_add(1);
        self.slots.push(Slot {
            test,
            token,
            control,
            phase: SlotPhase::Waiting,
            sends: false,
            bytes: 0,
            omitted: 0,
            measure_from: None,
            live: true,
        });
        token
    }

    fn slot(&mut self, test: u32, token: u32) -> Option<&mut Slot> {
        self.slots.iter_mut().find(|s| s.test == test && s.token == token)
    }

    fn handle(&mut self, msg: Msg) {
        let now = self.now;
        match msg {
            Msg::Join { test, from, token, at } => {
                let accept = match self.hosted.as_mut() {
                    Some(h)
                        if h.serial == test
                            && h.load_at_start.is_none()
                            && h.members.len() < h.params.streams() as usize =>
                    {
                        h.members.push(Member { cpu: from, token, at, id: 0, sends: false, report: None });
                        true
                    }
                    _ => false,
                };
                if !accept {
                    self.hub.post(from, Msg::Deny { test, token });
                }
            }
            Msg::Start { test, token, sends, omit } => {
                if let Some(s) = self.slot(test, token) {
                    if s.phase == SlotPhase::Waiting {
                        s.phase = SlotPhase::Running;
                        s.sends = sends;
                        s.bytes = 0;
                        s.omitted = if omit == Duration::ZERO { 0 } else { u64::MAX };
                        s.measure_from = Some(now + omit);
                    }
                }
            }
            Msg::Deny { test, token } => {
                if let Some(s) = self.slot(test, token) {
                    s.phase = SlotPhase::Denied;
                }
            }
            Msg::Stop { test, token } => {
                let cpu = self.cpu;
                let hub = self.hub;
                if let Some(s) = self.slot(test, token) {
                    s.settle_omit(now);
                    let elapsed = s.measure_from.filter(|&t| now > t).map_or(Duration::ZERO, |t| now - t);
                    hub.post(s.control, Msg::Report { test, from: cpu, token, bytes: s.measured(), elapsed });
                    s.phase = SlotPhase::Stopped;
                }
            }
            Msg::Report { test, from, token, bytes, elapsed } => {
                let tests = self.hosted.iter_mut().chain(self.client.iter_mut());
                if let Some(h) = tests.into_iter().find(|h| h.serial == test) {
                    if let Some(m) = h.members.iter_mut().find(|m| m.cpu == from && m.token == token) {
                        m.report = Some((bytes, elapsed));
                    }
                }
            }
            Msg::Open { test, index, remote, port, cookie, control } => {
                let token = self.new_slot(test, control);
                self.opens.push(Open { test, token, index, control, remote, port, cookie });
            }
            Msg::Opened { test, index, from, token } => {
                if let Some(c) = self.client.as_mut().filter(|c| c.serial == test) {
                    let sends = !c.params.server_sends(index);
                    let id = proto::stream_id(index);
                    c.members.push(Member { cpu: from, token, at: now, id, sends, report: None });
                }
            }
            Msg::OpenFailed { test } => {
                if let Some(c) = self.client.as_mut().filter(|c| c.serial == test) {
                    c.failed = true;
                }
            }
        }
        // Slots nobody needs any more: stopped, denied or never started,
        // and their connection gone.
        self.slots.retain(|s| s.live || s.phase == SlotPhase::Running);
    }

    /// Ends the hosted test: every stream still running is stopped (it
    /// reports to nobody), and the registry is free for the next client.
    fn end_hosted(&mut self, serial: u32) {
        if let Some(h) = self.hosted.take_if(|h| h.serial == serial) {
            for m in &h.members {
                if m.report.is_none() {
                    self.hub.post(m.cpu, Msg::Stop { test: serial, token: m.token });
                }
            }
        }
        self.hub.release(serial);
    }
}

/// The iperf3 service of one vCPU.
pub struct Iperf {
    local: Rc<RefCell<Local>>,
}

impl Iperf {
    /// Runs one iperf3 client test from this vCPU, to an `iperf3 -s` at
    /// `cfg.server`: up to [`CONNECT_ATTEMPTS`] connection attempts a
    /// second apart, the first a second after `now` (the host's side is
    /// usually started once the guest is up, and its first pings then find
    /// the guest quiet), then the test. Its outcome goes to the hub
    /// ([`Hub::on_client_done`]).
    pub fn start_client(&mut self, cfg: ClientConfig, now: Instant) {
        let mut local = self.local.borrow_mut();
        local.client_config = Some(cfg);
        local.client_attempt = Some((now + Duration::from_secs(1), CONNECT_ATTEMPTS));
    }

    /// vCPU `cpu`'s server (its index in the hub, as in steering).
    pub fn new(hub: &'static Hub, cpu: u16) -> Iperf {
        Iperf {
            local: Rc::new(RefCell::new(Local {
                hub,
                cpu,
                now: Instant::ZERO,
                next_token: 0,
                slots: Vec::new(),
                hosted: None,
                conns: 0,
                client: None,
                client_config: None,
                client_attempt: None,
                opens: Vec::new(),
            })),
        }
    }
}

impl TcpService for Iperf {
    fn name(&self) -> &'static str {
        "iperf3"
    }

    fn port(&self) -> u16 {
        PORT
    }

    fn accept(&mut self) -> Box<dyn Connection> {
        let now = {
            let mut local = self.local.borrow_mut();
            local.conns += 1;
            local.now
        };
        Box::new(Conn { local: self.local.clone(), since: now, cookie: [0; COOKIE_LEN], have: 0, role: Role::Cookie })
    }

    fn poll(&mut self, now: Instant, connect: &mut Vec<Connect>) -> bool {
        let mut local = self.local.borrow_mut();
        local.now = now;
        let (hub, cpu) = (local.hub, local.cpu);
        let mut progress = false;
        while let Some(msg) = hub.take(cpu) {
            local.handle(msg);
            progress = true;
        }
        for o in core::mem::take(&mut local.opens) {
            local.conns += 1;
            let role = Role::Opening { test: o.test, token: o.token, index: o.index, control: o.control, sent: 0 };
            let conn = Conn { local: Rc::clone(&self.local), since: now, cookie: o.cookie, have: 0, role };
            connect.push(Connect { remote: o.remote, port: o.port, conn: Box::new(conn) });
            progress = true;
        }
        // The guest's client: (another) attempt at its control connection.
        // (The configuration is only cloned for an attempt: this runs every
        // round.)
        let due = local.client_attempt.filter(|&(at, _)| now >= at && local.client.is_none());
        if let (Some((_, left)), Some(cfg)) = (due, due.and_then(|_| local.client_config.clone())) {
            local.client_attempt = (left > 1).then(|| (now + Duration::from_secs(1), left - 1));
            let serial = hub.serial();
            local.client = Some(Hosted::new(serial, cfg.params.clone()));
            local.conns += 1;
            let cookie = make_cookie(now.total_micros() as u64 ^ u64::from(serial) << 32 ^ u64::from(cpu));
            let role = Role::Client(Box::new(ClientControl::new(serial, cookie, now)));
            let conn = Conn { local: Rc::clone(&self.local), since: now, cookie, have: 0, role };
            connect.push(Connect { remote: cfg.server, port: cfg.port, conn: Box::new(conn) });
            progress = true;
        }
        progress
    }

    fn poll_at(&self) -> Option<Instant> {
        // The connections' deadlines (a cookie, the parameters, streams
        // joining, reports) pass with nothing arriving: look again by then.
        // A second is precise enough for timeouts of several seconds;
        // reports are awaited more closely.
        let local = self.local.borrow();
        let reports = local
            .hosted
            .as_ref()
            .is_some_and(|h| h.load_at_start.is_some() && h.members.iter().any(|m| m.report.is_none()));
        if reports {
            Some(local.now + Duration::from_millis(100))
        } else if local.conns > 0 || local.client_attempt.is_some() {
            Some(local.now + Duration::from_secs(1))
        } else {
            None
        }
    }
}

/// What a connection on port 5201 is.
enum Role {
    /// Reading the cookie.
    Cookie,
    Control(Box<Control>),
    Stream {
        test: u32,
        token: u32,
    },
    /// A client stream: sending its cookie (`sent` bytes of it so far),
    /// then it is a `Stream`.
    Opening {
        test: u32,
        token: u32,
        index: u32,
        control: u16,
        sent: usize,
    },
    /// The guest's client's control connection.
    Client(Box<ClientControl>),
    /// Answering ACCESS_DENIED, then closing.
    Refused {
        sent: bool,
    },
    /// Nothing more to do but close.
    Done,
}

/// One connection of port 5201.
struct Conn {
    local: Rc<RefCell<Local>>,
    /// When it was established, or its phase began.
    since: Instant,
    cookie: Cookie,
    have: usize,
    role: Role,
}

impl Connection for Conn {
    fn serve(&mut self, socket: &mut tcp::Socket, _scratch: &mut [u8]) -> bool {
        let now = self.local.borrow().now;
        match &mut self.role {
            Role::Cookie => self.read_cookie(socket, now),
            Role::Control(c) => {
                let mut local = self.local.borrow_mut();
                let progress = c.serve(socket, &mut local, now);
                if c.phase == Phase::Over {
                    self.role = Role::Done;
                }
                progress
            }
            Role::Stream { test, token } => {
                let (test, token) = (*test, *token);
                serve_stream(socket, &mut self.local.borrow_mut(), test, token, now, self.since)
            }
            Role::Opening { test, token, index, control, sent } => {
                let (test, token, index, control) = (*test, *token, *index, *control);
                if let Ok(n) = socket.send_slice(&self.cookie[*sent..]) {
                    *sent += n;
                }
                if *sent == COOKIE_LEN {
                    let local = self.local.borrow();
                    local.hub.post(control, Msg::Opened { test, index, from: local.cpu, token });
                    self.role = Role::Stream { test, token };
                    self.since = now;
                }
                true
            }
            Role::Client(c) => {
                let mut local = self.local.borrow_mut();
                // Connected: no more attempts, whatever happens now.
                local.client_attempt = None;
                let progress = c.serve(socket, &mut local, now);
                if c.phase == client::Phase::Over {
                    self.role = Role::Done;
                }
                progress
            }
            Role::Refused { sent } => {
                if !*sent {
                    *sent = socket.send_slice(&[state::ACCESS_DENIED as u8]) == Ok(1);
                }
                if *sent {
                    socket.close();
                    self.role = Role::Done;
                }
                true
            }
            Role::Done => {
                // Drain what the peer still sends until it closes too.
                while let Ok(1..) = socket.recv(|b| (b.len(), b.len())) {}
                socket.close();
                false
            }
        }
    }
}

impl Conn {
    fn read_cookie(&mut self, socket: &mut tcp::Socket, now: Instant) -> bool {
        let have = self.have;
        if let Ok(n) = socket.recv_slice(&mut self.cookie[have..]) {
            self.have += n;
        }
        if self.have < COOKIE_LEN {
            if now >= self.since + SETUP_TIMEOUT || !socket.may_recv() {
                socket.abort();
                self.role = Role::Done;
                return true;
            }
            return self.have > have;
        }
        let mut local = self.local.borrow_mut();
        let (hub, cpu) = (local.hub, local.cpu);
        self.since = now;
        match hub.claim(&self.cookie, cpu) {
            Claim::Control(serial) => {
                local.hosted = None;
                let mut c = Box::new(Control::new(serial, now));
                c.out.bytes.push(state::PARAM_EXCHANGE as u8);
                c.out.flush(socket);
                self.role = Role::Control(c);
            }
            Claim::Stream { cpu: control, serial } => {
                let token = local.new_slot(serial, control);
                hub.post(control, Msg::Join { test: serial, from: cpu, token, at: now });
                self.role = Role::Stream { test: serial, token };
            }
            Claim::Busy => {
                hub.stats.denied.fetch_add(1, Ordering::Relaxed);
                self.role = Role::Refused { sent: false };
            }
        }
        true
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let Ok(mut local) = self.local.try_borrow_mut() else { return };
        local.conns = local.conns.saturating_sub(1);
        match &mut self.role {
            // A control connection that goes away (reset, timed out) ends
            // its test.
            Role::Control(c) if c.phase != Phase::Over => {
                local.hub.stats.failed.fetch_add(1, Ordering::Relaxed);
                local.end_hosted(c.serial);
            }
            Role::Stream { test, token } => {
                let (test, token) = (*test, *token);
                if let Some(s) = local.slot(test, token) {
                    s.live = false;
                }
                local.slots.retain(|s| s.live || s.phase == SlotPhase::Running);
            }
            // A client stream that never got its cookie out (refused,
            // timed out): the test cannot run.
            Role::Opening { test, token, control, .. } => {
                let (test, token) = (*test, *token);
                local.hub.post(*control, Msg::OpenFailed { test });
                local.slots.retain(|s| !(s.test == test && s.token == token));
            }
            Role::Client(c) if c.phase != client::Phase::Over => {
                let now = local.now;
                let never_served = c.phase == client::Phase::Waiting && local.client_attempt.is_some();
                if never_served {
                    // Its connection failed: the next attempt comes when due.
                    local.client = None;
                } else {
                    c.finish(&mut local, Some("the control connection ended early".into()), now);
                }
            }
            _ => {}
        }
    }
}

/// One round of a data stream.
fn serve_stream(
    socket: &mut tcp::Socket,
    local: &mut Local,
    test: u32,
    token: u32,
    now: Instant,
    since: Instant,
) -> bool {
    let Some(slot) = local.slot(test, token) else {
        socket.abort();
        return true;
    };
    match slot.phase {
        SlotPhase::Waiting => {
            if now >= since + START_TIMEOUT || !socket.may_recv() {
                slot.phase = SlotPhase::Stopped;
                socket.abort();
                return true;
            }
            false
        }
        SlotPhase::Denied => {
            slot.phase = SlotPhase::Stopped;
            let _ = socket.send_slice(&[state::ACCESS_DENIED as u8]);
            socket.close();
            true
        }
        SlotPhase::Stopped => {
            // iperf3's server closes its streams at TEST_END: a sending
            // one's queued bytes still go out before its FIN (the client
            // drains them until it hears EXCHANGE_RESULTS: an RST would be
            // a read error there); a receiving one sinks whatever still
            // arrives, until the client closes too.
            while let Ok(1..) = socket.recv(|b| (b.len(), b.len())) {}
            if matches!(socket.state(), tcp::State::Established | tcp::State::CloseWait) {
                socket.close();
                return true;
            }
            false
        }
        SlotPhase::Running => {
            let mut moved = 0u64;
            // Receive side (all streams: a sending one only gets the odd
            // byte, which is dropped too).
            while let Ok(n @ 1..) = socket.recv(|b| (b.len(), b.len())) {
                moved += n as u64;
            }
            if slot.sends {
                moved = 0;
                // Queue as much as fits: the buffer's own bytes go out
                // again (nothing is copied per byte).
                while let Ok(n @ 1..) = socket.send(|b| (b.len(), b.len())) {
                    moved += n as u64;
                }
            }
            slot.bytes += moved;
            slot.settle_omit(now);
            let closed = close_after_peer(socket);
            moved > 0 || closed
        }
    }
}

/// Control bytes waiting to go out, and how many of them are out.
#[derive(Debug, Default)]
struct Outbox {
    bytes: Vec<u8>,
    sent: usize,
}

impl Outbox {
    /// Sends what the socket takes; forgets it all once everything is out.
    fn flush(&mut self, socket: &mut tcp::Socket) {
        if self.sent < self.bytes.len() {
            if let Ok(n) = socket.send_slice(&self.bytes[self.sent..]) {
                self.sent += n;
            }
        }
        if self.sent == self.bytes.len() {
            self.bytes.clear();
            self.sent = 0;
        }
    }
}

/// The control connection's phases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// PARAM_EXCHANGE sent; reading the parameters.
    Params,
    /// CREATE_STREAMS sent; waiting for every stream to join.
    Streams,
    /// TEST_RUNNING sent; waiting for TEST_END.
    Running,
    /// Streams stopped; waiting for their reports.
    Reports,
    /// EXCHANGE_RESULTS sent; reading the client's results.
    ClientResults,
    /// Our results and DISPLAY_RESULTS sent; waiting for IPERF_DONE.
    Done,
    /// Sending what is left, then closing.
    Closing,
    /// Closed: the test is over.
    Over,
}

/// The state of a control connection.
struct Control {
    serial: u32,
    phase: Phase,
    /// Bytes to send, and how many of them are out.
    out: Outbox,
    reader: JsonReader,
    /// When the current phase must be over.
    deadline: Instant,
}

impl Control {
    fn new(serial: u32, now: Instant) -> Control {
        Control {
            serial,
            phase: Phase::Params,
            out: Outbox::default(),
            reader: JsonReader::default(),
            deadline: now + SETUP_TIMEOUT,
        }
    }

    /// Ends the test on an error: SERVER_ERROR with `errno`, then close.
    fn fail(&mut self, local: &mut Local, errno: i32) {
        local.hub.stats.failed.fetch_add(1, Ordering::Relaxed);
        proto::server_error(errno, &mut self.out.bytes);
        self.finish(local);
    }

    /// Ends the test (streams stopped, registry free), then close.
    fn finish(&mut self, local: &mut Local) {
        local.end_hosted(self.serial);
        self.phase = Phase::Closing;
    }

    fn serve(&mut self, socket: &mut tcp::Socket, local: &mut Local, now: Instant) -> bool {
        let before = (self.phase, self.out.bytes.len());
        self.step(socket, local, now);
        self.out.flush(socket);
        if self.phase == Phase::Closing && self.out.bytes.is_empty() {
            socket.close();
            self.phase = Phase::Over;
        }
        (self.phase, self.out.bytes.len()) != before
    }

    fn step(&mut self, socket: &mut tcp::Socket, local: &mut Local, now: Instant) {
        if matches!(self.phase, Phase::Closing | Phase::Over) {
            return;
        }
        // The client closed (or reset) the control connection mid-test.
        if !socket.may_recv() && socket.recv_queue() == 0 {
            if self.phase == Phase::Done {
                local.hub.stats.completed.fetch_add(1, Ordering::Relaxed);
                self.finish(local);
            } else {
                local.hub.stats.failed.fetch_add(1, Ordering::Relaxed);
                self.finish(local);
            }
            return;
        }
        match self.phase {
            Phase::Params => match self.read_json(socket) {
                Some(Ok(json)) => match Params::parse(&json) {
                    Ok(params) => {
                        local.hosted = Some(Hosted::new(self.serial, params));
                        local.hub.set_joining(self.serial, true);
                        self.out.bytes.push(state::CREATE_STREAMS as u8);
                        self.phase = Phase::Streams;
                        self.deadline = now + STREAMS_TIMEOUT;
                    }
                    Err(e) => self.fail(local, e.params_errno()),
                },
                Some(Err(_)) => self.fail(local, proto::errno::RECV_PARAMS),
                None if now >= self.deadline => self.fail(local, proto::errno::RECV_PARAMS),
                None => {}
            },
            Phase::Streams => {
                if self.unexpected_byte(socket, local) {
                    return;
                }
                let Some(h) = local.hosted.as_mut() else { return self.fail(local, proto::errno::ACCEPT) };
                if h.members.len() < h.params.streams() as usize {
                    if now >= self.deadline {
                        self.fail(local, proto::errno::ACCEPT);
                    }
                    return;
                }
                // All in: ids and directions by the order the client opened
                // them (it opens one after the other, each once the last
                // one's handshake is done), whichever vCPU serves them.
                h.members.sort_by_key(|m| m.at);
                let omit = Duration::from_secs(u64::from(h.params.omit));
                for (i, m) in h.members.iter_mut().enumerate() {
                    m.id = proto::stream_id(i as u32);
                    m.sends = h.params.server_sends(i as u32);
                    local.hub.post(m.cpu, Msg::Start { test: self.serial, token: m.token, sends: m.sends, omit });
                }
                h.load_at_start = local.hub.sample().or(Some((0, 0)));
                let run = u64::from(h.params.omit) + u64::from(h.params.time);
                // `-t 0` (bounded by bytes or blocks): the client ends it, or
                // closes; a day is the most we wait.
                let run = if h.params.time == 0 { 86_400 } else { run };
                self.deadline = now + Duration::from_secs(run) + END_GRACE;
                local.hub.set_joining(self.serial, false);
                local.hub.stats.started.fetch_add(1, Ordering::Relaxed);
                self.out.bytes.push(state::TEST_START as u8);
                self.out.bytes.push(state::TEST_RUNNING as u8);
                self.phase = Phase::Running;
            }
            Phase::Running => {
                let mut byte = [0u8; 1];
                match socket.recv_slice(&mut byte) {
                    Ok(1) => match byte[0] as i8 {
                        state::TEST_END => {
                            if let Some(h) = local.hosted.as_mut() {
                                h.cpu_util = cpu_util(h.load_at_start, local.hub.sample());
                                for m in &h.members {
                                    local.hub.post(m.cpu, Msg::Stop { test: self.serial, token: m.token });
                                }
                            }
                            self.phase = Phase::Reports;
                            self.deadline = now + REPORT_TIMEOUT;
                        }
                        state::CLIENT_TERMINATE => {
                            local.hub.stats.failed.fetch_add(1, Ordering::Relaxed);
                            self.finish(local);
                        }
                        _ => self.fail(local, proto::errno::MESSAGE),
                    },
                    _ if now >= self.deadline => {
                        local.hub.stats.failed.fetch_add(1, Ordering::Relaxed);
                        self.out.bytes.push(state::SERVER_TERMINATE as u8);
                        self.finish(local);
                    }
                    _ => {}
                }
            }
            Phase::Reports => {
                if self.unexpected_byte(socket, local) {
                    return;
                }
                let all = local.hosted.as_ref().is_none_or(|h| h.members.iter().all(|m| m.report.is_some()));
                if all || now >= self.deadline {
                    self.out.bytes.push(state::EXCHANGE_RESULTS as u8);
                    self.phase = Phase::ClientResults;
                    self.deadline = now + RESULTS_TIMEOUT;
                }
            }
            Phase::ClientResults => match self.read_json(socket) {
                Some(Ok(json)) if Results::parse(&json).is_ok() => {
                    let ours = local.hosted.as_ref().map(our_results).unwrap_or_else(empty_results);
                    proto::frame_json(&ours.to_json(), &mut self.out.bytes);
                    self.out.bytes.push(state::DISPLAY_RESULTS as u8);
                    self.phase = Phase::Done;
                    self.deadline = now + RESULTS_TIMEOUT;
                }
                Some(_) => self.fail(local, proto::errno::RECV_RESULTS),
                None if now >= self.deadline => self.fail(local, proto::errno::RECV_RESULTS),
                None => {}
            },
            Phase::Done => {
                let mut byte = [0u8; 1];
                match socket.recv_slice(&mut byte) {
                    Ok(1) if byte[0] as i8 == state::IPERF_DONE => {
                        local.hub.stats.completed.fetch_add(1, Ordering::Relaxed);
                        self.finish(local);
                    }
                    Ok(1) => self.fail(local, proto::errno::MESSAGE),
                    _ if now >= self.deadline => {
                        local.hub.stats.failed.fetch_add(1, Ordering::Relaxed);
                        self.finish(local);
                    }
                    _ => {}
                }
            }
            Phase::Closing | Phase::Over => {}
        }
    }

    /// In a phase where the client has nothing to say, anything but its
    /// CLIENT_TERMINATE is a protocol error; returns whether the test
    /// ended.
    fn unexpected_byte(&mut self, socket: &mut tcp::Socket, local: &mut Local) -> bool {
        let mut byte = [0u8; 1];
        match socket.recv_slice(&mut byte) {
            Ok(1) if byte[0] as i8 == state::CLIENT_TERMINATE => {
                local.hub.stats.failed.fetch_add(1, Ordering::Relaxed);
                self.finish(local);
                true
            }
            Ok(1) => {
                self.fail(local, proto::errno::MESSAGE);
                true
            }
            _ => false,
        }
    }

    fn read_json(&mut self, socket: &mut tcp::Socket) -> Option<Result<Vec<u8>, proto::Error>> {
        let mut done = None;
        let _ = socket.recv(|bytes| {
            let (used, msg) = self.reader.feed(bytes);
            done = msg;
            (used, ())
        });
        if done.is_none() {
            // The ring's second piece.
            let _ = socket.recv(|bytes| {
                let (used, msg) = self.reader.feed(bytes);
                done = msg;
                (used, ())
            });
        }
        done
    }
}

/// Percent of the guest's vCPU time that was busy between two samples.
fn cpu_util(start: Option<(u64, u64)>, end: Option<(u64, u64)>) -> f64 {
    match (start, end) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => (b1.saturating_sub(b0)) as f64 * 100.0 / (t1 - t0) as f64,
        _ => 0.0,
    }
}

fn our_results(h: &Hosted) -> Results {
    let only_receives = !h.params.reverse && !h.params.bidirectional;
    let mut streams: Vec<StreamResult> = h
        .members
        .iter()
        .map(|m| {
            let (bytes, elapsed) = m.report.unwrap_or((0, Duration::ZERO));
            StreamResult { id: m.id, bytes, retransmits: -1, end_time: elapsed.total_micros() as f64 / 1e6 }
        })
        .collect();
    streams.sort_by_key(|s| s.id);
    Results {
        cpu_util_total: h.cpu_util,
        // A unikernel has no user mode: all of it is the kernel's.
        cpu_util_user: 0.0,
        cpu_util_system: h.cpu_util,
        // smoltcp does not count retransmissions.
        sender_has_retransmits: if only_receives { -1 } else { 0 },
        streams,
    }
}

fn empty_results() -> Results {
    Results {
        cpu_util_total: 0.0,
        cpu_util_user: 0.0,
        cpu_util_system: 0.0,
        sender_has_retransmits: -1,
        streams: Vec::new(),
    }
}
