//! What the iperf3 matrix measures, what one run of a point yields, and
//! the medians the tables show. Pure: no processes, no files.

use crate::cli::{BenchIperfArgs, DirectionArg, MsgLen, OnOff, VmConfig};

/// The configurations measured unless `--configs` names others.
pub const DEFAULT_CONFIGS: [VmConfig; 3] = [
    VmConfig { vcpus: 1, queues: 1, offloads: true },
    VmConfig { vcpus: 2, queues: 1, offloads: true },
    VmConfig { vcpus: 2, queues: 2, offloads: true },
];
/// `--quick`'s configuration unless `--configs` names others: the smallest
/// that has more than one queue pair.
pub const QUICK_CONFIG: VmConfig = VmConfig { vcpus: 2, queues: 2, offloads: true };
pub const QUICK_SESSIONS: [u32; 2] = [1, 2];
pub const QUICK_SECONDS: u32 = 2;

/// Everything a matrix run measures, resolved from the options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub configs: Vec<VmConfig>,
    pub directions: Vec<DirectionArg>,
    pub lengths: Vec<MsgLen>,
    pub sessions: Vec<u32>,
    pub repeat: u32,
    /// Seconds measured per run (iperf3 -t).
    pub seconds: u32,
    /// Seconds left out before (iperf3 -O).
    pub omit: u32,
    /// The host client's congestion control (iperf3 -C); None: the host's
    /// default.
    pub congestion: Option<String>,
}

/// Drops repeated entries, keeping the first of each (the order is the user's).
fn unique<T: PartialEq + Copy>(v: &[T]) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(v.len());
    for x in v {
        if !out.contains(x) {
            out.push(*x);
        }
    }
    out
}

impl Plan {
    pub fn from_args(a: &BenchIperfArgs) -> Plan {
        let configs = match (&a.configs, a.quick) {
            (Some(c), _) => unique(c),
            (None, true) => vec![QUICK_CONFIG],
            (None, false) => DEFAULT_CONFIGS.to_vec(),
        };
        // Each configuration with the offloads on, then off: side by side.
        let offloads = match (&a.offloads, a.quick) {
            (Some(o), _) => unique(o),
            (None, true) => vec![OnOff::On],
            (None, false) => vec![OnOff::On, OnOff::Off],
        };
        let configs = configs
            .iter()
            .flat_map(|c| offloads.iter().map(move |o| VmConfig { offloads: *o == OnOff::On, ..*c }))
            .collect();
        let mut sessions = if a.quick { QUICK_SESSIONS.to_vec() } else { unique(&a.sessions) };
        sessions.sort_unstable();
        Plan {
            configs,
            directions: unique(&a.directions),
            lengths: unique(&a.lengths),
            sessions,
            repeat: if a.quick { 1 } else { a.repeat },
            seconds: if a.quick { QUICK_SECONDS } else { a.time },
            omit: if a.quick { 0 } else { a.omit },
            congestion: a.congestion.clone(),
        }
    }

    /// The points of one configuration, in the order they are measured
    /// within one repetition: direction, then size, then sessions.
    pub fn points(&self, config: VmConfig) -> Vec<PointKey> {
        let mut out = Vec::new();
        for &direction in &self.directions {
            for &length in &self.lengths {
                for &sessions in &self.sessions {
                    out.push(PointKey { config, direction, length, sessions });
                }
            }
        }
        out
    }

    /// Runs in the whole matrix (every point × repetitions): the progress bar's length.
    pub fn total_runs(&self) -> u64 {
        (self.configs.len() * self.directions.len() * self.lengths.len() * self.sessions.len()) as u64
            * u64::from(self.repeat)
    }
}

impl DirectionArg {
    /// The name in files (JSON, CSV) and on the command line.
    pub fn id(self) -> &'static str {
        match self {
            DirectionArg::HostToGuest => "host-to-guest",
            DirectionArg::GuestToHost => "guest-to-host",
            DirectionArg::GuestInitiated => "guest-initiated",
        }
    }

    /// A heading for tables and charts.
    pub fn title(self) -> &'static str {
        match self {
            DirectionArg::HostToGuest => "host → guest (host iperf3 -c, guest server receives)",
            DirectionArg::GuestToHost => "guest → host (host iperf3 -c -R, guest server sends)",
            DirectionArg::GuestInitiated => "guest-initiated (guest iperf3 client → host iperf3 -s)",
        }
    }

    /// Driven by the host's iperf3 client against the guest's server (the
    /// guest-initiated direction needs the guest's own client).
    pub fn host_client(self) -> bool {
        self != DirectionArg::GuestInitiated
    }
}

impl MsgLen {
    /// `512 B`, `64 KiB`, or `default` (iperf3's 128 KiB for TCP).
    pub fn label(self) -> String {
        match self.0 {
            None => "default".into(),
            Some(n) if n >= 1024 && n % 1024 == 0 => format!("{} KiB", n / 1024),
            Some(n) => format!("{n} B"),
        }
    }

    /// The value in files: bytes, or `default`.
    pub fn id(self) -> String {
        self.0.map_or("default".into(), |n| n.to_string())
    }
}

/// One point of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PointKey {
    pub config: VmConfig,
    pub direction: DirectionArg,
    pub length: MsgLen,
    pub sessions: u32,
}

impl PointKey {
    pub fn describe(&self) -> String {
        format!("{} {} {} ×{}", self.config, self.direction.id(), self.length.label(), self.sessions)
    }
}

/// The host's accounting of QEMU's threads over one run's measured
/// interval, each as a percentage of one host CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HostCpu {
    /// The vCPU threads (`CPU n/TCG`, `CPU n/KVM`).
    pub vcpu_pct: f64,
    /// Every other thread of QEMU: main loop, device model, I/O and vhost
    /// workers.
    pub device_pct: f64,
    /// Of `device_pct`, the vhost-net workers (`vhost-<pid>`).
    pub vhost_pct: f64,
    /// The interval the figures cover, in seconds.
    pub window_s: f64,
}

impl HostCpu {
    pub fn total_pct(&self) -> f64 {
        self.vcpu_pct + self.device_pct
    }
}

/// The guest's own counters over one run (the differences of two scrapes
/// of its metrics, summed over its vCPUs unless said otherwise).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GuestCounters {
    /// Per vCPU (in the order of its cpu label): busy share of its own
    /// time between the scrapes, percent.
    pub busy_pct: Vec<f64>,
    pub rx_packets: u64,
    pub tx_packets: u64,
    /// Per vCPU: frames received on its own queue.
    pub rx_packets_per_vcpu: Vec<u64>,
    /// Frame bytes both ways (what the per-MB figures divide by).
    pub bytes: u64,
    pub kicks: u64,
    /// Queue interrupts (receive and transmit).
    pub queue_irqs: u64,
    pub steer_misses: u64,
    /// TSC ticks of the vCPUs' network rounds: the receive side, and the
    /// rest (services, the stack's egress, transmitting).
    pub ingress_cycles: u64,
    pub egress_cycles: u64,
}

impl GuestCounters {
    /// Busy time of all vCPUs, as a percentage of one CPU.
    pub fn busy_total_pct(&self) -> f64 {
        self.busy_pct.iter().sum()
    }

    /// `n` per 10^6 bytes of frames.
    pub fn per_mb(&self, n: u64) -> Option<f64> {
        (self.bytes > 0).then(|| n as f64 * 1e6 / self.bytes as f64)
    }

    /// Receive-side ticks per received frame; `None` without frames or
    /// without the counter (a guest that does not export it).
    pub fn rx_cycles_per_packet(&self) -> Option<f64> {
        (self.rx_packets > 0 && self.ingress_cycles > 0).then(|| self.ingress_cycles as f64 / self.rx_packets as f64)
    }

    /// The other ticks of the rounds per sent frame. They include the
    /// services' work (an iperf3 server reading what it receives), so with
    /// few frames sent (pure ACKs) this is large.
    pub fn tx_cycles_per_packet(&self) -> Option<f64> {
        (self.tx_packets > 0 && self.egress_cycles > 0).then(|| self.egress_cycles as f64 / self.tx_packets as f64)
    }

    /// All the rounds' ticks per 1000 bytes of frames both ways.
    pub fn cycles_per_kb(&self) -> Option<f64> {
        let all = self.ingress_cycles + self.egress_cycles;
        (self.bytes > 0 && all > 0).then(|| all as f64 * 1000.0 / self.bytes as f64)
    }
}

/// What one run of a point yielded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    /// end.sum_received.bits_per_second / 10^6.
    pub mbit_s: f64,
    /// TCP retransmits of the sending side, when iperf3 reports them.
    pub retransmits: Option<u64>,
    pub host: Option<HostCpu>,
    pub guest: Option<GuestCounters>,
}

/// A point's runs, or why it was not measured.
#[derive(Clone, Debug, PartialEq)]
pub struct PointResult {
    pub key: PointKey,
    pub runs: Vec<Result<Sample, String>>,
    /// Not measured at all, and why (shown, never counted as a result).
    pub skipped: Option<String>,
}

impl PointResult {
    pub fn new(key: PointKey) -> PointResult {
        PointResult { key, runs: Vec::new(), skipped: None }
    }

    pub fn ok_runs(&self) -> impl Iterator<Item = &Sample> {
        self.runs.iter().filter_map(|r| r.as_ref().ok())
    }

    pub fn errors(&self) -> impl Iterator<Item = &String> {
        self.runs.iter().filter_map(|r| r.as_ref().err())
    }

    /// The medians over the successful runs; `None` when there is none.
    pub fn summary(&self) -> Option<Summary> {
        let ok: Vec<&Sample> = self.ok_runs().collect();
        let of = |f: &dyn Fn(&Sample) -> Option<f64>| median(ok.iter().filter_map(|s| f(s)).collect());
        let mbit_s = of(&|s| Some(s.mbit_s))?;
        let host = |f: fn(&HostCpu) -> f64| of(&|s| s.host.as_ref().map(f));
        let guest = |f: &dyn Fn(&GuestCounters) -> Option<f64>| of(&|s| s.guest.as_ref().and_then(f));
        Some(Summary {
            runs: ok.len(),
            mbit_s,
            mbit_s_min: ok.iter().map(|s| s.mbit_s).fold(f64::INFINITY, f64::min),
            mbit_s_max: ok.iter().map(|s| s.mbit_s).fold(f64::NEG_INFINITY, f64::max),
            vcpu_pct: host(|h| h.vcpu_pct),
            device_pct: host(|h| h.device_pct),
            cpu_pct: host(HostCpu::total_pct),
            normalized: of(&|s| normalized(s.mbit_s, s.host.as_ref()?.total_pct())),
            guest_busy_pct: guest(&|g| Some(g.busy_total_pct())),
            packets_per_mb: guest(&|g| g.per_mb(g.rx_packets + g.tx_packets)),
            kicks_per_mb: guest(&|g| g.per_mb(g.kicks)),
            irqs_per_mb: guest(&|g| g.per_mb(g.queue_irqs)),
            rx_cycles_per_packet: guest(&|g| g.rx_cycles_per_packet()),
            tx_cycles_per_packet: guest(&|g| g.tx_cycles_per_packet()),
            cycles_per_kb: guest(&|g| g.cycles_per_kb()),
            retransmits: of(&|s| s.retransmits.map(|r| r as f64)),
        })
    }
}

/// Throughput per host CPU: Mbit/s for each whole host CPU QEMU used
/// (Mbit/s ÷ (CPU % / 100)), as the classic tables normalise.
pub fn normalized(mbit_s: f64, cpu_pct: f64) -> Option<f64> {
    (cpu_pct > 0.0).then(|| mbit_s / (cpu_pct / 100.0))
}

/// A point's figures: each the median of that figure over the successful
/// runs (so the figures of one row need not come from the same run).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    pub runs: usize,
    pub mbit_s: f64,
    pub mbit_s_min: f64,
    pub mbit_s_max: f64,
    pub vcpu_pct: Option<f64>,
    pub device_pct: Option<f64>,
    pub cpu_pct: Option<f64>,
    pub normalized: Option<f64>,
    pub guest_busy_pct: Option<f64>,
    pub packets_per_mb: Option<f64>,
    pub kicks_per_mb: Option<f64>,
    pub irqs_per_mb: Option<f64>,
    /// Receive-side TSC ticks per received frame, and the rest of the
    /// network rounds' ticks per sent frame (see [`GuestCounters`]).
    pub rx_cycles_per_packet: Option<f64>,
    pub tx_cycles_per_packet: Option<f64>,
    /// All the network rounds' ticks per 1000 bytes of frames.
    pub cycles_per_kb: Option<f64>,
    pub retransmits: Option<f64>,
}

/// The median (the mean of the middle two for an even count); `None` for
/// no values. NaNs are left out.
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> BenchIperfArgs {
        let cli = crate::cli::Cli::try_parse_from(["xtask", "bench"].iter().chain(extra)).unwrap();
        let crate::cli::Cmd::Bench(b) = cli.command else { panic!() };
        b.iperf
    }

    fn cfg(vcpus: u16, queues: u16) -> VmConfig {
        VmConfig { vcpus, queues, offloads: true }
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0]), Some(3.0));
        assert_eq!(median(vec![5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(vec![f64::NAN, 7.0, 1.0]), Some(4.0), "NaN left out");
        assert_eq!(median(vec![f64::NAN]), None);
    }

    fn off(vcpus: u16, queues: u16) -> VmConfig {
        VmConfig { vcpus, queues, offloads: false }
    }

    #[test]
    fn the_default_plan_is_the_classic_matrix_with_offloads_on_and_off() {
        let p = Plan::from_args(&args(&[]));
        assert_eq!(p.configs, [cfg(1, 1), off(1, 1), cfg(2, 1), off(2, 1), cfg(2, 2), off(2, 2)]);
        assert_eq!(p.sessions, [1, 2, 4, 8]);
        assert_eq!(p.lengths, [MsgLen(Some(512)), MsgLen(None)]);
        assert_eq!((p.repeat, p.seconds, p.omit), (3, 5, 1));
        assert_eq!(p.total_runs(), 6 * 3 * 2 * 4 * 3);
        let p = Plan::from_args(&args(&["--offloads", "off"]));
        assert_eq!(p.configs, [off(1, 1), off(2, 1), off(2, 2)]);
        let points = p.points(cfg(2, 2));
        assert_eq!(points.len(), 3 * 2 * 4);
        assert_eq!(
            points[0],
            PointKey {
                config: cfg(2, 2),
                direction: DirectionArg::HostToGuest,
                length: MsgLen(Some(512)),
                sessions: 1
            }
        );
        assert_eq!(points[5].length, MsgLen(None));
        assert_eq!(points[8].direction, DirectionArg::GuestToHost);
        assert_eq!(points[23].describe(), "2/2 guest-initiated default ×8");
    }

    #[test]
    fn quick_is_one_small_configuration() {
        let p = Plan::from_args(&args(&["--quick"]));
        assert_eq!(p.configs, [QUICK_CONFIG]);
        assert_eq!((p.sessions.as_slice(), p.repeat, p.seconds, p.omit), (&[1, 2][..], 1, 2, 0));
        assert_eq!(p.total_runs(), 3 * 2 * 2);
        let p = Plan::from_args(&args(&["--quick", "--configs", "1/1"]));
        assert_eq!(p.configs, [cfg(1, 1)]);
        let p = Plan::from_args(&args(&["--quick", "--offloads", "on,off"]));
        assert_eq!(p.configs, [cfg(2, 2), off(2, 2)]);
    }

    #[test]
    fn repeated_entries_are_measured_once_and_sessions_sorted() {
        let p = Plan::from_args(&args(&[
            "--configs",
            "2/2,1/1,2/2",
            "--sessions",
            "8,1,8",
            "--lengths",
            "512,512",
            "--offloads",
            "on,on",
        ]));
        assert_eq!(p.configs, [cfg(2, 2), cfg(1, 1)]);
        assert_eq!(p.sessions, [1, 8]);
        assert_eq!(p.lengths, [MsgLen(Some(512))]);
    }

    #[test]
    fn labels() {
        assert_eq!(MsgLen(Some(512)).label(), "512 B");
        assert_eq!(MsgLen(Some(65536)).label(), "64 KiB");
        assert_eq!(MsgLen(Some(1500)).label(), "1500 B");
        assert_eq!(MsgLen(None).label(), "default");
        assert_eq!((MsgLen(None).id(), MsgLen(Some(512)).id()), ("default".to_string(), "512".to_string()));
        assert!(DirectionArg::GuestToHost.host_client() && !DirectionArg::GuestInitiated.host_client());
    }

    fn sample(mbit_s: f64, vcpu: f64, device: f64) -> Sample {
        Sample {
            mbit_s,
            retransmits: Some(2),
            host: Some(HostCpu { vcpu_pct: vcpu, device_pct: device, vhost_pct: 0.0, window_s: 5.0 }),
            guest: Some(GuestCounters {
                busy_pct: vec![40.0, 20.0],
                rx_packets: 600,
                tx_packets: 400,
                rx_packets_per_vcpu: vec![300, 300],
                bytes: 2_000_000,
                kicks: 50,
                queue_irqs: 20,
                steer_misses: 0,
                ingress_cycles: 600 * u64::from(vcpu as u32 * 10),
                egress_cycles: 400 * 3_000,
            }),
        }
    }

    #[test]
    fn a_summary_takes_medians_over_the_successful_runs() {
        let key =
            PointKey { config: cfg(2, 2), direction: DirectionArg::HostToGuest, length: MsgLen(None), sessions: 4 };
        let mut p = PointResult::new(key);
        assert_eq!(p.summary(), None, "no runs, no figures");
        p.runs = vec![
            Ok(sample(100.0, 50.0, 50.0)),
            Err("iperf3: unable to connect".into()),
            Ok(sample(300.0, 100.0, 100.0)),
            Ok(sample(200.0, 150.0, 50.0)),
        ];
        let s = p.summary().unwrap();
        assert_eq!((s.runs, s.mbit_s, s.mbit_s_min, s.mbit_s_max), (3, 200.0, 100.0, 300.0));
        assert_eq!((s.vcpu_pct, s.device_pct, s.cpu_pct), (Some(100.0), Some(50.0), Some(200.0)));
        // Per run: 100 / 1.0, 300 / 2.0, 200 / 2.0 → median 100.
        assert_eq!(s.normalized, Some(100.0));
        assert_eq!(s.guest_busy_pct, Some(60.0));
        assert_eq!((s.packets_per_mb, s.kicks_per_mb, s.irqs_per_mb), (Some(500.0), Some(25.0), Some(10.0)));
        // Receive ticks per received frame: 500, 1000, 1500 → the median.
        assert_eq!((s.rx_cycles_per_packet, s.tx_cycles_per_packet), (Some(1000.0), Some(3000.0)));
        // (600 000 + 1 200 000) ticks per 2 000 000 bytes.
        assert_eq!(s.cycles_per_kb, Some(900.0));
        let none = GuestCounters { rx_packets: 0, ..sample(1.0, 1.0, 1.0).guest.unwrap() };
        assert_eq!(none.rx_cycles_per_packet(), None, "no frames, no figure");
        let old = GuestCounters { ingress_cycles: 0, egress_cycles: 0, ..sample(1.0, 1.0, 1.0).guest.unwrap() };
        assert_eq!((old.rx_cycles_per_packet(), old.tx_cycles_per_packet()), (None, None), "not exported");
        assert_eq!(s.retransmits, Some(2.0));
        assert_eq!(p.errors().collect::<Vec<_>>(), ["iperf3: unable to connect"]);

        // Runs without CPU figures still give a throughput.
        p.runs = vec![Ok(Sample { mbit_s: 10.0, ..Sample::default() })];
        let s = p.summary().unwrap();
        assert_eq!((s.mbit_s, s.cpu_pct, s.normalized, s.guest_busy_pct), (10.0, None, None, None));
        p.runs = vec![Err("x".into())];
        assert_eq!(p.summary(), None);
    }

    #[test]
    fn normalisation_is_throughput_per_host_cpu() {
        assert_eq!(normalized(900.0, 150.0), Some(600.0));
        assert_eq!(normalized(900.0, 0.0), None);
        let g = GuestCounters { bytes: 0, ..GuestCounters::default() };
        assert_eq!(g.per_mb(5), None);
    }
}
