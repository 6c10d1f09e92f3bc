//! `cargo xtask rr`: the host side of the guest's request/response service
//! (port 5202, `services=rr`), in the style of netperf's TCP_RR. Run by the
//! network tests and `bench rr` inside their namespace, e.g.
//! `ip netns exec NS xtask rr --addr 10.99.0.2 --connections 4 --time 5`.
//!
//! The protocol (see `net::services::rr`): the client's first 8 bytes give
//! the request and response sizes (big-endian `u32` each, 1..=65536); then
//! every request of `request` bytes is answered by exactly `response`
//! bytes, byte `i` of the connection's `n`th response being `(n + i) mod
//! 256`.
//!
//! Each connection connects and sends its header; once every connection
//! has done so, all start together and each runs one transaction at a time
//! (send a request, read the whole response, check every byte of it) until
//! `--time` has passed. The transaction under way then is finished; then
//! the connection closes its side and expects the server to close too,
//! having sent nothing more. A transaction's latency runs from just before
//! its request is written to its response's last byte. Everything is
//! bounded by one deadline, `--time` plus [`GRACE`].
//!
//! It prints a human line, then one JSON line ([`RrSummary`]); the status
//! is 0 when every connection ran at least one transaction and none failed.

use std::io;
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{json, Value};

use crate::tcpload::{at_once, left, size, tcp_connector, ConnError, ErrorKind, LoadStream, Stage};

/// The guest's request/response service.
pub const RR_PORT: u16 = 5202;
/// The largest request, and the largest response.
pub const MAX_SIZE: u32 = 64 * 1024;
/// The longest `--time`.
pub const MAX_TIME: Duration = Duration::from_secs(600);
/// How long after `--time` the load may take to connect, finish its last
/// transactions and close: a connection still busy then has failed.
pub const GRACE: Duration = Duration::from_secs(20);
/// Transactions one connection runs at most, whatever the time (about
/// 130 MB of latencies for a connection that gets there).
pub const MAX_TRANSACTIONS: u64 = 16 << 20;
/// Most errors a summary lists one by one (the count covers all).
const LISTED_ERRORS: usize = 16;

#[derive(Args, Debug, Clone)]
pub struct RrArgs {
    /// The guest's address (inside the namespace this runs in).
    #[arg(long)]
    pub addr: IpAddr,
    /// The service's port.
    #[arg(long, default_value_t = RR_PORT, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// Concurrent connections, each one transaction at a time.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=crate::cli::MAX_CONNECTIONS))]
    pub connections: u32,
    #[command(flatten)]
    pub shape: RrShape,
}

/// What every transaction moves, and how long a load runs (the options of
/// `xtask rr` and `bench rr` alike).
#[derive(Args, Debug, Clone, Copy, PartialEq, Eq)]
pub struct RrShape {
    /// Bytes per request (1 to 64K).
    #[arg(long, default_value = "1", value_parser = parse_rr_size)]
    pub request: u32,
    /// Bytes per response (1 to 64K).
    #[arg(long, default_value = "1", value_parser = parse_rr_size)]
    pub response: u32,
    /// How long the connections run transactions, in seconds (at most 600).
    #[arg(long, default_value = "5", value_parser = parse_rr_time)]
    pub time: Duration,
}

/// A request or response size: 1 to 64 KiB (`64K` and the like too).
pub fn parse_rr_size(s: &str) -> Result<u32, String> {
    let n = crate::cli::parse_size(s)?;
    u32::try_from(n).ok().filter(|&n| n <= MAX_SIZE).ok_or_else(|| format!("`{s}`: use 1 byte to 64 KiB"))
}

/// Seconds, fractions allowed, up to [`MAX_TIME`].
pub fn parse_rr_time(s: &str) -> Result<Duration, String> {
    let t = crate::cli::parse_timeout(s)?;
    if t > MAX_TIME {
        return Err(format!("`{s}`: at most {} seconds", MAX_TIME.as_secs()));
    }
    Ok(t)
}

/// The 8 bytes that open a connection.
pub fn header(request: u32, response: u32) -> [u8; 8] {
    let mut h = [0u8; 8];
    h[..4].copy_from_slice(&request.to_be_bytes());
    h[4..].copy_from_slice(&response.to_be_bytes());
    h
}

/// Byte `i` of response `n` (both from 0).
pub fn expected_byte(n: u64, i: usize) -> u8 {
    (n as u8).wrapping_add(i as u8)
}

/// One connection's run.
#[derive(Clone, Debug)]
pub struct RrConn {
    pub index: usize,
    /// Transactions completed (every response checked).
    pub transactions: u64,
    /// Each completed transaction's latency, in nanoseconds.
    pub latencies_ns: Vec<u64>,
    /// When its transactions started, and when the last one completed.
    pub began: Option<Instant>,
    pub last: Option<Instant>,
    pub error: Option<ConnError>,
}

impl RrConn {
    fn new(index: usize) -> RrConn {
        RrConn { index, transactions: 0, latencies_ns: Vec::new(), began: None, last: None, error: None }
    }

    /// Transactions per second over its own run.
    pub fn tps(&self) -> f64 {
        match (self.began, self.last) {
            (Some(b), Some(l)) if l > b => self.transactions as f64 / (l - b).as_secs_f64(),
            _ => 0.0,
        }
    }
}

/// A load: how many connections, and their transactions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RrPlan {
    pub connections: usize,
    pub shape: RrShape,
}

/// Connects and sends the header, within the deadline.
fn open<S, C>(index: usize, connect: &C, plan: &RrPlan, deadline: Instant) -> Result<S, ConnError>
where
    S: LoadStream,
    C: Fn(usize, Duration) -> io::Result<S> + Sync,
{
    let t = left(deadline).ok_or_else(|| ConnError::timeout(Stage::Connect, 0, "before connecting"))?;
    let mut stream = connect(index, t).map_err(|e| ConnError::io(Stage::Connect, 0, &e))?;
    write_by(&mut stream, &header(plan.shape.request, plan.shape.response), 0, deadline, "sending the header")?;
    Ok(stream)
}

/// Writes all of `buf` (at byte `offset` of what the connection sends),
/// each write bounded by the time left.
fn write_by<S: LoadStream>(
    stream: &mut S,
    buf: &[u8],
    offset: u64,
    deadline: Instant,
    what: &str,
) -> Result<(), ConnError> {
    let mut at = 0;
    while at < buf.len() {
        let sent = offset + at as u64;
        let t = left(deadline).ok_or_else(|| ConnError::timeout(Stage::Send, sent, what))?;
        stream.write_timeout(t).map_err(|e| ConnError::io(Stage::Send, sent, &e))?;
        match stream.write(&buf[at..]) {
            Ok(0) => {
                return Err(ConnError::new(ErrorKind::Closed, Stage::Send, sent, "the connection takes no more data"))
            }
            Ok(k) => at += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if ErrorKind::of(&e) == ErrorKind::Timeout => {
                return Err(ConnError::timeout(Stage::Send, sent, what));
            }
            Err(e) => return Err(ConnError::io(Stage::Send, sent, &e)),
        }
    }
    Ok(())
}

/// Reads once into `buf`, bounded by the time left: the bytes read (0 at
/// EOF). `offset` is where in the responses this read starts.
fn read_by<S: LoadStream>(
    stream: &mut S,
    buf: &mut [u8],
    offset: u64,
    deadline: Instant,
    what: &dyn Fn() -> String,
) -> Result<usize, ConnError> {
    loop {
        let t = left(deadline).ok_or_else(|| ConnError::timeout(Stage::Receive, offset, &what()))?;
        stream.read_timeout(t).map_err(|e| ConnError::io(Stage::Receive, offset, &e))?;
        match stream.read(buf) {
            Ok(k) => return Ok(k),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if ErrorKind::of(&e) == ErrorKind::Timeout => {
                return Err(ConnError::timeout(Stage::Receive, offset, &what()));
            }
            Err(e) => return Err(ConnError::io(Stage::Receive, offset, &e)),
        }
    }
}

/// One transaction after another until `end` (at least one), then the
/// close. Fills in `r` as it goes.
fn transactions<S: LoadStream>(
    r: &mut RrConn,
    stream: &mut S,
    plan: &RrPlan,
    end: Instant,
    deadline: Instant,
) -> Result<(), ConnError> {
    let (request, response) = (plan.shape.request as usize, plan.shape.response as usize);
    let mut out = vec![0u8; request];
    let mut back = vec![0u8; response];
    let (mut sent, mut received) = (8u64, 0u64);
    loop {
        let n = r.transactions;
        // Requests hold anything; here the transaction's number.
        out.fill(n as u8);
        let t0 = Instant::now();
        write_by(stream, &out, sent, deadline, &format!("sending request {n}"))?;
        sent += request as u64;
        let mut got = 0;
        while got < response {
            let what = || format!("waiting for response {n}, {got} of {response} bytes in");
            let k = read_by(stream, &mut back[got..], received + got as u64, deadline, &what)?;
            if k == 0 {
                let detail = format!("EOF in response {n} after {got} of {response} bytes");
                return Err(ConnError::new(ErrorKind::Closed, Stage::Receive, received + got as u64, &detail));
            }
            got += k;
        }
        if let Some(i) = (0..response).find(|&i| back[i] != expected_byte(n, i)) {
            let detail = format!("response {n} byte {i}: expected {:#04x}, got {:#04x}", expected_byte(n, i), back[i]);
            return Err(ConnError::new(ErrorKind::Mismatch, Stage::Receive, received + i as u64, &detail));
        }
        let done = Instant::now();
        received += response as u64;
        r.latencies_ns.push((done - t0).as_nanos().min(u128::from(u64::MAX)) as u64);
        r.transactions += 1;
        r.last = Some(done);
        if done >= end || r.transactions >= MAX_TRANSACTIONS {
            break;
        }
    }
    stream.shut(Shutdown::Write).map_err(|e| ConnError::io(Stage::Send, sent, &e))?;
    let what = || format!("waiting for the server to close after {} transactions", r.transactions);
    match read_by(stream, &mut back, received, deadline, &what)? {
        0 => Ok(()),
        k => Err(ConnError::new(
            ErrorKind::Unexpected,
            Stage::Receive,
            received,
            &format!("{k} bytes after the last response"),
        )),
    }
}

/// Runs `plan` against the server `connect` reaches: a thread per
/// connection, all starting their transactions together. Everything ends
/// by `plan.shape.time + grace` after the start.
pub fn rr_load<S, C>(connect: C, plan: RrPlan, grace: Duration) -> Vec<RrConn>
where
    S: LoadStream,
    C: Fn(usize, Duration) -> io::Result<S> + Sync,
{
    let deadline = Instant::now() + plan.shape.time + grace;
    let gate = Barrier::new(plan.connections);
    let work = |index: usize| {
        let mut r = RrConn::new(index);
        let opened = open(index, &connect, &plan, deadline);
        // Every connection passes the gate once, opened or not.
        gate.wait();
        let began = Instant::now();
        r.began = Some(began);
        let run = opened.and_then(|mut stream| {
            let run = transactions(&mut r, &mut stream, &plan, began + plan.shape.time, deadline);
            if run.is_err() {
                // Unblocks the server's end at once.
                let _ = stream.shut(Shutdown::Both);
            }
            run
        });
        r.error = run.err();
        r
    };
    at_once(plan.connections, &work, |index| RrConn { error: Some(ConnError::panicked()), ..RrConn::new(index) })
}

/// The `p`th percentile (0 < p ≤ 100) of `sorted` by nearest rank: the
/// smallest value with at least p % of them at or below it; 0 for none.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// What a load did, as `xtask rr` prints it in its JSON line and the tests
/// and `bench rr` read it back.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RrSummary {
    pub connections: u64,
    pub request: u32,
    pub response: u32,
    /// `--time`, seconds.
    pub time_s: f64,
    /// Connections that ran at least one transaction and no error.
    pub completed: u64,
    pub errors: u64,
    /// The first few errors, `conn I: KIND at STAGE offset N: DETAIL`.
    pub error_list: Vec<String>,
    /// Transactions completed by all connections; every response checked.
    pub transactions: u64,
    /// From the common start to the last transaction's end.
    pub elapsed_s: f64,
    /// `transactions / elapsed_s`.
    pub tps: f64,
    pub per_connection_transactions: Vec<u64>,
    /// Each connection's transactions over its own run.
    pub per_connection_tps: Vec<f64>,
    /// Latency over all transactions, µs (nearest rank).
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

impl RrSummary {
    pub fn of(plan: &RrPlan, conns: &[RrConn]) -> RrSummary {
        let mut all: Vec<u64> = conns.iter().flat_map(|c| c.latencies_ns.iter().copied()).collect();
        all.sort_unstable();
        let us = |p: f64| percentile(&all, p) as f64 / 1000.0;
        let start = conns.iter().filter_map(|c| c.began).min();
        let end = conns.iter().filter_map(|c| c.last).max();
        let elapsed_s = start.zip(end).map_or(0.0, |(s, e)| e.saturating_duration_since(s).as_secs_f64());
        let transactions: u64 = conns.iter().map(|c| c.transactions).sum();
        let errors = conns.iter().filter_map(|c| c.error.as_ref().map(|e| (c.index, e)));
        RrSummary {
            connections: conns.len() as u64,
            request: plan.shape.request,
            response: plan.shape.response,
            time_s: plan.shape.time.as_secs_f64(),
            completed: conns.iter().filter(|c| c.error.is_none() && c.transactions > 0).count() as u64,
            errors: errors.clone().count() as u64,
            error_list: errors.take(LISTED_ERRORS).map(|(i, e)| format!("conn {i}: {e}")).collect(),
            transactions,
            elapsed_s,
            tps: if elapsed_s > 0.0 { transactions as f64 / elapsed_s } else { 0.0 },
            per_connection_transactions: conns.iter().map(|c| c.transactions).collect(),
            per_connection_tps: conns.iter().map(RrConn::tps).collect(),
            p50_us: us(50.0),
            p90_us: us(90.0),
            p99_us: us(99.0),
            max_us: all.last().map_or(0.0, |&ns| ns as f64 / 1000.0),
        }
    }

    /// Every connection ran transactions, and none failed.
    pub fn ok(&self) -> bool {
        self.errors == 0 && self.connections > 0 && self.completed == self.connections
    }

    pub fn to_json(&self) -> String {
        let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
        let r1 = |x: f64| (x * 10.0).round() / 10.0;
        json!({
            "mode": "rr",
            "connections": self.connections,
            "request": self.request,
            "response": self.response,
            "time_s": r3(self.time_s),
            "completed": self.completed,
            "errors": self.errors,
            "error_list": self.error_list,
            "transactions": self.transactions,
            "elapsed_s": r3(self.elapsed_s),
            "tps": r1(self.tps),
            "per_connection_transactions": self.per_connection_transactions,
            "per_connection_tps": self.per_connection_tps.iter().map(|&t| r1(t)).collect::<Vec<_>>(),
            "latency_us": {"p50": r1(self.p50_us), "p90": r1(self.p90_us), "p99": r1(self.p99_us), "max": r1(self.max_us)},
        })
        .to_string()
    }

    /// The summary in `out`: its last line that parses as one.
    pub fn parse(out: &str) -> Option<RrSummary> {
        out.lines().rev().filter(|l| l.trim_start().starts_with('{')).find_map(|l| {
            let v: Value = serde_json::from_str(l.trim()).ok()?;
            if v.get("mode")?.as_str()? != "rr" {
                return None;
            }
            let num = |k: &str| v.get(k)?.as_u64();
            let float = |k: &str| v.get(k)?.as_f64();
            let list = |k: &str| v.get(k).and_then(Value::as_array).cloned().unwrap_or_default();
            let latency = |k: &str| v.get("latency_us")?.get(k)?.as_f64();
            Some(RrSummary {
                connections: num("connections")?,
                request: u32::try_from(num("request")?).ok()?,
                response: u32::try_from(num("response")?).ok()?,
                time_s: float("time_s")?,
                completed: num("completed")?,
                errors: num("errors")?,
                error_list: list("error_list").iter().filter_map(|e| e.as_str().map(String::from)).collect(),
                transactions: num("transactions")?,
                elapsed_s: float("elapsed_s")?,
                tps: float("tps")?,
                per_connection_transactions: list("per_connection_transactions")
                    .iter()
                    .filter_map(Value::as_u64)
                    .collect(),
                per_connection_tps: list("per_connection_tps").iter().filter_map(Value::as_f64).collect(),
                p50_us: latency("p50")?,
                p90_us: latency("p90")?,
                p99_us: latency("p99")?,
                max_us: latency("max")?,
            })
        })
    }

    /// One line for people: `rr 4 conns, 1 B/1 B, 5.0 s: 1234 transactions/s
    /// (308.5 per conn), latency µs p50 812 p90 1020 p99 2300 max 5400`.
    pub fn describe(&self) -> String {
        let per_conn = if self.connections > 0 { self.tps / self.connections as f64 } else { 0.0 };
        let mut s = format!(
            "rr {} conns, {}/{}, {:.1} s: {:.0} transactions/s ({per_conn:.1} per conn), latency µs p50 {:.0} p90 {:.0} \
             p99 {:.0} max {:.0}",
            self.connections,
            size(self.request.into()),
            size(self.response.into()),
            self.elapsed_s,
            self.tps,
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.max_us
        );
        if self.errors > 0 {
            s.push_str(&format!(", {} of {} connections failed", self.errors, self.connections));
        }
        s
    }
}

/// `cargo xtask rr`: one load against `--addr`; prints the human line and
/// the JSON line; status 0 when [`RrSummary::ok`], else 1.
pub fn main(args: RrArgs) -> Result<i32, String> {
    let plan = RrPlan { connections: args.connections as usize, shape: args.shape };
    let conns = rr_load(tcp_connector(SocketAddr::new(args.addr, args.port)), plan, GRACE);
    let summary = RrSummary::of(&plan, &conns);
    println!("{}", summary.describe());
    println!("{}", summary.to_json());
    Ok(if summary.ok() { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcpload::tests::{Fake, ENOUGH, FAST};
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::thread;

    /// Reads a header; `None` if the client closed before it was whole.
    fn read_header(s: &mut UnixStream) -> Option<(usize, usize)> {
        let mut h = [0u8; 8];
        s.read_exact(&mut h).ok()?;
        let size = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap()) as usize;
        Some((size(&h[..4]), size(&h[4..])))
    }

    /// A correct RR server, except that `spoil` may change response `n`
    /// before it goes out (and returns false to stop there, silently).
    fn serve(mut s: UnixStream, spoil: fn(u64, &mut Vec<u8>) -> bool) {
        let Some((request, response)) = read_header(&mut s) else { return };
        let mut req = vec![0u8; request];
        for n in 0.. {
            if s.read_exact(&mut req).is_err() {
                break;
            }
            let mut out: Vec<u8> = (0..response).map(|i| expected_byte(n, i)).collect();
            if !spoil(n, &mut out) || s.write_all(&out).is_err() {
                break;
            }
        }
        // The client has closed its side (or we stopped): keep reading
        // until it has, then close ours.
        while matches!(s.read(&mut req), Ok(k) if k > 0) {}
    }

    fn good(_: usize, s: UnixStream) {
        serve(s, |_, _| true)
    }

    fn plan(connections: usize, request: u32, response: u32, time: Duration) -> RrPlan {
        RrPlan { connections, shape: RrShape { request, response, time } }
    }

    #[test]
    fn transactions_run_for_the_time_and_every_response_is_checked() {
        let fake = Fake::new(good);
        let p = plan(4, 100, 3000, Duration::from_millis(300));
        let started = Instant::now();
        let conns = rr_load(|i, t| fake.connect(i, t), p, ENOUGH);
        let took = started.elapsed();
        assert!(took >= p.shape.time && took < p.shape.time + Duration::from_secs(5), "took {took:?}");
        for c in &conns {
            assert!(c.error.is_none(), "{:?}", c.error);
            assert!(c.transactions > 10, "{} transactions", c.transactions);
            assert_eq!(c.latencies_ns.len() as u64, c.transactions);
            assert!(c.latencies_ns.iter().all(|&ns| ns > 0));
            assert!(c.tps() > 0.0);
        }
        let s = RrSummary::of(&p, &conns);
        assert!(s.ok(), "{s:?}");
        assert_eq!((s.connections, s.completed, s.errors, s.request, s.response), (4, 4, 0, 100, 3000));
        assert_eq!(s.transactions, conns.iter().map(|c| c.transactions).sum::<u64>());
        assert!((s.tps - s.transactions as f64 / s.elapsed_s).abs() < 1e-6 * s.tps);
        assert!(s.elapsed_s >= 0.3 && s.elapsed_s < 5.0, "{}", s.elapsed_s);
        assert!(0.0 < s.p50_us && s.p50_us <= s.p90_us && s.p90_us <= s.p99_us && s.p99_us <= s.max_us, "{s:?}");
        // Back from the JSON line, to 0.1.
        let line = s.to_json();
        assert!(!line.contains('\n'));
        let back = RrSummary::parse(&format!("{}\n{line}\nnoise\n", s.describe())).unwrap();
        assert_eq!((back.connections, back.transactions, back.errors), (4, s.transactions, 0));
        assert_eq!(back.per_connection_transactions, s.per_connection_transactions);
        assert_eq!(back.per_connection_tps.len(), 4);
        assert!((back.p99_us - s.p99_us).abs() <= 0.05 && (back.tps - s.tps).abs() <= 0.05, "{back:?}");
        assert!(back.ok());
    }

    #[test]
    fn the_largest_sizes_and_one_transaction_at_least() {
        let fake = Fake::new(good);
        // A time shorter than one transaction still runs one.
        let p = plan(2, MAX_SIZE, MAX_SIZE, Duration::from_nanos(1));
        let conns = rr_load(|i, t| fake.connect(i, t), p, ENOUGH);
        assert!(conns.iter().all(|c| c.error.is_none() && c.transactions == 1), "{conns:?}");
        assert!(RrSummary::of(&p, &conns).ok());
    }

    #[test]
    fn a_wrong_byte_is_reported_with_its_response() {
        // Connection-blind: every connection's response 7 has byte 1 wrong.
        fn wrong(_: usize, s: UnixStream) {
            serve(s, |n, out| {
                if n == 7 {
                    out[1] ^= 0x40;
                }
                true
            })
        }
        let fake = Fake::new(wrong);
        let p = plan(2, 10, 4, Duration::from_secs(5));
        let started = Instant::now();
        let conns = rr_load(|i, t| fake.connect(i, t), p, ENOUGH);
        assert!(started.elapsed() < Duration::from_secs(4), "stopped at the first wrong byte");
        for c in &conns {
            let e = c.error.as_ref().expect("an error");
            assert_eq!((e.kind, e.stage, e.offset), (ErrorKind::Mismatch, Stage::Receive, 7 * 4 + 1), "{e}");
            assert_eq!(e.detail, "response 7 byte 1: expected 0x08, got 0x48");
            assert_eq!(c.transactions, 7);
        }
        let s = RrSummary::of(&p, &conns);
        assert!(!s.ok());
        assert_eq!((s.errors, s.completed, s.transactions), (2, 0, 14));
        assert!(s.error_list[0].starts_with("conn 0: mismatch at receive offset 29: response 7 byte 1"), "{s:?}");
        assert!(s.describe().ends_with(", 2 of 2 connections failed"), "{}", s.describe());
    }

    #[test]
    fn a_short_response_runs_into_the_deadline() {
        // Response 3 comes 2 bytes short, and then nothing.
        fn short(_: usize, s: UnixStream) {
            serve(s, |n, out| {
                if n == 3 {
                    out.truncate(out.len() - 2);
                }
                n <= 3
            })
        }
        let fake = Fake::new(short);
        let p = plan(3, 1, 50, FAST);
        let started = Instant::now();
        let conns = rr_load(|i, t| fake.connect(i, t), p, FAST);
        let took = started.elapsed();
        assert!(took >= FAST * 2 && took < FAST * 6, "took {took:?}");
        for c in &conns {
            let e = c.error.as_ref().expect("an error");
            assert_eq!((e.kind, e.stage, e.offset), (ErrorKind::Timeout, Stage::Receive, 3 * 50 + 48), "{e}");
            assert_eq!(e.detail, "deadline passed waiting for response 3, 48 of 50 bytes in");
            assert_eq!(c.transactions, 3);
        }
    }

    #[test]
    fn the_server_must_close_after_the_last_response_and_say_nothing_more() {
        fn chatty(_: usize, mut s: UnixStream) {
            let _ = s.write_all(b"?");
            serve(s, |_, _| true)
        }
        // The extra byte is read as the first of response 0, which is wrong.
        let fake = Fake::new(chatty);
        let conns = rr_load(|i, t| fake.connect(i, t), plan(1, 1, 1, FAST), ENOUGH);
        assert_eq!(conns[0].error.as_ref().unwrap().detail, "response 0 byte 0: expected 0x00, got 0x3f");
        // One that never closes.
        fn stubborn(_: usize, mut s: UnixStream) {
            serve(s.try_clone().unwrap(), |_, _| true);
            thread::sleep(FAST * 3);
            let _ = s.write_all(b"late");
        }
        let fake = Fake::new(stubborn);
        let conns = rr_load(|i, t| fake.connect(i, t), plan(1, 1, 1, FAST), FAST);
        let e = conns[0].error.as_ref().unwrap();
        assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
        assert!(e.detail.starts_with("deadline passed waiting for the server to close after "), "{e}");
        assert!(conns[0].transactions > 0);
        // One that closes at once, header and all.
        fn rude(_: usize, s: UnixStream) {
            drop(s);
        }
        let fake = Fake::new(rude);
        let conns = rr_load(|i, t| fake.connect(i, t), plan(2, 1, 1, FAST), ENOUGH);
        for c in &conns {
            let e = c.error.as_ref().unwrap();
            assert!(matches!(e.kind, ErrorKind::Closed | ErrorKind::Reset), "{e}");
            assert_eq!(c.transactions, 0);
        }
    }

    #[test]
    fn refused_connections_still_let_the_others_start() {
        let fake = Fake::new(good);
        let connect = |i: usize, t: Duration| -> io::Result<UnixStream> {
            if i == 1 {
                Err(io::ErrorKind::ConnectionRefused.into())
            } else {
                fake.connect(i, t)
            }
        };
        let p = plan(3, 1, 1, Duration::from_millis(100));
        let conns = rr_load(connect, p, ENOUGH);
        let e = conns[1].error.as_ref().unwrap();
        assert_eq!((e.kind, e.stage), (ErrorKind::Refused, Stage::Connect));
        assert!(conns[0].transactions > 0 && conns[2].transactions > 0);
        let s = RrSummary::of(&p, &conns);
        assert_eq!((s.completed, s.errors), (2, 1));
        assert!(!s.ok());
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let hundred: Vec<u64> = (1..=100).collect();
        let p = |p: f64| percentile(&hundred, p);
        assert_eq!((p(50.0), p(90.0), p(99.0), p(100.0), p(0.5)), (50, 90, 99, 100, 1));
        let ten: Vec<u64> = (1..=10).collect();
        assert_eq!((percentile(&ten, 50.0), percentile(&ten, 99.0)), (5, 10));
        assert_eq!((percentile(&[7], 50.0), percentile(&[], 50.0)), (7, 0));
        // Over every connection's transactions, in µs.
        let conn = |index: usize, us: Vec<u64>| RrConn {
            transactions: us.len() as u64,
            latencies_ns: us.iter().map(|u| u * 1000).collect(),
            ..RrConn::new(index)
        };
        let p = plan(2, 1, 1, Duration::from_secs(1));
        let s = RrSummary::of(
            &p,
            &[conn(0, (1..=200).rev().step_by(2).collect()), conn(1, (1..=200).step_by(2).collect())],
        );
        assert_eq!((s.p50_us, s.p90_us, s.p99_us, s.max_us), (100.0, 180.0, 198.0, 200.0));
        assert_eq!((s.transactions, s.completed, s.tps), (200, 2, 0.0));
    }

    #[test]
    fn summaries_describe_themselves() {
        let s = RrSummary {
            connections: 4,
            request: 1,
            response: 4096,
            elapsed_s: 5.04,
            tps: 1234.4,
            p50_us: 812.3,
            p90_us: 1020.0,
            p99_us: 2300.0,
            max_us: 5400.0,
            ..RrSummary::default()
        };
        assert_eq!(
            s.describe(),
            "rr 4 conns, 1 B/4 KiB, 5.0 s: 1234 transactions/s (308.6 per conn), latency µs p50 812 p90 1020 p99 2300 \
             max 5400"
        );
        assert_eq!(RrSummary::parse("{\"mode\":\"echo\"}"), None);
        assert_eq!(RrSummary::parse("nothing"), None);
    }

    #[test]
    fn arguments() {
        use crate::cli::{Cli, Cmd};
        use clap::Parser;
        let parse = |args: &[&str]| Cli::try_parse_from(["xtask", "rr"].iter().chain(args).copied());
        let Cmd::Rr(a) = parse(&["--addr", "10.99.0.2"]).unwrap().command else { panic!() };
        assert_eq!((a.port, a.connections), (5202, 1));
        assert_eq!(a.shape, RrShape { request: 1, response: 1, time: Duration::from_secs(5) });
        let args =
            ["--addr", "10.99.0.2", "--connections", "16", "--request", "64K", "--response", "100", "--time", "2.5"];
        let Cmd::Rr(a) = parse(&args).unwrap().command else { panic!() };
        assert_eq!(a.connections, 16);
        assert_eq!(a.shape, RrShape { request: 65536, response: 100, time: Duration::from_millis(2500) });
        for bad in [
            &["--request", "0"][..],
            &["--response", "65537"],
            &["--request", "1M"],
            &["--time", "0"],
            &["--time", "601"],
            &["--connections", "0"],
            &["--port", "0"],
        ] {
            let args: Vec<&str> = ["--addr", "10.99.0.2"].iter().chain(bad).copied().collect();
            assert!(parse(&args).is_err(), "{bad:?}");
        }
        assert!(parse(&[]).is_err(), "--addr is needed");
    }
}
