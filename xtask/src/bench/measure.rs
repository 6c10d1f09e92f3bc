//! The pieces of one measured run: the host's iperf3 command line and its
//! JSON, the CPU QEMU's threads used over the measured interval, the
//! guest's own counters around the run, and what the guest's console says
//! it offers. Pure functions over text and samples; [`super::iperf`] runs
//! the processes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use boot::procstat::{self, ThreadTime};
use serde_json::Value;

use super::matrix::{GuestCounters, HostCpu, PointKey};
use crate::cli::DirectionArg;
use crate::traffic::MetricSample;

/// The guest's iperf3 server port (iperf3's default).
pub const IPERF3_PORT: u16 = 5201;
/// The guest's console line listing the ports of its TCP services
/// (`net: TCP services on ports 7 9 9100 on every vCPU; ...`), printed once
/// every stack is up: the matrix starts then.
pub const SERVICES_LINE: &str = "net: TCP services on ports";
/// The guest's console lines about its own iperf3 client test
/// (`iperf-client=`): `iperf3-client: done: ...` or `iperf3-client: failed:
/// REASON`.
pub const CLIENT_DONE: &str = "iperf3-client: done:";
pub const CLIENT_FAILED: &str = "iperf3-client: failed:";
/// What a guest without a client mode says about `iperf-client=`.
pub const CLIENT_UNKNOWN: &str = "unknown boot option `iperf-client`";
/// How long a guest's client keeps trying to reach the host's server: it
/// starts a second after its stacks are up and makes up to 10 attempts a
/// second apart.
pub const CLIENT_ATTEMPTS: Duration = Duration::from_secs(12);
/// How long the host's iperf3 waits for its control connection.
pub const CONNECT_TIMEOUT_MS: u32 = 5000;

/// The host iperf3's arguments for one run of `key` against `guest`.
pub fn iperf3_args(guest: &str, key: &PointKey, seconds: u32, omit: u32) -> Vec<String> {
    let mut a: Vec<String> =
        ["-c", guest, "-p", &IPERF3_PORT.to_string(), "-P", &key.sessions.to_string()].map(String::from).to_vec();
    if key.direction == DirectionArg::GuestToHost {
        a.push("-R".into());
    }
    if let Some(len) = key.length.0 {
        a.extend(["-l".into(), len.to_string()]);
    }
    a.extend(["-t".into(), seconds.to_string(), "-O".into(), omit.to_string()]);
    a.extend(["--json".into(), "--connect-timeout".into(), CONNECT_TIMEOUT_MS.to_string()]);
    a
}

/// What the host's iperf3 reported.
#[derive(Clone, Debug, PartialEq)]
pub struct Iperf3Result {
    /// end.sum_received.bits_per_second / 10^6: what the receiving side
    /// counted over the measured interval (the omitted seconds left out).
    pub mbit_s: f64,
    /// end.sum_sent.retransmits, when the sender reports them.
    pub retransmits: Option<u64>,
}

/// Parses iperf3's `--json` output. iperf3 3.12 reports its own failures
/// (no server, refused, a server error) in a top-level `error` key, and
/// exits 0 doing so, so that key is checked whatever the exit status.
pub fn parse_iperf3(stdout: &str) -> Result<Iperf3Result, String> {
    let v: Value = serde_json::from_str(stdout.trim()).map_err(|e| {
        let first = stdout.lines().find(|l| !l.trim().is_empty()).unwrap_or("(nothing)");
        format!("iperf3 printed no JSON ({e}): {first}")
    })?;
    if let Some(e) = v.get("error") {
        return Err(format!("iperf3: {}", e.as_str().map_or_else(|| e.to_string(), String::from)));
    }
    let end = &v["end"];
    let bps = end["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or("iperf3's JSON has no end.sum_received.bits_per_second")?;
    Ok(Iperf3Result { mbit_s: bps / 1e6, retransmits: end["sum_sent"]["retransmits"].as_u64() })
}

/// The ports of the guest's TCP services from its [`SERVICES_LINE`]; `None`
/// when `line` is not that line.
pub fn guest_ports(line: &str) -> Option<Vec<u16>> {
    let rest = &line[line.find(SERVICES_LINE)? + SERVICES_LINE.len()..];
    Some(rest.split_whitespace().map_while(|w| w.parse().ok()).collect())
}

/// The boot options that make the guest run one iperf3 client test of
/// `key` against `iperf3 -s` at `host` (the guest sends, as iperf3's client
/// does by default).
pub fn client_cmdline(host: &str, key: &PointKey, seconds: u32, omit: u32) -> String {
    let mut s = format!(
        "iperf-client={host}:{IPERF3_PORT} iperf-parallel={} iperf-time={seconds} iperf-omit={omit} iperf-mode=send",
        key.sessions
    );
    if let Some(len) = key.length.0 {
        s.push_str(&format!(" iperf-len={len}"));
    }
    s
}

/// Why the guest-initiated direction is skipped on a guest that ignored
/// `iperf-client=`.
pub const NO_CLIENT_MODE: &str = "guest has no iperf3 client mode (it ignored iperf-client=)";

/// What the guest's console says about its client test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientReport {
    /// The option was not understood: a guest without a client mode.
    Unsupported,
    Done(String),
    Failed(String),
}

/// The guest's report on its client test, once it has made one.
pub fn client_report<'a>(lines: impl IntoIterator<Item = &'a str>) -> Option<ClientReport> {
    lines.into_iter().find_map(|l| {
        if l.contains(CLIENT_UNKNOWN) {
            Some(ClientReport::Unsupported)
        } else if let Some((_, r)) = l.split_once(CLIENT_DONE) {
            Some(ClientReport::Done(r.trim().to_string()))
        } else {
            l.split_once(CLIENT_FAILED).map(|(_, r)| ClientReport::Failed(r.trim().to_string()))
        }
    })
}

/// QEMU's threads at one moment, `at` since the run started.
#[derive(Clone, Debug, PartialEq)]
pub struct ThreadSample {
    pub at: Duration,
    pub threads: Vec<ThreadTime>,
}

/// QEMU's CPU over the measured interval: the `measured` seconds before
/// the last sample (taken as iperf3 exited: its data phase ends a few
/// round trips earlier), from the sample nearest that interval's start.
/// This leaves out the connection set-up and the omitted seconds. `None`
/// without two distinct samples.
pub fn measured_cpu(samples: &[ThreadSample], measured: Duration) -> Option<HostCpu> {
    let (end, earlier) = samples.split_last()?;
    let want = end.at.saturating_sub(measured);
    let start = earlier.iter().min_by_key(|s| s.at.abs_diff(want))?;
    let window = end.at.checked_sub(start.at).filter(|w| !w.is_zero())?;
    let used = procstat::used_between(&start.threads, &end.threads);
    let pct = |d: Duration| 100.0 * d.as_secs_f64() / window.as_secs_f64();
    Some(HostCpu {
        vcpu_pct: pct(used.vcpu),
        device_pct: pct(used.vhost + used.other),
        vhost_pct: pct(used.vhost),
        window_s: window.as_secs_f64(),
    })
}

/// The guest's counters over a run: the differences between two scrapes,
/// per vCPU (every vCPU of the later scrape). `None` when the later scrape
/// has no vCPU.
pub fn guest_counters(before: &[MetricSample], after: &[MetricSample]) -> Option<GuestCounters> {
    let index = |s: &[MetricSample]| -> BTreeMap<(u32, String), u64> {
        s.iter().map(|m| ((m.cpu, m.name.trim_start_matches("mqnet_").to_string()), m.value)).collect()
    };
    let (b, a) = (index(before), index(after));
    let cpus: BTreeSet<u32> = a.keys().map(|k| k.0).collect();
    if cpus.is_empty() {
        return None;
    }
    let delta = |cpu: u32, name: &str| {
        let key = (cpu, name.to_string());
        a.get(&key).copied().unwrap_or(0).saturating_sub(b.get(&key).copied().unwrap_or(0))
    };
    let sum =
        |names: &[&str]| cpus.iter().flat_map(|&c| names.iter().map(move |n| (c, *n))).map(|(c, n)| delta(c, n)).sum();
    let busy_pct = cpus
        .iter()
        .map(|&c| {
            let (busy, halted) = (delta(c, "cpu_busy_ns"), delta(c, "cpu_halted_ns"));
            if busy + halted == 0 {
                0.0
            } else {
                100.0 * busy as f64 / (busy + halted) as f64
            }
        })
        .collect();
    Some(GuestCounters {
        busy_pct,
        rx_packets: sum(&["rx_packets"]),
        tx_packets: sum(&["tx_packets"]),
        rx_packets_per_vcpu: cpus.iter().map(|&c| delta(c, "rx_packets")).collect(),
        bytes: sum(&["rx_bytes", "tx_bytes"]),
        kicks: sum(&["rx_kicks", "tx_kicks"]),
        queue_irqs: sum(&["rx_irqs", "tx_irqs"]),
        steer_misses: sum(&["steer_misses"]),
        ingress_cycles: sum(&["ingress_cycles"]),
        egress_cycles: sum(&["egress_cycles"]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{MsgLen, VmConfig};

    /// Recorded with iperf3 3.12 against `iperf3 -s` on a namespace's
    /// loopback: `-P 2 -l 512 -t 1 -O 1 --json`, and `-R -t 1 --json`.
    const FORWARD: &str = include_str!("testdata/iperf3-forward.json");
    const REVERSE: &str = include_str!("testdata/iperf3-reverse.json");
    /// The same against a port without a server (iperf3 exits 0).
    const REFUSED: &str = include_str!("testdata/iperf3-refused.json");

    fn key(direction: DirectionArg, length: Option<u32>, sessions: u32) -> PointKey {
        PointKey {
            config: VmConfig { vcpus: 2, queues: 2, offloads: true },
            direction,
            length: MsgLen(length),
            sessions,
        }
    }

    #[test]
    fn iperf3_command_lines() {
        let a = iperf3_args("10.99.0.2", &key(DirectionArg::HostToGuest, Some(512), 4), 5, 1);
        assert_eq!(a.join(" "), "-c 10.99.0.2 -p 5201 -P 4 -l 512 -t 5 -O 1 --json --connect-timeout 5000");
        let a = iperf3_args("10.99.0.2", &key(DirectionArg::GuestToHost, None, 1), 2, 0);
        assert_eq!(a.join(" "), "-c 10.99.0.2 -p 5201 -P 1 -R -t 2 -O 0 --json --connect-timeout 5000");
    }

    #[test]
    fn iperf3_json_gives_the_receivers_rate() {
        let r = parse_iperf3(FORWARD).unwrap();
        assert!((r.mbit_s - 866.419160191602).abs() < 1e-9, "{}", r.mbit_s);
        assert_eq!(r.retransmits, Some(56));
        let r = parse_iperf3(REVERSE).unwrap();
        assert!((r.mbit_s - 19273.56707892674).abs() < 1e-6, "{}", r.mbit_s);
        assert_eq!(r.retransmits, Some(1));
    }

    #[test]
    fn iperf3_errors_are_errors() {
        assert_eq!(parse_iperf3(REFUSED).unwrap_err(), "iperf3: unable to connect to server: Connection refused");
        let e = parse_iperf3("iperf3: error - unable to connect\n").unwrap_err();
        assert!(e.starts_with("iperf3 printed no JSON") && e.ends_with("iperf3: error - unable to connect"), "{e}");
        assert!(parse_iperf3("").unwrap_err().contains("(nothing)"));
        // Killed halfway: the JSON is cut off.
        assert!(parse_iperf3(&FORWARD[..FORWARD.len() / 2]).unwrap_err().starts_with("iperf3 printed no JSON"));
        assert!(parse_iperf3(r#"{"start": {}, "end": {}}"#).unwrap_err().contains("bits_per_second"));
        assert_eq!(parse_iperf3(r#"{"error": 3}"#).unwrap_err(), "iperf3: 3");
    }

    #[test]
    fn the_guests_services() {
        let line =
            "[    1.234567] cpu0 INFO  net: TCP services on ports 7 9 9100 5201 on every vCPU; buffers 256 KiB in";
        assert_eq!(guest_ports(line), Some(vec![7, 9, 9100, 5201]));
        assert_eq!(guest_ports("net: TCP services on ports (none) on every vCPU"), Some(vec![]));
        assert_eq!(guest_ports("net: 2 stacks up"), None);
    }

    #[test]
    fn the_guests_client_test() {
        let k = key(DirectionArg::GuestInitiated, Some(512), 4);
        assert_eq!(
            client_cmdline("10.99.0.1", &k, 5, 1),
            "iperf-client=10.99.0.1:5201 iperf-parallel=4 iperf-time=5 iperf-omit=1 iperf-mode=send iperf-len=512"
        );
        let k = key(DirectionArg::GuestInitiated, None, 1);
        assert_eq!(
            client_cmdline("10.99.0.1", &k, 2, 0),
            "iperf-client=10.99.0.1:5201 iperf-parallel=1 iperf-time=2 iperf-omit=0 iperf-mode=send"
        );
        let done =
            "[    4.1] cpu0 INFO  iperf3-client: done: send to 10.99.0.1:5201, 4 streams on vCPUs [1, 0], 2.00 s";
        assert_eq!(
            client_report(["[ 1.0] cpu0 INFO  net: 2 stacks up,", done]),
            Some(ClientReport::Done("send to 10.99.0.1:5201, 4 streams on vCPUs [1, 0], 2.00 s".into()))
        );
        let failed = "[ 9.0] cpu0 WARN  iperf3-client: failed: send to 10.99.0.1:5201: refused 10 times";
        assert_eq!(
            client_report([failed]),
            Some(ClientReport::Failed("send to 10.99.0.1:5201: refused 10 times".into()))
        );
        let old = "[ 0.2] cpu0 WARN  cmdline: unknown boot option `iperf-client` ignored";
        assert_eq!(client_report([old, done]), Some(ClientReport::Unsupported));
        assert_eq!(client_report(["iperf3-client-json: {}"]), None);
    }

    fn t(tid: u32, name: &str, ms: u64) -> ThreadTime {
        ThreadTime { tid, name: name.into(), cpu: Duration::from_millis(ms) }
    }

    fn at(ms: u64, vcpu: u64, main: u64, vhost: u64) -> ThreadSample {
        ThreadSample {
            at: Duration::from_millis(ms),
            threads: vec![t(1, "qemu-system-x86", main), t(2, "CPU 0/TCG", vcpu), t(3, "vhost-1", vhost)],
        }
    }

    #[test]
    fn cpu_over_the_measured_interval_only() {
        // Set-up and the omitted second (0–1.3 s) are busy on the main
        // thread only; the measured 2 s use 1.5 s of vCPU and 0.5 s of
        // main thread, 0.2 s of vhost.
        let samples =
            [at(0, 0, 0, 0), at(600, 0, 400, 0), at(1250, 0, 900, 0), at(1350, 10, 950, 5), at(3300, 1510, 1450, 205)];
        let c = measured_cpu(&samples, Duration::from_secs(2)).unwrap();
        // The sample nearest 1.3 s is the one at 1.25 s: a 2.05 s window.
        assert!((c.window_s - 2.05).abs() < 1e-9);
        assert!((c.vcpu_pct - 100.0 * 1.51 / 2.05).abs() < 1e-9, "{c:?}");
        assert!((c.device_pct - 100.0 * (0.55 + 0.205) / 2.05).abs() < 1e-9, "{c:?}");
        assert!((c.vhost_pct - 100.0 * 0.205 / 2.05).abs() < 1e-9, "{c:?}");
        assert!((c.total_pct() - c.vcpu_pct - c.device_pct).abs() < 1e-12);
        assert_eq!(measured_cpu(&samples[..1], Duration::from_secs(2)), None);
        assert_eq!(measured_cpu(&[], Duration::from_secs(2)), None);
        // A run shorter than asked for: the whole of it.
        let c = measured_cpu(&samples[3..], Duration::from_secs(10)).unwrap();
        assert!((c.window_s - 1.95).abs() < 1e-9);
    }

    fn m(name: &str, cpu: u32, value: u64) -> MetricSample {
        MetricSample { name: format!("mqnet_{name}"), cpu, value }
    }

    #[test]
    fn guest_counters_are_differences_per_vcpu() {
        let before = [
            m("rx_packets", 0, 100),
            m("rx_packets", 1, 50),
            m("tx_packets", 0, 10),
            m("rx_bytes", 0, 1_000),
            m("tx_bytes", 1, 0),
            m("rx_kicks", 0, 1),
            m("tx_kicks", 1, 2),
            m("rx_irqs", 0, 5),
            m("cpu_busy_ns", 0, 1_000),
            m("cpu_halted_ns", 0, 9_000),
            m("cpu_busy_ns", 1, 0),
            m("cpu_halted_ns", 1, 0),
        ];
        let after = [
            m("rx_packets", 0, 1100),
            m("rx_packets", 1, 550),
            m("tx_packets", 0, 510),
            m("rx_bytes", 0, 1_501_000),
            m("tx_bytes", 1, 500_000),
            m("rx_kicks", 0, 11),
            m("tx_kicks", 1, 42),
            m("rx_irqs", 0, 105),
            m("tx_irqs", 1, 100),
            m("steer_misses", 1, 3),
            m("ingress_cycles", 0, 1_500_000),
            m("ingress_cycles", 1, 1_500_000),
            m("egress_cycles", 1, 250_000),
            m("cpu_busy_ns", 0, 4_000),
            m("cpu_halted_ns", 0, 10_000),
            m("cpu_busy_ns", 1, 0),
            m("cpu_halted_ns", 1, 0),
        ];
        let g = guest_counters(&before, &after).unwrap();
        assert_eq!(g.busy_pct, [75.0, 0.0], "3000 busy of 4000 ns; a vCPU with no time counted: 0");
        assert_eq!((g.rx_packets, g.tx_packets, g.rx_packets_per_vcpu.as_slice()), (1500, 500, &[1000, 500][..]));
        assert_eq!((g.bytes, g.kicks, g.queue_irqs, g.steer_misses), (2_000_000, 50, 200, 3));
        assert_eq!(g.busy_total_pct(), 75.0);
        assert_eq!(g.per_mb(g.rx_packets + g.tx_packets), Some(1000.0));
        assert_eq!((g.rx_cycles_per_packet(), g.tx_cycles_per_packet()), (Some(2000.0), Some(500.0)));
        assert_eq!(guest_counters(&after, &[]), None);
        // A counter that went backwards (a restarted guest) counts 0, not a wrap.
        let g = guest_counters(&after, &before).unwrap();
        assert_eq!((g.rx_packets, g.bytes), (0, 0));
    }
}
