//! `cargo xtask bench` (or `bench iperf`): the netperf-style multiqueue
//! matrix, driven by the host's real iperf3.
//!
//! Every boot of the release kernel (vCPUs/queue pairs of a configuration)
//! is inside a network namespace this run creates and deletes (the network
//! rule: QEMU, the tap and every host-side client live in there, started
//! with `ip netns exec`). The host-driven points (direction × message size
//! × sessions) of a configuration share one boot: once the guest lists its
//! TCP services, each is run `--repeat` times, the repetitions interleaved
//! over the matrix so that drift spreads over every point. One run is:
//!
//! 1. a scrape of the guest's `GET /metrics` (python3 inside the namespace);
//! 2. `iperf3 -c GUEST -P N [-R] [-l LEN] -t T -O O --json`, while QEMU's
//!    threads are sampled from `/proc/<pid>/task/*/stat` every 100 ms;
//! 3. a second scrape.
//!
//! Throughput is iperf3's receiver; the host CPU is QEMU's threads over the
//! last T seconds before iperf3 exited (the measured interval, without the
//! set-up and the omitted seconds); the guest's figures are the differences
//! of the two scrapes. The guest-initiated direction (the guest's own
//! iperf3 client, the host's `iperf3 -s -1 --json` as server) is its own
//! path: the guest's client runs one test per boot, started by boot options
//! (`iperf-client=` and friends), so each of its runs is a boot of its own,
//! measured the same way around the host's server. A guest that does not
//! know those options has these points skipped, with the reason.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use boot::accel::Accel;
use boot::image::Firmware;
use boot::netns::{self, TapNetwork};
use boot::prereq::{self, Tool};
use boot::procstat;
use boot::runner::Started;
use boot::vhost::{self, VhostChoice};
use indicatif::{ProgressBar, ProgressStyle};

use super::matrix::{Plan, PointKey, PointResult, Sample};
use super::measure::{self, ClientReport, ThreadSample, IPERF3_PORT, SERVICES_LINE};
use super::report::{self, ConfigRun, HostLoad, MatrixRun, Status};
use super::{bench_dir, require_root, svg, with_guest, write_out, Guest, Up};
use crate::cli::{BenchIperfArgs, DirectionArg, VmConfig};
use crate::kbuild;
use crate::run::{say, stop_flag};
use crate::traffic;

/// Quiet time before every run: the guest's metrics board (refreshed every
/// 100 ms) settles and the previous run's connections are gone.
const PAUSE: Duration = Duration::from_millis(500);
/// How often QEMU's threads are sampled during a run.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// How long one iperf3 run may take beyond its -t and -O (connection
/// set-up, the results exchange) before it is killed.
const RUN_GRACE: Duration = Duration::from_secs(30);
/// Two scrapes of the guest's metrics per run, each bounded by python's
/// 5 s timeout.
const SCRAPES: Duration = Duration::from_secs(12);

/// What every boot of one matrix run shares.
#[derive(Clone, Debug)]
pub struct Setup {
    pub netns: String,
    pub accel: Accel,
    pub boot: Firmware,
    pub accel_reason: String,
    pub vhost: VhostChoice,
    pub rss: bool,
    pub memory_mib: u32,
    pub cmdline: String,
    /// Whether each boot gets [`STEER_KEY`] and each run's client ports are
    /// chosen to spread its sessions evenly over the vCPUs (`--random-ports`
    /// turns it off).
    pub spread: bool,
}

/// The steering key of every bench boot (unless `--random-ports`): the
/// well-known RSS sample key, as the boot tests use.
pub const STEER_KEY: &str = crate::boot_tests::TEST_STEER_KEY;
/// The first client port a boot's runs bind (each run takes the next free
/// ones, so none waits for the last run's TIME-WAIT).
const FIRST_CLIENT_PORT: u16 = 20000;

pub fn main(a: BenchIperfArgs) -> Result<i32, String> {
    let plan = Plan::from_args(&a);
    // Everything that can be checked before the (slow) kernel build.
    TapNetwork::new(&a.netns, 1)?;
    require_root("cargo xtask bench")?;
    let vhost = vhost::choose(a.vhost.into(), vhost::probe(), a.rss)?;
    prereq::ensure(&[Tool::Iproute2, Tool::Iperf3, Tool::Python3], &mut |m| say!("{m}"))?;
    netns::check_absent(&a.netns)?;
    let boot = Firmware::from(a.boot);
    let choice = crate::run::prepare(boot, a.accel.into())?;
    say!("accelerator: {} ({})", choice.accel, choice.reason);
    say!("vhost-net: {} ({})", if vhost.on { "on" } else { "off" }, vhost.reason);
    let built = kbuild::build(true, &[boot])?;
    let setup = Setup {
        netns: a.netns.clone(),
        accel: choice.accel,
        boot,
        accel_reason: choice.reason,
        vhost,
        rss: a.rss,
        memory_mib: a.memory,
        cmdline: a.cmdline.clone(),
        spread: !a.random_ports,
    };
    let run = run_matrix(&setup, &plan, &built, &stop_flag());
    println!();
    print!("{}", report::tables(&run));
    let dir = a.out.clone().unwrap_or_else(|| bench_dir(&built));
    for path in write_files(&run, &dir)? {
        say!("wrote {}", path.display());
    }
    if !run.complete() {
        say!("some points were not measured or had failed runs (see above)");
    }
    Ok(if run.complete() { 0 } else { 1 })
}

/// Writes iperf.json, iperf.csv and iperf.svg into `dir`; returns their paths.
pub fn write_files(run: &MatrixRun, dir: &Path) -> Result<Vec<PathBuf>, String> {
    let files = [
        ("iperf.json", serde_json::to_string_pretty(&report::json(run)).expect("serialisable") + "\n"),
        ("iperf.csv", report::csv(run)),
        ("iperf.svg", svg::chart(run)),
    ];
    files
        .into_iter()
        .map(|(name, text)| {
            let path = dir.join(name);
            write_out(&path, &text).map(|()| path)
        })
        .collect()
}

/// Boots every configuration in turn and measures its points.
pub fn run_matrix(setup: &Setup, plan: &Plan, built: &kbuild::Built, stop: &Arc<AtomicBool>) -> MatrixRun {
    let date = rfc3339(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()));
    let load = || std::fs::read_to_string("/proc/loadavg").ok().and_then(|t| HostLoad::parse_loadavg(&t));
    let mut host = HostLoad {
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_start: load(),
        load_end: None,
        congestion: std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty()),
    };
    say!(
        "iperf3 matrix: configurations {}, sessions {:?}, lengths {}, {} run(s) of {} s (+{} s omitted) per point: \
         {} runs",
        plan.configs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
        plan.sessions,
        plan.lengths.iter().map(|l| l.label()).collect::<Vec<_>>().join(", "),
        plan.repeat,
        plan.seconds,
        plan.omit,
        plan.total_runs()
    );
    let progress = ProgressBar::new(plan.total_runs());
    progress.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{wide_bar}] {pos}/{len} runs, ETA {eta} {msg}")
            .expect("a valid template"),
    );
    let per_config = plan.total_runs() / plan.configs.len().max(1) as u64;
    let mut configs = Vec::new();
    for (i, &config) in plan.configs.iter().enumerate() {
        let mut c = if stop.load(Ordering::SeqCst) {
            unmeasured(plan, config, String::new(), "interrupted before it booted".into())
        } else {
            boot_config(setup, plan, built, config, stop, &progress)
        };
        if plan.directions.contains(&DirectionArg::GuestInitiated) && !stop.load(Ordering::SeqCst) {
            guest_initiated(setup, plan, built, stop, &progress, &mut c);
        }
        if let Some(e) = &c.error {
            note(&progress, format!("{config}: {e}"));
        }
        configs.push(c);
        progress.set_position(per_config * (i as u64 + 1));
    }
    progress.finish_and_clear();
    host.load_end = load();
    MatrixRun {
        date,
        host,
        accel: setup.accel.to_string(),
        accel_reason: setup.accel_reason.clone(),
        vhost: setup.vhost.on,
        vhost_reason: setup.vhost.reason.clone(),
        rss: setup.rss,
        memory_mib: setup.memory_mib,
        cmdline: setup.cmdline.clone(),
        spread: setup.spread,
        plan: plan.clone(),
        configs,
    }
}

/// A progress line above the bar (or plainly, when there is no bar).
fn note(progress: &ProgressBar, msg: String) {
    if progress.is_hidden() {
        say!("{msg}");
    } else {
        progress.println(format!("xtask: {msg}"));
    }
}

/// A configuration none of whose points was measured, and why.
fn unmeasured(plan: &Plan, config: VmConfig, qemu_command: String, error: String) -> ConfigRun {
    ConfigRun {
        config,
        qemu_command,
        client_qemu_commands: Vec::new(),
        error: Some(error),
        guest_ports: None,
        points: plan.points(config).into_iter().map(PointResult::new).collect(),
    }
}

/// The boot of `config` with `extra` boot options, its work bounded by
/// `budget` and started once the guest lists its TCP services.
fn guest<'a>(setup: &'a Setup, config: VmConfig, extra: &str, budget: Duration) -> Guest<'a> {
    let key = if setup.spread { format!("steer-key={STEER_KEY}") } else { String::new() };
    Guest {
        netns: &setup.netns,
        accel: setup.accel,
        boot: setup.boot,
        vcpus: config.vcpus,
        queues: config.queues,
        memory_mib: Some(setup.memory_mib),
        rss: setup.rss,
        vhost: setup.vhost.on,
        offloads: config.offloads,
        cmdline: format!("{key} {} {extra}", setup.cmdline),
        ready: SERVICES_LINE,
        ready_means: "listed its TCP services",
        budget,
        then_wait: PAUSE,
        label: config.to_string(),
        say_deleted: false,
    }
}

/// One boot for every host-driven point of `config`.
fn boot_config(
    setup: &Setup,
    plan: &Plan,
    built: &kbuild::Built,
    config: VmConfig,
    stop: &Arc<AtomicBool>,
    progress: &ProgressBar,
) -> ConfigRun {
    let work = Work {
        spread: setup.spread.then(|| (traffic::kernel_key(STEER_KEY).expect("80 hex digits"), config.vcpus)),
        plan: plan.clone(),
        points: plan.points(config).into_iter().map(PointResult::new).collect(),
        stop: stop.clone(),
        progress: progress.clone(),
    };
    let runs = work.points.iter().filter(|p| p.key.direction.host_client()).count() as u32 * plan.repeat;
    let guest = guest(setup, config, "", per_run(plan) * runs);
    let (command, result) = with_guest(&guest, built, stop, &|m| note(progress, m), move |up| work.run(up));
    match result {
        Err(e) => unmeasured(plan, config, command, e),
        Ok((done, _)) => ConfigRun {
            config,
            qemu_command: command,
            client_qemu_commands: Vec::new(),
            error: done.error,
            guest_ports: Some(done.ports),
            points: done.points,
        },
    }
}

/// The most one host-driven run takes.
fn per_run(plan: &Plan) -> Duration {
    PAUSE + Duration::from_secs(u64::from(plan.seconds + plan.omit)) + RUN_GRACE + SCRAPES
}

/// The host-side work of the host-driven boot.
struct Work {
    /// The steering key and vCPU count the client ports are spread by.
    spread: Option<([u8; 40], u16)>,
    plan: Plan,
    points: Vec<PointResult>,
    stop: Arc<AtomicBool>,
    progress: ProgressBar,
}

/// What the host-driven boot measured.
struct WorkDone {
    ports: Vec<u16>,
    points: Vec<PointResult>,
    /// Why it stopped before measuring everything.
    error: Option<String>,
}

/// Why host-driven points are skipped when the guest serves no iperf3.
pub fn no_server(ports: &[u16]) -> String {
    let list: Vec<String> = ports.iter().map(u16::to_string).collect();
    format!(
        "guest serves no iperf3: port {IPERF3_PORT} is not among its TCP services ({})",
        if list.is_empty() { "none".to_string() } else { list.join(" ") }
    )
}

impl Work {
    fn run(mut self, up: Up) -> WorkDone {
        let (tap, started) = (up.tap, up.started);
        let ports = started.console.lines().iter().find_map(|l| measure::guest_ports(&l.text)).unwrap_or_default();
        let server = ports.contains(&IPERF3_PORT);
        if !server {
            note(&self.progress, no_server(&ports));
        }
        let mut keys = Vec::new();
        for p in self.points.iter_mut().filter(|p| p.key.direction.host_client()) {
            if server {
                keys.push(p.key);
            } else {
                p.skipped = Some(no_server(&ports));
                self.progress.inc(u64::from(self.plan.repeat));
            }
        }
        let at = |points: &mut Vec<PointResult>, key: &PointKey| points.iter().position(|p| p.key == *key);
        let guest = tap.guest_addr.to_string();
        let mut next_port = FIRST_CLIENT_PORT;
        let mut done = 0;
        for repetition in 1..=self.plan.repeat {
            for key in &keys {
                if self.stop.load(Ordering::SeqCst) {
                    return WorkDone {
                        ports,
                        points: self.points,
                        error: Some(format!("interrupted after {done} runs")),
                    };
                }
                if !Path::new(&format!("/proc/{}", started.pid)).exists() {
                    return WorkDone {
                        ports,
                        points: self.points,
                        error: Some(format!("QEMU ended after {done} runs")),
                    };
                }
                std::thread::sleep(PAUSE);
                self.progress.set_message(format!("{} #{repetition}", key.describe()));
                let mut cmd = traffic::in_netns(&tap.netns, "iperf3");
                cmd.args(measure::iperf3_args(&guest, key, self.plan.seconds, self.plan.omit));
                if let Some(cc) = &self.plan.congestion {
                    cmd.args(["-C", cc]);
                }
                if let Some((steer, vcpus)) = self.spread {
                    let streams = key.sessions as u16;
                    if u32::from(next_port) + u32::from(streams) * 64 > 60000 {
                        next_port = FIRST_CLIENT_PORT;
                    }
                    let (host, ip) = (tap.host_addr.octets(), tap.guest_addr.octets());
                    let cport = traffic::spread_ports(steer, vcpus, host, ip, IPERF3_PORT, streams, next_port);
                    next_port = cport + streams;
                    cmd.args(["--cport".to_string(), cport.to_string()]);
                }
                let limit = Duration::from_secs(u64::from(self.plan.seconds + self.plan.omit)) + RUN_GRACE;
                let result = measured_run(tap, started.pid, cmd, limit, &self.plan, &self.stop);
                note(&self.progress, format!("{} #{repetition}: {}", key.describe(), describe(&result)));
                if let Some(i) = at(&mut self.points, key) {
                    self.points[i].runs.push(result);
                }
                done += 1;
                self.progress.inc(1);
            }
        }
        WorkDone { ports, points: self.points, error: None }
    }
}

/// Runs one iperf3 process (`cmd`: the host's client, or the host's server
/// for the guest's client) bounded by `limit`, with QEMU's threads sampled
/// meanwhile and the guest's counters scraped around it.
fn measured_run(
    tap: &TapNetwork,
    pid: u32,
    cmd: std::process::Command,
    limit: Duration,
    plan: &Plan,
    stop: &AtomicBool,
) -> Result<Sample, String> {
    let guest = tap.guest_addr.to_string();
    let scrape = || traffic::metrics_scrape(&tap.netns, &guest).and_then(|s| traffic::parse_metrics(&s));
    let before = scrape();
    let t0 = Instant::now();
    let mut samples: Vec<ThreadSample> = Vec::new();
    let mut sample = |done: bool| {
        if done || samples.last().is_none_or(|s| t0.elapsed() >= s.at + SAMPLE_EVERY) {
            samples.push(ThreadSample { at: t0.elapsed(), threads: procstat::threads(pid) });
        }
        !stop.load(Ordering::SeqCst)
    };
    let (status, stdout, stderr) = traffic::run_bounded_ticking(cmd, limit, &mut sample)?;
    let after = scrape();
    let result = measure::parse_iperf3(&stdout).map_err(|e| {
        let stderr = stderr.trim();
        if stderr.is_empty() {
            format!("{e} ({status})")
        } else {
            format!("{e} ({status}; stderr: {stderr})")
        }
    })?;
    let guest = match (&before, &after) {
        (Ok(b), Ok(a)) => measure::guest_counters(b, a),
        _ => None,
    };
    Ok(Sample {
        mbit_s: result.mbit_s,
        retransmits: result.retransmits,
        host: measure::measured_cpu(&samples, Duration::from_secs(u64::from(plan.seconds))),
        guest,
    })
}

/// The guest-initiated points of `config`: one boot per run, each with the
/// guest's client told by boot options to run that point's test against
/// `iperf3 -s -1 --json` on the host, whose JSON gives the rate. A guest
/// that does not know the option skips them all, saying so.
fn guest_initiated(
    setup: &Setup,
    plan: &Plan,
    built: &kbuild::Built,
    stop: &Arc<AtomicBool>,
    progress: &ProgressBar,
    run: &mut ConfigRun,
) {
    let keys: Vec<PointKey> = run.points.iter().filter(|p| !p.key.direction.host_client()).map(|p| p.key).collect();
    // Every boot's tap has the default host end (see `super::with_guest`).
    let host = TapNetwork::default().host_addr.to_string();
    let mut left = keys.len() as u64 * u64::from(plan.repeat);
    for repetition in 1..=plan.repeat {
        for key in &keys {
            if stop.load(Ordering::SeqCst) {
                run.error.get_or_insert_with(|| "interrupted".into());
                return;
            }
            let extra = measure::client_cmdline(&host, key, plan.seconds, plan.omit);
            let limit = measure::CLIENT_ATTEMPTS + Duration::from_secs(u64::from(plan.seconds + plan.omit)) + RUN_GRACE;
            let (for_boot, stop_boot) = (plan.clone(), stop.clone());
            progress.set_message(format!("{} #{repetition}", key.describe()));
            let guest = guest(setup, key.config, &extra, limit + SCRAPES);
            let (command, result) = with_guest(&guest, built, stop, &|m| note(progress, m), move |up| {
                client_run(up.tap, &up.started, limit, &for_boot, &stop_boot)
            });
            run.client_qemu_commands.push(command);
            match result.map_err(ClientError::Failed).and_then(|(r, _)| r) {
                Err(ClientError::Unsupported) => {
                    note(progress, format!("{}: {}", key.config, measure::NO_CLIENT_MODE));
                    for p in run.points.iter_mut().filter(|p| !p.key.direction.host_client()) {
                        p.runs.clear();
                        p.skipped = Some(measure::NO_CLIENT_MODE.into());
                    }
                    progress.inc(left);
                    return;
                }
                other => {
                    let r = other.map_err(|e| e.to_string());
                    note(progress, format!("{} #{repetition}: {}", key.describe(), describe(&r)));
                    if let Some(p) = run.points.iter_mut().find(|p| p.key == *key) {
                        p.runs.push(r);
                    }
                }
            }
            left -= 1;
            progress.inc(1);
        }
    }
}

/// Why a guest-initiated run gave no sample.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ClientError {
    /// The guest does not know `iperf-client=`.
    Unsupported,
    Failed(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Unsupported => f.write_str(measure::NO_CLIENT_MODE),
            ClientError::Failed(e) => f.write_str(e),
        }
    }
}

/// How long the guest has to report on its client test once the host's
/// server has ended.
const CLIENT_REPORT_WAIT: Duration = Duration::from_secs(5);

/// One guest-initiated run, in a boot whose options started the guest's
/// client: the host's `iperf3 -s -1 --json` (bounded by `limit`) measured
/// like a host-driven run; its receiver's rate is the result. The guest's
/// own report explains a failure.
fn client_run(
    tap: &TapNetwork,
    started: &Started,
    limit: Duration,
    plan: &Plan,
    stop: &AtomicBool,
) -> Result<Sample, ClientError> {
    let report = || {
        let lines = started.console.lines();
        measure::client_report(lines.iter().map(|l| l.text.as_str()))
    };
    if report() == Some(ClientReport::Unsupported) {
        return Err(ClientError::Unsupported);
    }
    let mut cmd = traffic::in_netns(&tap.netns, "iperf3");
    cmd.args(["-s", "-1", "--json", "-p", &IPERF3_PORT.to_string()]);
    let result = measured_run(tap, started.pid, cmd, limit, plan, stop);
    let until = Instant::now() + CLIENT_REPORT_WAIT;
    let mut said = report();
    while said.is_none() && Instant::now() < until && !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
        said = report();
    }
    match (result, said) {
        (_, Some(ClientReport::Unsupported)) => Err(ClientError::Unsupported),
        (Ok(s), _) => Ok(s),
        (Err(e), Some(ClientReport::Failed(why))) => Err(ClientError::Failed(format!("{e}; the guest: {why}"))),
        (Err(e), _) => Err(ClientError::Failed(e)),
    }
}
/// One run's line in the log.
fn describe(r: &Result<Sample, String>) -> String {
    match r {
        Err(e) => e.clone(),
        Ok(s) => {
            let mut out = format!("{:.1} Mbit/s", s.mbit_s);
            if let Some(h) = &s.host {
                out.push_str(&format!(", host CPU vCPU {:.0}% + device model {:.0}%", h.vcpu_pct, h.device_pct));
            }
            if let Some(g) = &s.guest {
                out.push_str(&format!(", guest busy {:.0}%", g.busy_total_pct()));
            }
            out
        }
    }
}

/// `secs` since the Unix epoch as an RFC 3339 UTC timestamp.
pub fn rfc3339(secs: u64) -> String {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (the proleptic Gregorian
    // calendar in 400-year eras of 146097 days, counted from March 1st so
    // that the leap day ends the year).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rest / 3600, rest % 3600 / 60, rest % 60)
}

/// How `cargo xtask test`'s bench step judged a `--quick` run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Smoke {
    Passed(String),
    /// The guest cannot be measured yet (no iperf3 server): why.
    Skipped(String),
}

/// The checks of the smoke run (no timing): it completed, wrote its three
/// files (JSON and CSV with every point, an SVG), and every point was
/// measured with non-zero throughput, except the guest-initiated ones of a
/// guest without a client mode, which must say so. A guest without an
/// iperf3 server is a skip, not a pass.
pub fn judge_smoke(run: &MatrixRun, files: &[PathBuf]) -> Result<Smoke, String> {
    let booted: Vec<&ConfigRun> = run.configs.iter().filter(|c| c.guest_ports.is_some()).collect();
    if booted.is_empty() {
        let why: Vec<String> =
            run.configs.iter().filter_map(|c| Some(format!("{}: {}", c.config, c.error.as_ref()?))).collect();
        return Err(format!("no configuration booted to its services: {}", why.join("; ")));
    }
    if let Some(c) = booted.iter().find(|c| !c.guest_ports.as_ref().is_some_and(|p| p.contains(&IPERF3_PORT))) {
        return Ok(Smoke::Skipped(no_server(c.guest_ports.as_deref().unwrap_or_default())));
    }
    if let Some(c) = run.configs.iter().find(|c| c.error.is_some()) {
        return Err(format!("{}: {}", c.config, c.error.as_deref().unwrap_or_default()));
    }
    let points: Vec<&PointResult> = run.points().collect();
    let want = run.plan.configs.len() * run.plan.points(run.plan.configs[0]).len();
    if points.len() != want {
        return Err(format!("{} points reported, {want} planned", points.len()));
    }
    for name in ["iperf.json", "iperf.csv", "iperf.svg"] {
        let path = files.iter().find(|p| p.file_name().is_some_and(|n| n == name));
        let text = path
            .ok_or(format!("{name} was not written"))
            .and_then(|p| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display())))?;
        let ok = match name {
            "iperf.json" => serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["points"].as_array().map(Vec::len))
                .is_some_and(|n| n == want),
            "iperf.csv" => text.lines().count() == want + 1 && text.starts_with(report::CSV_HEADER),
            _ => text.starts_with("<svg") && text.trim_end().ends_with("</svg>"),
        };
        if !ok {
            return Err(format!("{name} does not hold the {want} points"));
        }
    }
    let mut rates = Vec::new();
    for p in &points {
        match (Status::of(p), p.summary()) {
            (Status::Skipped, _) if p.skipped.as_deref() == Some(measure::NO_CLIENT_MODE) => {}
            (Status::Ok, Some(s)) if s.mbit_s > 0.0 => rates.push(s.mbit_s),
            (status, s) => {
                let why = p
                    .errors()
                    .next()
                    .cloned()
                    .or(p.skipped.clone())
                    .unwrap_or_else(|| format!("{} Mbit/s", s.map_or("no".into(), |s| s.mbit_s.to_string())));
                return Err(format!("{}: {}: {why}", p.key.describe(), status.id()));
            }
        }
    }
    let lo = rates.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = rates.iter().copied().fold(0.0, f64::max);
    Ok(Smoke::Passed(format!("{} points measured, {lo:.1}–{hi:.1} Mbit/s", rates.len())))
}

/// `cargo xtask test`'s bench step: `bench --quick` in namespace `netns`,
/// its files under `<target>/bench/quick`.
pub fn smoke(netns: &str, accel: boot::accel::AccelRequest, stop: &Arc<AtomicBool>) -> Result<Smoke, String> {
    prereq::ensure(&[Tool::Iproute2, Tool::Iperf3, Tool::Python3], &mut |m| say!("{m}"))?;
    netns::check_absent(netns)?;
    let args = BenchIperfArgs::quick(netns)?;
    let plan = Plan::from_args(&args);
    let boot = Firmware::from(args.boot);
    let choice = crate::run::prepare(boot, accel)?;
    let built = kbuild::build(true, &[boot])?;
    let setup = Setup {
        netns: netns.into(),
        accel: choice.accel,
        boot,
        accel_reason: choice.reason,
        vhost: vhost::choose(args.vhost.into(), vhost::probe(), args.rss)?,
        rss: args.rss,
        memory_mib: args.memory,
        cmdline: args.cmdline.clone(),
        spread: !args.random_ports,
    };
    let run = run_matrix(&setup, &plan, &built, stop);
    print!("{}", report::tables(&run));
    let files = write_files(&run, &bench_dir(&built).join("quick"))?;
    judge_smoke(&run, &files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::tests::fake_run;
    use boot::netns::NetnsGuard;

    /// The measuring path of one run with real processes: the host's
    /// iperf3 against `iperf3 -s -1` on the loopback of a namespace of the
    /// test's own (deleted by the guard), the server's threads standing in
    /// for QEMU's. No metrics there: the guest's figures are absent, not
    /// made up.
    #[test]
    #[ignore = "needs root: creates a network namespace"]
    fn one_run_against_a_real_iperf3_server() {
        let netns = format!("mqbench-u{}", std::process::id() % 10_000);
        let tap = TapNetwork::new(&netns, 1).unwrap();
        let _guard = NetnsGuard::create(&tap).unwrap();
        let mut server = traffic::in_netns(&netns, "iperf3")
            .args(["-s", "-1", "-p", &IPERF3_PORT.to_string()])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let plan = Plan { seconds: 2, omit: 1, ..report::tests::fake_run().plan };
        let key = plan.points(plan.configs[0])[1];
        assert_eq!((key.direction, key.sessions), (crate::cli::DirectionArg::HostToGuest, 2));
        // The "guest" is the namespace's loopback.
        let local = TapNetwork { guest_addr: std::net::Ipv4Addr::LOCALHOST, ..tap };
        let client = || {
            let mut cmd = traffic::in_netns(&netns, "iperf3");
            cmd.args(measure::iperf3_args("127.0.0.1", &key, plan.seconds, plan.omit));
            cmd
        };
        let stop = AtomicBool::new(false);
        let result = measured_run(&local, server.id(), client(), Duration::from_secs(30), &plan, &stop);
        // Ours, by its pid: it exits by itself after one test (-1).
        let _ = server.kill();
        let _ = server.wait();
        let s = result.unwrap();
        assert!(s.mbit_s > 0.0, "{s:?}");
        let host = s.host.expect("the server's threads were sampled");
        assert!((1.5..=2.6).contains(&host.window_s), "the measured 2 s, not the omitted one: {host:?}");
        assert!(host.device_pct > 0.0 && host.vcpu_pct == 0.0, "no vCPU threads in iperf3: {host:?}");
        assert_eq!(s.guest, None, "nothing serves metrics there");
        // No server any more: an error, in iperf3's own words.
        let e = measured_run(&local, std::process::id(), client(), Duration::from_secs(30), &plan, &stop).unwrap_err();
        assert!(e.starts_with("iperf3: unable to connect"), "{e}");
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_636_800), "2026-11-25T20:00:00Z");
        assert_eq!(rfc3339(951_868_799), "2000-02-29T23:59:59Z");
        assert_eq!(rfc3339(4_107_542_400), "2100-03-01T00:00:00Z");
    }

    /// `fake_run` with every host-driven point measured.
    fn good_run() -> MatrixRun {
        let mut run = fake_run();
        for c in &mut run.configs {
            for p in &mut c.points {
                if p.runs.iter().any(Result::is_err) {
                    p.runs = vec![Ok(Sample { mbit_s: 42.0, ..Sample::default() }); 2];
                }
            }
        }
        run
    }

    fn written(run: &MatrixRun, name: &str) -> (PathBuf, Vec<PathBuf>) {
        let dir = std::env::temp_dir().join(format!("mqnet-smoke-{}-{name}", std::process::id()));
        let files = write_files(run, &dir).unwrap();
        (dir, files)
    }

    #[test]
    fn the_smoke_run_is_judged_on_its_files_and_points() {
        let run = good_run();
        let (dir, files) = written(&run, "good");
        assert_eq!(
            files.iter().map(|f| f.file_name().unwrap().to_str().unwrap()).collect::<Vec<_>>(),
            ["iperf.json", "iperf.csv", "iperf.svg"]
        );
        assert_eq!(judge_smoke(&run, &files), Ok(Smoke::Passed("4 points measured, 42.0–500.0 Mbit/s".into())));
        // A file missing, or holding something else.
        assert!(judge_smoke(&run, &files[..2]).unwrap_err().contains("iperf.svg was not written"));
        std::fs::write(&files[1], "config\n").unwrap();
        assert!(judge_smoke(&run, &files).unwrap_err().contains("iperf.csv does not hold the 8 points"));
        std::fs::remove_dir_all(&dir).unwrap();

        // A point with zero throughput, or a failed one, fails the step.
        let mut zero = good_run();
        zero.configs[1].points[0].runs = vec![Ok(Sample::default())];
        let (dir, files) = written(&zero, "zero");
        assert!(judge_smoke(&zero, &files).unwrap_err().starts_with("2/2 host-to-guest 512 B ×1: ok: 0 Mbit/s"));
        std::fs::remove_dir_all(&dir).unwrap();
        let failed = fake_run();
        let (dir, files) = written(&failed, "failed");
        let e = judge_smoke(&failed, &files).unwrap_err();
        assert!(e.starts_with("2/1 host-to-guest 512 B ×2: failed: iperf3: unable to connect"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_guest_without_an_iperf3_server_is_a_skip_and_no_boot_a_failure() {
        let mut run = good_run();
        for c in &mut run.configs {
            c.guest_ports = Some(vec![7, 9, 9100]);
        }
        assert_eq!(
            judge_smoke(&run, &[]),
            Ok(Smoke::Skipped("guest serves no iperf3: port 5201 is not among its TCP services (7 9 9100)".into()))
        );
        assert_eq!(no_server(&[]), "guest serves no iperf3: port 5201 is not among its TCP services (none)");
        for c in &mut run.configs {
            c.guest_ports = None;
            c.error = Some("the guest never listed its TCP services".into());
        }
        let e = judge_smoke(&run, &[]).unwrap_err();
        assert!(e.starts_with("no configuration booted to its services: 2/1: the guest never listed"), "{e}");
        // Guest-initiated points: measured ones count like the others, a
        // failed one fails the step, and only the lack of a client mode may
        // skip them.
        let mut run = good_run();
        for p in run.configs.iter_mut().flat_map(|c| &mut c.points).filter(|p| !p.key.direction.host_client()) {
            p.skipped = None;
            p.runs = vec![Ok(Sample { mbit_s: 1.0, ..Sample::default() })];
        }
        let (dir, files) = written(&run, "client");
        assert_eq!(judge_smoke(&run, &files), Ok(Smoke::Passed("8 points measured, 1.0–500.0 Mbit/s".into())));
        run.configs[1].points[3].runs = vec![Err("iperf3 printed no JSON; the guest: refused 10 times".into())];
        let e = judge_smoke(&run, &files).unwrap_err();
        assert!(e.starts_with("2/2 guest-initiated 512 B ×2: failed: iperf3 printed no JSON; the guest"), "{e}");
        run.configs[1].points[3].runs.clear();
        run.configs[1].points[3].skipped = Some("something else".into());
        assert!(judge_smoke(&run, &files).unwrap_err().ends_with("skipped: something else"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
