//! Host-side traffic for the network tests, sent from inside the run's own
//! network namespace to the guest. Every loop is bounded in count and time.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::rr::{RrShape, RrSummary};
use crate::tcpload::{LoadSummary, Mode};

/// What `ping` reported.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PingResult {
    pub sent: u32,
    pub received: u32,
    /// Round-trip time of each reply, in milliseconds.
    pub rtts_ms: Vec<f64>,
    /// The whole run as ping timed it (`time 1843ms` in its summary).
    pub time_ms: Option<u64>,
    /// ICMP errors instead of replies (`+N errors`: no route, a neighbour
    /// that stopped answering ARP). With a deadline ping stops at the first.
    pub errors: u32,
    /// Lines about replies that came back different from the request.
    pub damaged: Vec<String>,
}

impl PingResult {
    /// Requests without a reply (with a deadline, ping sends until it has
    /// its count of replies, so this is not `count - received`).
    pub fn lost(&self) -> u32 {
        self.sent.saturating_sub(self.received)
    }
}

/// What iputils `ping` prints about a reply whose contents are wrong: a
/// payload byte that differs, a bad ICMP checksum, a short reply.
const DAMAGE: [&str; 4] = ["wrong data byte", "corrupted", "BAD CHECKSUM", "truncated"];

/// Parses `ping` output: every `time=X ms`, damaged replies and the summary.
pub fn parse_ping(out: &str) -> PingResult {
    let mut r = PingResult::default();
    for line in out.lines() {
        if let Some(t) = line.split("time=").nth(1) {
            if let Some(ms) = t.split_whitespace().next().and_then(|x| x.parse().ok()) {
                r.rtts_ms.push(ms);
            }
        }
        if DAMAGE.iter().any(|d| line.contains(d)) {
            r.damaged.push(line.trim().to_string());
        }
        if line.contains("packets transmitted") {
            let num = |word: &str| {
                line.split(", ").find(|p| p.contains(word)).and_then(|p| p.split_whitespace().next()?.parse().ok())
            };
            r.sent = num("transmitted").unwrap_or(0);
            r.received = num("received").unwrap_or(0);
            r.errors = line
                .split(", ")
                .find_map(|p| p.trim().strip_prefix('+')?.strip_suffix(" errors")?.parse().ok())
                .unwrap_or(0);
            r.time_ms = line.split(", ").find_map(|p| p.trim().strip_prefix("time ")?.strip_suffix("ms")?.parse().ok());
        }
    }
    r
}

/// One step of a case's host-side work in its transcript: a `== NAME`
/// line, then what the step printed. The checks find each step's output by
/// name, and a failure shows the whole transcript.
pub fn section(name: &str, output: &str) -> String {
    format!("== {name}\n{}\n", output.trim_end())
}

/// The output of step `name` in a transcript of [`section`]s.
pub fn find_section(transcript: &str, name: &str) -> Option<String> {
    let mut lines = transcript.lines().skip_while(|l| l.strip_prefix("== ") != Some(name));
    lines.next()?;
    Some(lines.take_while(|l| !l.starts_with("== ")).map(|l| format!("{l}\n")).collect())
}

pub fn in_netns(netns: &str, program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", netns]).arg(program);
    c
}

/// Runs `ping ARGS` in the namespace and returns what it printed. Lost
/// replies are a result, not an error (exit status 1); status 2 means ping
/// itself could not do its job.
fn run_ping(netns: &str, args: &[String]) -> Result<String, String> {
    let out = in_netns(netns, "ping").args(args).output().map_err(|e| format!("could not run ping: {e}"))?;
    if !matches!(out.status.code(), Some(0 | 1)) {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!("`ping {}` failed ({}): {}", args.join(" "), out.status, stderr.trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `count` pings with `size` bytes of payload, `interval` apart, each
/// waiting at most `wait` for its reply (ping itself ends after about
/// `count × interval + wait`).
pub fn ping(
    netns: &str,
    addr: &str,
    count: u32,
    size: u32,
    interval: Duration,
    wait: Duration,
) -> Result<String, String> {
    let args = [
        "-n".into(),
        "-c".into(),
        count.to_string(),
        "-s".into(),
        size.to_string(),
        "-i".into(),
        format!("{:.3}", interval.as_secs_f64()),
        "-W".into(),
        format!("{:.1}", wait.as_secs_f64()),
        addr.into(),
    ];
    run_ping(netns, &args)
}

/// An ICMP flood (`ping -f`): requests as fast as replies come back, with
/// `preload` in flight, until `count` replies have arrived or `deadline` has
/// passed, whichever is first. Prints only the summary.
pub fn flood(
    netns: &str,
    addr: &str,
    size: u32,
    count: u32,
    preload: u32,
    deadline: Duration,
) -> Result<String, String> {
    let args = [
        "-n".into(),
        "-q".into(),
        "-f".into(),
        "-l".into(),
        preload.to_string(),
        "-c".into(),
        count.to_string(),
        "-s".into(),
        size.to_string(),
        "-w".into(),
        deadline.as_secs().to_string(),
        addr.into(),
    ];
    run_ping(netns, &args)
}

/// How long a `tcp-load` client may outlive its own deadline before it is
/// killed: it bounds itself, this only guards against a client that hangs
/// outside its sockets.
pub const TCP_LOAD_GRACE: Duration = Duration::from_secs(10);

/// The arguments of one `xtask tcp-load` run (after the program).
pub fn tcp_load_args(
    mode: Mode,
    addr: &str,
    port: u16,
    connections: u32,
    bytes: u64,
    timeout: Duration,
) -> Vec<String> {
    [
        "tcp-load",
        mode.name(),
        "--addr",
        addr,
        "--port",
        &port.to_string(),
        "--connections",
        &connections.to_string(),
        "--bytes",
        &bytes.to_string(),
        "--timeout-secs",
        &format!("{:.1}", timeout.as_secs_f64()),
    ]
    .map(String::from)
    .to_vec()
}

/// A TCP load from inside the namespace: this very xtask executable as the
/// client, `ip netns exec NETNS XTASK tcp-load MODE --addr ADDR ...`,
/// bounded by `timeout` (the client's own deadline) plus
/// [`TCP_LOAD_GRACE`]. Returns what it printed, its JSON summary line last;
/// a failed load (exit status 1) is a result, not an error. Err when no
/// summary came out (the client could not run).
pub fn tcp_load(
    netns: &str,
    addr: &str,
    mode: Mode,
    port: u16,
    connections: u32,
    bytes: u64,
    timeout: Duration,
) -> Result<String, String> {
    let args = tcp_load_args(mode, addr, port, connections, bytes, timeout);
    let (_, stdout) = run_self(netns, &args, timeout + TCP_LOAD_GRACE, |out| LoadSummary::parse(out).is_some())?;
    Ok(stdout)
}

/// Runs this very xtask executable with `args` inside `netns`, for at most
/// `limit`: its exit status and what it printed, which `has_summary` must
/// accept (else the error says what happened).
fn run_self(
    netns: &str,
    args: &[String],
    limit: Duration,
    has_summary: impl Fn(&str) -> bool,
) -> Result<(String, String), String> {
    let exe = crate::selfexe::path()?;
    let mut cmd = in_netns(netns, &exe);
    cmd.args(args);
    let (status, stdout, stderr) = run_bounded(cmd, limit)?;
    if !has_summary(&stdout) {
        let shown = format!("ip netns exec {netns} {} {}", exe.display(), args.join(" "));
        return Err(format!("`{shown}` printed no summary ({status}): {}", stderr.trim()));
    }
    Ok((status, stdout))
}

/// The arguments of one `xtask rr` run (after the program).
pub fn rr_args(addr: &str, port: u16, connections: u32, shape: &RrShape) -> Vec<String> {
    let numbers = [
        ("--port", port.into()),
        ("--connections", connections),
        ("--request", shape.request),
        ("--response", shape.response),
    ];
    let mut args = vec!["rr".to_string(), "--addr".into(), addr.into()];
    for (flag, n) in numbers {
        args.extend([flag.to_string(), n.to_string()]);
    }
    args.extend(["--time".to_string(), format!("{:.3}", shape.time.as_secs_f64())]);
    args
}

/// How long an `xtask rr` run of `time` may take in all: its own deadline
/// (`time` plus its grace) plus [`TCP_LOAD_GRACE`].
pub fn rr_limit(time: Duration) -> Duration {
    time + crate::rr::GRACE + TCP_LOAD_GRACE
}

/// A request/response load from inside the namespace: `ip netns exec NETNS
/// XTASK rr --addr ADDR ...`, bounded by [`rr_limit`]. Returns a first line
/// `status STATUS` (its exit status), then what it printed, its JSON
/// summary last; a failed load is a result, not an error. Err when no
/// summary came out.
pub fn tcp_rr(netns: &str, addr: &str, port: u16, connections: u32, shape: RrShape) -> Result<String, String> {
    let args = rr_args(addr, port, connections, &shape);
    let (status, stdout) = run_self(netns, &args, rr_limit(shape.time), |out| RrSummary::parse(out).is_some())?;
    Ok(format!("status {status}\n{stdout}"))
}

/// Runs `cmd` (stdin closed, output captured) for at most `limit`; a child
/// still running then is killed (it is ours, by its PID) and reported.
pub fn run_bounded(cmd: Command, limit: Duration) -> Result<(String, String, String), String> {
    run_bounded_ticking(cmd, limit, &mut |_| true)
}

/// [`run_bounded`], calling `tick(false)` about every 20 ms while the child
/// runs and `tick(true)` once as soon as it has exited by itself, for
/// whoever watches it meanwhile. A `tick(false)` that returns false ends
/// the child at once (killed, reported as `stopped`).
pub fn run_bounded_ticking(
    mut cmd: Command,
    limit: Duration,
    tick: &mut dyn FnMut(bool) -> bool,
) -> Result<(String, String, String), String> {
    let program: OsString = cmd.get_program().to_owned();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not run {}: {e}", program.to_string_lossy()))?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut s);
            }
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let until = Instant::now() + limit;
    let status = loop {
        let go_on = tick(false);
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            tick(true);
            break status.to_string();
        }
        if !go_on {
            let _ = child.kill();
            let _ = child.wait();
            break "stopped".into();
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            break format!("killed after {:.1} s", limit.as_secs_f64());
        }
        thread::sleep(Duration::from_millis(20));
    };
    Ok((status, out.join().unwrap_or_default(), err.join().unwrap_or_default()))
}

/// One run of the host's real `iperf3` client against `addr` with `--json`
/// and `args`, killed after `limit`: `exit STATUS` on the first line, then
/// the client's JSON (and its stderr, if any, after a `stderr:` line).
pub fn iperf3(netns: &str, addr: &str, args: &[String], limit: Duration) -> Result<String, String> {
    let mut cmd = in_netns(netns, "iperf3");
    cmd.args(["-c", addr, "--json"]).args(args);
    iperf3_transcript(cmd, limit)
}

/// Runs an iperf3 command: `exit STATUS`, its output, and its stderr (if
/// any) after a `stderr:` line.
fn iperf3_transcript(cmd: Command, limit: Duration) -> Result<String, String> {
    let (status, out, err) = run_bounded(cmd, limit)?;
    let status = status.strip_prefix("exit status: ").unwrap_or(&status).to_string();
    let mut text = format!("exit {status}\n{out}");
    if !err.trim().is_empty() {
        text += &format!("\nstderr:\n{err}");
    }
    Ok(text)
}

/// `iperf3 -s -1 --json` (one test, then exit), killed after `limit`: the
/// guest's client runs against it. `exit STATUS`, then the server's JSON.
pub fn iperf3_server(netns: &str, limit: Duration) -> Result<String, String> {
    let mut cmd = in_netns(netns, "iperf3");
    cmd.args(["-s", "-1", "--json"]);
    iperf3_transcript(cmd, limit)
}

/// A malformed iperf3 control exchange: the cookie, then a parameter
/// message whose length prefix claims 2 GiB. Prints the server's answer in
/// hex until it closes (`answer fe 00 ...`), or how it failed.
pub fn iperf3_malformed(netns: &str, addr: &str) -> Result<String, String> {
    let script = format!(
        "import socket\n\
         s = socket.create_connection(('{addr}', 5201), timeout=10)\n\
         s.sendall(b'm' * 36 + b'\\0')\n\
         first = s.recv(1)\n\
         s.sendall(b'\\x7f\\xff\\xff\\xf0' + b'{{' * 64)\n\
         rest = b''\n\
         while True:\n\
         \x20   d = s.recv(4096)\n\
         \x20   if not d: break\n\
         \x20   rest += d\n\
         print('first', first.hex())\n\
         print('answer', ' '.join('%02x' % b for b in rest))\n"
    );
    let mut cmd = in_netns(netns, "python3");
    cmd.args(["-c", &script]);
    let (status, out, err) = run_bounded(cmd, Duration::from_secs(20))?;
    Ok(format!("{out}{}", if err.trim().is_empty() { String::new() } else { format!("{status}: {err}") }))
}

/// `GET /metrics` with `curl`, as a user would: `status N`, then the body.
pub fn curl_metrics(netns: &str, addr: &str) -> Result<String, String> {
    let url = format!("http://{addr}:9100/metrics");
    let mut cmd = in_netns(netns, "curl");
    cmd.args(["-sS", "--max-time", "5", "-o", "-", "-w", "\nstatus %{http_code}\n", &url]);
    let (status, out, err) = run_bounded(cmd, Duration::from_secs(10))?;
    let Some((body, code)) = out.rsplit_once("\nstatus ") else {
        return Err(format!("curl {url}: {status}: {}", err.trim()));
    };
    Ok(format!("status {}\n{body}", code.trim()))
}

/// The first client port `p` from `from` on such that the flows from
/// `host`:`p + i` to `guest`:`port`, i < `streams`, are spread as evenly as
/// the guest's steering (`key`, `cpus`) allows: every vCPU owns
/// ⌊streams/cpus⌋ or ⌈streams/cpus⌉ of them (so with no more streams than
/// vCPUs, each has its own). `iperf3 --cport p` binds its i-th stream to
/// `p + i`. `from` itself when no port up to 60000 does it.
pub fn spread_ports(
    key: [u8; 40],
    cpus: u16,
    host: [u8; 4],
    guest: [u8; 4],
    port: u16,
    streams: u16,
    from: u16,
) -> u16 {
    use net::steer::{Flow, Proto, Steering};
    let steering = Steering::new(key, cpus);
    let owner = |p: u16| {
        let flow = Flow { src: host, dst: guest, src_port: p, dst_port: port, proto: Proto::Tcp };
        steering.owner_of_hash(steering.hash(&flow))
    };
    let cpus = usize::from(cpus.max(1));
    let (least, most) = (usize::from(streams) / cpus, usize::from(streams).div_ceil(cpus));
    let mut per_cpu = vec![0usize; cpus];
    (from..60000u16.saturating_sub(streams))
        .find(|&p| {
            per_cpu.iter_mut().for_each(|n| *n = 0);
            (0..streams).for_each(|i| per_cpu[usize::from(owner(p + i)) % cpus] += 1);
            per_cpu.iter().all(|&n| (least..=most).contains(&n))
        })
        .unwrap_or(from)
}

/// 80 hex digits (a `steer-key=` boot option's value) as 40 bytes.
pub fn kernel_key(hex: &str) -> Option<[u8; 40]> {
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| hex.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect::<Option<_>>()?;
    bytes.try_into().ok()
}

/// `flows` UDP flows (distinct source and destination ports), `per_flow`
/// datagrams each, to `addr`. The guest has no listener: the point is which
/// receive queue each flow lands on.
pub fn udp_flows(netns: &str, addr: &str, flows: u16, per_flow: u16) -> Result<String, String> {
    let script = format!(
        "import socket, time\n\
         for i in range({flows}):\n\
         \x20   s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         \x20   s.bind(('0.0.0.0', 40000 + i))\n\
         \x20   for _ in range({per_flow}):\n\
         \x20       s.sendto(b'mqnet-flow' * 6, ('{addr}', 20000 + i))\n\
         \x20       time.sleep(0.0005)\n\
         \x20   s.close()\n"
    );
    let out =
        in_netns(netns, "python3").args(["-c", &script]).output().map_err(|e| format!("could not run python3: {e}"))?;
    if !out.status.success() {
        return Err(format!("UDP sender failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(format!("{} datagrams on {flows} flows", flows as u32 * per_flow as u32))
}

/// One `GET /metrics` from the guest's Prometheus endpoint (port 9100),
/// with a 5 s timeout: `status N` and then the body.
pub fn metrics_scrape(netns: &str, addr: &str) -> Result<String, String> {
    let script = format!(
        "import urllib.request, urllib.error, sys\n\
         try:\n\
         \x20   r = urllib.request.urlopen('http://{addr}:9100/metrics', timeout=5)\n\
         \x20   status, body = r.status, r.read()\n\
         except urllib.error.HTTPError as e:\n\
         \x20   status, body = e.code, e.read()\n\
         print('status', status)\n\
         sys.stdout.write(body.decode('utf-8', 'replace'))\n"
    );
    let out =
        in_netns(netns, "python3").args(["-c", &script]).output().map_err(|e| format!("could not run python3: {e}"))?;
    if !out.status.success() {
        return Err(format!("metrics scrape failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One sample of the guest's metrics: `mqnet_NAME{cpu="N",...} VALUE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricSample {
    /// With its `mqnet_` prefix.
    pub name: String,
    /// The vCPU (its `cpu` label).
    pub cpu: u32,
    pub value: u64,
}

/// Parses a scrape of [`metrics_scrape`] (`status N` then the body): it
/// must have status 200, and every line must be a comment or a sample
/// `mqnet_NAME{labels} VALUE` whose labels name its vCPU.
pub fn parse_metrics(scrape: &str) -> Result<Vec<MetricSample>, String> {
    let mut lines = scrape.lines();
    match lines.next().map(str::trim) {
        Some("status 200") => {}
        other => return Err(format!("GET /metrics answered {other:?}, not status 200")),
    }
    let sample = |line: &str| {
        let (name, rest) = line.split_once('{')?;
        let (labels, value) = rest.split_once("} ")?;
        if !name.starts_with("mqnet_") || labels.contains('}') {
            return None;
        }
        let cpu = labels.split(',').find_map(|l| l.strip_prefix("cpu=\"")?.strip_suffix('"')?.parse().ok())?;
        Some(MetricSample { name: name.to_string(), cpu, value: value.trim().parse().ok()? })
    };
    lines
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| sample(l).ok_or_else(|| format!("not a metrics sample: {l:?}")))
        .collect()
}

/// Sends one broadcast ARP request for `guest` out of `tap` (sender: the
/// tap's own MAC and `host`), then listens for `listen` and counts the ARP
/// replies whose sender is `guest`: one frame out, a finite window. Prints
/// each reply's sender MAC and `arp replies N`.
pub fn arp_probe(netns: &str, tap: &str, host: Ipv4Addr, guest: Ipv4Addr, listen: Duration) -> Result<String, String> {
    let script = format!(
        "import socket, struct, time\n\
         host, guest = socket.inet_aton('{host}'), socket.inet_aton('{guest}')\n\
         s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))\n\
         s.bind(('{tap}', 0x0806))\n\
         mac = s.getsockname()[4]\n\
         request = struct.pack('!HHBBH', 1, 0x0800, 6, 4, 1) + mac + host + bytes(6) + guest\n\
         s.send(b'\\xff' * 6 + mac + b'\\x08\\x06' + request)\n\
         replies = 0\n\
         end = time.monotonic() + {listen}\n\
         while (left := end - time.monotonic()) > 0:\n\
         \x20   s.settimeout(left)\n\
         \x20   try:\n\
         \x20       frame, addr = s.recvfrom(2048)\n\
         \x20   except socket.timeout:\n\
         \x20       break\n\
         \x20   if addr[2] == socket.PACKET_OUTGOING or len(frame) < 42:\n\
         \x20       continue\n\
         \x20   if frame[12:14] == b'\\x08\\x06' and frame[20:22] == b'\\x00\\x02' and frame[28:32] == guest:\n\
         \x20       replies += 1\n\
         \x20       print('reply from', frame[22:28].hex(':'))\n\
         print('arp replies', replies)\n",
        listen = listen.as_secs_f64()
    );
    let out =
        in_netns(netns, "python3").args(["-c", &script]).output().map_err(|e| format!("could not run python3: {e}"))?;
    if !out.status.success() {
        return Err(format!("ARP probe failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The `arp replies N` count that [`arp_probe`] printed.
pub fn parse_arp_replies(out: &str) -> Option<u32> {
    out.lines().find_map(|l| l.strip_prefix("arp replies ")?.trim().parse().ok())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// How many of the streams from 10.99.0.1:`port` on (`streams` of
    /// them, to 10.99.0.2:5201) each of `cpus` vCPUs owns, under the boot
    /// tests' key.
    pub(crate) fn owners(cpus: u16, port: u16, streams: u16) -> Vec<usize> {
        owners_of(cpus, (0..streams).map(|i| port + i), 5201)
    }

    /// How many of the TCP flows from 10.99.0.1:`ports` to
    /// 10.99.0.2:`dst_port` each of `cpus` vCPUs owns, under the boot
    /// tests' key.
    pub(crate) fn owners_of(cpus: u16, ports: impl Iterator<Item = u16>, dst_port: u16) -> Vec<usize> {
        let key = kernel_key(crate::boot_tests::TEST_STEER_KEY).unwrap();
        let s = net::steer::Steering::new(key, cpus);
        let mut per = vec![0; cpus as usize];
        for src_port in ports {
            let flow = net::steer::Flow {
                src: [10, 99, 0, 1],
                dst: [10, 99, 0, 2],
                src_port,
                dst_port,
                proto: net::steer::Proto::Tcp,
            };
            per[s.owner_of_hash(s.hash(&flow)) as usize] += 1;
        }
        per
    }

    #[test]
    fn spread_ports_share_streams_out_evenly() {
        let key = kernel_key(crate::boot_tests::TEST_STEER_KEY).unwrap();
        for (cpus, streams, want) in
            [(2, 2, vec![1, 1]), (2, 8, vec![4, 4]), (2, 3, vec![1, 2]), (4, 8, vec![2, 2, 2, 2]), (1, 4, vec![4])]
        {
            let port = spread_ports(key, cpus, [10, 99, 0, 1], [10, 99, 0, 2], 5201, streams, 20000);
            assert!(port >= 20000);
            let mut got = owners(cpus, port, streams);
            got.sort_unstable();
            assert_eq!(got, want, "{streams} streams on {cpus} vCPUs from port {port}");
        }
        assert_eq!(kernel_key("6d5a"), None);
        assert_eq!(kernel_key(&"zz".repeat(40)), None);
    }

    const OUT: &str = "PING 10.99.0.2 (10.99.0.2) 56(84) bytes of data.
64 bytes from 10.99.0.2: icmp_seq=1 ttl=64 time=3.26 ms
64 bytes from 10.99.0.2: icmp_seq=2 ttl=64 time=0.555 ms
64 bytes from 10.99.0.2: icmp_seq=3 ttl=64 time=0.603 ms

--- 10.99.0.2 ping statistics ---
4 packets transmitted, 3 received, 25% packet loss, time 816ms
rtt min/avg/max/mdev = 0.555/1.472/3.260/1.264 ms
";

    #[test]
    fn ping_output_is_parsed() {
        let r = parse_ping(OUT);
        assert_eq!((r.sent, r.received), (4, 3));
        assert_eq!(r.rtts_ms, [3.26, 0.555, 0.603]);
        assert_eq!((r.time_ms, r.lost()), (Some(816), 1));
        assert!(r.damaged.is_empty());
        assert_eq!(parse_ping(""), PingResult::default());
    }

    #[test]
    fn flood_summaries_are_parsed() {
        let r = parse_ping(
            "PING 10.99.0.2 (10.99.0.2) 56(84) bytes of data.\n\n--- 10.99.0.2 ping statistics ---\n\
             40031 packets transmitted, 40000 received, 0.0774% packet loss, time 1843ms\n\
             rtt min/avg/max/mdev = 0.021/0.043/1.200/0.010 ms, pipe 32, ipg/ewma 0.046/0.040 ms\n",
        );
        assert_eq!((r.sent, r.received, r.lost(), r.time_ms, r.errors), (40031, 40000, 31, Some(1843), 0));
        assert!(r.rtts_ms.is_empty());
        // A flood that ran into its deadline, with errors reported.
        let r =
            parse_ping("19332 packets transmitted, 17207 received, +4 errors, 10.9921% packet loss, time 37585ms\n");
        assert_eq!((r.sent, r.received, r.lost(), r.time_ms, r.errors), (19332, 17207, 2125, Some(37585), 4));
    }

    #[test]
    fn damaged_replies_are_found() {
        let out = "4008 bytes from 10.99.0.2: icmp_seq=1 ttl=64 time=1.1 ms
4008 bytes from 10.99.0.2: icmp_seq=2 ttl=64 time=1.0 ms
wrong data byte #2000 should be 0xd0 but was 0x0
#16\td0 d1 d2
4008 bytes from 10.99.0.2: icmp_seq=3 ttl=64 time=1.0 ms (BAD CHECKSUM!)
1500 bytes from 10.99.0.2: icmp_seq=4 ttl=64 (truncated)
";
        let r = parse_ping(out);
        assert_eq!(r.damaged.len(), 3, "{:?}", r.damaged);
        assert!(r.damaged[0].starts_with("wrong data byte #2000"));
        assert!(parse_ping(OUT).damaged.is_empty());
    }

    #[test]
    fn transcripts_are_split_into_sections() {
        let t =
            [section("ping", OUT), section("empty", ""), section("udp flows", "128 datagrams on 32 flows")].concat();
        assert_eq!(find_section(&t, "ping").map(|p| parse_ping(&p).sent), Some(4));
        assert_eq!(find_section(&t, "empty").as_deref(), Some("\n"));
        assert_eq!(find_section(&t, "udp flows").as_deref(), Some("128 datagrams on 32 flows\n"));
        assert_eq!(find_section(&t, "flood -s 56"), None);
        assert_eq!(find_section(&t, "pin"), None, "whole names only");
    }

    #[test]
    fn tcp_loads_run_this_executable_inside_the_namespace() {
        let args = tcp_load_args(Mode::Echo, "10.99.0.2", 7, 64, 1 << 20, Duration::from_secs(240));
        assert_eq!(
            args.join(" "),
            "tcp-load echo --addr 10.99.0.2 --port 7 --connections 64 --bytes 1048576 --timeout-secs 240.0"
        );
        let cmd = in_netns("mqnet-test", "/t/debug/xtask");
        let words: Vec<_> = std::iter::once(cmd.get_program()).chain(cmd.get_args()).collect();
        assert_eq!(words, ["ip", "netns", "exec", "mqnet-test", "/t/debug/xtask"]);
        // The arguments parse as the hidden subcommand's.
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from(std::iter::once("xtask".to_string()).chain(args)).unwrap();
        let crate::cli::Cmd::TcpLoad(t) = cli.command else { panic!() };
        assert_eq!((t.connections, t.bytes, t.port, t.timeout_secs), (64, 1 << 20, Some(7), Duration::from_secs(240)));
        let args = tcp_load_args(Mode::Discard, "10.99.0.2", 9, 4, 100 << 20, Duration::from_millis(120_500));
        assert_eq!(args[1], "discard");
        assert_eq!(args.last().unwrap(), "120.5");
    }

    #[test]
    fn rr_loads_run_this_executable_too() {
        let shape = RrShape { request: 32, response: 4096, time: Duration::from_secs(2) };
        let args = rr_args("10.99.0.2", 5202, 8, &shape);
        assert_eq!(
            args.join(" "),
            "rr --addr 10.99.0.2 --port 5202 --connections 8 --request 32 --response 4096 --time 2.000"
        );
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from(std::iter::once("xtask".to_string()).chain(args)).unwrap();
        let crate::cli::Cmd::Rr(a) = cli.command else { panic!() };
        assert_eq!((a.port, a.connections, a.shape), (5202, 8, shape));
        assert_eq!(rr_limit(Duration::from_secs(2)), Duration::from_secs(2 + 20 + 10));
    }

    #[test]
    fn bounded_commands_are_killed_at_their_limit() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2"]);
        let (status, out, err) = run_bounded(cmd, Duration::from_secs(10)).unwrap();
        assert_eq!((status.as_str(), out.as_str(), err.as_str()), ("exit status: 0", "out\n", "err\n"));
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let started = Instant::now();
        let (status, _, _) = run_bounded(cmd, Duration::from_millis(200)).unwrap();
        assert_eq!(status, "killed after 0.2 s");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(run_bounded(Command::new("/nonexistent/program"), Duration::from_secs(1)).is_err());
        let (mut ticks, mut done) = (0, 0);
        let mut cmd = Command::new("sleep");
        cmd.arg("0.2");
        let mut count = |end: bool| {
            if end {
                done += 1;
            } else {
                ticks += 1;
            }
            true
        };
        run_bounded_ticking(cmd, Duration::from_secs(10), &mut count).unwrap();
        assert!(ticks >= 5, "ticks every 20 ms or so: {ticks}");
        assert_eq!(done, 1);
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let started = Instant::now();
        let (status, _, _) = run_bounded_ticking(cmd, Duration::from_secs(60), &mut |_| false).unwrap();
        assert_eq!(status, "stopped");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn metrics_samples_are_parsed_with_their_vcpu() {
        let scrape = "status 200\n# HELP mqnet_rx_packets x\n# TYPE mqnet_rx_packets counter\n\
                      mqnet_rx_packets{cpu=\"0\",rxq=\"0\",txq=\"1\"} 12\nmqnet_cpu_busy_ns{cpu=\"3\"} 99\n\n";
        let m = parse_metrics(scrape).unwrap();
        assert_eq!(
            m,
            [
                MetricSample { name: "mqnet_rx_packets".into(), cpu: 0, value: 12 },
                MetricSample { name: "mqnet_cpu_busy_ns".into(), cpu: 3, value: 99 },
            ]
        );
        assert_eq!(parse_metrics("status 200\n"), Ok(vec![]));
        assert!(parse_metrics("status 500\n").unwrap_err().contains("not status 200"));
        for bad in ["mqnet_x{rxq=\"0\"} 1", "other{cpu=\"0\"} 1", "mqnet_x{cpu=\"0\"} -1", "mqnet_x 1"] {
            let err = parse_metrics(&format!("status 200\n{bad}\n")).unwrap_err();
            assert!(err.contains("not a metrics sample"), "{bad}: {err}");
        }
    }

    #[test]
    fn arp_reply_counts_are_parsed() {
        assert_eq!(parse_arp_replies("reply from 52:54:00:12:34:56\narp replies 4\n"), Some(4));
        let t = section("arp", "reply from 52:54:00:12:34:56\narp replies 1\n");
        assert_eq!(find_section(&t, "arp").as_deref().and_then(parse_arp_replies), Some(1));
        assert_eq!(parse_arp_replies("arp replies 0"), Some(0));
        assert_eq!(parse_arp_replies("Traceback (most recent call last):"), None);
    }
}
