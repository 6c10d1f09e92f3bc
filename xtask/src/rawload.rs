//! `xtask raw-load`: the host side of the guest's raw mode (`raw=`), run
//! inside the run's own network namespace with `ip netns exec`, on the host
//! end of the tap. It speaks Ethernet through an AF_PACKET socket, so no
//! host IP stack is involved either way:
//!
//! - `send`: frames of `--flows` UDP flows (source ports 40000 + i, so the
//!   tap's hash and virtio RSS spread them over the queues) to the guest,
//!   as fast as the socket takes them or at `--rate` frames/s, until
//!   `--count` frames or `--time` seconds;
//! - `count`: counts the guest's txonly frames (per queue pair, from their
//!   UDP source port) for `--time` seconds or until `--expect` arrived;
//! - `pingpong`: sends like `send` and counts the frames macswap returns
//!   (same frame, MAC addresses swapped), with at most `--window` in
//!   flight (0: no limit; a receiver thread counts meanwhile).
//!
//! Every frame is a `kernel::raw::UdpFrame`, the guest's own format.
//! Frames go out with PACKET_QDISC_BYPASS, straight to the tap: one the
//! tap cannot queue is counted in its `tx_dropped`, so the tap's counters,
//! read from /sys/class/net before and after, account for every frame.
//! Each run prints one JSON summary line. Bounded: `--time` (at most an
//! hour) plus `--settle`.

use std::ffi::CString;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use kernel::raw::{parse_mac, FrameError, Origin, UdpFrame, DISCARD_PORT, MAX_LEN, MIN_LEN, TX_PORT_BASE};
use serde_json::{json, Value};

use crate::cli::parse_timeout;

/// The UDP source port of the host's flow 0.
pub const FLOW_PORT_BASE: u16 = 40_000;
/// Most flows one run sends.
pub const MAX_FLOWS: u16 = 4096;
/// Most queue pairs counted apart (txonly's source ports).
const MAX_PAIRS: usize = 64;
/// Longest run.
const MAX_TIME: Duration = Duration::from_secs(3600);
/// pingpong checks the first this many sequence numbers for duplicates
/// (a 16 MiB bit set at most).
const MAX_TRACKED: u64 = 1 << 27;
/// With a window: frames in flight this long without any coming back are
/// counted lost, and sending goes on.
const LOST_AFTER: Duration = Duration::from_millis(500);

#[derive(Args, Debug, Clone)]
pub struct RawLoadArgs {
    #[command(subcommand)]
    pub cmd: RawLoadCmd,
}

#[derive(Subcommand, Debug, Clone)]
pub enum RawLoadCmd {
    /// Send frames of several UDP flows to the guest (rxonly).
    Send(SendArgs),
    /// Count the guest's txonly frames.
    Count(CountArgs),
    /// Send frames and count those the guest returns (macswap).
    Pingpong(PingpongArgs),
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// The tap's host end (inside the namespace this runs in).
    #[arg(long, default_value = boot::netns::DEFAULT_TAP)]
    pub iface: String,
    /// Deadline of the run, seconds.
    #[arg(long, default_value = "2", value_parser = parse_time)]
    pub time: Duration,
    /// Wait this long after the run before reading the tap's counters
    /// (frames still queued reach their end).
    #[arg(long, default_value = "0.5", value_parser = parse_settle)]
    pub settle: Duration,
}

#[derive(Args, Debug, Clone)]
pub struct SendArgs {
    #[command(flatten)]
    pub common: Common,
    /// Frame size in bytes, without the FCS.
    #[arg(long, default_value_t = MIN_LEN, value_parser = clap::value_parser!(u16).range(i64::from(MIN_LEN)..=i64::from(MAX_LEN)))]
    pub len: u16,
    /// Frames to send at most (default: until --time).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// UDP flows, frames spread round-robin over them.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_FLOWS)))]
    pub flows: u16,
    /// Frames per second (default: as fast as the socket takes them).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: Option<u64>,
    /// The guest's MAC address.
    #[arg(long, default_value = boot::qemu::DEFAULT_MAC, value_parser = parse_mac_arg)]
    pub dst: [u8; 6],
    /// Source IPv4 address (the host end).
    #[arg(long, default_value = "10.99.0.1")]
    pub src_ip: Ipv4Addr,
    /// Destination IPv4 address (the guest).
    #[arg(long, default_value = "10.99.0.2")]
    pub dst_ip: Ipv4Addr,
}

#[derive(Args, Debug, Clone)]
pub struct CountArgs {
    #[command(flatten)]
    pub common: Common,
    /// Stop as soon as this many txonly frames have arrived.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub expect: Option<u64>,
}

#[derive(Args, Debug, Clone)]
pub struct PingpongArgs {
    #[command(flatten)]
    pub send: SendArgs,
    /// Frames in flight at most (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub window: u32,
}

fn parse_time(s: &str) -> Result<Duration, String> {
    let t = parse_timeout(s)?;
    if t > MAX_TIME {
        return Err(format!("at most {} s", MAX_TIME.as_secs()));
    }
    Ok(t)
}

/// 0 to 60 seconds.
fn parse_settle(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.trim().trim_end_matches('s').parse().map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !(0.0..=60.0).contains(&secs) {
        return Err(format!("settle time must be between 0 and 60 seconds, not `{s}`"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_mac_arg(s: &str) -> Result<[u8; 6], String> {
    parse_mac(s).ok_or_else(|| format!("`{s}` is not a MAC address like 52:54:00:12:34:56"))
}

/// An AF_PACKET socket bound to one interface; the file descriptor is
/// closed when it is dropped.
struct PacketSocket {
    fd: OwnedFd,
}

/// `setsockopt(fd, level, name, &value)` for an `i32` or struct value.
fn set_opt<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    let len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` points to a live `T` of `len` bytes for the duration
    // of the call, and `fd` is an open socket we own.
    let r = unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, (value as *const T).cast(), len) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl PacketSocket {
    /// A raw packet socket on `iface`; `receive` ones see every frame
    /// arriving there (not our own outgoing ones), the others none.
    fn open(iface: &str, receive: bool) -> io::Result<PacketSocket> {
        let protocol = if receive { (libc::ETH_P_ALL as u16).to_be() } else { 0 };
        // SAFETY: socket(2) with constant arguments; no memory is passed.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, i32::from(protocol)) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let name = CString::new(iface).map_err(|_| io::Error::other("interface name with a NUL byte"))?;
        // SAFETY: `name` is a NUL-terminated string that outlives the call.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(io::Error::other(format!("no interface `{iface}` here: {}", io::Error::last_os_error())));
        }
        // SAFETY: sockaddr_ll is plain old data; all zeroes is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol;
        addr.sll_ifindex = index as i32;
        let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `addr` is a valid sockaddr_ll of `len` bytes, alive for the call.
        if unsafe { libc::bind(fd.as_raw_fd(), (&addr as *const libc::sockaddr_ll).cast(), len) } != 0 {
            return Err(io::Error::last_os_error());
        }
        set_opt(&fd, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, &1i32)?;
        if receive {
            // Not seeing our own frames halves the work; older kernels lack
            // the option, and `recv` skips outgoing frames anyway.
            let _ = set_opt(&fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &1i32);
            if set_opt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &(64i32 << 20)).is_err() {
                set_opt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &(64i32 << 20))?;
            }
            let timeout = libc::timeval { tv_sec: 0, tv_usec: 50_000 };
            set_opt(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &timeout)?;
        }
        Ok(PacketSocket { fd })
    }

    /// Sends one frame; `Ok(false)` when the kernel had no room for it now.
    fn send(&self, frame: &[u8]) -> io::Result<bool> {
        // SAFETY: `frame` is valid for `frame.len()` bytes during the call.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n >= 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR) => Ok(false),
            _ => Err(e),
        }
    }

    /// The next incoming frame into `buf` (its length), or `None` after
    /// the receive timeout (50 ms). Our own outgoing frames are skipped.
    fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            // SAFETY: sockaddr_ll is plain old data; all zeroes is valid.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: `buf` and `from` are valid for writes of their sizes
            // (`len` holds the latter) during the call.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_TRUNC,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.raw_os_error() {
                    Some(libc::EAGAIN | libc::EINTR) => Ok(None),
                    _ => Err(e),
                };
            }
            if from.sll_pkttype != libc::PACKET_OUTGOING {
                return Ok(Some(n as usize));
            }
        }
    }

    /// Frames the kernel dropped for this socket (its buffer was full)
    /// since the last call.
    fn drops(&self) -> u64 {
        let mut s = libc::tpacket_stats { tp_packets: 0, tp_drops: 0 };
        let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: `s` is a valid tpacket_stats of `len` bytes for the call.
        let r = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut s as *mut libc::tpacket_stats).cast(),
                &mut len,
            )
        };
        if r == 0 {
            u64::from(s.tp_drops)
        } else {
            0
        }
    }
}

/// The tap's counters (/sys/class/net/IFACE/statistics): `tx` is towards
/// the guest, `rx` from it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TapCounters {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
}

impl TapCounters {
    pub fn read(iface: &str) -> io::Result<TapCounters> {
        let get = |name: &str| -> io::Result<u64> {
            let path = format!("/sys/class/net/{iface}/statistics/{name}");
            std::fs::read_to_string(&path)?.trim().parse().map_err(|e| io::Error::other(format!("{path}: {e}")))
        };
        Ok(TapCounters {
            rx_packets: get("rx_packets")?,
            tx_packets: get("tx_packets")?,
            rx_dropped: get("rx_dropped")?,
            tx_dropped: get("tx_dropped")?,
        })
    }

    pub fn json(&self) -> Value {
        json!({"rx_packets": self.rx_packets, "tx_packets": self.tx_packets,
               "rx_dropped": self.rx_dropped, "tx_dropped": self.tx_dropped})
    }

    pub fn from_json(v: &Value) -> Option<TapCounters> {
        let get = |k: &str| v.get(k)?.as_u64();
        Some(TapCounters {
            rx_packets: get("rx_packets")?,
            tx_packets: get("tx_packets")?,
            rx_dropped: get("rx_dropped")?,
            tx_dropped: get("tx_dropped")?,
        })
    }
}

fn tap_mac(iface: &str) -> io::Result<[u8; 6]> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{iface}/address"))?;
    parse_mac(text.trim()).ok_or_else(|| io::Error::other(format!("{iface} has no MAC address ({})", text.trim())))
}

/// The frames of a sending run: flow `seq % flows`, sequence number `seq`.
struct Frames {
    spec: UdpFrame,
    flows: u16,
    buf: Vec<u8>,
}

impl Frames {
    fn new(a: &SendArgs, src_mac: [u8; 6]) -> Frames {
        let spec = UdpFrame {
            dst_mac: a.dst,
            src_mac,
            src_ip: a.src_ip.octets(),
            dst_ip: a.dst_ip.octets(),
            src_port: FLOW_PORT_BASE,
            dst_port: DISCARD_PORT,
            origin: Origin::Host,
            seq: 0,
        };
        Frames { spec, flows: a.flows, buf: vec![0; usize::from(a.len)] }
    }

    fn frame(&mut self, seq: u64) -> &[u8] {
        let spec = UdpFrame { src_port: FLOW_PORT_BASE + (seq % u64::from(self.flows)) as u16, seq, ..self.spec };
        spec.write(&mut self.buf).expect("the length was checked by the argument parser");
        &self.buf
    }
}

/// Paces a sender: how many frames may have gone out by now.
struct Pace {
    start: Instant,
    rate: Option<u64>,
}

impl Pace {
    /// Waits (briefly) until frame number `sent` is due.
    fn wait(&self, sent: u64) {
        let Some(rate) = self.rate else { return };
        let due = Duration::from_secs_f64(sent as f64 / rate as f64);
        if let Some(early) = due.checked_sub(self.start.elapsed()) {
            thread::sleep(early.min(Duration::from_millis(10)));
        }
    }
}

/// What a sender did.
#[derive(Default)]
struct Sent {
    frames: u64,
    /// Times the socket had no room and the frame was tried again.
    retries: u64,
    elapsed: Duration,
}

/// Sends until `count` frames or `deadline`, or while `more` says so.
fn send_frames(
    sock: &PacketSocket,
    frames: &mut Frames,
    a: &SendArgs,
    deadline: Instant,
    mut more: impl FnMut(u64) -> bool,
) -> io::Result<Sent> {
    let pace = Pace { start: Instant::now(), rate: a.rate };
    let mut s = Sent::default();
    while s.frames < a.count.unwrap_or(u64::MAX) && Instant::now() < deadline {
        if !more(s.frames) {
            continue;
        }
        pace.wait(s.frames);
        if sock.send(frames.frame(s.frames))? {
            s.frames += 1;
        } else {
            s.retries += 1;
            thread::sleep(Duration::from_micros(50));
        }
    }
    s.elapsed = pace.start.elapsed();
    Ok(s)
}

/// What a receiver counted.
#[derive(Default)]
struct Received {
    /// Frames of the kind it counts, and their bytes.
    frames: u64,
    bytes: u64,
    /// txonly: per queue pair (source port - TX_PORT_BASE).
    per_pair: Vec<u64>,
    /// Frames of this mode whose checks failed, with the first reason.
    damaged: u64,
    first_damage: Option<&'static str>,
    /// Host frames that came back unchanged, or with other addresses.
    unswapped: u64,
    /// pingpong: frames returned twice.
    duplicates: u64,
    /// Everything else (the host's own chatter, the guest's other frames).
    other: u64,
    socket_drops: u64,
    /// pingpong: sequence numbers seen.
    seen: Vec<u64>,
}

impl Received {
    fn damaged(&mut self, why: &'static str) {
        self.damaged += 1;
        self.first_damage.get_or_insert(why);
    }

    /// Counts one frame: a txonly frame (`want` Guest), or a host frame
    /// returned with the addresses swapped (`want` Host: from `guest` to `tap`).
    fn take(&mut self, frame: &[u8], want: Origin, tap: [u8; 6], guest: [u8; 6]) {
        match UdpFrame::parse(frame) {
            Ok(f) if f.origin != want => self.other += 1,
            Ok(f) if want == Origin::Guest => {
                let pair = usize::from(f.src_port.wrapping_sub(TX_PORT_BASE));
                if pair >= MAX_PAIRS || f.dst_port != DISCARD_PORT {
                    return self.damaged("txonly ports");
                }
                if self.per_pair.len() <= pair {
                    self.per_pair.resize(pair + 1, 0);
                }
                self.per_pair[pair] += 1;
                self.frames += 1;
                self.bytes += frame.len() as u64;
            }
            Ok(f) => {
                if f.dst_mac != tap || f.src_mac != guest {
                    self.unswapped += 1;
                    return;
                }
                let (word, bit) = ((f.seq / 64) as usize, f.seq % 64);
                if f.seq >= MAX_TRACKED {
                    // Past the tracked range (a very long run): counted
                    // without the duplicate check.
                    self.frames += 1;
                    self.bytes += frame.len() as u64;
                    return;
                }
                if word >= self.seen.len() {
                    // Grows by doubling, up to MAX_TRACKED bits.
                    self.seen.resize((word + 1).next_power_of_two(), 0);
                }
                if self.seen[word] & (1 << bit) != 0 {
                    self.duplicates += 1;
                    return;
                }
                self.seen[word] |= 1 << bit;
                self.frames += 1;
                self.bytes += frame.len() as u64;
            }
            Err(FrameError::Damaged(why)) => self.damaged(why),
            Err(FrameError::NotOurs | FrameError::BadLength(_)) => self.other += 1,
        }
    }

    fn json(&self) -> Value {
        json!({
            "received": self.frames,
            "received_bytes": self.bytes,
            "per_pair": self.per_pair,
            "damaged": self.damaged,
            "first_damage": self.first_damage,
            "unswapped": self.unswapped,
            "duplicates": self.duplicates,
            "other": self.other,
            "socket_drops": self.socket_drops,
        })
    }
}

pub fn main(args: RawLoadArgs) -> Result<i32, String> {
    let summary = match args.cmd {
        RawLoadCmd::Send(a) => send(&a),
        RawLoadCmd::Count(a) => count(&a),
        RawLoadCmd::Pingpong(a) => pingpong(&a),
    }
    .map_err(|e| format!("raw-load: {e}"))?;
    println!("{summary}");
    Ok(0)
}

/// The summary's common part: the tap's counters around the run, read
/// after `settle`.
fn finish(mut v: Value, c: &Common, before: TapCounters) -> io::Result<Value> {
    thread::sleep(c.settle);
    v["tool"] = json!("raw-load");
    v["iface"] = json!(c.iface);
    v["tap_before"] = before.json();
    v["tap_after"] = TapCounters::read(&c.iface)?.json();
    Ok(v)
}

fn send(a: &SendArgs) -> io::Result<Value> {
    let c = &a.common;
    let sock = PacketSocket::open(&c.iface, false)?;
    let mut frames = Frames::new(a, tap_mac(&c.iface)?);
    let before = TapCounters::read(&c.iface)?;
    let s = send_frames(&sock, &mut frames, a, Instant::now() + c.time, |_| true)?;
    let v = json!({"mode": "send", "len": a.len, "flows": a.flows, "sent": s.frames, "retries": s.retries,
                   "elapsed_s": s.elapsed.as_secs_f64()});
    finish(v, c, before)
}

fn count(a: &CountArgs) -> io::Result<Value> {
    let c = &a.common;
    let sock = PacketSocket::open(&c.iface, true)?;
    let before = TapCounters::read(&c.iface)?;
    let mut r = Received::default();
    let mut buf = vec![0u8; 65_536];
    let start = Instant::now();
    let (mut first, mut last) = (None, None);
    while start.elapsed() < c.time && a.expect.is_none_or(|n| r.frames < n) {
        if let Some(n) = sock.recv(&mut buf)? {
            let counted = r.frames;
            r.take(&buf[..n.min(buf.len())], Origin::Guest, [0; 6], [0; 6]);
            if r.frames > counted {
                last = Some(start.elapsed());
                first.get_or_insert(start.elapsed());
            }
        }
    }
    r.socket_drops = sock.drops();
    let mut v = r.json();
    v["mode"] = json!("count");
    v["elapsed_s"] = json!(start.elapsed().as_secs_f64());
    // From the first to the last frame counted: the guest's sending time
    // as the host saw it.
    v["first_s"] = json!(first.map(|d: Duration| d.as_secs_f64()));
    v["last_s"] = json!(last.map(|d: Duration| d.as_secs_f64()));
    finish(v, c, before)
}

fn pingpong(a: &PingpongArgs) -> io::Result<Value> {
    let s = &a.send;
    let c = &s.common;
    let tap = tap_mac(&c.iface)?;
    let mut frames = Frames::new(s, tap);
    let before = TapCounters::read(&c.iface)?;
    let deadline = Instant::now() + c.time;
    let mut buf = vec![0u8; 65_536];
    let (sent, r, lost) = if a.window == 0 {
        // A receiver thread counts while this one sends as fast as it may.
        let rsock = PacketSocket::open(&c.iface, true)?;
        let sock = PacketSocket::open(&c.iface, false)?;
        let done = Arc::new(AtomicBool::new(false));
        let (guest, settle) = (s.dst, c.settle);
        let receiver = {
            let done = done.clone();
            thread::spawn(move || -> io::Result<Received> {
                let mut r = Received::default();
                let mut stop_at = None;
                while stop_at.is_none_or(|t| Instant::now() < t) {
                    if stop_at.is_none() && done.load(Ordering::SeqCst) {
                        stop_at = Some(Instant::now() + settle);
                    }
                    if let Some(n) = rsock.recv(&mut buf)? {
                        r.take(&buf[..n.min(buf.len())], Origin::Host, tap, guest);
                    }
                }
                r.socket_drops = rsock.drops();
                Ok(r)
            })
        };
        let sent = send_frames(&sock, &mut frames, s, deadline, |_| true);
        done.store(true, Ordering::SeqCst);
        let r = receiver.join().map_err(|_| io::Error::other("the receiver thread panicked"))??;
        let sent = sent?;
        let lost = sent.frames.saturating_sub(r.frames);
        (sent, r, lost)
    } else {
        let sock = PacketSocket::open(&c.iface, true)?;
        let mut r = Received::default();
        let mut lost = 0u64;
        let mut progress = Instant::now();
        let window = u64::from(a.window);
        let sent = send_frames(&sock, &mut frames, s, deadline, |sent| {
            if sent.saturating_sub(r.frames + lost) < window {
                return true;
            }
            // A receive error ends nothing here: the deadline bounds the run.
            if let Ok(Some(n)) = sock.recv(&mut buf) {
                let before = r.frames;
                r.take(&buf[..n.min(buf.len())], Origin::Host, tap, s.dst);
                if r.frames > before {
                    progress = Instant::now();
                }
            }
            if progress.elapsed() > LOST_AFTER {
                lost = sent.saturating_sub(r.frames);
                progress = Instant::now();
            }
            false
        })?;
        // The last window comes back, or is lost.
        let until = Instant::now() + LOST_AFTER.max(c.settle);
        while r.frames + lost < sent.frames && Instant::now() < until {
            if let Some(n) = sock.recv(&mut buf)? {
                r.take(&buf[..n.min(buf.len())], Origin::Host, tap, s.dst);
            }
        }
        r.socket_drops = sock.drops();
        let lost = sent.frames.saturating_sub(r.frames);
        (sent, r, lost)
    };
    let mut v = r.json();
    v["mode"] = json!("pingpong");
    v["len"] = json!(s.len);
    v["flows"] = json!(s.flows);
    v["window"] = json!(a.window);
    v["sent"] = json!(sent.frames);
    v["retries"] = json!(sent.retries);
    v["lost"] = json!(lost);
    v["elapsed_s"] = json!(sent.elapsed.as_secs_f64());
    finish(v, c, before)
}

/// How long a `raw-load` run may outlive its own `--time` and `--settle`
/// before it is killed (it bounds itself; this guards against a hang).
pub const GRACE: Duration = Duration::from_secs(10);

/// Runs this executable's `raw-load ARGS` inside `netns`, bounded by
/// `limit` plus [`GRACE`], and returns its summary.
pub fn run_in(netns: &str, args: &[String], limit: Duration) -> Result<Value, String> {
    let exe = crate::selfexe::path()?;
    let mut cmd = crate::traffic::in_netns(netns, &exe);
    cmd.arg("raw-load").args(args);
    let (status, out, err) = crate::traffic::run_bounded(cmd, limit + GRACE)?;
    parse_summary(&out).ok_or_else(|| {
        format!(
            "`ip netns exec {netns} xtask raw-load {}` printed no summary ({status}): {}",
            args.join(" "),
            err.trim()
        )
    })
}

/// The summary line of a `raw-load` run in its output (the last JSON line).
pub fn parse_summary(out: &str) -> Option<Value> {
    out.lines().rev().filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok()).find(|v| v["tool"] == "raw-load")
}

/// A counter of a summary (0 when absent).
pub fn field(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<RawLoadCmd, clap::Error> {
        let cli = crate::cli::Cli::try_parse_from(["xtask", "raw-load"].iter().chain(args))?;
        match cli.command {
            crate::cli::Cmd::RawLoad(a) => Ok(a.cmd),
            _ => unreachable!(),
        }
    }

    #[test]
    fn arguments() {
        let RawLoadCmd::Send(s) = parse(&["send", "--len", "1514", "--count", "1000", "--flows", "8"]).unwrap() else {
            panic!()
        };
        assert_eq!((s.len, s.count, s.flows, s.rate), (1514, Some(1000), 8, None));
        assert_eq!((s.common.iface.as_str(), s.common.time), ("mqtap0", Duration::from_secs(2)));
        assert_eq!(s.dst, [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        let RawLoadCmd::Pingpong(p) = parse(&["pingpong", "--window", "32", "--time", "1.5"]).unwrap() else {
            panic!()
        };
        assert_eq!((p.window, p.send.common.time), (32, Duration::from_millis(1500)));
        let RawLoadCmd::Count(c) = parse(&["count", "--expect", "40000", "--iface", "tap1", "--settle", "0"]).unwrap()
        else {
            panic!()
        };
        assert_eq!((c.expect, c.common.iface.as_str(), c.common.settle), (Some(40000), "tap1", Duration::ZERO));
        for bad in [
            &["send", "--len", "59"][..],
            &["send", "--len", "1515"],
            &["send", "--flows", "0"],
            &["send", "--count", "0"],
            &["send", "--dst", "52:54"],
            &["send", "--time", "3601"],
            &["count", "--time", "0"],
            &["count", "--settle", "61"],
            &["count", "--settle", "-1"],
            &["flood"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn frames_spread_over_flows_with_their_sequence_numbers() {
        let a = match parse(&["send", "--flows", "3", "--len", "100"]).unwrap() {
            RawLoadCmd::Send(a) => a,
            _ => unreachable!(),
        };
        let mut f = Frames::new(&a, [2, 0, 0, 0, 0, 1]);
        for seq in 0..7 {
            let p = UdpFrame::parse(f.frame(seq)).unwrap();
            assert_eq!((p.seq, p.src_port, p.origin, p.dst_port), (seq, 40_000 + (seq % 3) as u16, Origin::Host, 9));
            assert_eq!((p.src_ip, p.dst_ip, p.dst_mac), ([10, 99, 0, 1], [10, 99, 0, 2], a.dst));
        }
    }

    fn guest_frame(pair: u16, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        UdpFrame {
            dst_mac: [0xff; 6],
            src_mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            src_ip: [10, 99, 0, 2],
            dst_ip: [10, 99, 0, 1],
            src_port: TX_PORT_BASE + pair,
            dst_port: DISCARD_PORT,
            origin: Origin::Guest,
            seq: 0,
        }
        .write(&mut b)
        .unwrap();
        b
    }

    #[test]
    fn txonly_frames_are_counted_per_pair() {
        let mut r = Received::default();
        for (pair, n) in [(0, 3), (2, 5)] {
            for _ in 0..n {
                r.take(&guest_frame(pair, 60), Origin::Guest, [0; 6], [0; 6]);
            }
        }
        let mut damaged = guest_frame(1, 80);
        damaged[70] ^= 0xff;
        r.take(&damaged, Origin::Guest, [0; 6], [0; 6]);
        r.take(&[0u8; 60], Origin::Guest, [0; 6], [0; 6]);
        assert_eq!((r.frames, r.bytes, r.per_pair.clone()), (8, 480, vec![3, 0, 5]));
        assert_eq!((r.damaged, r.first_damage, r.other), (1, Some("UDP checksum"), 1));
        let v = r.json();
        assert_eq!((field(&v, "received"), v["per_pair"][2].as_u64()), (8, Some(5)));
    }

    #[test]
    fn returned_frames_must_be_swapped_and_are_counted_once() {
        let (tap, guest) = ([2, 0, 0, 0, 0, 1], [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        let a = match parse(&["pingpong", "--flows", "4"]).unwrap() {
            RawLoadCmd::Pingpong(a) => a.send,
            _ => unreachable!(),
        };
        let mut f = Frames::new(&a, tap);
        let mut r = Received::default();
        for seq in 0..100 {
            let mut frame = f.frame(seq).to_vec();
            r.take(&frame, Origin::Host, tap, guest);
            let (dst, src) = frame.split_at_mut(6);
            dst.swap_with_slice(&mut src[..6]);
            r.take(&frame, Origin::Host, tap, guest);
            if seq % 10 == 0 {
                r.take(&frame, Origin::Host, tap, guest);
            }
        }
        r.take(&guest_frame(0, 60), Origin::Host, tap, guest);
        assert_eq!((r.frames, r.unswapped, r.duplicates, r.other), (100, 100, 10, 1));
    }

    #[test]
    fn summaries_are_found_in_the_output() {
        let v = parse_summary("noise\n{\"tool\":\"raw-load\",\"sent\":5}\n").unwrap();
        assert_eq!(field(&v, "sent"), 5);
        assert!(parse_summary("{\"sent\":5}").is_none());
        let t = TapCounters { rx_packets: 1, tx_packets: 2, rx_dropped: 3, tx_dropped: 4 };
        assert_eq!(TapCounters::from_json(&t.json()), Some(t));
    }
}
