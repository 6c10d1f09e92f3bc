//! `cargo xtask bench rr`: request/response latency, netperf TCP_RR style.
//!
//! Boots the release kernel with `--smp` vCPUs once per queue count, inside
//! a network namespace it creates and deletes (every packet stays in
//! there), and once the guest's stacks are up runs `xtask rr` (under `ip
//! netns exec`) once per connection count, each for `--time` seconds with
//! `--request`/`--response` byte transactions against the guest's RR
//! service (port 5202). It prints transactions per second and latency
//! percentiles per load and writes `target/bench/rr.json`. Like every
//! benchmark it never passes or fails on speed: the status only says
//! whether every load ran without an error.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use boot::accel::Accel;
use boot::netns::MAX_QUEUES;
use clap::Args;
use serde_json::{json, Value};

use super::{each_boot, each_load, prepare, with_guest, write_out, Up};
use crate::cli::{parse_netns, BenchBootArgs, MAX_CONNECTIONS};
use crate::kbuild;
use crate::rr::{RrShape, RrSummary, RR_PORT};
use crate::run::{say, stop_flag};
use crate::tcpload::size;
use crate::traffic;

/// Quiet time before every load, and after the last.
const PAUSE: Duration = Duration::from_secs(1);

#[derive(Args, Debug, Clone)]
pub struct BenchRrArgs {
    /// Queue pairs to boot with, one boot each (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,4",
          value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_QUEUES)))]
    pub queues: Vec<u16>,
    /// Concurrent connections per load, one load each (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,4,16",
          value_parser = clap::value_parser!(u32).range(1..=MAX_CONNECTIONS))]
    pub connections: Vec<u32>,
    #[command(flatten)]
    pub shape: RrShape,
    #[command(flatten)]
    pub boot: BenchBootArgs,
    /// Network namespace to create (and delete) for the boots.
    #[arg(long, default_value = "mqrr", value_parser = parse_netns)]
    pub netns: String,
}

/// One load: a queue count × a connection count.
#[derive(Clone, Debug)]
pub struct RrRow {
    pub queues: u16,
    pub connections: u32,
    pub result: Result<RrSummary, String>,
}

/// The table: transactions per second (all connections, and per
/// connection) and latency percentiles, one row per load, then the errors.
pub fn rr_table(rows: &[RrRow]) -> String {
    let columns = ["queues", "conns", "trans/s", "per conn", "p50 µs", "p90 µs", "p99 µs", "max µs", "errors"];
    let widths = [6, 5, 9, 9, 8, 8, 8, 8, 6];
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells.iter().zip(widths).map(|(c, w)| format!("{c:>w$}")).collect();
        padded.join(" ") + "\n"
    };
    let mut out = line(&columns.map(String::from));
    let mut notes = String::new();
    for r in rows {
        let mut cells = vec![r.queues.to_string(), r.connections.to_string()];
        match &r.result {
            Ok(s) => {
                let per_conn = s.tps / s.connections.max(1) as f64;
                cells.extend([format!("{:.1}", s.tps), format!("{per_conn:.1}")]);
                cells.extend([s.p50_us, s.p90_us, s.p99_us, s.max_us].map(|us| format!("{us:.0}")));
                cells.push(s.errors.to_string());
                if let Some(first) = s.error_list.first() {
                    notes += &format!(
                        "queues {} × {} conns: {} errors, first: {first}\n",
                        r.queues, r.connections, s.errors
                    );
                }
            }
            Err(e) => {
                cells.extend(["-"; 6].map(String::from));
                cells.push("failed".into());
                notes += &format!("queues {} × {} conns: {e}\n", r.queues, r.connections);
            }
        }
        out += &line(&cells);
    }
    out + &notes
}

/// A row as JSON: the load's whole summary, or why there is none.
pub fn rr_row_json(r: &RrRow) -> Value {
    let mut v = json!({"queues": r.queues, "connections": r.connections});
    match &r.result {
        Ok(s) => v["summary"] = serde_json::from_str(&s.to_json()).expect("the summary is JSON"),
        Err(e) => v["failure"] = json!(e),
    }
    v
}

/// One boot with `queues` pairs: a load per connection count.
fn rr_boot(
    a: &BenchRrArgs,
    accel: Accel,
    built: &kbuild::Built,
    queues: u16,
    stop: &Arc<AtomicBool>,
) -> Result<Vec<RrRow>, String> {
    let budget = (traffic::rr_limit(a.shape.time) + PAUSE) * a.connections.len() as u32;
    let guest = a.boot.guest(&a.netns, accel, queues, "", budget, PAUSE);
    let work = {
        let (stop, a) = (stop.clone(), a.clone());
        move |up: Up| {
            let (ns, guest) = (&up.tap.netns, up.tap.guest_addr.to_string());
            each_load(&a.connections, PAUSE, &stop, |n| {
                let result = traffic::tcp_rr(ns, &guest, RR_PORT, n, a.shape)
                    .and_then(|out| RrSummary::parse(&out).ok_or_else(|| format!("no summary in: {}", out.trim())));
                say!("queues {queues}, {n} conns: {}", result.as_ref().map_or_else(|e| e.clone(), RrSummary::describe));
                RrRow { queues, connections: n, result }
            })
        }
    };
    with_guest(&guest, built, stop, &|m| say!("{m}"), work).1.map(|(rows, _)| rows)
}

/// `cargo xtask bench rr`.
pub fn rr(a: BenchRrArgs) -> Result<i32, String> {
    let (choice, built) = prepare("bench rr", &a.netns, a.boot.accel, a.boot.boot.into())?;
    let stop = stop_flag();
    let what = format!(
        "{} vCPUs, {} B requests, {} responses, {:.1} s per load{}",
        a.boot.smp,
        a.shape.request,
        size(a.shape.response.into()),
        a.shape.time.as_secs_f64(),
        if a.boot.rss { ", RSS offered" } else { "" }
    );
    say!("rr benchmark: {what}, queues {:?}, connections {:?}", a.queues, a.connections);
    let (rows, boots) = each_boot(
        a.queues.iter().copied(),
        &stop,
        |q| json!({"queues": q}),
        |q| rr_boot(&a, choice.accel, &built, q, &stop),
    );
    println!();
    println!(
        "rr: {what}, accelerator {}, release kernel (transactions/s over all connections, each one transaction at a \
         time; latency from request to the response's last byte, every response checked)",
        choice.accel
    );
    print!("{}", rr_table(&rows));
    let out = json!({
        "benchmark": "rr",
        "kernel": "release",
        "smp": a.boot.smp,
        "rss": a.boot.rss,
        "accel": choice.accel.to_string(),
        "cmdline": a.boot.cmdline,
        "request": a.shape.request,
        "response": a.shape.response,
        "time_s": a.shape.time.as_secs_f64(),
        "boots": boots,
        "runs": rows.iter().map(rr_row_json).collect::<Vec<_>>(),
    });
    let path = super::bench_dir(&built).join("rr.json");
    write_out(&path, &(serde_json::to_string_pretty(&out).expect("serialisable") + "\n"))?;
    say!("wrote {}", path.display());
    let complete = boots.iter().all(|b| b["error"].is_null())
        && rows.len() == a.queues.len() * a.connections.len()
        && rows.iter().all(|r| r.result.as_ref().is_ok_and(RrSummary::ok));
    if !complete {
        say!("some loads are missing or had errors (see above)");
    }
    Ok(if complete { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(connections: u64, tps: f64, errors: &[&str]) -> RrSummary {
        RrSummary {
            connections,
            request: 1,
            response: 1,
            time_s: 5.0,
            completed: connections - errors.len() as u64,
            errors: errors.len() as u64,
            error_list: errors.iter().map(|e| e.to_string()).collect(),
            transactions: (tps * 5.0) as u64,
            elapsed_s: 5.0,
            tps,
            p50_us: 800.4,
            p90_us: 1000.0,
            p99_us: 2000.0,
            max_us: 9000.0,
            ..RrSummary::default()
        }
    }

    #[test]
    fn the_table_and_json_show_every_load() {
        let rows = vec![
            RrRow { queues: 4, connections: 4, result: Ok(summary(4, 2000.0, &[])) },
            RrRow {
                queues: 4,
                connections: 16,
                result: Ok(summary(16, 1600.0, &["conn 3: reset at receive offset 9: x"])),
            },
            RrRow { queues: 1, connections: 1, result: Err("printed no summary".into()) },
        ];
        let t = rr_table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["queues", "conns", "trans/s", "per", "conn", "p50", "µs", "p90", "µs", "p99", "µs", "max", "µs", "errors"]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["4", "4", "2000.0", "500.0", "800", "1000", "2000", "9000", "0"]
        );
        assert_eq!(lines[2].split_whitespace().collect::<Vec<_>>()[2..4], ["1600.0", "100.0"]);
        assert_eq!(lines[2].split_whitespace().last(), Some("1"));
        assert_eq!(lines[3].split_whitespace().collect::<Vec<_>>(), ["1", "1", "-", "-", "-", "-", "-", "-", "failed"]);
        assert_eq!(lines[4], "queues 4 × 16 conns: 1 errors, first: conn 3: reset at receive offset 9: x");
        assert_eq!(lines[5], "queues 1 × 1 conns: printed no summary");
        assert_eq!(lines.len(), 6);
        let j = rr_row_json(&rows[0]);
        assert_eq!((j["queues"].as_u64(), j["connections"].as_u64()), (Some(4), Some(4)));
        assert_eq!(
            (j["summary"]["tps"].as_f64(), j["summary"]["latency_us"]["p50"].as_f64()),
            (Some(2000.0), Some(800.4))
        );
        assert_eq!(rr_row_json(&rows[2])["failure"], "printed no summary");
    }

    #[test]
    fn arguments() {
        use crate::cli::{BenchCmd, Cli, Cmd};
        use clap::Parser;
        let parse = |args: &[&str]| Cli::try_parse_from(["xtask", "bench", "rr"].iter().chain(args).copied());
        let Cmd::Bench(b) = parse(&[]).unwrap().command else { panic!() };
        let Some(BenchCmd::Rr(r)) = b.bench else { panic!() };
        assert_eq!((r.queues, r.connections), (vec![1, 4], vec![1, 4, 16]));
        assert_eq!(r.shape, RrShape { request: 1, response: 1, time: Duration::from_secs(5) });
        assert_eq!((r.boot.smp, r.boot.rss, r.netns.as_str()), (4, false, "mqrr"));
        let args = [
            "--smp",
            "2",
            "--queues",
            "2",
            "--connections",
            "1,8",
            "--request",
            "100",
            "--response",
            "4K",
            "--time",
            "2",
        ];
        let Cmd::Bench(b) = parse(&args).unwrap().command else { panic!() };
        let Some(BenchCmd::Rr(r)) = b.bench else { panic!() };
        assert_eq!((r.boot.smp, r.queues, r.connections), (2, vec![2], vec![1, 8]));
        assert_eq!(r.shape, RrShape { request: 100, response: 4096, time: Duration::from_secs(2) });
        for bad in [&["--queues", "0"][..], &["--connections", "0"], &["--response", "70000"], &["--time", "1000"]] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
