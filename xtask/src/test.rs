//! `cargo xtask test`: host unit tests of every host-buildable crate, then
//! boot tests of the real kernel, then one summary line over both.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Instant;

use boot::image::Firmware;
use boot::netns::{NetnsGuard, TapNetwork};
use boot::prereq::Tool;
use boot::qemu::{Boot, Network, QemuConfig};
use boot::runner::{self, During, RunOptions};
use std::time::Duration;

use crate::boot_tests::{self, BootCase};
use crate::cli::TestArgs;
use crate::kbuild;
use crate::libtest::{self, TestResult};
use crate::run::{say, stop_flag};
use crate::traffic;

/// Crates whose unit tests run on the host (the kernel's portable library included).
pub const HOST_CRATES: [&str; 5] = ["kernel", "drivers", "net", "boot", "xtask"];

#[derive(Default)]
pub struct Tally {
    pub passed: usize,
    pub failed: Vec<String>,
    pub skipped: Vec<(String, String)>,
}

impl Tally {
    /// `N passed, N failed[, N skipped]`.
    pub fn summary(&self) -> String {
        let mut s = format!("{} passed, {} failed", self.passed, self.failed.len());
        if !self.skipped.is_empty() {
            s.push_str(&format!(", {} skipped", self.skipped.len()));
        }
        s
    }
}

pub fn test(args: TestArgs) -> Result<i32, String> {
    let mut tally = Tally::default();
    if !args.boot_only {
        host_tests(&mut tally)?;
        lints(&mut tally);
    }
    if !args.host_only {
        boot_tests(&args, &mut tally);
        bench_smoke(&args, &mut tally);
    }
    println!();
    for (name, why) in &tally.skipped {
        println!("skipped: {name}: {why}");
    }
    for name in &tally.failed {
        println!("failed: {name}");
    }
    println!("{}", tally.summary());
    Ok(if tally.failed.is_empty() { 0 } else { 1 })
}

fn host_tests(tally: &mut Tally) -> Result<(), String> {
    say!("host unit tests: {}", HOST_CRATES.join(", "));
    let mut args = vec!["test", "--no-fail-fast"];
    for c in HOST_CRATES {
        args.extend(["--package", c]);
    }
    cargo_tests(tally, "host", &args)?;
    say!("smoltcp (vendored with our patch, net/vendor/README.md): its own unit tests");
    cargo_tests(tally, "smoltcp", &SMOLTCP_TESTS)
}

/// The vendored smoltcp's unit tests, with its default features and the
/// segmentation offload the patch is about (the stacks' own feature set is
/// covered by the `net` tests).
const SMOLTCP_TESTS: [&str; 6] =
    ["test", "--no-fail-fast", "--package", "smoltcp", "--lib", "--features=segmentation-offload"];

/// Runs `cargo args`, printing its output and counting each test it
/// reports in `tally` as `label: name`.
fn cargo_tests(tally: &mut Tally, label: &str, args: &[&str]) -> Result<(), String> {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(kbuild::workspace_root()).args(args);
    // Tests that need root (real network namespaces) are #[ignore]d for a
    // plain `cargo test`; as root they run, otherwise they count as skipped.
    if boot::prereq::is_root() {
        cmd.args(["--", "--include-ignored"]);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("could not run cargo test: {e}"))?;
    let before = tally.passed + tally.failed.len();
    let prefix = format!("{label}:");
    let failed_before = tally.failed.iter().filter(|f| f.starts_with(&prefix)).count();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line.map_err(|e| e.to_string())?;
        println!("{line}");
        match libtest::parse_line(&line) {
            Some((_, TestResult::Passed)) => tally.passed += 1,
            Some((name, TestResult::Failed)) => tally.failed.push(format!("{label}: {name}")),
            Some((name, TestResult::Ignored)) => tally.skipped.push((format!("{label}: {name}"), "ignored".into())),
            None => {}
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    let failed_now = tally.failed.iter().filter(|f| f.starts_with(&prefix)).count();
    if !status.success() && failed_now == failed_before {
        // cargo failed without a failing test: the build broke.
        tally.failed.push(format!("{label}: cargo test did not build or run (see the errors above)"));
    }
    say!("{label} unit tests: {} ran", tally.passed + tally.failed.len() - before);
    Ok(())
}

/// The lint checks: clippy over the host crates (tests included) and over
/// the kernel for its own target, every warning an error. The crates deny
/// `clippy::undocumented_unsafe_blocks`, so an `unsafe` block without its
/// `// SAFETY:` reason fails here. One check each in the tally.
const LINTS: [(&str, &[&str]); 2] = [
    (
        "lint: clippy, host crates",
        &[
            "clippy",
            "--package",
            "drivers",
            "--package",
            "net",
            "--package",
            "kernel",
            "--package",
            "boot",
            "--package",
            "xtask",
            "--all-targets",
        ],
    ),
    (
        "lint: clippy, kernel (x86_64-unknown-none)",
        &["clippy", "--package", "kernel", "--bin", "kernel", "--target", kbuild::KERNEL_TARGET, "--release"],
    ),
];

fn lints(tally: &mut Tally) {
    for (name, args) in LINTS {
        say!("{name}");
        let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .current_dir(kbuild::workspace_root())
            .args(args)
            .args(["--", "-D", "warnings"])
            .status();
        match status {
            Ok(s) if s.success() => {
                println!("PASS {name}");
                tally.passed += 1;
            }
            Ok(s) => {
                println!("FAIL {name}: clippy exited with {s} (its findings are above)");
                tally.failed.push(name.to_string());
            }
            Err(e) => {
                println!("FAIL {name}: could not run cargo clippy: {e}");
                tally.failed.push(name.to_string());
            }
        }
    }
}

/// Why the network cases are skipped (not failed) when xtask is not root.
pub const NEEDS_ROOT: &str = "needs root: creates a network namespace and a tap";

/// Splits `cases` into those that can run here and those skipped, with the
/// reason: without root the network cases cannot create their namespace,
/// which is a missing resource, not a failure of the kernel.
fn runnable(cases: Vec<BootCase>, root: bool) -> (Vec<BootCase>, Vec<(String, String)>) {
    let (skipped, run): (Vec<BootCase>, Vec<BootCase>) = cases.into_iter().partition(|c| c.net.is_some() && !root);
    (run, skipped.iter().map(|c| (format!("boot: {}", c.name), NEEDS_ROOT.to_string())).collect())
}

fn boot_tests(args: &TestArgs, tally: &mut Tally) {
    let cases: Vec<BootCase> =
        boot_tests::cases().into_iter().filter(|c| args.filter.as_deref().is_none_or(|f| c.name.contains(f))).collect();
    if cases.is_empty() {
        say!("boot tests: none match the filter");
        return;
    }
    let (cases, skipped) = runnable(cases, boot::prereq::is_root());
    for (name, why) in skipped {
        println!("SKIP {name}: {why}");
        tally.skipped.push((name, why));
    }
    if cases.is_empty() {
        return;
    }
    // Everything the boot tests need; a failure here fails every case, by name.
    let setup = (|| {
        let uefi = cases.iter().any(|c| c.firmware == Firmware::Uefi);
        let choice = crate::run::prepare(if uefi { Firmware::Uefi } else { Firmware::Bios }, args.accel.into())?;

        let built = kbuild::build(true, &[Firmware::Bios, Firmware::Uefi])?;
        Ok::<_, String>((choice, built))
    })();
    let (choice, built) = match setup {
        Ok(x) => x,
        Err(e) => {
            say!("boot tests cannot run: {e}");
            tally.failed.extend(cases.iter().map(|c| format!("boot: {} (setup failed: {e})", c.name)));
            return;
        }
    };
    say!("boot tests: {} cases, accelerator {} ({})", cases.len(), choice.accel, choice.reason);
    let stop = stop_flag();
    let network = if cases.iter().any(|c| c.net.is_some()) { prepare_network() } else { Ok(String::new()) };
    let runs = cases.iter().flat_map(|c| (1..=args.repeat).map(move |k| (c, k)));
    for (case, k) in runs {
        let name = if args.repeat > 1 { format!("boot: {} #{k}", case.name) } else { format!("boot: {}", case.name) };
        if stop.load(Ordering::SeqCst) {
            tally.skipped.push((name, "interrupted by Ctrl-C".into()));
            continue;
        }
        let netns = match (case.net, &network) {
            (Some(_), Err(e)) => {
                println!("FAIL {name}: {e}");
                tally.failed.push(name);
                continue;
            }
            (_, Ok(netns)) => netns.as_str(),
            (None, Err(_)) => "",
        };
        // A case that needs KVM gets it wherever /dev/kvm can be used.
        let accel = if case.kvm {
            match boot::accel::choose(boot::accel::AccelRequest::Kvm, boot::accel::HostFacts::probe(), false) {
                Ok(kvm) => kvm.accel,
                Err(why) => {
                    println!("SKIP {name}: needs KVM: {why}");
                    tally.skipped.push((name, format!("needs KVM: {why}")));
                    continue;
                }
            }
        } else {
            choice.accel
        };
        let started = Instant::now();
        let result = run_case(case, netns, accel, &built, &stop);
        let secs = started.elapsed().as_secs_f64();
        match result {
            Ok(note) => {
                println!("PASS {name} ({secs:.1} s{note})");
                tally.passed += 1;
            }
            Err((why, tail)) => {
                println!("FAIL {name} ({secs:.1} s): {why}");
                for l in tail {
                    println!("    | {l}");
                }
                tally.failed.push(name);
            }
        }
    }
}

/// The name of the bench step (selected by `--filter` like a boot case).
pub const BENCH_SMOKE: &str = "bench-quick";

/// `cargo xtask bench --quick` as a smoke test of the benchmark harness,
/// after the boot tests, in their namespace name (deleted by then): it
/// must complete, write its JSON, CSV and SVG, and measure every point it
/// can with non-zero throughput. Speed is never judged. Skipped without
/// root, and while the guest serves no iperf3.
fn bench_smoke(args: &TestArgs, tally: &mut Tally) {
    if args.filter.as_deref().is_some_and(|f| !BENCH_SMOKE.contains(f)) {
        return;
    }
    let name = format!("bench: {BENCH_SMOKE}");
    let skip = |tally: &mut Tally, why: String| {
        println!("SKIP {name}: {why}");
        tally.skipped.push((name.clone(), why));
    };
    if !boot::prereq::is_root() {
        return skip(tally, NEEDS_ROOT.into());
    }
    let stop = stop_flag();
    if stop.load(Ordering::SeqCst) {
        return skip(tally, "interrupted by Ctrl-C".into());
    }
    let started = Instant::now();
    let result = boot_tests::test_netns(std::env::var_os(boot_tests::TEST_NETNS_VAR))
        .and_then(|netns| crate::bench::iperf::smoke(&netns, args.accel.into(), &stop));
    let secs = started.elapsed().as_secs_f64();
    match result {
        Ok(crate::bench::iperf::Smoke::Passed(note)) => {
            println!("PASS {name} ({secs:.1} s, {note})");
            tally.passed += 1;
        }
        Ok(crate::bench::iperf::Smoke::Skipped(why)) => skip(tally, why),
        Err(why) => {
            println!("FAIL {name} ({secs:.1} s): {why}");
            tally.failed.push(name);
        }
    }
}

/// The network cases need `ip`, `ping` and `python3`, a valid namespace
/// name (`MQNET_TEST_NETNS` or the default) and no namespace of that name
/// already (a leftover of a killed run, or another checkout's run: never
/// reused or deleted). Root was checked by [`runnable`]. Returns the name.
fn prepare_network() -> Result<String, String> {
    let netns = boot_tests::test_netns(std::env::var_os(boot_tests::TEST_NETNS_VAR))?;
    boot::prereq::ensure(&[Tool::Iproute2, Tool::Ping, Tool::Python3, Tool::Iperf3, Tool::Curl], &mut |m| say!("{m}"))?;
    boot::netns::check_absent(&netns)?;
    say!("network tests: namespace {netns}");
    Ok(netns)
}

/// Runs one case (a network case in namespace `netns`); `Ok` carries a note
/// for the PASS line, `Err` the reason and the last lines of output.
fn run_case(
    case: &BootCase,
    netns: &str,
    accel: boot::accel::Accel,
    built: &kbuild::Built,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<String, (String, Vec<String>)> {
    let boot = match (crate::run::boot_for(case.firmware, built).map_err(|e| (e, vec![]))?, case.start_info) {
        (Boot::Pvh { kernel, firmware, .. }, Some(bad)) => {
            let elf = std::fs::read(&kernel).map_err(|e| (format!("{}: {e}", kernel.display()), vec![]))?;
            let entry = boot::pvh::entry_of(&elf).ok_or(("the kernel ELF has no PVH note".to_string(), vec![]))?;
            // (Removed once QEMU is done: see below.)
            let via = std::env::temp_dir().join(format!("mqnet-pvh-shim-{}.elf", std::process::id()));
            std::fs::write(&via, boot::pvh::shim(entry, &bad.start_info(case.memory_mib)))
                .map_err(|e| (format!("{}: {e}", via.display()), vec![]))?;
            Boot::PvhVia { via, kernel, firmware }
        }
        (Boot::Pvh { kernel, firmware, .. }, None) => {
            Boot::Pvh { kernel, append: case.append.into(), firmware: firmware.filter(|_| !case.seabios) }
        }
        (other, _) => other,
    };
    let mut config = QemuConfig::new(accel, boot).with_kernel_cmdline(case.cmdline);
    config.cpus = case.cpus;
    config.max_cpus = case.max_cpus;
    config.memory_mib = case.memory_mib;
    if case.transitional_nic {
        config.network = Network::UserTransitional;
    }
    let mut opts = RunOptions {
        timeout: Some(boot_tests::time_limit(case, accel)),
        echo: false,
        stop: Some(stop.clone()),
        sample_cpu_after: Some(boot_tests::IDLE_MARKER.to_string()),
        during: None,
    };
    // Network cases: a namespace of this test's own, deleted when `_netns`
    // goes out of scope (after QEMU has ended), whatever happened.
    let _netns = match case.net {
        Some(net) => {
            let tap = TapNetwork { mtu: net.tap_mtu, ..TapNetwork::new(netns, net.queues).map_err(|e| (e, vec![]))? };
            let guard = NetnsGuard::create(&tap).map_err(|e| (e, vec![]))?;
            config.network = Network::Tap {
                tap: tap.tap.clone(),
                queues: net.queues,
                mac: None,
                vectors: net.vectors,
                rss: net.rss,
            };
            config.nic_offloads = net.offloads;
            config = config.with_kernel_cmdline(&format!("ip={}/{} {}", tap.guest_addr, tap.prefix_len, case.cmdline));
            config.netns = Some(tap.netns.clone());
            let qmp = net.flap_link.then(|| {
                let path = std::env::temp_dir().join(format!("mqnet-qmp-{}.sock", std::process::id()));
                let _ = std::fs::remove_file(&path);
                path
            });
            config.qmp = qmp.clone();
            let host_end = tap.clone();
            // Just before QEMU starts: a little earlier than the clock of
            // its serial lines.
            let started = std::time::Instant::now();
            opts.during = Some(During {
                after: if net.raw.is_some() { kernel::raw::READY } else { boot_tests::NET_READY }.into(),
                action: Box::new(move |_| match net.raw {
                    Some(mode) => crate::boot_raw::traffic(mode, &host_end, started),
                    None => case_traffic(&net, &host_end, qmp.as_deref(), started),
                }),
                then_wait: boot_tests::then_wait(case),
            });
            Some(guard)
        }
        None => None,
    };
    let report = runner::run(&config, &mut opts);
    if let Boot::PvhVia { via, .. } = &config.boot {
        let _ = std::fs::remove_file(via);
    }
    let report = report.map_err(|e| (e, vec![]))?;
    match boot_tests::check(case, &report) {
        Ok(()) => {
            let ready = report.find(boot::abi::READY).map(|l| l.at.as_secs_f64()).unwrap_or_default();
            let mut note = format!(", boot complete at {ready:.2} s");
            if let Some(online) = report.find("smp: all ") {
                if let Some(ms) = online.text.split(", ").nth(1).and_then(|t| t.split(" after").next()) {
                    note.push_str(&format!(", all CPUs online {ms} after kernel entry"));
                }
            }
            if case.net.is_some() {
                note.push_str(&format!(", {}", boot_tests::network_note(case, &report)));
            } else if let Some(s) = &report.cpu_sample {
                let max = s.vcpus.iter().map(|v| v.1).fold(0.0, f64::max);
                note.push_str(&format!(", idle vCPU threads at most {:.1}% busy", max * 100.0));
            }
            Ok(note)
        }
        Err(why) => {
            // Diagnostics: the whole serial log and host transcript of a failure.
            let path = std::env::temp_dir().join(format!(
                "mqnet-fail-{}-{}.log",
                std::process::id(),
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis())
            ));
            let mut all: String =
                report.lines.iter().map(|l| format!("{:.3} {}\n", l.at.as_secs_f64(), l.text)).collect();
            if let Some(Ok(out)) = &report.action {
                all.push_str(out);
            }
            let _ = std::fs::write(&path, all);
            say!("full log of the failure: {}", path.display());
            let mut tail: Vec<String> = report.lines.iter().rev().take(15).map(|l| l.text.clone()).collect();
            tail.reverse();
            tail.extend(report.stderr.lines().map(|l| format!("qemu: {l}")));
            // The host side's steps, without ping's line per reply.
            if let Some(Ok(out)) = &report.action {
                tail.extend(out.lines().filter(|l| !l.contains(" bytes from ")).map(|l| format!("host: {l}")));
            }
            tail.insert(0, format!("$ {}", config.command_line()));
            Err((why, tail))
        }
    }
}

/// The host side of a network case, step by step from inside the
/// namespace: pings, UDP flows, a link flap, floods and the pings after
/// them, jumbo pings, the ARP probe, TCP echo and discard loads (this
/// executable's `tcp-load`) and RR transactions (its `rr`), as the case
/// asks. Returns the
/// transcript of every step's output ([`traffic::section`]) for the checks.
/// Every step bounds itself; after a flood that did not complete the next
/// is not started (it would only run into its deadline too).
fn case_traffic(
    net: &boot_tests::NetCase,
    tap: &TapNetwork,
    qmp: Option<&std::path::Path>,
    started: std::time::Instant,
) -> Result<String, String> {
    use boot_tests::*;
    let (ns, guest) = (tap.netns.as_str(), tap.guest_addr.to_string());
    let ms = Duration::from_millis;
    let mut out = traffic::section(STEP_PING, &traffic::ping(ns, &guest, net.pings, 56, ms(50), ms(2000))?);
    out += &traffic::section(STEP_FLOWS, &traffic::udp_flows(ns, &guest, net.flows, net.per_flow)?);
    if let Some(path) = qmp {
        let mut qmp = crate::qmp::Qmp::connect(path)?;
        qmp.set_link("net0", false)?;
        std::thread::sleep(ms(500));
        qmp.set_link("net0", true)?;
        let _ = std::fs::remove_file(path);
    }
    for &size in net.floods {
        let flood = traffic::flood(ns, &guest, size, FLOOD_COUNT, FLOOD_PRELOAD, FLOOD_DEADLINE)?;
        out += &traffic::section(&flood_step(size), &flood);
        if traffic::parse_ping(&flood).received < FLOOD_COUNT {
            break;
        }
    }
    if !net.floods.is_empty() {
        let after = traffic::ping(ns, &guest, AFTER_FLOOD_PINGS, 56, ms(50), ms(1000))?;
        out += &traffic::section(STEP_AFTER_FLOODS, &after);
    }
    if let Some(size) = net.jumbo_pings {
        out += &traffic::section(&jumbo_step(size), &traffic::ping(ns, &guest, JUMBO_PINGS, size, ms(50), ms(2000))?);
    }
    if net.arp_probe {
        let arp = traffic::arp_probe(ns, &tap.tap, tap.host_addr, tap.guest_addr, ARP_LISTEN)?;
        out += &traffic::section(STEP_ARP, &arp);
    }
    if net.metrics {
        out += &traffic::section(STEP_METRICS, &traffic::metrics_scrape(ns, &guest)?);
    }
    if let Some(tcp) = net.tcp {
        use crate::tcpload::{LoadSummary, Mode, DISCARD_PORT, ECHO_PORT};
        let (c, b) = (tcp.echo_connections, tcp.echo_bytes);
        let echo = traffic::tcp_load(ns, &guest, Mode::Echo, ECHO_PORT, c, b, TCP_ECHO_DEADLINE)?;
        out += &traffic::section(STEP_TCP_ECHO, &echo);
        // A guest that failed the echo load would most likely only run the
        // discard load into its deadline too.
        if LoadSummary::parse(&echo).is_some_and(|s| s.ok()) {
            let (c, b) = (tcp.discard_connections, tcp.discard_bytes);
            let discard = traffic::tcp_load(ns, &guest, Mode::Discard, DISCARD_PORT, c, b, TCP_DISCARD_DEADLINE)?;
            out += &traffic::section(STEP_TCP_DISCARD, &discard);
            // Request/response transactions; the checks compare the guest's
            // reports from before and after the window (QEMU's clock).
            if let Some(rr) = tcp.rr.filter(|_| LoadSummary::parse(&discard).is_some_and(|s| s.ok())) {
                std::thread::sleep(RR_QUIET);
                let from = started.elapsed().as_secs_f64();
                let load = traffic::tcp_rr(ns, &guest, crate::rr::RR_PORT, rr.connections, rr.shape)?;
                let window = format!("window {from:.3} {:.3}", started.elapsed().as_secs_f64());
                out += &traffic::section(STEP_TCP_RR, &format!("{window}\n{load}"));
            }
        }
    }
    if net.iperf {
        out += &iperf_traffic(ns, tap)?;
    }
    if net.iperf_client {
        // The guest retries its connection every second for 10 s, so a
        // server that starts now is in time.
        out += &traffic::section(STEP_IPERF_SERVER, &traffic::iperf3_server(ns, IPERF_DEADLINE)?);
    }
    Ok(out)
}

/// The iperf3 steps of a network case ([`boot_tests::IPERF_RUNS`]): the
/// `-P 4` runs from client ports whose flows land on 4 different vCPUs
/// (the case sets the steering key), with a metrics scrape (curl) before
/// and after them; then a malformed exchange and one more run.
fn iperf_traffic(ns: &str, tap: &TapNetwork) -> Result<String, String> {
    use boot_tests::*;
    let guest = tap.guest_addr.to_string();
    let key = traffic::kernel_key(TEST_STEER_KEY).ok_or("TEST_STEER_KEY is not 80 hex digits")?;
    // Each -P 4 run from ports of its own: the last run's may still be in
    // TIME-WAIT on the host, where iperf3 could not bind them again.
    let mut from = 20000;
    let time = IPERF_SECONDS.to_string();
    let mut out = String::new();
    for (step, args) in IPERF_RUNS {
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        args.extend(["-t".into(), time.clone()]);
        let parallel = args.windows(2).any(|w| w[0] == "-P" && w[1] == "4");
        if parallel {
            let cport = traffic::spread_ports(key, 4, tap.host_addr.octets(), tap.guest_addr.octets(), 5201, 4, from);
            from = cport + 4;
            args.extend(["--cport".into(), cport.to_string()]);
            if !out.contains(STEP_METRICS_BEFORE) {
                out += &traffic::section(STEP_METRICS_BEFORE, &traffic::curl_metrics(ns, &guest)?);
            }
        }
        out += &traffic::section(step, &traffic::iperf3(ns, &guest, &args, IPERF_DEADLINE)?);
        if step == "iperf3 -P 4 -R" {
            // The guest refreshes its metrics every 100 ms.
            std::thread::sleep(Duration::from_millis(300));
            out += &traffic::section(STEP_METRICS_AFTER, &traffic::curl_metrics(ns, &guest)?);
        }
    }
    out += &traffic::section(STEP_IPERF_MALFORMED, &traffic::iperf3_malformed(ns, &guest)?);
    let args = ["-t".to_string(), "1".to_string()];
    out += &traffic::section(STEP_IPERF_AFTER, &traffic::iperf3(ns, &guest, &args, IPERF_DEADLINE)?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_line_format() {
        let mut t = Tally { passed: 3, ..Default::default() };
        assert_eq!(t.summary(), "3 passed, 0 failed");
        t.failed.push("x".into());
        t.skipped.push(("y".into(), "why".into()));
        assert_eq!(t.summary(), "3 passed, 1 failed, 1 skipped");
    }

    #[test]
    fn network_cases_are_skipped_without_root() {
        let all = boot_tests::cases();
        let nets: Vec<String> = all.iter().filter(|c| c.net.is_some()).map(|c| format!("boot: {}", c.name)).collect();
        assert!(nets.len() >= 2);
        let (run, skipped) = runnable(all.clone(), false);
        assert_eq!(skipped.iter().map(|s| s.0.clone()).collect::<Vec<_>>(), nets);
        assert!(skipped.iter().all(|s| s.1 == "needs root: creates a network namespace and a tap"));
        assert_eq!(run.len(), all.len() - nets.len());
        assert!(run.iter().all(|c| c.net.is_none()));
        let (run, skipped) = runnable(all.clone(), true);
        assert!(skipped.is_empty());
        assert_eq!(run.len(), all.len());
    }
}
