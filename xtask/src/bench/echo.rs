//! `bench echo` boots the release kernel with `--smp` vCPUs (4) once per
//! queue count, inside a network namespace it creates and deletes (the
//! network rule: every packet stays in there), and once the guest's stacks
//! are up runs one echo load per connection count from the host side, this
//! executable's `tcp-load` under `ip netns exec`, exactly as the TCP boot
//! tests do. Every load echoes about the same volume, `--bytes` in all
//! split evenly over its connections (16 MiB: 1 × 16 MiB, 4 × 4 MiB,
//! 16 × 1 MiB), so that the rates compare. The guest reports its counters
//! every [`STATS_MS`]; the loads are [`PAUSE`] apart so that the reports
//! just before and just after a load bracket it alone, and the differences
//! give the guest's figures per load: transmit kicks and receive interrupts
//! per 1000 packets, frames that reached a vCPU other than their flow's
//! owner (misses) and inbox drops.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use boot::accel::Accel;
use boot::runner::Line;
use serde_json::{json, Value};

use super::{bench_dir, each_load, prepare, with_guest, write_out, Up};
use crate::boot_tests::{parse_net_cpu, parse_net_stats};
use crate::cli::BenchEchoArgs;
use crate::kbuild;
use crate::run::{say, stop_flag};
use crate::tcpload::{size, LoadSummary, Mode, ECHO_PORT};
use crate::traffic;

/// The guest's counter period (`net-stats=`) during a benchmark.
pub const STATS_MS: u64 = 500;
/// Quiet time before every load (and after the last): three counter
/// periods, so that a report falls between two loads.
pub const PAUSE: Duration = Duration::from_millis(3 * STATS_MS);

/// One load of a benchmark boot, as the host side saw it.
#[derive(Clone, Debug)]
struct Load {
    connections: u32,
    /// Its start and end since QEMU started (about: since just before).
    window: (Duration, Duration),
    result: Result<LoadSummary, String>,
}

/// The guest's counters summed over its vCPUs, over one load.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counted {
    pub rx_packets: u64,
    pub rx_irqs: u64,
    pub tx_packets: u64,
    pub tx_kicks: u64,
    /// `None` when the kernel printed no `net-cpu:` reports.
    pub misses: Option<u64>,
    pub inbox_in: Option<u64>,
    pub inbox_drops: Option<u64>,
}

/// One row of the table: a queue count × a connection count.
#[derive(Clone, Debug)]
pub struct Row {
    pub queues: u16,
    pub connections: u32,
    pub bytes_per_connection: u64,
    pub result: Result<LoadSummary, String>,
    pub counted: Option<Counted>,
}

/// Bytes per connection when a load of `connections` moves `total` in all.
pub fn bytes_per_connection(total: u64, connections: u32) -> u64 {
    (total / u64::from(connections.max(1))).max(1)
}

/// The sum over vCPUs of how much each counter grew over `[start, end]`:
/// per vCPU, its first report at or after `end` minus its last report at
/// or before `start` (zero before its first). `None` when there are no
/// reports, or some vCPU has none after `end`.
fn grown<const N: usize>(reports: &[(u32, Duration, [u64; N])], start: Duration, end: Duration) -> Option<[u64; N]> {
    let cpus: BTreeSet<u32> = reports.iter().map(|r| r.0).collect();
    if cpus.is_empty() {
        return None;
    }
    let mut total = [0u64; N];
    for cpu in cpus {
        let mine = || reports.iter().filter(move |r| r.0 == cpu);
        let before = mine().rfind(|r| r.1 <= start).map_or([0; N], |r| r.2);
        let after = mine().find(|r| r.1 >= end)?.2;
        for (t, (a, b)) in total.iter_mut().zip(after.iter().zip(before)) {
            *t += a.saturating_sub(b);
        }
    }
    Some(total)
}

/// The guest's counters over `[start, end]` from its `net-stats:` and
/// `net-cpu:` reports.
pub fn count(lines: &[Line], start: Duration, end: Duration) -> Option<Counted> {
    let stats: Vec<(u32, Duration, [u64; 4])> = lines
        .iter()
        .filter_map(|l| {
            let s = parse_net_stats(&l.text)?;
            Some((s.cpu, l.at, [s.rx.get("packets"), s.rx.get("irqs"), s.tx.get("packets"), s.tx.get("kicks")]))
        })
        .collect();
    let cpus: Vec<(u32, Duration, [u64; 3])> = lines
        .iter()
        .filter_map(|l| {
            let (cpu, c) = parse_net_cpu(&l.text)?;
            Some((cpu, l.at, [c.get("misses"), c.get("inbox_in"), c.get("inbox_drops")]))
        })
        .collect();
    let [rx_packets, rx_irqs, tx_packets, tx_kicks] = grown(&stats, start, end)?;
    let steer = grown(&cpus, start, end);
    Some(Counted {
        rx_packets,
        rx_irqs,
        tx_packets,
        tx_kicks,
        misses: steer.map(|s| s[0]),
        inbox_in: steer.map(|s| s[1]),
        inbox_drops: steer.map(|s| s[2]),
    })
}

/// `n` per 1000 of `of`, if there were any.
fn per_1000(n: u64, of: u64) -> Option<f64> {
    (of > 0).then(|| n as f64 * 1000.0 / of as f64)
}

/// The table: one row per queue count × connection count.
pub fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:>6} {:>5} {:>9} {:>9} {:>7} {:>6} {:>9} {:>12} {:>11} {:>11} {:>11}\n",
        "queues",
        "conns",
        "per conn",
        "MB/s",
        "s",
        "errors",
        "rx pkts",
        "tx kicks/1k",
        "rx irqs/1k",
        "misses/1k",
        "inbox drops"
    );
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    for r in rows {
        let (rate, secs, errors) = match &r.result {
            Ok(s) => (format!("{:.2}", s.mb_per_s), format!("{:.2}", s.elapsed_s), s.errors.to_string()),
            Err(_) => ("-".into(), "-".into(), "failed".into()),
        };
        let c = r.counted.clone().unwrap_or_default();
        let known = r.counted.is_some();
        out.push_str(&format!(
            "{:>6} {:>5} {:>9} {:>9} {:>7} {:>6} {:>9} {:>12} {:>11} {:>11} {:>11}\n",
            r.queues,
            r.connections,
            size(r.bytes_per_connection),
            rate,
            secs,
            errors,
            if known { c.rx_packets.to_string() } else { "-".into() },
            opt(per_1000(c.tx_kicks, c.tx_packets)),
            opt(per_1000(c.rx_irqs, c.rx_packets)),
            opt(c.misses.and_then(|m| per_1000(m, c.rx_packets))),
            c.inbox_drops.map_or("-".into(), |d| d.to_string()),
        ));
    }
    for r in rows {
        match &r.result {
            Err(e) => out.push_str(&format!("queues {} × {} conns: {e}\n", r.queues, r.connections)),
            Ok(s) if !s.error_list.is_empty() => out.push_str(&format!(
                "queues {} × {} conns: {} errors, first: {}\n",
                r.queues, r.connections, s.errors, s.error_list[0]
            )),
            Ok(_) => {}
        }
    }
    out
}

/// A row as JSON.
pub fn row_json(r: &Row) -> Value {
    let c = r.counted.clone();
    let get = |f: fn(&Counted) -> u64| c.as_ref().map(f);
    let ratio = |n: Option<u64>, of: Option<u64>| n.zip(of).and_then(|(n, of)| per_1000(n, of));
    let mut v = json!({
        "queues": r.queues,
        "connections": r.connections,
        "bytes_per_connection": r.bytes_per_connection,
        "rx_packets": get(|c| c.rx_packets),
        "tx_packets": get(|c| c.tx_packets),
        "tx_kicks": get(|c| c.tx_kicks),
        "rx_irqs": get(|c| c.rx_irqs),
        "tx_kicks_per_1000_tx_packets": ratio(get(|c| c.tx_kicks), get(|c| c.tx_packets)),
        "rx_irqs_per_1000_rx_packets": ratio(get(|c| c.rx_irqs), get(|c| c.rx_packets)),
        "misses": c.as_ref().and_then(|c| c.misses),
        "misses_per_1000_rx_packets": ratio(c.as_ref().and_then(|c| c.misses), get(|c| c.rx_packets)),
        "inbox_in": c.as_ref().and_then(|c| c.inbox_in),
        "inbox_drops": c.as_ref().and_then(|c| c.inbox_drops),
    });
    match &r.result {
        Ok(s) => {
            v["mb_per_s"] = json!(s.mb_per_s);
            v["elapsed_s"] = json!(s.elapsed_s);
            v["done"] = json!(s.done);
            v["errors"] = json!(s.errors);
            v["error_list"] = json!(s.error_list);
        }
        Err(e) => v["failure"] = json!(e),
    }
    v
}

/// One boot of the benchmark: `queues` pairs, a load per connection count.
fn boot_once(
    a: &BenchEchoArgs,
    accel: Accel,
    built: &kbuild::Built,
    queues: u16,
    stop: &Arc<AtomicBool>,
) -> Result<Vec<Row>, String> {
    let budget = (a.timeout_secs + traffic::TCP_LOAD_GRACE + PAUSE) * a.connections.len() as u32;
    let guest = a.boot.guest(&a.netns, accel, queues, &format!("net-stats={STATS_MS}"), budget, PAUSE);
    let work = {
        let stop = stop.clone();
        let (conns, total, timeout) = (a.connections.clone(), a.bytes, a.timeout_secs);
        move |up: Up| {
            let (ns, guest) = (&up.tap.netns, up.tap.guest_addr.to_string());
            each_load(&conns, PAUSE, &stop, |n| {
                let b = bytes_per_connection(total, n);
                let from = up.since.elapsed();
                let result = traffic::tcp_load(ns, &guest, Mode::Echo, ECHO_PORT, n, b, timeout)
                    .and_then(|out| LoadSummary::parse(&out).ok_or_else(|| format!("no summary in: {}", out.trim())));
                let to = up.since.elapsed();
                match &result {
                    Ok(s) => say!("queues {queues}, {n} × {}: {}", size(b), s.describe()),
                    Err(e) => say!("queues {queues}, {n} × {}: {e}", size(b)),
                }
                Load { connections: n, window: (from, to), result }
            })
        }
    };
    let (loads, report) = with_guest(&guest, built, stop, &|m| say!("{m}"), work).1?;
    Ok(loads
        .into_iter()
        .map(|l| Row {
            queues,
            connections: l.connections,
            bytes_per_connection: bytes_per_connection(a.bytes, l.connections),
            counted: count(&report.lines, l.window.0, l.window.1),
            result: l.result,
        })
        .collect())
}

pub fn run(a: BenchEchoArgs) -> Result<i32, String> {
    let (choice, built) = prepare("bench echo", &a.netns, a.boot.accel, a.boot.boot.into())?;
    let stop = stop_flag();
    say!(
        "echo benchmark: {} vCPUs, queues {:?}, connections {:?}, {} per load{}",
        a.boot.smp,
        a.queues,
        a.connections,
        size(a.bytes),
        if a.boot.rss { ", RSS offered" } else { "" }
    );
    let (rows, boots) = super::each_boot(
        a.queues.iter().copied(),
        &stop,
        |q| json!({"queues": q}),
        |q| boot_once(&a, choice.accel, &built, q, &stop),
    );
    println!();
    println!(
        "echo: {} vCPUs, {} per load, accelerator {}{}, release kernel (MB/s = 10^6 bytes echoed and verified per \
         second; counters per 1000 packets from the guest's reports around each load)",
        a.boot.smp,
        size(a.bytes),
        choice.accel,
        if a.boot.rss { ", RSS" } else { "" }
    );
    print!("{}", table(&rows));
    let out = json!({
        "benchmark": "echo",
        "kernel": "release",
        "smp": a.boot.smp,
        "rss": a.boot.rss,
        "accel": choice.accel.to_string(),
        "bytes_per_load": a.bytes,
        "timeout_s": a.timeout_secs.as_secs_f64(),
        "stats_ms": STATS_MS,
        "boots": boots,
        "runs": rows.iter().map(row_json).collect::<Vec<_>>(),
    });
    let path = bench_dir(&built).join("echo.json");
    write_out(&path, &(serde_json::to_string_pretty(&out).expect("serialisable") + "\n"))?;
    say!("wrote {}", path.display());
    let complete = boots.iter().all(|b| b["error"].is_null())
        && rows.len() == a.queues.len() * a.connections.len()
        && rows.iter().all(|r| r.result.as_ref().is_ok_and(|s| s.ok()));
    if !complete {
        say!("some measurements are missing or had errors (see above)");
    }
    Ok(if complete { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(secs: f64, text: String) -> Line {
        Line { at: Duration::from_secs_f64(secs), text }
    }

    fn stats(at: f64, cpu: u32, rx: u64, irqs: u64, tx: u64, kicks: u64) -> Line {
        line(
            at,
            format!(
                "[ {at}] cpu{cpu} INFO  net-stats: cpu{cpu} rxq {} packets {rx} bytes 1 irqs {irqs} polls 3 | txq {} \
                 packets {tx} bytes 1 irqs 0 full 0 kicks {kicks}",
                2 * cpu,
                2 * cpu + 1
            ),
        )
    }

    fn cpu(at: f64, cpu: u32, misses: u64, drops: u64) -> Line {
        line(
            at,
            format!(
                "[ {at}] cpu{cpu} INFO  net-cpu: cpu{cpu} accepted 1 active 0 closed 1 reset 0 misses {misses} \
                 inbox_in 7 inbox_drops {drops}"
            ),
        )
    }

    #[test]
    fn counters_are_taken_around_each_load() {
        let s = Duration::from_secs_f64;
        let lines = vec![
            stats(1.0, 0, 10, 5, 10, 2),
            stats(1.0, 1, 0, 0, 0, 0),
            cpu(1.0, 0, 1, 0),
            cpu(1.0, 1, 0, 0),
            // The load runs from 1.2 s to 3.1 s.
            stats(2.0, 0, 500, 50, 400, 40),
            stats(3.5, 0, 1010, 105, 1010, 102),
            stats(3.5, 1, 2000, 200, 1000, 100),
            cpu(3.5, 0, 11, 0),
            cpu(3.5, 1, 20, 3),
            stats(4.0, 0, 9999, 999, 9999, 999),
        ];
        let c = count(&lines, s(1.2), s(3.1)).unwrap();
        assert_eq!((c.rx_packets, c.rx_irqs, c.tx_packets, c.tx_kicks), (3000, 300, 2000, 200));
        assert_eq!((c.misses, c.inbox_in, c.inbox_drops), (Some(30), Some(0), Some(3)));
        // No report after the end: no figures rather than wrong ones.
        assert_eq!(count(&lines, s(1.2), s(4.5)), None);
        // A kernel without net-cpu lines still gives the queue counters.
        let plain: Vec<Line> = lines.iter().filter(|l| !l.text.contains("net-cpu")).cloned().collect();
        let c = count(&plain, s(1.2), s(3.1)).unwrap();
        assert_eq!((c.rx_packets, c.misses), (3000, None));
        assert_eq!(count(&[], s(0.0), s(1.0)), None);
    }

    #[test]
    fn loads_move_similar_volumes() {
        assert_eq!(bytes_per_connection(16 << 20, 1), 16 << 20);
        assert_eq!(bytes_per_connection(16 << 20, 4), 4 << 20);
        assert_eq!(bytes_per_connection(16 << 20, 16), 1 << 20);
        assert_eq!(bytes_per_connection(10, 16), 1);
    }

    fn summary(mb_per_s: f64, errors: u64) -> LoadSummary {
        LoadSummary {
            mode: "echo".into(),
            connections: 4,
            bytes: 4 << 20,
            completed: 4 - errors,
            done: 16 << 20,
            elapsed_s: 3.2,
            mb_per_s,
            errors,
            error_list: (0..errors).map(|i| format!("conn {i}: timeout at receive offset 0: x")).collect(),
            per_connection: vec![],
        }
    }

    #[test]
    fn the_table_and_json_show_every_row() {
        let counted = Counted {
            rx_packets: 2000,
            rx_irqs: 100,
            tx_packets: 1000,
            tx_kicks: 250,
            misses: Some(4),
            inbox_in: Some(0),
            inbox_drops: Some(0),
        };
        let rows = vec![
            Row {
                queues: 4,
                connections: 4,
                bytes_per_connection: 4 << 20,
                result: Ok(summary(5.25, 0)),
                counted: Some(counted),
            },
            Row {
                queues: 4,
                connections: 16,
                bytes_per_connection: 1 << 20,
                result: Ok(summary(1.0, 2)),
                counted: None,
            },
            Row {
                queues: 1,
                connections: 1,
                bytes_per_connection: 16 << 20,
                result: Err("printed no summary".into()),
                counted: None,
            },
        ];
        let t = table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].split_whitespace().eq([
            "queues",
            "conns",
            "per",
            "conn",
            "MB/s",
            "s",
            "errors",
            "rx",
            "pkts",
            "tx",
            "kicks/1k",
            "rx",
            "irqs/1k",
            "misses/1k",
            "inbox",
            "drops"
        ]));
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["4", "4", "4", "MiB", "5.25", "3.20", "0", "2000", "250.0", "50.0", "2.0", "0"]
        );
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            ["4", "16", "1", "MiB", "1.00", "3.20", "2", "-", "-", "-", "-", "-"]
        );
        assert_eq!(lines[3].split_whitespace().collect::<Vec<_>>()[4..7], ["-", "-", "failed"]);
        assert_eq!(lines[4], "queues 4 × 16 conns: 2 errors, first: conn 0: timeout at receive offset 0: x");
        assert_eq!(lines[5], "queues 1 × 1 conns: printed no summary");

        let j = row_json(&rows[0]);
        assert_eq!(
            (j["queues"].as_u64(), j["connections"].as_u64(), j["mb_per_s"].as_f64()),
            (Some(4), Some(4), Some(5.25))
        );
        assert_eq!(j["tx_kicks_per_1000_tx_packets"].as_f64(), Some(250.0));
        assert_eq!(j["misses_per_1000_rx_packets"].as_f64(), Some(2.0));
        let j = row_json(&rows[2]);
        assert_eq!(j["failure"], "printed no summary");
        assert!(j["rx_packets"].is_null() && j["mb_per_s"].is_null());
    }
}
