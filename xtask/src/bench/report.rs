//! The matrix's results as terminal tables (laid out like the classic
//! multiqueue studies: one table per direction and message size, one
//! column group per configuration, one row per session count), CSV and
//! JSON.

use serde_json::{json, Value};

use super::matrix::{PointKey, PointResult, Sample, Summary};
use super::measure::IPERF3_PORT;
use crate::cli::{DirectionArg, MsgLen, VmConfig};

use super::matrix::Plan;

/// One boot of the matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigRun {
    pub config: VmConfig,
    /// QEMU's full command line, as started (the boot of the host-driven points).
    pub qemu_command: String,
    /// Those of the guest-initiated runs' boots, in order (their boot
    /// options start the guest's client).
    pub client_qemu_commands: Vec<String>,
    /// Why the boot gave no (or not every) result, if it did not.
    pub error: Option<String>,
    /// The ports of the guest's TCP services, from its console.
    pub guest_ports: Option<Vec<u16>>,
    pub points: Vec<PointResult>,
}

/// A whole matrix run.
#[derive(Clone, Debug, PartialEq)]
pub struct MatrixRun {
    /// When it started (UTC, RFC 3339).
    pub date: String,
    /// The host: its CPU count and load averages (1, 5, 15 min) at the
    /// start and at the end (the machine may be shared: a noisy run shows).
    pub host: HostLoad,
    pub accel: String,
    pub accel_reason: String,
    pub vhost: bool,
    pub vhost_reason: String,
    pub rss: bool,
    pub memory_mib: u32,
    /// Extra kernel boot options (besides the guest's address).
    pub cmdline: String,
    /// Client ports spread evenly over the vCPUs by a fixed steering key
    /// (else iperf3's own, random).
    pub spread: bool,
    pub plan: Plan,
    pub configs: Vec<ConfigRun>,
}

/// The host's size and how busy it was around a run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostLoad {
    pub cpus: usize,
    pub load_start: Option<[f64; 3]>,
    pub load_end: Option<[f64; 3]>,
    /// The host's default TCP congestion control
    /// (net.ipv4.tcp_congestion_control), which the host's iperf3 uses
    /// unless `--congestion` is given.
    pub congestion: Option<String>,
}

impl HostLoad {
    /// `/proc/loadavg`'s first three fields.
    pub fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
        let mut f = text.split_whitespace().map(|w| w.parse::<f64>().ok());
        Some([f.next()??, f.next()??, f.next()??])
    }

    /// `2 host CPUs, load 1.20 1.00 0.90 → 2.10 1.50 1.00, host TCP
    /// congestion control cubic`.
    pub fn describe(&self) -> String {
        let load = |l: Option<[f64; 3]>| l.map_or("?".into(), |l| format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2]));
        format!(
            "{} host CPUs, load {} → {}, host TCP congestion control {}",
            self.cpus,
            load(self.load_start),
            load(self.load_end),
            self.congestion.as_deref().unwrap_or("?")
        )
    }
}

/// How a point fared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Every run measured.
    Ok,
    /// Some runs failed; the figures are the others' medians.
    Partial,
    /// No run measured (or none was made: the boot failed first).
    Failed,
    Skipped,
}

impl Status {
    pub fn of(p: &PointResult) -> Status {
        let ok = p.ok_runs().count();
        if p.skipped.is_some() {
            Status::Skipped
        } else if ok == 0 {
            Status::Failed
        } else if ok < p.runs.len() {
            Status::Partial
        } else {
            Status::Ok
        }
    }

    pub fn id(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Partial => "partial",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
        }
    }
}

impl MatrixRun {
    pub fn point(&self, key: &PointKey) -> Option<&PointResult> {
        self.configs.iter().flat_map(|c| &c.points).find(|p| p.key == *key)
    }

    pub fn points(&self) -> impl Iterator<Item = &PointResult> {
        self.configs.iter().flat_map(|c| &c.points)
    }

    /// The points of one direction and message size (one table, one chart
    /// panel): configuration by configuration, sessions ascending.
    pub fn panel(&self, direction: DirectionArg, length: MsgLen) -> Vec<&PointResult> {
        let plan = &self.plan;
        plan.configs
            .iter()
            .flat_map(|&config| {
                plan.sessions.iter().map(move |&sessions| PointKey { config, direction, length, sessions })
            })
            .filter_map(|k| self.point(&k))
            .collect()
    }

    /// (multiqueue, single-queue) pairs: every configuration with more than
    /// one queue pair against the one with as many vCPUs, one pair and the
    /// same offloads; then (offloads on, offloads off) pairs of the same
    /// vCPUs and queue pairs.
    pub fn ratio_pairs(&self) -> Vec<(VmConfig, VmConfig)> {
        let configs = &self.plan.configs;
        let mut out = Vec::new();
        for mq in configs.iter().filter(|c| c.queues > 1) {
            if let Some(sq) = configs.iter().find(|c| c.vcpus == mq.vcpus && c.queues == 1 && c.offloads == mq.offloads)
            {
                out.push((*mq, *sq));
            }
        }
        for on in configs.iter().filter(|c| c.offloads) {
            if let Some(off) = configs.iter().find(|c| c.vcpus == on.vcpus && c.queues == on.queues && !c.offloads) {
                out.push((*on, *off));
            }
        }
        out
    }

    /// Every boot went through and every host-driven point was measured in
    /// every run (only the guest-initiated direction may be skipped: it
    /// depends on a client mode the guest may not have).
    pub fn complete(&self) -> bool {
        self.configs.iter().all(|c| c.error.is_none())
            && self.points().all(|p| match Status::of(p) {
                Status::Ok => true,
                Status::Skipped => !p.key.direction.host_client(),
                Status::Partial | Status::Failed => false,
            })
    }
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.decimals$}"))
}

/// A ratio `a / b` of two figures, when both exist and `b` is not zero.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    a.zip(b).filter(|(_, b)| *b != 0.0).map(|(a, b)| a / b)
}

/// The width of one configuration's column group.
const GROUP: usize = 31;

/// The classic tables, one per direction × message size, and the guest's
/// figures per point after them.
pub fn tables(run: &MatrixRun) -> String {
    let plan = &run.plan;
    let mut out = String::new();
    out.push_str(&format!(
        "iperf3 matrix, {}: accelerator {}, vhost {}, {}{}median of {} run(s) × {} s (first {} s omitted); {}\n\
         Mbit/s = iperf3's receiver; vCPU% and DM% = host CPU of QEMU's vCPU threads and of its other threads \
         (main loop, device model, vhost), % of one host CPU, over the measured interval; norm = Mbit/s per host \
         CPU (Mbit/s ÷ ((vCPU% + DM%) / 100))\n",
        run.date,
        run.accel,
        if run.vhost { "on" } else { "off" },
        if run.rss { "RSS offered, " } else { "" },
        if run.spread { "sessions spread evenly over the vCPUs, " } else { "random client ports, " },
        plan.repeat,
        plan.seconds,
        plan.omit,
        run.host.describe() + &plan.congestion.as_ref().map_or(String::new(), |c| format!(", iperf3 -C {c}"))
    ));
    let pairs = run.ratio_pairs();
    for &direction in &plan.directions {
        for &length in &plan.lengths {
            out.push('\n');
            out.push_str(&format!("{}, messages: {}\n", direction.title(), length.label()));
            let keys = |config, sessions| PointKey { config, direction, length, sessions };
            let all = run.panel(direction, length);
            let reasons: Vec<&str> = all.iter().filter_map(|p| p.skipped.as_deref()).collect();
            if !all.is_empty() && reasons.len() == all.len() && reasons.iter().all(|r| *r == reasons[0]) {
                out.push_str(&format!("  skipped: {}\n", reasons[0]));
                continue;
            }
            out.push_str(&format!("{:>8}", ""));
            for c in &plan.configs {
                out.push_str(&format!("  {:<w$}", format!("{c} (vCPUs/queues)"), w = GROUP - 2));
            }
            for (mq, sq) in &pairs {
                out.push_str(&format!("  {:<15}", format!("{mq} ÷ {sq}")));
            }
            out.push('\n');
            out.push_str(&format!("{:>8}", "sessions"));
            for _ in &plan.configs {
                out.push_str(&format!("  {:>8} {:>6} {:>6} {:>7}", "Mbit/s", "vCPU%", "DM%", "norm"));
            }
            for _ in &pairs {
                out.push_str(&format!("  {:>7} {:>7}", "Mbit/s", "norm"));
            }
            out.push('\n');
            for &sessions in &plan.sessions {
                out.push_str(&format!("{sessions:>8}"));
                for &c in &plan.configs {
                    let p = run.point(&keys(c, sessions));
                    let cells = match p.map(|p| (Status::of(p), p.summary())) {
                        Some((_, Some(s))) => {
                            [format!("{:.1}", s.mbit_s), opt(s.vcpu_pct, 0), opt(s.device_pct, 0), opt(s.normalized, 1)]
                        }
                        Some((Status::Skipped, None)) => ["skipped".into(), "".into(), "".into(), "".into()],
                        _ => ["failed".into(), "".into(), "".into(), "".into()],
                    };
                    out.push_str(&format!("  {:>8} {:>6} {:>6} {:>7}", cells[0], cells[1], cells[2], cells[3]));
                }
                for (mq, sq) in &pairs {
                    let s = |c| run.point(&keys(c, sessions)).and_then(PointResult::summary);
                    let (a, b) = (s(*mq), s(*sq));
                    let r = |f: fn(&Summary) -> Option<f64>| ratio(a.as_ref().and_then(f), b.as_ref().and_then(f));
                    out.push_str(&format!("  {:>7} {:>7}", opt(r(|s| Some(s.mbit_s)), 2), opt(r(|s| s.normalized), 2)));
                }
                out.push('\n');
            }
            for p in &all {
                let errors: Vec<&String> = p.errors().collect();
                if let Some(first) = errors.first() {
                    out.push_str(&format!(
                        "  {}: {} of {} runs failed, first: {first}\n",
                        p.key.describe(),
                        errors.len(),
                        p.runs.len()
                    ));
                } else if let Some(why) = &p.skipped {
                    out.push_str(&format!("  {}: skipped: {why}\n", p.key.describe()));
                } else if p.runs.is_empty() {
                    out.push_str(&format!("  {}: not measured (the boot ended first)\n", p.key.describe()));
                }
            }
        }
    }
    out.push_str(&guest_table(run));
    for c in run.configs.iter().filter(|c| c.error.is_some()) {
        out.push_str(&format!("boot {}: {}\n", c.config, c.error.as_deref().unwrap_or_default()));
    }
    out
}

/// The columns of the guest's table.
const GUEST_COLUMNS: [&str; 13] = [
    "config",
    "direction",
    "length",
    "sessions",
    "busy%",
    "pkts/MB",
    "kicks/MB",
    "irqs/MB",
    "cyc/rx",
    "cyc/tx",
    "cyc/KB",
    "retrans",
    "runs",
];

/// The guest's side of every measured point.
fn guest_table(run: &MatrixRun) -> String {
    let mut out = String::from(
        "\nguest's own figures (medians; from GET /metrics before and after each run): busy = busy time of all its \
         vCPUs, % of one CPU; per MB = per 10^6 bytes of frames both ways; cyc/rx = TSC ticks of the receive side of \
         its network rounds per received frame, cyc/tx = the rest of the rounds (services, egress, transmit) per sent \
         frame, cyc/KB = all of the rounds per 1000 bytes of frames; retrans = TCP retransmits of the sender\n",
    );
    let [a, b, c, d, e, f, g, h, i, j, k, l, m] = GUEST_COLUMNS;
    out.push_str(&format!(
        "{a:>7} {b:<16} {c:>8} {d:>8} {e:>7} {f:>8} {g:>9} {h:>8} {i:>8} {j:>8} {k:>8} {l:>8} {m:>5}\n"
    ));
    let mut rows = 0;
    for p in run.points() {
        let Some(s) = p.summary() else { continue };
        rows += 1;
        out.push_str(&format!(
            "{:>7} {:<16} {:>8} {:>8} {:>7} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>5}\n",
            p.key.config.to_string(),
            p.key.direction.id(),
            p.key.length.label(),
            p.key.sessions,
            opt(s.guest_busy_pct, 0),
            opt(s.packets_per_mb, 1),
            opt(s.kicks_per_mb, 2),
            opt(s.irqs_per_mb, 2),
            opt(s.rx_cycles_per_packet, 0),
            opt(s.tx_cycles_per_packet, 0),
            opt(s.cycles_per_kb, 0),
            opt(s.retransmits, 0),
            format!("{}/{}", s.runs, p.runs.len())
        ));
    }
    if rows == 0 {
        out.push_str("(nothing measured)\n");
    }
    out
}

/// The CSV header: one row per point.
pub const CSV_HEADER: &str = "config,vcpus,queues,vhost,rss,direction,length,sessions,status,runs_ok,runs,mbit_s,\
mbit_s_min,mbit_s_max,vcpu_pct,device_pct,cpu_pct,normalized,guest_busy_pct,packets_per_mb,kicks_per_mb,irqs_per_mb,\
rx_cycles_per_packet,tx_cycles_per_packet,cycles_per_kb,retransmits,note";

/// A CSV field, quoted when it must be (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

pub fn csv(run: &MatrixRun) -> String {
    let mut out = format!("{CSV_HEADER}\n");
    let num = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.3}"));
    for p in run.points() {
        let k = &p.key;
        let s = p.summary();
        let f = |g: fn(&Summary) -> Option<f64>| num(s.as_ref().and_then(g));
        let note = p.skipped.clone().or_else(|| p.errors().next().cloned()).unwrap_or_default();
        let fields = [
            k.config.to_string(),
            k.config.vcpus.to_string(),
            k.config.queues.to_string(),
            run.vhost.to_string(),
            run.rss.to_string(),
            k.direction.id().to_string(),
            k.length.id(),
            k.sessions.to_string(),
            Status::of(p).id().to_string(),
            p.ok_runs().count().to_string(),
            p.runs.len().to_string(),
            f(|s| Some(s.mbit_s)),
            f(|s| Some(s.mbit_s_min)),
            f(|s| Some(s.mbit_s_max)),
            f(|s| s.vcpu_pct),
            f(|s| s.device_pct),
            f(|s| s.cpu_pct),
            f(|s| s.normalized),
            f(|s| s.guest_busy_pct),
            f(|s| s.packets_per_mb),
            f(|s| s.kicks_per_mb),
            f(|s| s.irqs_per_mb),
            f(|s| s.rx_cycles_per_packet),
            f(|s| s.tx_cycles_per_packet),
            f(|s| s.cycles_per_kb),
            f(|s| s.retransmits),
            note,
        ];
        out.push_str(&fields.iter().map(|x| csv_field(x)).collect::<Vec<_>>().join(","));
        out.push('\n');
    }
    out
}

fn sample_json(r: &Result<Sample, String>) -> Value {
    match r {
        Err(e) => json!({ "error": e }),
        Ok(s) => json!({
            "mbit_s": s.mbit_s,
            "retransmits": s.retransmits,
            "host_cpu": s.host.map(|h| json!({
                "vcpu_pct": h.vcpu_pct,
                "device_pct": h.device_pct,
                "vhost_pct": h.vhost_pct,
                "window_s": h.window_s,
            })),
            "guest": s.guest.as_ref().map(|g| json!({
                "busy_pct_per_vcpu": g.busy_pct,
                "busy_pct": g.busy_total_pct(),
                "rx_packets": g.rx_packets,
                "tx_packets": g.tx_packets,
                "rx_packets_per_vcpu": g.rx_packets_per_vcpu,
                "frame_bytes": g.bytes,
                "kicks": g.kicks,
                "queue_irqs": g.queue_irqs,
                "steer_misses": g.steer_misses,
                "ingress_cycles": g.ingress_cycles,
                "egress_cycles": g.egress_cycles,
            })),
        }),
    }
}

fn summary_json(s: &Summary) -> Value {
    json!({
        "runs_ok": s.runs,
        "mbit_s": s.mbit_s,
        "mbit_s_min": s.mbit_s_min,
        "mbit_s_max": s.mbit_s_max,
        "vcpu_pct": s.vcpu_pct,
        "device_pct": s.device_pct,
        "cpu_pct": s.cpu_pct,
        "normalized": s.normalized,
        "guest_busy_pct": s.guest_busy_pct,
        "packets_per_mb": s.packets_per_mb,
        "kicks_per_mb": s.kicks_per_mb,
        "irqs_per_mb": s.irqs_per_mb,
        "rx_cycles_per_packet": s.rx_cycles_per_packet,
        "tx_cycles_per_packet": s.tx_cycles_per_packet,
        "cycles_per_kb": s.cycles_per_kb,
        "retransmits": s.retransmits,
    })
}

fn key_json(k: &PointKey) -> Value {
    json!({
        "config": k.config.to_string(),
        "direction": k.direction.id(),
        "length": k.length.id(),
        "sessions": k.sessions,
    })
}

pub fn json(run: &MatrixRun) -> Value {
    let plan = &run.plan;
    let points: Vec<Value> = run
        .points()
        .map(|p| {
            let mut v = key_json(&p.key);
            v["status"] = json!(Status::of(p).id());
            v["skipped"] = json!(p.skipped);
            v["median"] = p.summary().as_ref().map_or(Value::Null, summary_json);
            v["runs"] = p.runs.iter().map(sample_json).collect();
            v
        })
        .collect();
    let mut ratios = Vec::new();
    for (mq, sq) in run.ratio_pairs() {
        for &direction in &plan.directions {
            for &length in &plan.lengths {
                for &sessions in &plan.sessions {
                    let s = |config| {
                        run.point(&PointKey { config, direction, length, sessions }).and_then(PointResult::summary)
                    };
                    let (Some(a), Some(b)) = (s(mq), s(sq)) else { continue };
                    let mut v = key_json(&PointKey { config: mq, direction, length, sessions });
                    v["single_queue"] = json!(sq.to_string());
                    v["throughput"] = json!(ratio(Some(a.mbit_s), Some(b.mbit_s)));
                    v["normalized"] = json!(ratio(a.normalized, b.normalized));
                    ratios.push(v);
                }
            }
        }
    }
    json!({
        "benchmark": "iperf3-matrix",
        "date": run.date,
        "host_cpus": run.host.cpus,
        "host_load_start": run.host.load_start,
        "host_load_end": run.host.load_end,
        "kernel": "release",
        "accel": run.accel,
        "accel_reason": run.accel_reason,
        "vhost": run.vhost,
        "vhost_reason": run.vhost_reason,
        "rss": run.rss,
        "host_congestion": run.host.congestion,
        "congestion": plan.congestion.as_ref().or(run.host.congestion.as_ref()),
        "client_ports": if run.spread { "spread" } else { "random" },
        "steer_key": if run.spread { Some(super::iperf::STEER_KEY) } else { None },
        "memory_mib": run.memory_mib,
        "cmdline": run.cmdline,
        "iperf3_port": IPERF3_PORT,
        "plan": {
            "configs": plan.configs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "directions": plan.directions.iter().map(|d| d.id()).collect::<Vec<_>>(),
            "lengths": plan.lengths.iter().map(|l| l.id()).collect::<Vec<_>>(),
            "sessions": plan.sessions,
            "repeat": plan.repeat,
            "seconds": plan.seconds,
            "omit": plan.omit,
        },
        "configs": run.configs.iter().map(|c| json!({
            "config": c.config.to_string(),
            "vcpus": c.config.vcpus,
            "queues": c.config.queues,
            "offloads": c.config.offloads,
            "qemu_command": c.qemu_command,
            "error": c.error,
            "guest_ports": c.guest_ports,
            "client_qemu_commands": c.client_qemu_commands,
        })).collect::<Vec<_>>(),
        "points": points,
        "ratios": ratios,
    })
}

/// Labels of a message size and direction in one place, for the chart.
pub fn panel_title(direction: DirectionArg, length: MsgLen) -> String {
    format!("{}, {}", direction.id(), length.label())
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::bench::matrix::{GuestCounters, HostCpu};

    pub fn cfg(vcpus: u16, queues: u16) -> VmConfig {
        VmConfig { vcpus, queues, offloads: true }
    }

    fn sample(mbit_s: f64, cpu: f64) -> Sample {
        Sample {
            mbit_s,
            retransmits: Some(0),
            host: Some(HostCpu { vcpu_pct: cpu * 0.75, device_pct: cpu * 0.25, vhost_pct: 0.0, window_s: 5.0 }),
            guest: Some(GuestCounters {
                busy_pct: vec![50.0],
                rx_packets: 1000,
                tx_packets: 1000,
                rx_packets_per_vcpu: vec![1000],
                bytes: 4_000_000,
                kicks: 40,
                queue_irqs: 8,
                steer_misses: 0,
                ingress_cycles: 2_500_000,
                egress_cycles: 4_000_000,
            }),
        }
    }

    /// A small run: 2/1 and 2/2, host-to-guest and guest-initiated, one
    /// size, sessions 1 and 2; 2/2 runs twice as fast at the same CPU, one
    /// of 2/1's points failed, the guest-initiated direction skipped.
    pub fn fake_run() -> MatrixRun {
        let plan = Plan {
            configs: vec![cfg(2, 1), cfg(2, 2)],
            directions: vec![DirectionArg::HostToGuest, DirectionArg::GuestInitiated],
            lengths: vec![MsgLen(Some(512))],
            sessions: vec![1, 2],
            repeat: 2,
            seconds: 5,
            omit: 1,
            congestion: None,
        };
        let configs = plan
            .configs
            .iter()
            .map(|&config| {
                let points = plan
                    .points(config)
                    .into_iter()
                    .map(|key| {
                        let mut p = PointResult::new(key);
                        let base = 100.0 * f64::from(key.sessions) * f64::from(key.config.queues);
                        if !key.direction.host_client() {
                            p.skipped = Some(crate::bench::measure::NO_CLIENT_MODE.into());
                        } else if key.config.queues == 1 && key.sessions == 2 {
                            p.runs = vec![Err("iperf3: unable to connect, \"refused\"".into()); 2];
                        } else {
                            p.runs = vec![Ok(sample(base, 100.0)), Ok(sample(base * 1.5, 100.0))];
                        }
                        p
                    })
                    .collect();
                ConfigRun {
                    config,
                    qemu_command: format!("ip netns exec mqbench qemu-system-x86_64 -smp {}", config.vcpus),
                    error: None,
                    guest_ports: Some(vec![7, 9, 9100, 5201]),
                    client_qemu_commands: vec![],
                    points,
                }
            })
            .collect();
        MatrixRun {
            date: "2026-11-25T20:00:00Z".into(),
            host: HostLoad {
                cpus: 2,
                load_start: Some([1.0, 0.5, 0.25]),
                load_end: None,
                congestion: Some("cubic".into()),
            },
            accel: "tcg".into(),
            accel_reason: "test".into(),
            vhost: false,
            vhost_reason: "test".into(),
            rss: false,
            memory_mib: 512,
            cmdline: String::new(),
            spread: true,
            plan,
            configs,
        }
    }

    #[test]
    fn statuses() {
        let run = fake_run();
        let status = |c, d, s| {
            Status::of(
                run.point(&PointKey { config: c, direction: d, length: MsgLen(Some(512)), sessions: s }).unwrap(),
            )
        };
        assert_eq!(status(cfg(2, 2), DirectionArg::HostToGuest, 1), Status::Ok);
        assert_eq!(status(cfg(2, 1), DirectionArg::HostToGuest, 2), Status::Failed);
        assert_eq!(status(cfg(2, 1), DirectionArg::GuestInitiated, 1), Status::Skipped);
        let mut p = run
            .point(&PointKey {
                config: cfg(2, 2),
                direction: DirectionArg::HostToGuest,
                length: MsgLen(Some(512)),
                sessions: 1,
            })
            .unwrap()
            .clone();
        p.runs.push(Err("x".into()));
        assert_eq!(Status::of(&p), Status::Partial);
        p.runs.clear();
        assert_eq!(Status::of(&p), Status::Failed, "not measured at all");
        assert!(!run.complete(), "a failed point");
        let mut run = run;
        for p in run.configs.iter_mut().flat_map(|c| &mut c.points) {
            if Status::of(p) == Status::Failed {
                p.runs = vec![Ok(Sample { mbit_s: 1.0, ..Sample::default() })];
            }
        }
        assert!(run.complete(), "every host-driven point measured, the guest-initiated ones skipped");
        run.configs[0].points[0].skipped = Some("guest serves no iperf3".into());
        assert!(!run.complete(), "a host-driven point skipped");
        run.configs[0].points[0].skipped = None;
        run.configs[1].error = Some("QEMU ended".into());
        assert!(!run.complete(), "a boot that failed");
    }

    #[test]
    fn host_load() {
        assert_eq!(HostLoad::parse_loadavg("1.20 0.98 0.85 2/345 6789\n"), Some([1.2, 0.98, 0.85]));
        assert_eq!(HostLoad::parse_loadavg("1.20 x 0.85"), None);
        assert_eq!(HostLoad::parse_loadavg(""), None);
        let run = fake_run();
        let host = "2 host CPUs, load 1.00 0.50 0.25 → ?, host TCP congestion control cubic";
        assert_eq!(run.host.describe(), host);
        assert!(tables(&run).lines().next().unwrap().ends_with(&format!("; {host}")));
        let mut given = run.clone();
        given.plan.congestion = Some("reno".into());
        assert!(tables(&given).lines().next().unwrap().ends_with(&format!("; {host}, iperf3 -C reno")));
        let j = json(&run);
        assert_eq!((j["host_cpus"].as_u64(), j["host_load_start"][1].as_f64()), (Some(2), Some(0.5)));
        assert_eq!((j["host_congestion"].as_str(), j["congestion"].as_str()), (Some("cubic"), Some("cubic")));
        assert!(j["host_load_end"].is_null());
    }

    #[test]
    fn ratios_pair_configs_with_equal_vcpus() {
        let mut run = fake_run();
        assert_eq!(run.ratio_pairs(), [(cfg(2, 2), cfg(2, 1))]);
        run.plan.configs = vec![cfg(1, 1), cfg(4, 1), cfg(4, 2), cfg(4, 4), cfg(8, 8)];
        assert_eq!(run.ratio_pairs(), [(cfg(4, 2), cfg(4, 1)), (cfg(4, 4), cfg(4, 1))], "8/8 has no 8/1");
        // With the offloads on and off: each against its own single queue,
        // then each configuration on against off.
        let off = |v, q| VmConfig { offloads: false, ..cfg(v, q) };
        run.plan.configs = vec![cfg(2, 1), off(2, 1), cfg(2, 2), off(2, 2), cfg(4, 4)];
        assert_eq!(
            run.ratio_pairs(),
            [(cfg(2, 2), cfg(2, 1)), (off(2, 2), off(2, 1)), (cfg(2, 1), off(2, 1)), (cfg(2, 2), off(2, 2))]
        );
        assert_eq!(ratio(Some(3.0), Some(0.0)), None);
        assert_eq!(ratio(Some(3.0), Some(1.5)), Some(2.0));
        assert_eq!(ratio(None, Some(1.5)), None);
    }

    #[test]
    fn the_classic_table() {
        let t = tables(&fake_run());
        let lines: Vec<&str> = t.lines().collect();
        let at = lines.iter().position(|l| l.starts_with("host → guest")).unwrap();
        assert_eq!(lines[at], "host → guest (host iperf3 -c, guest server receives), messages: 512 B");
        assert!(
            lines[at + 1].contains("2/1 (vCPUs/queues)") && lines[at + 1].contains("2/2 ÷ 2/1"),
            "{}",
            lines[at + 1]
        );
        assert_eq!(
            lines[at + 2].split_whitespace().collect::<Vec<_>>(),
            ["sessions", "Mbit/s", "vCPU%", "DM%", "norm", "Mbit/s", "vCPU%", "DM%", "norm", "Mbit/s", "norm"]
        );
        // Sessions 1: 2/1 median of 100 and 150 = 125 at 100 % CPU (75 + 25);
        // 2/2: 250; ratio 2.
        assert_eq!(
            lines[at + 3].split_whitespace().collect::<Vec<_>>(),
            ["1", "125.0", "75", "25", "125.0", "250.0", "75", "25", "250.0", "2.00", "2.00"]
        );
        assert_eq!(
            lines[at + 4].split_whitespace().collect::<Vec<_>>(),
            ["2", "failed", "500.0", "75", "25", "500.0", "-", "-"]
        );
        assert_eq!(
            lines[at + 5],
            "  2/1 host-to-guest 512 B ×2: 2 of 2 runs failed, first: iperf3: unable to connect, \"refused\""
        );
        let skip = lines.iter().position(|l| l.starts_with("guest-initiated")).unwrap();
        assert_eq!(lines[skip + 1], "  skipped: guest has no iperf3 client mode (it ignored iperf-client=)");
        let g = lines.iter().position(|l| l.starts_with("guest's own figures")).unwrap();
        assert_eq!(lines[g + 1].split_whitespace().collect::<Vec<_>>(), GUEST_COLUMNS);
        assert_eq!(
            lines[g + 2].split_whitespace().collect::<Vec<_>>(),
            [
                "2/1",
                "host-to-guest",
                "512",
                "B",
                "1",
                "50",
                "500.0",
                "10.00",
                "2.00",
                "2500",
                "4000",
                "1625",
                "0",
                "2/2"
            ]
        );
        assert_eq!(lines.len(), g + 5, "three measured points, nothing after them");
    }

    #[test]
    fn csv_has_one_quoted_row_per_point() {
        let c = csv(&fake_run());
        let rows: Vec<&str> = c.lines().collect();
        assert_eq!(rows[0], CSV_HEADER);
        assert_eq!(rows.len(), 1 + 2 * 2 * 2);
        let columns = CSV_HEADER.split(',').count();
        assert_eq!(columns, 27);
        assert_eq!(
            rows[1],
            "2/1,2,1,false,false,host-to-guest,512,1,ok,2,2,125.000,100.000,150.000,75.000,25.000,100.000,125.000,\
             50.000,500.000,10.000,2.000,2500.000,4000.000,1625.000,0.000,"
        );
        assert_eq!(
            rows[2],
            "2/1,2,1,false,false,host-to-guest,512,2,failed,0,2,,,,,,,,,,,,,,,,\"iperf3: unable to connect, \"\"refused\"\"\""
        );
        assert!(rows[3].starts_with("2/1,2,1,false,false,guest-initiated,512,1,skipped,0,0,"));
        assert!(rows[3].ends_with(",guest has no iperf3 client mode (it ignored iperf-client=)"));
        assert_eq!(csv_field("a\nb"), "\"a\nb\"");
    }

    #[test]
    fn json_has_every_point_its_runs_and_the_ratios() {
        let run = fake_run();
        let j = json(&run);
        assert_eq!(j["benchmark"], "iperf3-matrix");
        assert_eq!(j["plan"]["configs"], json!(["2/1", "2/2"]));
        assert_eq!(j["plan"]["lengths"], json!(["512"]));
        assert_eq!(j["configs"][1]["qemu_command"], "ip netns exec mqbench qemu-system-x86_64 -smp 2");
        assert_eq!(j["configs"][0]["guest_ports"], json!([7, 9, 9100, 5201]));
        let points = j["points"].as_array().unwrap();
        assert_eq!(points.len(), 8);
        assert_eq!(points[0]["status"], "ok");
        assert_eq!(points[0]["median"]["mbit_s"], 125.0);
        assert_eq!(
            (&points[0]["median"]["rx_cycles_per_packet"], &points[0]["median"]["tx_cycles_per_packet"]),
            (&json!(2500.0), &json!(4000.0))
        );
        assert_eq!(points[0]["runs"][0]["guest"]["ingress_cycles"], 2_500_000);
        assert_eq!(points[0]["runs"][1]["host_cpu"]["vcpu_pct"], 75.0);
        assert_eq!(points[0]["runs"][0]["guest"]["busy_pct"], 50.0);
        assert_eq!(points[1]["status"], "failed");
        assert!(points[1]["median"].is_null());
        assert_eq!(points[1]["runs"][0]["error"], "iperf3: unable to connect, \"refused\"");
        assert_eq!(points[2]["skipped"], "guest has no iperf3 client mode (it ignored iperf-client=)");
        let ratios = j["ratios"].as_array().unwrap();
        assert_eq!(ratios.len(), 1, "only where both sides were measured");
        assert_eq!((ratios[0]["config"].as_str(), ratios[0]["single_queue"].as_str()), (Some("2/2"), Some("2/1")));
        assert_eq!((ratios[0]["throughput"].as_f64(), ratios[0]["normalized"].as_f64()), (Some(2.0), Some(2.0)));
        // It round-trips as text.
        let text = serde_json::to_string_pretty(&j).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), j);
    }
}
