//! The `net-raw-*` boot tests: the guest in raw mode (`raw=`), the host
//! side through `xtask raw-load` inside the case's namespace, and the
//! accounting between them, exact to the frame: the tap's own counters
//! (/sys/class/net, `tx` towards the guest) say what reached QEMU and what
//! the tap dropped, the guest's last `raw-stats:` lines what it received,
//! sent and dropped. No timing is judged.
//!
//! - rxonly: [`FRAMES`] frames of [`FLOWS`] UDP flows; every one the tap
//!   did not drop is counted by the guest (received + drops = what the tap
//!   passed on), nothing is transmitted, every queue pair received.
//! - txonly: `raw-count` frames per pair after `raw-delay` (the host's
//!   counter listens by then); the host counts every one of them, per
//!   pair, well-formed, and so does the tap.
//! - macswap: [`FRAMES`] frames with at most [`WINDOW`] in flight; every
//!   one comes back once with its MAC addresses swapped, on every pair.
//!
//! Before rxonly and macswap the tap's IPv6 is turned off (inside the
//! namespace) and the host waits until it has stopped sending on its own
//! (router solicitations, MLD reports), so that nothing but the test's
//! frames moves while it counts; the guest's counters are then taken from
//! a report in that quiet time ([`BASELINE_MARGIN`] before the load) to
//! its last. (A frame the tap hands QEMU while the driver is still being
//! set up can be dropped by QEMU unseen, so totals since boot may differ.)

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use boot::netns::TapNetwork;
use boot::runner::{Line, RunReport};
use kernel::raw::{ParsedStats, RawMode, COUNT_REACHED};
use serde_json::Value;

use crate::rawload::{field, run_in, TapCounters};
use crate::traffic::{find_section, section};

/// Frames the host sends (rxonly, macswap).
pub const FRAMES: u64 = 20_000;
/// Flows they spread over.
pub const FLOWS: u16 = 64;
/// macswap: frames in flight at most.
pub const WINDOW: u32 = 64;
/// txonly: `raw-count` of the case (per pair) and its frame size.
pub const TXONLY_COUNT: u64 = 20_000;
/// How long a step may run.
const STEP_TIME: Duration = Duration::from_secs(60);
const STEP: &str = "raw-load";
const QUIET: &str = "quiet tap";
const START: &str = "load starts";
/// The guest's counters before a load come from its last report at least
/// this long before the load started (inside the quiet time, so that a
/// report just after the start cannot count as before it).
pub const BASELINE_MARGIN: Duration = Duration::from_millis(500);

/// Each CPU's `raw-stats:` reports, with when they arrived.
pub fn raw_reports(lines: &[Line]) -> Vec<(Duration, ParsedStats)> {
    lines.iter().filter_map(|l| Some((l.at, ParsedStats::parse(&l.text)?))).collect()
}

/// Each CPU's last report.
pub fn last_raw_stats(lines: &[Line]) -> BTreeMap<u32, ParsedStats> {
    raw_reports(lines).into_iter().map(|(_, s)| (s.cpu, s)).collect()
}

/// Reads one of the tap's counters from inside the namespace.
fn tap_counter(netns: &str, tap: &str, name: &str) -> Result<u64, String> {
    let out = crate::traffic::in_netns(netns, "cat")
        .arg(format!("/sys/class/net/{tap}/statistics/{name}"))
        .output()
        .map_err(|e| format!("could not read the tap's {name}: {e}"))?;
    String::from_utf8_lossy(&out.stdout).trim().parse().map_err(|_| format!("unreadable {name} of {tap}"))
}

/// Turns the tap's IPv6 off and waits (at most 15 s) until it has sent
/// nothing towards the guest for 1.5 s.
fn quiet_tap(tap: &TapNetwork) -> Result<String, String> {
    let status = crate::traffic::in_netns(&tap.netns, "sysctl")
        .args(["-q", "-w", &format!("net.ipv6.conf.{}.disable_ipv6=1", tap.tap)])
        .status()
        .map_err(|e| format!("could not run sysctl: {e}"))?;
    if !status.success() {
        return Err(format!("sysctl disable_ipv6 on {} failed ({status})", tap.tap));
    }
    let (start, mut last, mut since) = (Instant::now(), u64::MAX, Instant::now());
    while start.elapsed() < Duration::from_secs(15) {
        let now = tap_counter(&tap.netns, &tap.tap, "tx_packets")?;
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= Duration::from_millis(1500) {
            return Ok(format!("IPv6 off, quiet at {now} frames after {:.1} s", start.elapsed().as_secs_f64()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("the tap kept sending for 15 s after its IPv6 was turned off ({last} frames)"))
}

fn s(x: impl ToString) -> String {
    x.to_string()
}

/// The host side of a raw case (see the module documentation). Returns the
/// transcript ([`section`]s) for [`check`].
/// `started` is when QEMU was started (about: just before), the clock of
/// the serial lines' times.
pub fn traffic(mode: RawMode, tap: &TapNetwork, started: Instant) -> Result<String, String> {
    let (ns, iface) = (tap.netns.as_str(), tap.tap.clone());
    let common = |time: Duration, settle: f64| {
        vec![s("--iface"), iface.clone(), s("--time"), s(time.as_secs()), s("--settle"), s(settle)]
    };
    let sender = |sub: &str, len: u16| {
        let mut a = vec![s(sub), s("--count"), s(FRAMES), s("--flows"), s(FLOWS), s("--len"), s(len)];
        a.extend(common(STEP_TIME, 1.0));
        a.extend([s("--src-ip"), s(tap.host_addr), s("--dst-ip"), s(tap.guest_addr)]);
        a
    };
    let (mut out, args) = match mode {
        RawMode::RxOnly => (section(QUIET, &quiet_tap(tap)?), sender("send", 128)),
        RawMode::MacSwap => {
            let mut a = sender("pingpong", 100);
            a.extend([s("--window"), s(WINDOW)]);
            (section(QUIET, &quiet_tap(tap)?), a)
        }
        RawMode::TxOnly => {
            let mut a = vec![s("count"), s("--expect"), s(2 * TXONLY_COUNT)];
            a.extend(common(STEP_TIME, 0.5));
            (String::new(), a)
        }
    };
    out += &section(START, &format!("at {:.3} s", started.elapsed().as_secs_f64()));
    let summary = run_in(ns, &args, STEP_TIME + Duration::from_secs(2))?;
    out += &section(STEP, &summary.to_string());
    Ok(out)
}

/// The guest's totals over its pairs.
#[derive(Debug, Default)]
struct Totals {
    rx: u64,
    tx: u64,
    drops: u64,
}

fn totals(last: &BTreeMap<u32, ParsedStats>) -> Totals {
    let sum = |k: &str| last.values().map(|s| s.get(k)).sum::<u64>();
    Totals { rx: sum("rx"), tx: sum("tx"), drops: sum("drops") }
}

/// Each CPU's last report at or before `at` (since QEMU started).
fn reports_before(lines: &[Line], at: Duration) -> BTreeMap<u32, ParsedStats> {
    raw_reports(lines).into_iter().filter(|(t, _)| *t <= at).map(|(_, s)| (s.cpu, s)).collect()
}

/// When the load started, from the transcript.
fn load_start(out: &str) -> Option<Duration> {
    let text = find_section(out, START)?;
    let secs = text.trim().strip_prefix("at ")?.strip_suffix(" s")?.parse::<f64>().ok()?;
    Some(Duration::from_secs_f64(secs))
}

fn per_cpu(last: &BTreeMap<u32, ParsedStats>, key: &str) -> String {
    last.values().map(|s| s.get(key).to_string()).collect::<Vec<_>>().join("/")
}

/// Checks a raw case: `pairs` pairs reporting from their own CPUs, then
/// the accounting of its mode (see the module documentation).
pub fn check(mode: RawMode, report: &RunReport, cpus: u16, pairs: u16) -> Result<(), String> {
    if let Some(l) = report.lines.iter().find(|l| l.text.contains(" WARN ") || l.text.contains(" ERROR ")) {
        return Err(format!("unexpected warning: {}", l.text));
    }
    let ready = format!("{} {mode} on {pairs} queue pairs", kernel::raw::READY);
    if !report.lines.iter().any(|l| l.text.contains(&ready)) {
        return Err(format!("no line containing `{ready}`"));
    }
    let last = last_raw_stats(&report.lines);
    if let Some(cpu) = last.keys().find(|&&c| c >= u32::from(pairs)) {
        return Err(format!("cpu{cpu} owns no queue pair but reported one"));
    }
    for cpu in 0..u32::from(pairs.min(cpus)) {
        let s = last.get(&cpu).ok_or(format!("no raw-stats report from cpu{cpu}"))?;
        if s.mode != mode.name() || s.get("rxq") != u64::from(2 * cpu) {
            return Err(format!(
                "cpu{cpu} reports mode {} on rxq {}, not {mode} on its own pair",
                s.mode,
                s.get("rxq")
            ));
        }
    }
    let out = match &report.action {
        Some(Ok(out)) => out,
        Some(Err(e)) => return Err(format!("host-side traffic failed: {e}")),
        None => return Err("the host-side traffic never ran".into()),
    };
    let host: Value = find_section(out, STEP)
        .and_then(|o| serde_json::from_str(o.trim()).ok())
        .ok_or("no raw-load summary in the transcript")?;
    let tap = |k: &str| TapCounters::from_json(&host[k]).ok_or(format!("no {k} in the raw-load summary"));
    let (before, after) = (tap("tap_before")?, tap("tap_after")?);
    let g = totals(&last);
    // Before the load (rxonly, macswap: in the quiet time).
    let base_cpu = match mode {
        RawMode::TxOnly => BTreeMap::new(),
        _ => {
            let start = load_start(out).ok_or("no load start time in the transcript")?;
            reports_before(&report.lines, start.saturating_sub(BASELINE_MARGIN))
        }
    };
    let base = totals(&base_cpu);
    if g.drops > 0 {
        return Err(format!("the guest dropped {} frames (per cpu {})", g.drops, per_cpu(&last, "drops")));
    }
    let mine =
        |what: &str| format!("{what} (rx per cpu {}, tx per cpu {})", per_cpu(&last, "rx"), per_cpu(&last, "tx"));
    match mode {
        RawMode::RxOnly | RawMode::MacSwap => {
            let sent = field(&host, "sent");
            if sent != FRAMES {
                return Err(format!("raw-load sent {sent} frames, not {FRAMES}"));
            }
            // With the tap quiet, everything it took in this window is ours.
            // A frame the tap drops (its queue full) is counted in its
            // `tx_dropped` and comes back to raw-load as ENOBUFS, which
            // sends it again (a retry): so the tap took each frame sent,
            // plus at most one more per retry.
            let offered = (after.tx_packets + after.tx_dropped) - (before.tx_packets + before.tx_dropped);
            let retries = field(&host, "retries");
            if offered < sent || offered > sent + retries {
                return Err(format!(
                    "the tap took {offered} frames towards the guest while {sent} were sent ({retries} retried)"
                ));
            }
            let (passed, received) = (after.tx_packets - before.tx_packets, g.rx - base.rx);
            if received != passed {
                return Err(mine(&format!(
                    "during the load the guest received {received} frames, the tap passed {passed} to it ({} \
                     dropped by the tap)",
                    after.tx_dropped - before.tx_dropped
                )));
            }
            let before_load = |cpu: &u32| base_cpu.get(cpu).map_or(0, |s| s.get("rx"));
            if let Some((cpu, _)) =
                last.iter().find(|(cpu, s)| s.get("rx") == before_load(cpu) || s.get("rx_irqs") == 0)
            {
                return Err(mine(&format!(
                    "{FLOWS} flows, but cpu{cpu} received none during the load or took no interrupt"
                )));
            }
        }
        RawMode::TxOnly => {}
    }
    match mode {
        RawMode::RxOnly if g.tx != 0 => Err(mine(&format!("rxonly transmitted {} frames", g.tx))),
        RawMode::RxOnly => Ok(()),
        RawMode::MacSwap => {
            if let Some((cpu, s)) = last.iter().find(|(_, s)| s.get("tx") != s.get("rx")) {
                return Err(mine(&format!("cpu{cpu} received {} frames but returned {}", s.get("rx"), s.get("tx"))));
            }
            let (returned, taken) = (g.tx - base.tx, after.rx_packets - before.rx_packets);
            if returned != taken {
                return Err(mine(&format!(
                    "during the load the guest returned {returned} frames, the tap took {taken}"
                )));
            }
            let (back, lost) = (field(&host, "received"), field(&host, "lost"));
            let bad = ["unswapped", "duplicates", "damaged"].map(|k| (k, field(&host, k)));
            if back != FRAMES || lost != 0 || bad.iter().any(|(_, n)| *n > 0) {
                return Err(format!("{back} of {FRAMES} frames came back, {lost} lost, {bad:?}: {host}"));
            }
            Ok(())
        }
        RawMode::TxOnly => {
            for (cpu, s) in &last {
                if s.get("tx") != TXONLY_COUNT {
                    return Err(mine(&format!("cpu{cpu} sent {} frames, not raw-count={TXONLY_COUNT}", s.get("tx"))));
                }
                let reached = format!("raw: cpu{cpu} txonly: {TXONLY_COUNT} frames queued");
                if !report.lines.iter().any(|l| l.text.contains(&reached) && l.text.contains(COUNT_REACHED)) {
                    return Err(format!("no line containing `{reached}` and `{COUNT_REACHED}`"));
                }
            }
            if after.rx_packets != g.tx {
                return Err(mine(&format!("the guest sent {} frames, the tap took {}", g.tx, after.rx_packets)));
            }
            let want: Vec<u64> = vec![TXONLY_COUNT; usize::from(pairs)];
            let got: Vec<u64> =
                host["per_pair"].as_array().map_or(vec![], |a| a.iter().filter_map(Value::as_u64).collect());
            if got != want || field(&host, "damaged") != 0 {
                return Err(format!("the host counted {got:?} txonly frames per pair, expected {want:?}: {host}"));
            }
            Ok(())
        }
    }
}

/// The PASS line's note: per-pair frames, kicks and interrupts, host figures.
pub fn note(report: &RunReport) -> String {
    let last = last_raw_stats(&report.lines);
    let mut parts: Vec<String> = last
        .values()
        .map(|s| {
            format!(
                "cpu{} rx {} tx {} kicks {}/{} irqs {}/{} full {}",
                s.cpu,
                s.get("rx"),
                s.get("tx"),
                s.get("rx_kicks"),
                s.get("tx_kicks"),
                s.get("rx_irqs"),
                s.get("tx_irqs"),
                s.get("full")
            )
        })
        .collect();
    if let Some(Ok(out)) = &report.action {
        if let Some(v) = find_section(out, STEP).and_then(|o| serde_json::from_str::<Value>(o.trim()).ok()) {
            let tap = TapCounters::from_json(&v["tap_after"]).unwrap_or_default();
            parts.push(format!(
                "host sent {} received {} in {:.2} s, tap dropped {} towards the guest",
                field(&v, "sent"),
                field(&v, "received"),
                v["elapsed_s"].as_f64().unwrap_or(0.0),
                tap.tx_dropped
            ));
        }
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use boot::outcome::{Outcome, StopReason};
    use kernel::raw::{RawCounters, StatsLine};
    use serde_json::json;

    fn stats(at: u64, cpu: u32, mode: RawMode, rx: u64, tx: u64) -> Line {
        let c = RawCounters { rx, tx, rx_irqs: u64::from(rx > 0), ..Default::default() };
        let text = format!(
            "[    5.0] cpu{cpu} INFO  {}",
            StatsLine { cpu, mode, rxq: 2 * cpu as u16, txq: 2 * cpu as u16 + 1, counters: &c }
        );
        Line { at: Duration::from_secs(at), text }
    }

    /// The guest's reports: `before` (at 2 s, in the quiet time before
    /// the load starts at 4 s), then `guest` (at 9 s).
    fn run(mode: RawMode, guest: &[(u64, u64)], host: Value, extra: &[&str]) -> Result<(), String> {
        let before: &[(u64, u64)] = if mode == RawMode::MacSwap { &[(2, 2), (1, 1)] } else { &BEFORE };
        run_with(mode, before, guest, host, extra)
    }

    fn run_with(
        mode: RawMode,
        before: &[(u64, u64)],
        guest: &[(u64, u64)],
        host: Value,
        extra: &[&str],
    ) -> Result<(), String> {
        let mut lines =
            vec![Line { at: Duration::ZERO, text: format!("cpu0 INFO  raw mode up: {mode} on 2 queue pairs") }];
        lines.extend(before.iter().enumerate().map(|(cpu, &(rx, tx))| stats(2, cpu as u32, mode, rx, tx)));
        // Just before the start, but within the margin: not a baseline.
        lines.push(stats(4, 0, mode, 9999, 9999));
        lines.extend(guest.iter().enumerate().map(|(cpu, &(rx, tx))| stats(9, cpu as u32, mode, rx, tx)));
        lines.extend(extra.iter().map(|t| Line { at: Duration::ZERO, text: t.to_string() }));
        let report = RunReport {
            outcome: Outcome::Stopped(StopReason::Finished),
            lines,
            stderr: String::new(),
            elapsed: Duration::from_secs(9),
            cpu_sample: None,
            action: Some(Ok(section(START, "at 4.000 s") + &section(STEP, &host.to_string()))),
        };
        check(mode, &report, 2, 2)
    }

    /// Frames each CPU received and sent before the load (the host's chatter).
    const BEFORE: [(u64, u64); 2] = [(2, 0), (1, 0)];

    fn tap(rx: u64, tx: u64, tx_dropped: u64) -> Value {
        TapCounters { rx_packets: rx, tx_packets: tx, rx_dropped: 0, tx_dropped }.json()
    }

    #[test]
    fn rxonly_must_account_for_every_frame_the_tap_passed() {
        // 4 chatter frames before (the guest counted 3: QEMU may lose one
        // while the driver is set up); of 20000 sent, the tap dropped 300.
        let host =
            json!({"tool": "raw-load", "sent": 20000, "tap_before": tap(0, 4, 0), "tap_after": tap(0, 19704, 300)});
        assert_eq!(run(RawMode::RxOnly, &[(9002, 0), (10701, 0)], host.clone(), &[]), Ok(()));
        // The tap dropped 2 and raw-load sent them again (ENOBUFS): 20002
        // offered for 20000 sent, with 2 retries, as seen in a CI run.
        let resent = |retries: u64| {
            json!({"tool": "raw-load", "sent": 20000, "retries": retries, "tap_before": tap(0, 4, 0),
                   "tap_after": tap(0, 20004, 2)})
        };
        assert_eq!(run(RawMode::RxOnly, &[(10002, 0), (10001, 0)], resent(2), &[]), Ok(()));
        let e = run(RawMode::RxOnly, &[(10002, 0), (10001, 0)], resent(1), &[]).unwrap_err();
        assert!(e.contains("the tap took 20002 frames towards the guest while 20000 were sent (1 retried)"), "{e}");
        let e = run(RawMode::RxOnly, &[(9002, 0), (10700, 0)], host.clone(), &[]).unwrap_err();
        assert!(e.contains("the guest received 19699 frames, the tap passed 19700"), "{e}");
        let e = run(RawMode::RxOnly, &[(19702, 0), (1, 0)], host.clone(), &[]).unwrap_err();
        assert!(e.contains("cpu1 received none"), "{e}");
        let e = run(RawMode::RxOnly, &[(9002, 1), (10701, 0)], host.clone(), &[]).unwrap_err();
        assert!(e.contains("rxonly transmitted 1 frames"), "{e}");
        let short =
            json!({"tool": "raw-load", "sent": 19999, "tap_before": tap(0, 4, 0), "tap_after": tap(0, 19704, 299)});
        assert!(run(RawMode::RxOnly, &[(9002, 0), (10701, 0)], short, &[]).unwrap_err().contains("sent 19999"));
        let warned = run(RawMode::RxOnly, &[(9002, 0), (10701, 0)], host, &["[ 1.0] cpu0 WARN  raw: x"]);
        assert!(warned.unwrap_err().contains("unexpected warning"));
    }

    #[test]
    fn txonly_frames_must_all_reach_the_host_per_pair() {
        let n = TXONLY_COUNT;
        let reached: Vec<String> = (0..2)
            .map(|c| format!("cpu{c} INFO  raw: cpu{c} txonly: {n} frames queued on txq 1: {COUNT_REACHED}"))
            .collect();
        let reached: Vec<&str> = reached.iter().map(String::as_str).collect();
        let host = |per: [u64; 2], rx: u64| {
            json!({"tool": "raw-load", "received": per[0] + per[1], "per_pair": per, "damaged": 0,
                   "tap_before": tap(0, 0, 0), "tap_after": tap(rx, 3, 0)})
        };
        assert_eq!(run(RawMode::TxOnly, &[(3, n), (0, n)], host([n, n], 2 * n), &reached), Ok(()));
        let e = run(RawMode::TxOnly, &[(3, n), (0, n)], host([n, n - 1], 2 * n), &reached).unwrap_err();
        assert!(e.contains("per pair"), "{e}");
        let e = run(RawMode::TxOnly, &[(3, n), (0, n)], host([n, n], 2 * n - 1), &reached).unwrap_err();
        assert!(e.contains("the tap took"), "{e}");
        let e = run(RawMode::TxOnly, &[(3, n), (0, n - 1)], host([n, n], 2 * n), &reached).unwrap_err();
        assert!(e.contains("cpu1 sent"), "{e}");
        assert!(run(RawMode::TxOnly, &[(3, n), (0, n)], host([n, n], 2 * n), &reached[..1]).is_err());
    }

    #[test]
    fn macswap_must_return_every_frame_on_its_own_pair() {
        let host = |back: u64, unswapped: u64| {
            json!({"tool": "raw-load", "sent": FRAMES, "received": back, "lost": FRAMES - back,
                   "unswapped": unswapped, "duplicates": 0, "damaged": 0,
                   "tap_before": tap(3, 4, 0), "tap_after": tap(FRAMES + 3, FRAMES + 4, 0)})
        };
        let guest = [(12_002, 12_002), (FRAMES + 1 - 12_000, FRAMES + 1 - 12_000)];
        assert_eq!(run(RawMode::MacSwap, &guest, host(FRAMES, 0), &[]), Ok(()));
        assert!(run(RawMode::MacSwap, &guest, host(FRAMES - 1, 0), &[]).unwrap_err().contains("came back"));
        assert!(run(RawMode::MacSwap, &guest, host(FRAMES, 3), &[]).unwrap_err().contains("unswapped"));
        let uneven = [(12_002, 12_001), (FRAMES + 1 - 12_000, FRAMES + 2 - 12_000)];
        assert!(run(RawMode::MacSwap, &uneven, host(FRAMES, 0), &[]).unwrap_err().contains("cpu0 received 12002"));
        let short = [(12_002, 12_001), (FRAMES + 1 - 12_000, FRAMES + 1 - 12_000)];
        let e = run(RawMode::MacSwap, &short, host(FRAMES, 0), &[]).unwrap_err();
        assert!(e.contains("cpu0 received 12002 frames but returned 12001"), "{e}");
    }

    #[test]
    fn reports_must_come_from_the_pairs_owners() {
        let host =
            json!({"tool": "raw-load", "sent": FRAMES, "tap_before": tap(0, 0, 0), "tap_after": tap(0, FRAMES, 0)});
        let e = run_with(RawMode::RxOnly, &[], &[(FRAMES, 0)], host.clone(), &[]).unwrap_err();
        assert_eq!(e, "no raw-stats report from cpu1");
        let e = run_with(RawMode::RxOnly, &[], &[(1, 0), (1, 0), (FRAMES - 2, 0)], host, &[]).unwrap_err();
        assert_eq!(e, "cpu2 owns no queue pair but reported one");
    }
}
