//! The guest as an iperf3 client (`iperf-client=` at boot): it connects to
//! an `iperf3 -s` on the host, and its data streams are opened by several
//! vCPUs, each from a local port whose replies come back to it, so a
//! guest-initiated test spans vCPUs the way a served one does.
//!
//! The control connection's vCPU drives the protocol (cookie, parameters,
//! streams, TEST_END at the end of `omit + time`, results both ways,
//! IPERF_DONE). It asks the vCPUs in turn to open one stream each, one
//! after the other as iperf3's client does (the server numbers and, with
//! `--bidir`, directs them by the order they arrive), starts and stops them
//! by message, and collects their byte counts like the server side does.

use alloc::string::String;
use alloc::vec::Vec;

use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};

use super::proto::{self, state, Cookie, JsonReader, Params, Results, StreamResult, COOKIE_LEN};
use super::{cpu_util, Hosted, Local, Msg, Outbox};

/// What the guest's client runs.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientConfig {
    pub server: [u8; 4],
    pub port: u16,
    /// `parallel`, `len`, `time`, `omit`, `reverse`, `bidirectional` are
    /// sent to the server as the client's parameters.
    pub params: Params,
}

/// How the client's test went, as the serial console reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientOutcome {
    pub config: ClientConfig,
    /// `None` when it completed; else why not.
    pub error: Option<String>,
    /// Bytes our streams sent and received (measured, after `omit`).
    pub sent: u64,
    pub received: u64,
    /// Bytes the server reports it received (on our sending streams) and
    /// sent (on our receiving ones).
    pub server_received: u64,
    pub server_sent: u64,
    /// Seconds measured.
    pub seconds: f64,
    /// Busy share of the guest's network vCPUs during the test, percent.
    pub cpu_util: f64,
    /// vCPUs that carried a stream.
    pub stream_cpus: Vec<u16>,
}

impl ClientOutcome {
    /// What the receiving side got, per second, in bits: the server's count
    /// for our sending streams, ours for the receiving ones.
    pub fn bits_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            (self.server_received + self.received) as f64 * 8.0 / self.seconds
        } else {
            0.0
        }
    }
}

/// Connection attempts before the client gives up (a second apart): the
/// host's server may still be starting when the guest is up.
pub const CONNECT_ATTEMPTS: u32 = 10;
/// The server has this long to answer each step before the test fails.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Waiting for a state byte from the server.
    Waiting,
    /// Opening stream `index` (its vCPU has been asked).
    Opening(u32),
    /// All streams open; waiting for TEST_START / TEST_RUNNING.
    Opened,
    /// Data flows until `until`.
    Running {
        until: Instant,
    },
    /// TEST_END sent; waiting for EXCHANGE_RESULTS.
    Ending,
    /// Our results sent; reading the server's.
    Results,
    /// The server's results read; waiting for DISPLAY_RESULTS.
    Display,
    Closing,
    Over,
}

/// The client's control connection.
pub(super) struct ClientControl {
    pub(super) serial: u32,
    pub(super) phase: Phase,
    cookie: Cookie,
    out: Outbox,
    reader: JsonReader,
    deadline: Instant,
    /// The test's parameters went out.
    params_sent: bool,
    /// SERVER_ERROR: collecting its 8 bytes.
    error_bytes: Option<Vec<u8>>,
    started: Option<Instant>,
}

/// A cookie of 36 letters and digits from `seed`, and its NUL.
pub(super) fn make_cookie(mut seed: u64) -> Cookie {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut c = [0u8; COOKIE_LEN];
    for b in c.iter_mut().take(COOKIE_LEN - 1) {
        // xorshift64
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        *b = ALPHABET[(seed % 32) as usize];
    }
    c
}

impl ClientControl {
    pub(super) fn new(serial: u32, cookie: Cookie, now: Instant) -> ClientControl {
        let mut out = Outbox::default();
        out.bytes.extend_from_slice(&cookie);
        ClientControl {
            serial,
            phase: Phase::Waiting,
            cookie,
            out,
            reader: JsonReader::default(),
            deadline: now + STEP_TIMEOUT,
            params_sent: false,
            error_bytes: None,
            started: None,
        }
    }

    pub(super) fn serve(&mut self, socket: &mut tcp::Socket, local: &mut Local, now: Instant) -> bool {
        let before = (self.phase, self.out.bytes.len());
        if !matches!(self.phase, Phase::Closing | Phase::Over) {
            if let Err(e) = self.step(socket, local, now) {
                self.finish(local, Some(e), now);
            }
        }
        self.out.flush(socket);
        if self.phase == Phase::Closing && self.out.bytes.is_empty() {
            socket.close();
            self.phase = Phase::Over;
        }
        (self.phase, self.out.bytes.len()) != before
    }

    /// Ends the test: streams stopped, the outcome reported.
    pub(super) fn finish(&mut self, local: &mut Local, error: Option<String>, now: Instant) {
        if let Some(test) = local.client.take_if(|c| c.serial == self.serial) {
            for m in &test.members {
                if m.report.is_none() {
                    local.hub.post(m.cpu, Msg::Stop { test: self.serial, token: m.token });
                }
            }
            let outcome = outcome(&test, error, local.client_config.clone(), self.started.map(|s| now - s));
            local.hub.client_done(outcome);
        }
        self.phase = Phase::Closing;
    }

    fn step(&mut self, socket: &mut tcp::Socket, local: &mut Local, now: Instant) -> Result<(), String> {
        if !socket.may_recv() && socket.recv_queue() == 0 && self.phase != Phase::Display {
            return Err("the server closed the control connection".into());
        }
        let Some(test) = local.client.as_mut().filter(|c| c.serial == self.serial) else {
            return Err("the test is gone".into());
        };
        match self.phase {
            Phase::Opening(i) => {
                if test.failed {
                    return Err(alloc::format!("stream {} could not be opened", i + 1));
                }
                if test.members.len() as u32 > i {
                    let next = i + 1;
                    if next < test.params.streams() {
                        open(local, self.serial, next, &self.cookie);
                        self.phase = Phase::Opening(next);
                    } else {
                        self.phase = Phase::Opened;
                    }
                    self.deadline = now + STEP_TIMEOUT;
                } else if now >= self.deadline {
                    return Err(alloc::format!("stream {} was not established in time", i + 1));
                }
                return Ok(());
            }
            Phase::Running { until } => {
                if now >= until {
                    test.cpu_util = cpu_util(test.load_at_start, local.hub.sample());
                    for m in &test.members {
                        local.hub.post(m.cpu, Msg::Stop { test: self.serial, token: m.token });
                    }
                    self.out.bytes.push(state::TEST_END as u8);
                    self.phase = Phase::Ending;
                    self.deadline = now + STEP_TIMEOUT;
                }
            }
            Phase::Results => {
                // The ring's two pieces, but nothing past the message (the
                // state byte behind it is read below).
                let mut done = None;
                for _ in 0..2 {
                    if done.is_none() {
                        let _ = socket.recv(|bytes| {
                            let (used, msg) = self.reader.feed(bytes);
                            done = msg;
                            (used, ())
                        });
                    }
                }
                match done {
                    Some(Ok(json)) => {
                        let r = Results::parse(&json).map_err(|e| alloc::format!("the server's results: {e:?}"))?;
                        test.server = Some(r);
                        self.phase = Phase::Display;
                        self.deadline = now + STEP_TIMEOUT;
                    }
                    Some(Err(e)) => return Err(alloc::format!("the server's results: {e:?}")),
                    None if now >= self.deadline => return Err("no results from the server".into()),
                    None => {}
                }
                return Ok(());
            }
            _ => {}
        }
        // State bytes from the server.
        let mut byte = [0u8; 1];
        while socket.recv_slice(&mut byte) == Ok(1) {
            if let Some(e) = self.error_bytes.as_mut() {
                e.push(byte[0]);
                if e.len() == 8 {
                    let errno = i32::from_be_bytes([e[0], e[1], e[2], e[3]]);
                    return Err(alloc::format!("the server reports error {errno}"));
                }
                continue;
            }
            let test = local.client.as_mut().ok_or("the test is gone")?;
            match byte[0] as i8 {
                state::PARAM_EXCHANGE if !self.params_sent => {
                    proto::frame_json(&test.params.to_json(), &mut self.out.bytes);
                    self.params_sent = true;
                }
                state::CREATE_STREAMS if self.params_sent && matches!(self.phase, Phase::Waiting) => {
                    open(local, self.serial, 0, &self.cookie);
                    self.phase = Phase::Opening(0);
                    self.deadline = now + STEP_TIMEOUT;
                    return Ok(());
                }
                state::TEST_START if self.phase == Phase::Opened => {}
                state::TEST_RUNNING if self.phase == Phase::Opened => {
                    let omit = Duration::from_secs(u64::from(test.params.omit));
                    for m in &test.members {
                        local.hub.post(m.cpu, Msg::Start { test: self.serial, token: m.token, sends: m.sends, omit });
                    }
                    test.load_at_start = local.hub.sample().or(Some((0, 0)));
                    self.started = Some(now + omit);
                    let run = u64::from(test.params.omit) + u64::from(test.params.time.max(1));
                    self.phase = Phase::Running { until: now + Duration::from_secs(run) };
                }
                state::EXCHANGE_RESULTS if self.phase == Phase::Ending => {
                    // Our streams' counts first (they report at Stop).
                    if test.members.iter().any(|m| m.report.is_none()) && now < self.deadline {
                        // Not yet: put the byte back by staying in Ending
                        // with a flag.
                        self.phase = Phase::Ending;
                        test.results_asked = true;
                        return Ok(());
                    }
                    self.send_results(local);
                    return Ok(());
                }
                state::DISPLAY_RESULTS if self.phase == Phase::Display => {
                    self.out.bytes.push(state::IPERF_DONE as u8);
                    self.finish(local, None, now);
                    return Ok(());
                }
                state::ACCESS_DENIED => return Err("the server is busy running a test".into()),
                state::SERVER_ERROR => self.error_bytes = Some(Vec::with_capacity(8)),
                state::SERVER_TERMINATE => return Err("the server terminated the test".into()),
                other => return Err(alloc::format!("unexpected state {other} from the server")),
            }
        }
        if self.phase == Phase::Ending {
            let asked = local.client.as_ref().is_some_and(|t| t.results_asked);
            let all = local.client.as_ref().is_some_and(|t| t.members.iter().all(|m| m.report.is_some()));
            if asked && (all || now >= self.deadline) {
                self.send_results(local);
            } else if !asked && now >= self.deadline {
                return Err("no EXCHANGE_RESULTS from the server".into());
            }
        } else if matches!(self.phase, Phase::Waiting | Phase::Opened | Phase::Display) && now >= self.deadline {
            return Err("the server stopped answering".into());
        }
        Ok(())
    }

    fn send_results(&mut self, local: &mut Local) {
        let Some(test) = local.client.as_ref() else { return };
        let sends = test.members.iter().any(|m| m.sends);
        let results = Results {
            cpu_util_total: test.cpu_util,
            cpu_util_user: 0.0,
            cpu_util_system: test.cpu_util,
            sender_has_retransmits: if sends { 0 } else { -1 },
            streams: test
                .members
                .iter()
                .map(|m| {
                    let (bytes, elapsed) = m.report.unwrap_or((0, Duration::ZERO));
                    StreamResult { id: m.id, bytes, retransmits: -1, end_time: elapsed.total_micros() as f64 / 1e6 }
                })
                .collect(),
        };
        proto::frame_json(&results.to_json(), &mut self.out.bytes);
        self.phase = Phase::Results;
    }
}

/// Asks the next vCPU in turn to open stream `index`.
fn open(local: &mut Local, serial: u32, index: u32, cookie: &Cookie) {
    let Some(cfg) = local.client_config.clone() else { return };
    let cpus = local.hub.cpus();
    let to = ((u32::from(local.cpu) + 1 + index) % u32::from(cpus)) as u16;
    local.hub.post(
        to,
        Msg::Open { test: serial, index, remote: cfg.server, port: cfg.port, cookie: *cookie, control: local.cpu },
    );
}

fn outcome(
    test: &Hosted,
    error: Option<String>,
    config: Option<ClientConfig>,
    seconds: Option<Duration>,
) -> ClientOutcome {
    let mut o = ClientOutcome {
        config: config.unwrap_or(ClientConfig { server: [0; 4], port: 0, params: test.params.clone() }),
        error,
        sent: 0,
        received: 0,
        server_received: 0,
        server_sent: 0,
        seconds: 0.0,
        cpu_util: test.cpu_util,
        stream_cpus: test.members.iter().map(|m| m.cpu).collect(),
    };
    let mut longest = Duration::ZERO;
    for m in &test.members {
        let (bytes, elapsed) = m.report.unwrap_or((0, Duration::ZERO));
        longest = longest.max(elapsed);
        let theirs = test.server.as_ref().and_then(|r| r.streams.iter().find(|s| s.id == m.id)).map_or(0, |s| s.bytes);
        if m.sends {
            o.sent += bytes;
            o.server_received += theirs;
        } else {
            o.received += bytes;
            o.server_sent += theirs;
        }
    }
    let measured = seconds.map_or(0.0, |d| d.total_micros() as f64 / 1e6);
    o.seconds = if longest > Duration::ZERO { longest.total_micros() as f64 / 1e6 } else { measured };
    o
}
