//! `cargo xtask bench raw`: the device path's ceiling, with the guest in
//! raw mode (`raw=`, no TCP/IP stack) and the host on the tap through
//! `xtask raw-load` (AF_PACKET), both inside a namespace this command
//! creates and deletes. One boot per queue count × mode (txonly: × frame
//! size, a boot option); rxonly and macswap run one load per frame size.
//!
//! - rxonly: the host sends `--flows` flows for `--time` seconds (at
//!   `--rate` frames/s, or as fast as the tap takes them); the rate is
//!   what the guest received over the sending time.
//! - txonly: the guest sends from boot on; the host counts for `--time`;
//!   the rate is what the tap took from the guest in that time.
//! - macswap: the host sends without a window; the rate is what came back
//!   (what the tap took from the guest).
//!
//! The guest reports its counters every [`STATS_MS`]; the reports around
//! each load give its own side (received, sent, dropped) and the share of
//! each queue pair. Mbit/s count Ethernet frames without FCS, preamble and
//! gap. Never a pass or fail on speed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use boot::accel::Accel;
use boot::netns::{TapNetwork, MAX_QUEUES};
use boot::runner::Line;
use clap::Args;
use kernel::raw::{RawMode, MAX_LEN, MIN_LEN};
use serde_json::{json, Value};

use super::{with_guest, Guest, Up};
use crate::boot_raw::raw_reports;
use crate::cli::{parse_netns, parse_timeout, AccelArg, BootArg};
use crate::kbuild;
use crate::rawload::{field, run_in, TapCounters};
use crate::run::{say, stop_flag};

/// The guest's counter period during the benchmark.
pub const STATS_MS: u64 = 500;
/// Quiet time before every load and after the last.
const PAUSE: Duration = Duration::from_millis(3 * STATS_MS);

#[derive(Args, Debug, Clone)]
pub struct BenchRawArgs {
    /// Modes, one boot each (txonly: one per frame size).
    #[arg(long, value_delimiter = ',', default_value = "rxonly,txonly,macswap", value_parser = parse_mode)]
    pub mode: Vec<RawMode>,
    /// Frame sizes in bytes without the FCS (60..1514).
    #[arg(long, value_delimiter = ',', default_value = "60,1514",
          value_parser = clap::value_parser!(u16).range(i64::from(MIN_LEN)..=i64::from(MAX_LEN)))]
    pub len: Vec<u16>,
    /// Seconds each load runs.
    #[arg(long, default_value = "3", value_parser = parse_timeout)]
    pub time: Duration,
    /// vCPUs of every boot.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=255))]
    pub smp: u16,
    /// Queue pairs, one set of boots each (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "2",
          value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_QUEUES)))]
    pub queues: Vec<u16>,
    /// UDP flows the host spreads its frames over.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub flows: u16,
    /// Frames per second the host offers (default: as fast as it can).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: Option<u64>,
    /// Offer virtio-net RSS (rss=on,hash=on).
    #[arg(long)]
    pub rss: bool,
    /// Extra kernel boot options for every boot.
    #[arg(long, default_value = "")]
    pub cmdline: String,
    #[arg(long, value_enum, default_value_t = AccelArg::Auto)]
    pub accel: AccelArg,
    /// How every guest is booted (see `run --boot`).
    #[arg(long, value_enum, default_value_t = BootArg::Pvh)]
    pub boot: BootArg,
    /// Network namespace to create (and delete) for the boots.
    #[arg(long, default_value = "mqraw", value_parser = parse_netns)]
    pub netns: String,
}

fn parse_mode(s: &str) -> Result<RawMode, String> {
    RawMode::from_name(s).ok_or_else(|| format!("`{s}`: use rxonly, txonly or macswap"))
}

/// One load as the host saw it.
#[derive(Clone, Debug)]
struct Load {
    len: u16,
    window: (Duration, Duration),
    result: Result<Value, String>,
}

/// The guest's side of a load: per CPU, how much its counters grew.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestSide {
    /// cpu → (rx, tx, drops).
    pub per_cpu: BTreeMap<u32, [u64; 3]>,
}

impl GuestSide {
    pub fn total(&self, i: usize) -> u64 {
        self.per_cpu.values().map(|v| v[i]).sum()
    }

    /// Each CPU's share of counter `i`, `52/48`.
    pub fn shares(&self, i: usize) -> String {
        let total = self.total(i).max(1) as f64;
        self.per_cpu.values().map(|v| format!("{:.0}", v[i] as f64 * 100.0 / total)).collect::<Vec<_>>().join("/")
    }
}

/// Per CPU: its first report at or after `end` minus its last at or before
/// `start` (zero before its first). `None` if some CPU has no report
/// after `end`, or there are none.
pub fn guest_side(lines: &[Line], start: Duration, end: Duration) -> Option<GuestSide> {
    let reports = raw_reports(lines);
    let mut side = GuestSide::default();
    let cpus: std::collections::BTreeSet<u32> = reports.iter().map(|(_, s)| s.cpu).collect();
    for cpu in cpus {
        let value = |s: &kernel::raw::ParsedStats| [s.get("rx"), s.get("tx"), s.get("drops")];
        let mine: Vec<_> = reports.iter().filter(|(_, s)| s.cpu == cpu).collect();
        let before = mine.iter().rev().find(|(at, _)| *at <= start).map_or([0; 3], |(_, s)| value(s));
        let after = value(&mine.iter().find(|(at, _)| *at >= end)?.1);
        side.per_cpu.insert(cpu, [0, 1, 2].map(|i| after[i].saturating_sub(before[i])));
    }
    (!side.per_cpu.is_empty()).then_some(side)
}

/// One row: a mode × queue count × frame size.
#[derive(Clone, Debug)]
pub struct Row {
    pub mode: RawMode,
    pub queues: u16,
    /// Queue pairs the guest used (fewer than `queues` when the device
    /// refused or did not answer VQ_PAIRS_SET in time); `None`: unknown.
    pub pairs: Option<u16>,
    pub len: u16,
    pub host: Result<Value, String>,
    pub guest: Option<GuestSide>,
}

impl Row {
    /// Frames per second the mode delivered (see the module documentation).
    pub fn rate(&self) -> Option<f64> {
        let host = self.host.as_ref().ok()?;
        let secs = host["elapsed_s"].as_f64().filter(|s| *s > 0.0)?;
        let frames = match self.mode {
            RawMode::RxOnly => self.guest.as_ref()?.total(0),
            RawMode::TxOnly | RawMode::MacSwap => self.tap_from_guest()?,
        };
        Some(frames as f64 / secs)
    }

    /// Frames the tap took from the guest during the load. (The host's
    /// AF_PACKET socket may see fewer: the host's stack can drop frames
    /// before they reach it; its own count is `host.received`.)
    fn tap_from_guest(&self) -> Option<u64> {
        let host = self.host.as_ref().ok()?;
        let (b, a) = (TapCounters::from_json(&host["tap_before"])?, TapCounters::from_json(&host["tap_after"])?);
        Some(a.rx_packets.saturating_sub(b.rx_packets))
    }

    pub fn json(&self) -> Value {
        let rate = self.rate();
        let g = self.guest.as_ref();
        let mut v = json!({
            "mode": self.mode.name(),
            "queues": self.queues,
            "pairs_used": self.pairs,
            "len": self.len,
            "frames_per_s": rate,
            "mbit_per_s": rate.map(|r| r * f64::from(self.len) * 8.0 / 1e6),
            "guest_rx": g.map(|g| g.total(0)),
            "guest_tx": g.map(|g| g.total(1)),
            "guest_drops": g.map(|g| g.total(2)),
            "guest_per_cpu": g.map(|g| g.per_cpu.iter().map(|(c, v)| json!({"cpu": c, "rx": v[0], "tx": v[1], "drops": v[2]})).collect::<Vec<_>>()),
        });
        match &self.host {
            Ok(h) => v["host"] = h.clone(),
            Err(e) => v["failure"] = json!(e),
        }
        v
    }
}

/// The table: one row per mode × queues × size.
pub fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:>8} {:>6} {:>5} {:>5} {:>10} {:>10} {:>10} {:>10} {:>9} {:>11} {:>8} {:>12}\n",
        "mode",
        "queues",
        "used",
        "len",
        "host sent",
        "guest rx",
        "guest tx",
        "host rx",
        "tap drop",
        "frames/s",
        "Mbit/s",
        "per queue %"
    );
    let num = |v: Option<u64>| v.map_or("-".to_string(), |n| n.to_string());
    for r in rows {
        let host = r.host.as_ref().ok();
        let tap = host
            .and_then(|h| Some((TapCounters::from_json(&h["tap_before"])?, TapCounters::from_json(&h["tap_after"])?)));
        let (host_sent, host_rx) = match r.mode {
            RawMode::TxOnly => (None, r.tap_from_guest()),
            RawMode::RxOnly => (host.map(|h| field(h, "sent")), None),
            RawMode::MacSwap => (host.map(|h| field(h, "sent")), r.tap_from_guest()),
        };
        let g = r.guest.as_ref();
        let rate = r.rate();
        out.push_str(&format!(
            "{:>8} {:>6} {:>5} {:>5} {:>10} {:>10} {:>10} {:>10} {:>9} {:>11} {:>8} {:>12}\n",
            r.mode.name(),
            r.queues,
            r.pairs.map_or("?".to_string(), |p| p.to_string()),
            r.len,
            num(host_sent),
            num(g.map(|g| g.total(0))),
            num(g.map(|g| g.total(1))),
            num(host_rx),
            num(tap.map(|(b, a)| a.tx_dropped - b.tx_dropped)),
            rate.map_or("-".into(), |r| format!("{r:.0}")),
            rate.map_or("-".into(), |x| format!("{:.1}", x * f64::from(r.len) * 8.0 / 1e6)),
            g.map_or("-".into(), |g| g.shares(if r.mode == RawMode::TxOnly { 1 } else { 0 })),
        ));
    }
    for r in rows {
        if let Err(e) = &r.host {
            out.push_str(&format!("{} queues {} len {}: {e}\n", r.mode.name(), r.queues, r.len));
        }
    }
    out
}

/// The `raw-load` arguments of one load.
fn load_args(a: &BenchRawArgs, tap: &TapNetwork, mode: RawMode, len: u16) -> Vec<String> {
    let s = |x: &dyn ToString| x.to_string();
    let mut v = match mode {
        RawMode::TxOnly => vec![s(&"count")],
        RawMode::RxOnly | RawMode::MacSwap => {
            let mut v = vec![s(if mode == RawMode::RxOnly { &"send" } else { &"pingpong" })];
            v.extend([s(&"--len"), s(&len), s(&"--flows"), s(&a.flows)]);
            v.extend([s(&"--src-ip"), s(&tap.host_addr), s(&"--dst-ip"), s(&tap.guest_addr)]);
            if let Some(rate) = a.rate {
                v.extend([s(&"--rate"), s(&rate)]);
            }
            v
        }
    };
    // txonly: the tap's counters right at the end (the guest keeps sending).
    let settle = if mode == RawMode::TxOnly { "0" } else { "0.5" };
    v.extend([s(&"--iface"), tap.tap.clone(), s(&"--time"), format!("{:.3}", a.time.as_secs_f64())]);
    v.extend([s(&"--settle"), s(&settle)]);
    v
}

/// One boot: `mode` on `queues` pairs, one load per size in `lens`.
fn boot_once(
    a: &BenchRawArgs,
    accel: Accel,
    built: &kbuild::Built,
    (mode, queues, lens): (RawMode, u16, Vec<u16>),
    stop: &Arc<AtomicBool>,
) -> Result<Vec<Row>, String> {
    let mut cmdline = format!("net-stats={STATS_MS} raw={mode}");
    if mode == RawMode::TxOnly {
        cmdline.push_str(&format!(" raw-len={}", lens[0]));
    }
    let guest = Guest {
        netns: &a.netns,
        accel,
        boot: a.boot.into(),
        vcpus: a.smp,
        queues,
        memory_mib: None,
        rss: a.rss,
        vhost: false,
        offloads: true,
        cmdline: format!("{cmdline} {}", a.cmdline),
        ready: kernel::raw::READY,
        ready_means: "reported raw mode up",
        budget: (a.time + crate::rawload::GRACE + PAUSE + Duration::from_secs(1)) * lens.len() as u32,
        then_wait: PAUSE,
        label: format!("{mode}, queues {queues}"),
        say_deleted: true,
    };
    let work = {
        let (stop, a) = (stop.clone(), a.clone());
        move |up: Up| {
            let mut loads = Vec::new();
            for len in lens {
                std::thread::sleep(PAUSE);
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let from = up.since.elapsed();
                let args = load_args(&a, up.tap, mode, len);
                let result = run_in(&up.tap.netns, &args, a.time + Duration::from_secs(1));
                let to = up.since.elapsed();
                match &result {
                    Ok(v) => say!("{mode}, queues {queues}, {len} bytes: {v}"),
                    Err(e) => say!("{mode}, queues {queues}, {len} bytes: {e}"),
                }
                loads.push(Load { len, window: (from, to), result });
            }
            loads
        }
    };
    let (loads, report) = with_guest(&guest, built, stop, &|m| say!("{m}"), work).1?;
    // "raw mode up: MODE on N queue pairs": fewer than asked when the
    // device did not take VQ_PAIRS_SET (the kernel then warns why).
    let pairs = report.find(kernel::raw::READY).and_then(|l| {
        let rest = l.text.split(" on ").nth(1)?;
        rest.split_whitespace().next()?.parse::<u16>().ok()
    });
    if pairs.is_some_and(|p| p < queues.min(a.smp)) {
        say!("{mode}, queues {queues}: the guest uses only {} queue pairs", pairs.unwrap_or(0));
    }
    Ok(loads
        .into_iter()
        .map(|l| Row {
            mode,
            queues,
            pairs,
            len: l.len,
            guest: guest_side(&report.lines, l.window.0, l.window.1),
            host: l.result,
        })
        .collect())
}

/// The boots: per queue count, per mode; txonly once per size.
fn plan(a: &BenchRawArgs) -> Vec<(RawMode, u16, Vec<u16>)> {
    let mut boots = Vec::new();
    for &q in &a.queues {
        for &m in &a.mode {
            match m {
                RawMode::TxOnly => boots.extend(a.len.iter().map(|&l| (m, q, vec![l]))),
                _ => boots.push((m, q, a.len.clone())),
            }
        }
    }
    boots
}

pub fn raw(a: BenchRawArgs) -> Result<i32, String> {
    let (choice, built) = super::prepare("bench raw", &a.netns, a.accel, a.boot.into())?;
    let stop = stop_flag();
    let (rows, boots) = super::each_boot(
        plan(&a),
        &stop,
        |b| json!({"boot": {"mode": b.0.name(), "queues": b.1, "lens": b.2}}),
        |b| boot_once(&a, choice.accel, &built, b, &stop),
    );
    println!();
    println!(
        "raw mode: {} vCPUs, {:.1} s per load, {} flows{}, accelerator {}{}, release kernel (frames/s: rxonly = \
         received by the guest, txonly and macswap = taken by the tap from the guest, host rx likewise)",
        a.smp,
        a.time.as_secs_f64(),
        a.flows,
        a.rate.map_or(String::new(), |r| format!(" at {r} frames/s")),
        choice.accel,
        if a.rss { ", RSS" } else { "" }
    );
    print!("{}", table(&rows));
    let out = json!({
        "benchmark": "raw",
        "kernel": "release",
        "smp": a.smp,
        "rss": a.rss,
        "accel": choice.accel.to_string(),
        "time_s": a.time.as_secs_f64(),
        "flows": a.flows,
        "rate": a.rate,
        "stats_ms": STATS_MS,
        "boots": boots,
        "runs": rows.iter().map(Row::json).collect::<Vec<_>>(),
    });
    let path = super::bench_dir(&built).join("raw.json");
    super::write_out(&path, &(serde_json::to_string_pretty(&out).expect("serialisable") + "\n"))?;
    say!("wrote {}", path.display());
    let complete = boots.iter().all(|b| b["error"].is_null()) && rows.iter().all(|r| r.host.is_ok());
    if !complete {
        say!("some measurements are missing (see above)");
    }
    Ok(if complete { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use kernel::raw::{RawCounters, StatsLine};

    fn args(extra: &[&str]) -> BenchRawArgs {
        let cli = crate::cli::Cli::try_parse_from(["xtask", "bench", "raw"].iter().chain(extra)).unwrap();
        let crate::cli::Cmd::Bench(b) = cli.command else { panic!() };
        let Some(crate::cli::BenchCmd::Raw(r)) = b.bench else { panic!() };
        r
    }

    #[test]
    fn arguments_and_boot_plan() {
        let a = args(&[]);
        assert_eq!(
            (a.mode.clone(), a.len.clone(), a.time),
            (RawMode::ALL.to_vec(), vec![60, 1514], Duration::from_secs(3))
        );
        assert_eq!((a.smp, a.queues.clone(), a.flows, a.netns.as_str()), (2, vec![2], 64, "mqraw"));
        let p = plan(&a);
        assert_eq!(
            p,
            vec![
                (RawMode::RxOnly, 2, vec![60, 1514]),
                (RawMode::TxOnly, 2, vec![60]),
                (RawMode::TxOnly, 2, vec![1514]),
                (RawMode::MacSwap, 2, vec![60, 1514]),
            ]
        );
        let a = args(&["--mode", "macswap", "--queues", "1,4", "--len", "128", "--rate", "100000"]);
        assert_eq!(plan(&a), vec![(RawMode::MacSwap, 1, vec![128]), (RawMode::MacSwap, 4, vec![128])]);
        let tap = TapNetwork::new("mqraw", 4).unwrap();
        assert_eq!(
            load_args(&a, &tap, RawMode::MacSwap, 128).join(" "),
            "pingpong --len 128 --flows 64 --src-ip 10.99.0.1 --dst-ip 10.99.0.2 --rate 100000 --iface mqtap0 \
             --time 3.000 --settle 0.5"
        );
        assert_eq!(load_args(&a, &tap, RawMode::TxOnly, 60).join(" "), "count --iface mqtap0 --time 3.000 --settle 0");
        for bad in [&["--mode", "forward"][..], &["--len", "59"], &["--queues", "17"], &["--time", "0"]] {
            let all = ["xtask", "bench", "raw"].iter().chain(bad);
            assert!(crate::cli::Cli::try_parse_from(all).is_err(), "{bad:?}");
        }
    }

    fn stats(at: f64, cpu: u32, rx: u64, tx: u64) -> Line {
        let c = RawCounters { rx, tx, ..Default::default() };
        let s = StatsLine { cpu, mode: RawMode::MacSwap, rxq: 0, txq: 1, counters: &c };
        Line { at: Duration::from_secs_f64(at), text: format!("[ {at}] cpu{cpu} INFO  {s}") }
    }

    #[test]
    fn the_guest_side_is_taken_around_each_load_per_cpu() {
        let s = Duration::from_secs_f64;
        let lines = vec![
            stats(1.0, 0, 10, 10),
            stats(1.0, 1, 0, 0),
            stats(2.0, 0, 500, 500),
            stats(3.5, 0, 1010, 1010),
            stats(3.5, 1, 3000, 2990),
        ];
        let g = guest_side(&lines, s(1.2), s(3.1)).unwrap();
        assert_eq!(g.per_cpu[&0], [1000, 1000, 0]);
        assert_eq!(g.per_cpu[&1], [3000, 2990, 0]);
        assert_eq!((g.total(0), g.shares(0)), (4000, "25/75".to_string()));
        assert_eq!(guest_side(&lines, s(1.2), s(4.0)), None, "no report after the end");
    }

    #[test]
    fn rates_follow_each_mode_and_the_table_shows_every_row() {
        let tap = |rx: u64, tx: u64, drop: u64| {
            TapCounters { rx_packets: rx, tx_packets: tx, rx_dropped: 0, tx_dropped: drop }.json()
        };
        let guest = GuestSide { per_cpu: BTreeMap::from([(0, [600, 0, 0]), (1, [400, 0, 0])]) };
        let rows = vec![
            Row {
                mode: RawMode::RxOnly,
                queues: 2,
                pairs: Some(2),
                len: 60,
                host: Ok(
                    json!({"sent": 5000, "elapsed_s": 2.0, "tap_before": tap(0, 0, 0), "tap_after": tap(0, 1000, 4000)}),
                ),
                guest: Some(guest.clone()),
            },
            Row {
                mode: RawMode::TxOnly,
                queues: 2,
                pairs: Some(1),
                len: 1514,
                host: Ok(
                    json!({"received": 10, "elapsed_s": 4.0, "tap_before": tap(100, 0, 0), "tap_after": tap(4100, 0, 0)}),
                ),
                guest: None,
            },
            Row {
                mode: RawMode::MacSwap,
                queues: 2,
                pairs: None,
                len: 60,
                host: Err("no summary".into()),
                guest: None,
            },
        ];
        assert_eq!(rows[0].rate(), Some(500.0));
        assert_eq!(rows[1].rate(), Some(1000.0));
        assert_eq!(rows[2].rate(), None);
        let t = table(&rows);
        let lines: Vec<Vec<&str>> = t.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(lines[1], ["rxonly", "2", "2", "60", "5000", "1000", "0", "-", "4000", "500", "0.2", "60/40"]);
        assert_eq!(lines[2], ["txonly", "2", "1", "1514", "-", "-", "-", "4000", "0", "1000", "12.1", "-"]);
        assert_eq!(lines[3][..5], ["macswap", "2", "?", "60", "-"]);
        assert_eq!(t.lines().last(), Some("macswap queues 2 len 60: no summary"));
        let j = rows[0].json();
        assert_eq!((j["frames_per_s"].as_f64(), j["guest_rx"].as_u64()), (Some(500.0), Some(1000)));
        assert_eq!(rows[2].json()["failure"], "no summary");
    }
}
