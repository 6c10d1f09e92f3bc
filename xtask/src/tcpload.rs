//! Host-side TCP load for the network tests and the benchmarks: many
//! concurrent connections to the guest's echo (port 7) and discard (port 9)
//! services, every byte checked, everything bounded by one deadline.
//!
//! The core is generic over how a connection is made ([`LoadStream`], a
//! connector closure), so the same code drives real TCP connections (from
//! `cargo xtask tcp-load`, run inside the test's network namespace) and the
//! unit tests' in-memory fakes (Unix socket pairs with a fake server thread
//! at the other end). Nothing here chooses an address: the caller does, and
//! the boot tests only ever point it at the guest inside their namespace.
//!
//! - [`echo_load`]: each connection sends its own seeded pseudo-random byte
//!   stream while a second thread reads the echo back and compares it byte
//!   for byte; then it shuts down its write side and expects the server's
//!   EOF. The rate counts bytes verified, over the wall time from the first
//!   connect to the last verified byte.
//! - [`discard_load`]: the connections send a total number of bytes, shut
//!   down their write side and wait for the server to close (so the time
//!   counts bytes the guest has taken, not bytes sitting in the host's
//!   socket buffers); the server must send nothing.
//!
//! Rates are in MB/s, 10^6 bytes per second.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The guest's echo service (RFC 862).
pub const ECHO_PORT: u16 = 7;
/// The guest's discard service (RFC 863).
pub const DISCARD_PORT: u16 = 9;
/// Bytes per read or write.
const CHUNK: usize = 64 * 1024;
/// Most errors a summary lists one by one (the count covers all).
const LISTED_ERRORS: usize = 16;
/// The seed of connection 0's stream when the caller does not choose one.
pub const DEFAULT_SEED: u64 = 0x6d71_6e65_7400_0001;

/// A byte stream the load can drive: readable and writable, with a second
/// handle for a concurrent writer, half-close, and per-call timeouts.
pub trait LoadStream: Read + Write + Send + Sized {
    fn clone_stream(&self) -> io::Result<Self>;
    fn shut(&self, how: Shutdown) -> io::Result<()>;
    fn read_timeout(&self, t: Duration) -> io::Result<()>;
    fn write_timeout(&self, t: Duration) -> io::Result<()>;
}

macro_rules! load_stream {
    ($t:ty) => {
        impl LoadStream for $t {
            fn clone_stream(&self) -> io::Result<Self> {
                self.try_clone()
            }
            fn shut(&self, how: Shutdown) -> io::Result<()> {
                self.shutdown(how)
            }
            fn read_timeout(&self, t: Duration) -> io::Result<()> {
                self.set_read_timeout(Some(t))
            }
            fn write_timeout(&self, t: Duration) -> io::Result<()> {
                self.set_write_timeout(Some(t))
            }
        }
    };
}
load_stream!(TcpStream);
load_stream!(UnixStream);

/// A TCP connector for [`echo_load`] and [`discard_load`]: each connection
/// to `addr`, within the time left.
pub fn tcp_connector(addr: SocketAddr) -> impl Fn(usize, Duration) -> io::Result<TcpStream> + Sync {
    move |_, timeout| {
        let s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_nodelay(true)?;
        Ok(s)
    }
}

/// A seeded pseudo-random byte stream (xorshift64): the same seed gives the
/// same bytes however they are cut into chunks.
#[derive(Clone, Debug)]
pub struct Pattern {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl Pattern {
    pub fn new(seed: u64) -> Pattern {
        // splitmix64 spreads similar seeds apart; xorshift needs a non-zero state.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Pattern { state: if z == 0 { 1 } else { z }, word: [0; 8], used: 8 }
    }

    /// The seed of connection `index`'s stream: a different stream for every
    /// connection, so that data delivered to the wrong connection shows.
    pub fn seed_for(base: u64, index: usize) -> u64 {
        base ^ (index as u64 + 1).wrapping_mul(0xd6e8_feb8_6659_fd93)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            if self.used == 8 {
                let mut x = self.state;
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                self.state = x;
                self.word = x.to_le_bytes();
                self.used = 0;
            }
            *b = self.word[self.used];
            self.used += 1;
        }
    }
}

/// Which service a load drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Echo,
    Discard,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Echo => "echo",
            Mode::Discard => "discard",
        }
    }

    pub fn port(self) -> u16 {
        match self {
            Mode::Echo => ECHO_PORT,
            Mode::Discard => DISCARD_PORT,
        }
    }
}

/// What went wrong on a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The connection was refused (nothing listening).
    Refused,
    /// The peer reset the connection.
    Reset,
    /// The deadline passed (connect, send, echo or EOF).
    Timeout,
    /// An echoed byte differs from the one sent.
    Mismatch,
    /// The peer closed before the whole stream was echoed (or while we
    /// were still sending).
    Closed,
    /// The peer sent bytes it should not have: more than was sent to the
    /// echo service, anything at all from the discard service.
    Unexpected,
    Other,
}

impl ErrorKind {
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Refused => "refused",
            ErrorKind::Reset => "reset",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Mismatch => "mismatch",
            ErrorKind::Closed => "closed",
            ErrorKind::Unexpected => "unexpected",
            ErrorKind::Other => "other",
        }
    }

    pub(crate) fn of(e: &io::Error) -> ErrorKind {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => ErrorKind::Refused,
            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => ErrorKind::Reset,
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ErrorKind::Timeout,
            io::ErrorKind::BrokenPipe | io::ErrorKind::UnexpectedEof => ErrorKind::Closed,
            _ => ErrorKind::Other,
        }
    }
}

/// Where on a connection an error happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Connect,
    Send,
    Receive,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Send => "send",
            Stage::Receive => "receive",
        }
    }
}

/// One connection's failure: what, where, and at which byte of its stream
/// (sent for [`Stage::Send`], received for [`Stage::Receive`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnError {
    pub kind: ErrorKind,
    pub stage: Stage,
    pub offset: u64,
    pub detail: String,
}

impl ConnError {
    pub(crate) fn new(kind: ErrorKind, stage: Stage, offset: u64, detail: &str) -> ConnError {
        ConnError { kind, stage, offset, detail: detail.into() }
    }

    pub(crate) fn io(stage: Stage, offset: u64, e: &io::Error) -> ConnError {
        ConnError { kind: ErrorKind::of(e), stage, offset, detail: e.to_string() }
    }

    /// The thread that ran the connection panicked.
    pub(crate) fn panicked() -> ConnError {
        ConnError::new(ErrorKind::Other, Stage::Connect, 0, "connection thread panicked")
    }

    pub(crate) fn timeout(stage: Stage, offset: u64, what: &str) -> ConnError {
        ConnError { kind: ErrorKind::Timeout, stage, offset, detail: format!("deadline passed {what}") }
    }
}

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {} offset {}: {}", self.kind.name(), self.stage.name(), self.offset, self.detail)
    }
}

/// One connection's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnResult {
    pub index: usize,
    /// Bytes written.
    pub sent: u64,
    /// Echo: bytes that came back and matched. Discard: bytes sent, once
    /// the server has closed (it took them all).
    pub done: u64,
    /// From the start of its connect to its end.
    pub elapsed: Duration,
    /// When its last byte was verified (echo) or the server closed (discard).
    pub last_progress: Option<Instant>,
    pub error: Option<ConnError>,
}

/// A whole load: every connection's result and the wall time.
#[derive(Clone, Debug)]
pub struct LoadReport {
    pub mode: Mode,
    /// Echo: per connection; discard: the total over all connections.
    pub bytes: u64,
    pub connections: Vec<ConnResult>,
    /// From the first connect to the last verified byte (echo) or the last
    /// close (discard); until the end of the load if nothing got through.
    pub elapsed: Duration,
}

impl LoadReport {
    pub fn done(&self) -> u64 {
        self.connections.iter().map(|c| c.done).sum()
    }

    pub fn errors(&self) -> impl Iterator<Item = (usize, &ConnError)> {
        self.connections.iter().filter_map(|c| c.error.as_ref().map(|e| (c.index, e)))
    }

    pub fn summary(&self) -> LoadSummary {
        let secs = self.elapsed.as_secs_f64();
        let done = self.done();
        LoadSummary {
            mode: self.mode.name().into(),
            connections: self.connections.len() as u64,
            bytes: self.bytes,
            completed: self.connections.iter().filter(|c| c.error.is_none()).count() as u64,
            done,
            elapsed_s: secs,
            mb_per_s: if secs > 0.0 { done as f64 / secs / 1e6 } else { 0.0 },
            errors: self.errors().count() as u64,
            error_list: self.errors().take(LISTED_ERRORS).map(|(i, e)| format!("conn {i}: {e}")).collect(),
            per_connection: self.connections.iter().map(|c| (c.done, c.elapsed.as_secs_f64())).collect(),
        }
    }
}

/// The machine-readable summary `cargo xtask tcp-load` prints as one JSON
/// line, and what the boot tests and the benchmark read back.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadSummary {
    pub mode: String,
    pub connections: u64,
    /// Echo: bytes per connection; discard: the total.
    pub bytes: u64,
    /// Connections without an error.
    pub completed: u64,
    /// Bytes echoed and verified (echo) or taken by the server (discard).
    pub done: u64,
    pub elapsed_s: f64,
    pub mb_per_s: f64,
    /// Connections that failed.
    pub errors: u64,
    /// The first few errors, `conn I: KIND at STAGE offset N: DETAIL`.
    pub error_list: Vec<String>,
    /// (bytes done, seconds) of each connection.
    pub per_connection: Vec<(u64, f64)>,
}

impl LoadSummary {
    pub fn to_json(&self) -> String {
        let bytes: Vec<u64> = self.per_connection.iter().map(|p| p.0).collect();
        let secs: Vec<f64> = self.per_connection.iter().map(|p| (p.1 * 1000.0).round() / 1000.0).collect();
        json!({
            "mode": self.mode,
            "connections": self.connections,
            "bytes": self.bytes,
            "completed": self.completed,
            "done": self.done,
            "elapsed_s": (self.elapsed_s * 1000.0).round() / 1000.0,
            "mb_per_s": (self.mb_per_s * 1000.0).round() / 1000.0,
            "errors": self.errors,
            "error_list": self.error_list,
            "per_connection_bytes": bytes,
            "per_connection_s": secs,
        })
        .to_string()
    }

    /// The summary in `out`: its last line that parses as one.
    pub fn parse(out: &str) -> Option<LoadSummary> {
        out.lines().rev().filter(|l| l.trim_start().starts_with('{')).find_map(|l| {
            let v: Value = serde_json::from_str(l.trim()).ok()?;
            let num = |k: &str| v.get(k)?.as_u64();
            let float = |k: &str| v.get(k)?.as_f64();
            let list = |k: &str| v.get(k).and_then(Value::as_array).cloned().unwrap_or_default();
            let bytes = list("per_connection_bytes");
            let secs = list("per_connection_s");
            Some(LoadSummary {
                mode: v.get("mode")?.as_str()?.to_string(),
                connections: num("connections")?,
                bytes: num("bytes")?,
                completed: num("completed")?,
                done: num("done")?,
                elapsed_s: float("elapsed_s")?,
                mb_per_s: float("mb_per_s")?,
                errors: num("errors")?,
                error_list: list("error_list").iter().filter_map(|e| e.as_str().map(String::from)).collect(),
                per_connection: bytes
                    .iter()
                    .zip(secs.iter().map(Some).chain(std::iter::repeat(None)))
                    .map(|(b, s)| (b.as_u64().unwrap_or(0), s.and_then(Value::as_f64).unwrap_or(0.0)))
                    .collect(),
            })
        })
    }

    /// Nothing went wrong and every connection finished.
    pub fn ok(&self) -> bool {
        self.errors == 0 && self.completed == self.connections
    }

    /// `64×1 MiB: 12.3 s, 5.45 MB/s` (echo) or `4 conns, 100 MiB: ...` (discard).
    pub fn describe(&self) -> String {
        let what = if self.mode == "echo" {
            format!("{}×{}", self.connections, size(self.bytes))
        } else {
            format!("{} in {} conns", size(self.bytes), self.connections)
        };
        format!("{what}: {:.1} s, {:.2} MB/s", self.elapsed_s, self.mb_per_s)
    }
}

/// `1 MiB`, `25 MiB`, `4096 B`.
pub fn size(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    const KIB: u64 = 1 << 10;
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} B")
    }
}

/// Time left before `deadline`, `None` once it has passed.
pub(crate) fn left(deadline: Instant) -> Option<Duration> {
    deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())
}

/// Writes `bytes` of `pattern` (zeros without one), each write bounded by
/// the time left; returns the bytes written, or the error and how many.
fn send<S: LoadStream>(
    stream: &mut S,
    mut pattern: Option<Pattern>,
    bytes: u64,
    deadline: Instant,
) -> Result<u64, ConnError> {
    let mut buf = vec![0u8; CHUNK];
    let mut sent = 0u64;
    while sent < bytes {
        let n = (bytes - sent).min(CHUNK as u64) as usize;
        if let Some(p) = pattern.as_mut() {
            p.fill(&mut buf[..n]);
        }
        let mut at = 0;
        while at < n {
            let t = left(deadline).ok_or_else(|| ConnError::timeout(Stage::Send, sent, "while sending"))?;
            stream.write_timeout(t).map_err(|e| ConnError::io(Stage::Send, sent, &e))?;
            match stream.write(&buf[at..n]) {
                Ok(0) => {
                    return Err(ConnError {
                        kind: ErrorKind::Closed,
                        stage: Stage::Send,
                        offset: sent,
                        detail: "the connection takes no more data".into(),
                    })
                }
                Ok(k) => {
                    at += k;
                    sent += k as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if ErrorKind::of(&e) == ErrorKind::Timeout => {
                    return Err(ConnError::timeout(Stage::Send, sent, "while sending"))
                }
                Err(e) => return Err(ConnError::io(Stage::Send, sent, &e)),
            }
        }
    }
    Ok(sent)
}

/// Reads until EOF, each read bounded by the time left. With a pattern
/// (echo) the stream must be exactly `expect` bytes of it; without one
/// (discard) it must be empty. Returns the bytes verified and when the last
/// one was, or the error with the bytes verified so far.
fn receive<S: LoadStream>(
    stream: &mut S,
    mut pattern: Option<Pattern>,
    expect: u64,
    deadline: Instant,
    progress: &mut Option<Instant>,
) -> Result<u64, (u64, ConnError)> {
    let mut buf = vec![0u8; CHUNK];
    let mut want = vec![0u8; CHUNK];
    let mut got = 0u64;
    let err =
        |got: u64, kind, detail: String| Err((got, ConnError { kind, stage: Stage::Receive, offset: got, detail }));
    let echo = pattern.is_some();
    let timed_out = |got: u64| {
        let what = if got < expect {
            format!("with {got} of {expect} bytes echoed")
        } else if echo {
            format!("waiting for EOF after all {expect} bytes were echoed")
        } else {
            "waiting for the server to close".into()
        };
        Err((got, ConnError::timeout(Stage::Receive, got, &what)))
    };
    loop {
        let Some(t) = left(deadline) else { return timed_out(got) };
        if let Err(e) = stream.read_timeout(t) {
            return Err((got, ConnError::io(Stage::Receive, got, &e)));
        }
        let n = match stream.read(&mut buf) {
            Ok(0) if got == expect => return Ok(got),
            Ok(0) => return err(got, ErrorKind::Closed, format!("EOF after {got} of {expect} bytes")),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if ErrorKind::of(&e) == ErrorKind::Timeout => return timed_out(got),
            Err(e) => return Err((got, ConnError::io(Stage::Receive, got, &e))),
        };
        let Some(p) = pattern.as_mut() else {
            return err(got, ErrorKind::Unexpected, format!("the server sent {n} bytes"));
        };
        let fits = (n as u64).min(expect - got) as usize;
        p.fill(&mut want[..fits]);
        if let Some(i) = (0..fits).find(|&i| buf[i] != want[i]) {
            return Err((
                got + i as u64,
                ConnError {
                    kind: ErrorKind::Mismatch,
                    stage: Stage::Receive,
                    offset: got + i as u64,
                    detail: format!("expected {:#04x}, got {:#04x}", want[i], buf[i]),
                },
            ));
        }
        if fits > 0 {
            got += fits as u64;
            *progress = Some(Instant::now());
        }
        if fits < n {
            return err(got, ErrorKind::Unexpected, format!("{} bytes more than the {expect} sent", n - fits));
        }
    }
}

/// One connection: connect, then send and receive concurrently (a writer
/// thread and this one), then the write side's shutdown and the peer's EOF.
fn one<S, C>(
    index: usize,
    connect: &C,
    pattern: Option<Pattern>,
    bytes: u64,
    echo: bool,
    deadline: Instant,
) -> ConnResult
where
    S: LoadStream,
    C: Fn(usize, Duration) -> io::Result<S> + Sync,
{
    let start = Instant::now();
    let mut result = ConnResult { index, sent: 0, done: 0, elapsed: Duration::ZERO, last_progress: None, error: None };
    let finish = |mut r: ConnResult, error: Option<ConnError>| {
        r.error = error;
        r.elapsed = start.elapsed();
        r
    };
    let Some(t) = left(deadline) else {
        return finish(result, Some(ConnError::timeout(Stage::Connect, 0, "before connecting")));
    };
    let mut stream = match connect(index, t) {
        Ok(s) => s,
        Err(e) => return finish(result, Some(ConnError::io(Stage::Connect, 0, &e))),
    };
    let mut writer = match stream.clone_stream() {
        Ok(w) => w,
        Err(e) => return finish(result, Some(ConnError::io(Stage::Connect, 0, &e))),
    };
    let expect = if echo { bytes } else { 0 };
    let mut progress = None;
    let (sent, received) = thread::scope(|s| {
        let ours = pattern.clone();
        let w = s.spawn(move || {
            let sent = send(&mut writer, ours, bytes, deadline);
            // Half-close: the peer's cue to finish (echo the rest, close).
            // On an error the reader's shutdown below ends everything anyway.
            if sent.is_ok() {
                if let Err(e) = writer.shut(Shutdown::Write) {
                    return Err(ConnError::io(Stage::Send, bytes, &e));
                }
            }
            sent
        });
        let received = receive(&mut stream, echo.then_some(pattern).flatten(), expect, deadline, &mut progress);
        if received.is_err() {
            // Unblocks a writer stuck on a peer that stopped reading.
            let _ = stream.shut(Shutdown::Both);
        }
        let sent = w.join().unwrap_or_else(|_| {
            Err(ConnError { kind: ErrorKind::Other, stage: Stage::Send, offset: 0, detail: "writer panicked".into() })
        });
        (sent, received)
    });
    result.sent = match &sent {
        Ok(n) => *n,
        Err(e) => e.offset,
    };
    // The receive side's error says most (a mismatch, an early EOF); a send
    // error alone (the peer stopped taking data) counts when it has none.
    let error = match (sent, &received) {
        (_, Err((_, e))) => Some(e.clone()),
        (Err(e), Ok(_)) => Some(e),
        (Ok(_), Ok(_)) => None,
    };
    match (&received, echo) {
        (Ok(n), true) | (Err((n, _)), true) => {
            result.done = *n;
            result.last_progress = progress;
        }
        (Ok(_), false) => {
            result.done = result.sent;
            result.last_progress = Some(Instant::now());
        }
        (Err(_), false) => {}
    }
    finish(result, error)
}

/// Runs `streams` connections at once (a thread each), connection `i`
/// sending `bytes[i]`; the wall time runs from before the first connect to
/// the last progress of any connection.
fn load<S, C>(mode: Mode, bytes: &[u64], total: u64, connect: &C, timeout: Duration, seed: u64) -> LoadReport
where
    S: LoadStream,
    C: Fn(usize, Duration) -> io::Result<S> + Sync,
{
    let start = Instant::now();
    let deadline = start + timeout;
    let echo = mode == Mode::Echo;
    let work = |i: usize| one(i, connect, Some(Pattern::new(Pattern::seed_for(seed, i))), bytes[i], echo, deadline);
    let connections = at_once(bytes.len(), &work, |i| ConnResult {
        index: i,
        sent: 0,
        done: 0,
        elapsed: start.elapsed(),
        last_progress: None,
        error: Some(ConnError::panicked()),
    });
    let end = connections.iter().filter_map(|c| c.last_progress).max().unwrap_or_else(Instant::now);
    LoadReport { mode, bytes: total, connections, elapsed: end.saturating_duration_since(start) }
}

/// Runs `work(i)` for every `i` in `0..n` at once, a thread each; what a
/// thread that panicked would have returned is `panicked(i)`.
pub(crate) fn at_once<T: Send>(n: usize, work: &(dyn Fn(usize) -> T + Sync), panicked: impl Fn(usize) -> T) -> Vec<T> {
    thread::scope(|s| {
        let handles: Vec<_> = (0..n).map(|i| s.spawn(move || work(i))).collect();
        handles.into_iter().enumerate().map(|(i, h)| h.join().unwrap_or_else(|_| panicked(i))).collect()
    })
}

/// `connections` concurrent connections to an echo server, each sending
/// `bytes` bytes of its own pseudo-random stream and checking the echo.
pub fn echo_load<S, C>(connect: C, connections: usize, bytes: u64, timeout: Duration, seed: u64) -> LoadReport
where
    S: LoadStream,
    C: Fn(usize, Duration) -> io::Result<S> + Sync,
{
    load(Mode::Echo, &vec![bytes; connections], bytes, &connect, timeout, seed)
}

/// `connections` concurrent connections to a discard server sending
/// `total` bytes between them (the first `total % connections` one more).
pub fn discard_load<S, C>(connect: C, connections: usize, total: u64, timeout: Duration, seed: u64) -> LoadReport
where
    S: LoadStream,
    C: Fn(usize, Duration) -> io::Result<S> + Sync,
{
    let n = connections.max(1) as u64;
    let shares: Vec<u64> = (0..n).map(|i| total / n + u64::from(i < total % n)).collect();
    load(Mode::Discard, &shares[..connections], total, &connect, timeout, seed)
}

/// `cargo xtask tcp-load`: one load against `addr`, its summary printed as
/// one JSON line; status 0 when every connection succeeded, else 1.
pub fn main(args: crate::cli::TcpLoadArgs) -> Result<i32, String> {
    let mode: Mode = args.mode.into();
    let addr = SocketAddr::new(args.addr, args.port.unwrap_or(mode.port()));
    let connect = tcp_connector(addr);
    let n = args.connections as usize;
    let report = match mode {
        Mode::Echo => echo_load(connect, n, args.bytes, args.timeout_secs, args.seed),
        Mode::Discard => discard_load(connect, n, args.bytes, args.timeout_secs, args.seed),
    };
    let summary = report.summary();
    println!("{}", summary.to_json());
    Ok(if summary.ok() { 0 } else { 1 })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn patterns_do_not_depend_on_how_they_are_cut() {
        let mut whole = vec![0u8; 1000];
        Pattern::new(7).fill(&mut whole);
        let mut p = Pattern::new(7);
        let mut pieces = Vec::new();
        for n in [1, 3, 8, 13, 500, 475] {
            let mut b = vec![0u8; n];
            p.fill(&mut b);
            pieces.extend(b);
        }
        assert_eq!(whole, pieces);
        let mut other = vec![0u8; 1000];
        Pattern::new(Pattern::seed_for(DEFAULT_SEED, 1)).fill(&mut other);
        let mut first = vec![0u8; 1000];
        Pattern::new(Pattern::seed_for(DEFAULT_SEED, 0)).fill(&mut first);
        assert_ne!(other, first, "every connection its own stream");
        assert!(first.iter().filter(|&&b| b == 0).count() < 20, "not all zeros");
        let mut z = vec![0u8; 16];
        Pattern::new(0).fill(&mut z);
        assert_ne!(z, [0; 16], "seed 0 works too");
    }

    /// What a fake server does with its end of connection `index`.
    pub(crate) type Server = fn(usize, UnixStream);

    /// A connector whose every connection is a Unix socket pair with a
    /// server thread on the other end; the threads are joined on drop.
    pub(crate) struct Fake {
        server: Server,
        threads: Mutex<Vec<thread::JoinHandle<()>>>,
    }

    impl Fake {
        pub(crate) fn new(server: Server) -> Fake {
            Fake { server, threads: Mutex::new(Vec::new()) }
        }

        pub(crate) fn connect(&self, index: usize, _: Duration) -> io::Result<UnixStream> {
            let (client, server) = UnixStream::pair()?;
            let f = self.server;
            self.threads.lock().unwrap().push(thread::spawn(move || f(index, server)));
            Ok(client)
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            for t in self.threads.lock().unwrap().drain(..) {
                let _ = t.join();
            }
        }
    }

    /// Echoes everything, then closes when the client has.
    fn echo_server(_: usize, mut s: UnixStream) {
        let mut buf = [0u8; 8192];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 || s.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    }

    /// Echoes, but connection 2's byte 70 000 comes back changed.
    fn corrupting_server(index: usize, mut s: UnixStream) {
        let mut buf = [0u8; 5000];
        let mut at = 0usize;
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            if index == 2 && (at..at + n).contains(&70_000) {
                buf[70_000 - at] ^= 0x5a;
            }
            at += n;
            if s.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    }

    /// Echoes the first 10 000 bytes, then sends EOF and swallows the rest.
    fn early_closing_server(_: usize, mut s: UnixStream) {
        let mut buf = [0u8; 1000];
        let mut echoed = 0;
        while echoed < 10_000 {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let n = n.min(10_000 - echoed);
                    if s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                    echoed += n;
                }
            }
        }
        let _ = s.shutdown(Shutdown::Write);
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    }

    /// Takes everything, answers nothing and closes when the client has: a
    /// correct discard server.
    fn silent_server(_: usize, mut s: UnixStream) {
        let mut buf = [0u8; 8192];
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    }

    /// Takes everything and answers nothing, and stays silent a while
    /// after the client has closed: an echo (or discard) server that hung.
    fn stalled_server(_: usize, mut s: UnixStream) {
        let mut buf = [0u8; 8192];
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        thread::sleep(FAST * 2);
    }

    /// Takes everything and closes when the client has, after saying hello.
    fn chatty_discard_server(_: usize, mut s: UnixStream) {
        let _ = s.write_all(b"hello");
        silent_server(0, s);
    }

    /// Closes at once, unread data and all.
    fn rude_server(_: usize, s: UnixStream) {
        drop(s);
    }

    pub(crate) const FAST: Duration = Duration::from_millis(300);
    pub(crate) const ENOUGH: Duration = Duration::from_secs(20);

    #[test]
    fn a_correct_echo_server_passes() {
        let fake = Fake::new(echo_server);
        let r = echo_load(|i, t| fake.connect(i, t), 8, 300_000, ENOUGH, DEFAULT_SEED);
        assert_eq!(r.errors().count(), 0, "{:?}", r.errors().collect::<Vec<_>>());
        assert_eq!(r.done(), 8 * 300_000);
        assert!(r.connections.iter().all(|c| c.sent == 300_000 && c.done == 300_000));
        let s = r.summary();
        assert!(s.ok(), "{s:?}");
        assert_eq!((s.connections, s.completed, s.done, s.errors), (8, 8, 2_400_000, 0));
        assert!(s.mb_per_s > 0.0 && s.elapsed_s > 0.0);
        assert_eq!(s.per_connection.len(), 8);
        assert!(s.per_connection.iter().all(|p| p.0 == 300_000));
    }

    #[test]
    fn a_corrupted_byte_is_reported_with_its_offset() {
        let fake = Fake::new(corrupting_server);
        let r = echo_load(|i, t| fake.connect(i, t), 4, 200_000, ENOUGH, DEFAULT_SEED);
        let errors: Vec<_> = r.errors().collect();
        assert_eq!(errors.len(), 1, "{errors:?}");
        let (index, e) = errors[0];
        assert_eq!((index, e.kind, e.stage, e.offset), (2, ErrorKind::Mismatch, Stage::Receive, 70_000));
        assert!(e.detail.starts_with("expected 0x"), "{}", e.detail);
        assert_eq!(r.connections[2].done, 70_000, "verified up to the bad byte");
        let s = r.summary();
        assert!(!s.ok());
        assert_eq!((s.errors, s.completed), (1, 3));
        assert!(s.error_list[0].starts_with("conn 2: mismatch at receive offset 70000: expected 0x"), "{s:?}");
    }

    #[test]
    fn a_server_that_closes_early_is_reported() {
        let fake = Fake::new(early_closing_server);
        let r = echo_load(|i, t| fake.connect(i, t), 2, 50_000, ENOUGH, DEFAULT_SEED);
        for c in &r.connections {
            let e = c.error.as_ref().expect("an error");
            assert_eq!((e.kind, e.stage, e.offset), (ErrorKind::Closed, Stage::Receive, 10_000), "{e}");
            assert_eq!(e.detail, "EOF after 10000 of 50000 bytes");
            assert_eq!(c.done, 10_000);
        }
        // One that drops the connection outright: closed or reset, early.
        let fake = Fake::new(rude_server);
        let r = echo_load(|i, t| fake.connect(i, t), 2, 500_000, ENOUGH, DEFAULT_SEED);
        for c in &r.connections {
            let e = c.error.as_ref().expect("an error");
            assert!(matches!(e.kind, ErrorKind::Closed | ErrorKind::Reset), "{e}");
            assert_eq!(c.done, 0);
        }
    }

    #[test]
    fn a_stalled_server_runs_into_the_deadline() {
        let fake = Fake::new(stalled_server);
        let started = Instant::now();
        let r = echo_load(|i, t| fake.connect(i, t), 3, 100_000, FAST, DEFAULT_SEED);
        let took = started.elapsed();
        assert!(took >= FAST && took < FAST * 5, "took {took:?}");
        assert_eq!(r.errors().count(), 3);
        for (_, e) in r.errors() {
            assert_eq!((e.kind, e.stage, e.offset), (ErrorKind::Timeout, Stage::Receive, 0), "{e}");
            assert_eq!(e.detail, "deadline passed with 0 of 100000 bytes echoed");
        }
        // A server that neither reads nor answers: the writer blocks on full
        // buffers and is bounded by the same deadline.
        fn frozen(_: usize, s: UnixStream) {
            thread::sleep(FAST * 2);
            drop(s);
        }
        let fake = Fake::new(frozen);
        let started = Instant::now();
        let r = echo_load(|i, t| fake.connect(i, t), 1, 8 << 20, FAST, DEFAULT_SEED);
        assert!(started.elapsed() < FAST * 5);
        let e = r.connections[0].error.as_ref().unwrap();
        assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
        assert!(r.connections[0].sent < 8 << 20);
    }

    #[test]
    fn too_many_bytes_back_are_an_error() {
        fn doubling(_: usize, mut s: UnixStream) {
            let mut buf = [0u8; 8192];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let _ = s.write_all(&buf[..n]);
            }
            let _ = s.write_all(b"extra");
        }
        let fake = Fake::new(doubling);
        let r = echo_load(|i, t| fake.connect(i, t), 1, 20_000, ENOUGH, DEFAULT_SEED);
        let e = r.connections[0].error.as_ref().unwrap();
        assert_eq!((e.kind, e.offset), (ErrorKind::Unexpected, 20_000), "{e}");
        assert_eq!(e.detail, "5 bytes more than the 20000 sent");
    }

    #[test]
    fn refused_connections_are_reported() {
        let refuse = |_: usize, _: Duration| -> io::Result<UnixStream> { Err(io::ErrorKind::ConnectionRefused.into()) };
        let r = echo_load(refuse, 3, 1000, FAST, DEFAULT_SEED);
        assert_eq!(r.errors().count(), 3);
        assert!(r.errors().all(|(_, e)| e.kind == ErrorKind::Refused && e.stage == Stage::Connect));
        let s = r.summary();
        assert_eq!((s.done, s.mb_per_s, s.completed), (0, 0.0, 0));
    }

    #[test]
    fn discard_sends_the_total_and_waits_for_the_close() {
        let fake = Fake::new(silent_server);
        let r = discard_load(|i, t| fake.connect(i, t), 4, 1_000_003, ENOUGH, DEFAULT_SEED);
        assert_eq!(r.errors().count(), 0, "{:?}", r.errors().collect::<Vec<_>>());
        let sent: Vec<u64> = r.connections.iter().map(|c| c.sent).collect();
        assert_eq!(sent, [250_001, 250_001, 250_001, 250_000]);
        let s = r.summary();
        assert!(s.ok());
        assert_eq!((s.mode.as_str(), s.bytes, s.done), ("discard", 1_000_003, 1_000_003));
        // A discard server that talks back is wrong.
        let fake = Fake::new(chatty_discard_server);
        let r = discard_load(|i, t| fake.connect(i, t), 2, 10_000, ENOUGH, DEFAULT_SEED);
        assert_eq!(r.errors().count(), 2);
        assert!(r.errors().all(|(_, e)| e.kind == ErrorKind::Unexpected && e.detail.contains("sent 5 bytes")));
        // One that never closes runs into the deadline.
        let fake = Fake::new(stalled_server);
        let r = discard_load(|i, t| fake.connect(i, t), 1, 10_000, FAST, DEFAULT_SEED);
        let e = r.connections[0].error.as_ref().unwrap();
        assert_eq!(
            (e.kind, e.detail.as_str()),
            (ErrorKind::Timeout, "deadline passed waiting for the server to close")
        );
    }

    #[test]
    fn summaries_survive_the_json_line() {
        let fake = Fake::new(corrupting_server);
        let s = echo_load(|i, t| fake.connect(i, t), 3, 100_000, ENOUGH, DEFAULT_SEED).summary();
        let line = s.to_json();
        assert!(!line.contains('\n'));
        let back = LoadSummary::parse(&format!("noise\n{line}\n")).unwrap();
        assert_eq!((back.mode.as_str(), back.connections, back.bytes), ("echo", 3, 100_000));
        assert_eq!((back.completed, back.errors, back.done), (s.completed, 1, s.done));
        assert_eq!(back.error_list, s.error_list);
        assert_eq!(back.per_connection.iter().map(|p| p.0).collect::<Vec<_>>(), [100_000, 100_000, 70_000]);
        assert!((back.mb_per_s - s.mb_per_s).abs() < 0.001);
        assert_eq!(LoadSummary::parse("no summary here\n{not json"), None);
        assert_eq!(LoadSummary::parse(""), None);
    }

    #[test]
    fn summaries_describe_themselves() {
        let s = LoadSummary {
            mode: "echo".into(),
            connections: 64,
            bytes: 1 << 20,
            elapsed_s: 12.34,
            mb_per_s: 5.4321,
            ..LoadSummary::default()
        };
        assert_eq!(s.describe(), "64×1 MiB: 12.3 s, 5.43 MB/s");
        let s = LoadSummary { mode: "discard".into(), connections: 4, bytes: 100 << 20, ..s };
        assert_eq!(s.describe(), "100 MiB in 4 conns: 12.3 s, 5.43 MB/s");
        assert_eq!((size(4096), size(1000), size(3 << 20)), ("4 KiB".into(), "1000 B".into(), "3 MiB".into()));
    }
}
