//! `cargo xtask run`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use boot::accel::{self, HostFacts};
use boot::image::Firmware;
use boot::netns::{NetnsGuard, TapNetwork, DEFAULT_NETNS};
use boot::prereq::{self, Tool};
use boot::qemu::{self, Boot, Network, QemuConfig};
use boot::runner::{self, RunOptions};

use crate::cli::{NetArg, RunArgs};
use crate::kbuild;

/// QEMU user networking's guest address (its built-in DHCP would hand it out).
const SLIRP_GUEST: &str = "10.0.2.15/24";

/// With user networking, the services' ports forwarded from the host's
/// 127.0.0.1: (host port, guest port). Echo and discard sit above 1024 on
/// the host, where a user without root may listen.
pub const USER_FORWARDS: [(u16, u16); 5] = [(5201, 5201), (9100, 9100), (5202, 5202), (10007, 7), (10009, 9)];

/// Prints a progress line of xtask's own (serial output goes to stdout).
macro_rules! say {
    ($($t:tt)*) => { eprintln!("xtask: {}", format_args!($($t)*)) };
}
pub(crate) use say;

/// Installs the Ctrl-C handler once and returns the flag it sets.
pub fn stop_flag() -> Arc<AtomicBool> {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        let f = flag.clone();
        if let Err(e) = ctrlc::set_handler(move || f.store(true, Ordering::SeqCst)) {
            say!("warning: no Ctrl-C handler ({e}); QEMU would outlive an interrupted xtask");
        }
        flag
    })
    .clone()
}

/// Prerequisites, accelerator and the firmware's boot description.
pub fn prepare(firmware: Firmware, request: accel::AccelRequest) -> Result<accel::AccelChoice, String> {
    let mut tools = vec![Tool::Qemu];
    if firmware == Firmware::Uefi {
        tools.push(Tool::Ovmf);
    }
    prereq::ensure(&tools, &mut |m| say!("{m}"))?;
    accel::choose(request, HostFacts::probe(), firmware == Firmware::Uefi)
}

pub fn boot_for(firmware: Firmware, built: &kbuild::Built) -> Result<Boot, String> {
    let image = built.image(firmware);
    Ok(match firmware {
        Firmware::Pvh => {
            Boot::Pvh { kernel: built.kernel.clone(), append: String::new(), firmware: prereq::find_qboot() }
        }
        Firmware::Bios => Boot::Bios { image },
        Firmware::Uefi => Boot::Uefi {
            ovmf: prereq::find_ovmf().ok_or("OVMF firmware not found (set MQNET_OVMF to its path)")?,
            image,
        },
    })
}

/// When the boot was over, from QEMU's start (the host's clock, when the
/// line arrived), and the kernel's own breakdown of it (`kernel::phases`):
/// the part before the VM's power-on is QEMU setting itself up.
pub fn boot_summary(report: &runner::RunReport) -> Option<String> {
    let Some(phases) = report.find(kernel::phases::LINE) else {
        let ready = report.find(boot::abi::READY)?;
        return Some(format!("the kernel finished booting {:.3} s after QEMU started", ready.at.as_secs_f64()));
    };
    let (list, after_power_on) = kernel::phases::parse(&phases.text)?;
    let what = if phases.text.contains("services ready") { "services ready" } else { "booted" };
    let at = phases.at.as_secs_f64();
    let qemu = (at - after_power_on / 1000.0).max(0.0);
    let parts: Vec<String> = list.iter().map(|(name, ms)| format!("{name} {ms:.1}")).collect();
    Some(format!("{what} {at:.3} s after QEMU started: QEMU {:.1}, {} (ms)", qemu * 1000.0, parts.join(", ")))
}

/// What `--net auto` means here: a tap when root (and `ip` is there or can
/// be installed), else user networking.
fn resolve_net(net: NetArg) -> NetArg {
    match net {
        NetArg::Auto if prereq::is_root() => NetArg::Tap,
        NetArg::Auto => NetArg::User,
        other => other,
    }
}

/// The tap network `--net tap` asks for, once we know it can be set up:
/// checked before the (slow) kernel build, so a mistake shows at once. One
/// queue pair per vCPU unless `--queues` says otherwise.
fn tap_network(args: &RunArgs, check: bool) -> Result<TapNetwork, String> {
    let queues = args.queues.unwrap_or(args.smp.min(boot::netns::MAX_QUEUES));
    let net = TapNetwork::new(args.netns.as_deref().unwrap_or(DEFAULT_NETNS), queues)?;
    if !check {
        return Ok(net);
    }
    if !prereq::is_root() {
        let again: Vec<String> = std::env::args().skip(1).map(|a| qemu::shell_quote(&a)).collect();
        return Err(format!(
            "--net tap needs root: it creates a network namespace and a tap device. Run it as root, e.g.\n    \
             sudo -E env \"PATH=$PATH\" cargo xtask {}",
            again.join(" ")
        ));
    }
    prereq::ensure(&[Tool::Iproute2], &mut |m| say!("{m}"))?;
    boot::netns::check_absent(&net.netns)?;
    Ok(net)
}

/// How to reach the guest's services from the host, for the network it is
/// on.
fn how_to_reach(tap: Option<&TapNetwork>, net: NetArg) -> Vec<String> {
    match (tap, net) {
        (Some(t), _) => {
            let (ns, g, h) = (&t.netns, t.guest_addr, t.host_addr);
            vec![
                format!("the guest is {g} in network namespace {ns}; from another shell, as root:"),
                format!("    ip netns exec {ns} ping -c 3 {g}"),
                format!("    ip netns exec {ns} iperf3 -c {g} -P {} -t 5       (host → guest; -R: guest → host)", t.queues),
                format!("    ip netns exec {ns} curl -s http://{g}:9100/metrics"),
                format!("    ip netns exec {ns} target/debug/xtask rr --addr {g} --connections 4 --time 5"),
                format!(
                    "    guest as client: ip netns exec {ns} iperf3 -s -1, and boot with --cmdline \"iperf-client={h} iperf-parallel=2\""
                ),
            ]
        }
        (None, NetArg::User) => {
            let fwd: Vec<String> = USER_FORWARDS.iter().map(|(h, g)| format!("{h}→{g}")).collect();
            vec![
                format!(
                    "user-mode networking (one queue; no ping): 127.0.0.1 ports {} reach the guest",
                    fwd.join(", ")
                ),
                "    iperf3 -c 127.0.0.1 -t 5                  (host → guest; -R: guest → host)".into(),
                "    curl -s http://127.0.0.1:9100/metrics".into(),
                "    for multiqueue, run as root: a tap in a namespace of its own".into(),
            ]
        }
        (None, _) => vec!["no network (--net none)".into()],
    }
}

pub fn run(args: RunArgs) -> Result<i32, String> {
    let firmware = args.firmware();
    let net = resolve_net(args.net);
    if args.net == NetArg::Auto {
        say!(
            "network: {} (--net auto: {})",
            if net == NetArg::Tap { "tap" } else { "user" },
            if net == NetArg::Tap { "root" } else { "not root, so no tap" }
        );
    }
    if net == NetArg::User && (args.queues.is_some() || args.rss) {
        return Err("--queues and --rss need a tap network, which needs root (see --net)".into());
    }
    let tap = match net {
        NetArg::Tap => Some(tap_network(&args, !args.print_qemu)?),
        NetArg::Auto | NetArg::None | NetArg::User => None,
    };
    let choice = prepare(firmware, args.accel.into())?;
    say!("accelerator: {} ({})", choice.accel, choice.reason);
    let built = kbuild::build(args.release(), &[firmware])?;
    // The guest's address follows the network it is on; the user's own
    // `--cmdline ip=...` comes later and wins.
    let ip = match (&tap, net) {
        (Some(net), _) => format!("ip={}/{} ", net.guest_addr, net.prefix_len),
        (None, NetArg::User) => format!("ip={SLIRP_GUEST} "),
        (None, _) => String::new(),
    };
    let cmdline = format!("{ip}{}", args.cmdline);
    let mut config = QemuConfig::new(choice.accel, boot_for(firmware, &built)?).with_kernel_cmdline(&cmdline);
    config.cpus = args.smp;
    config.memory_mib = args.memory;
    config.network = match &tap {
        Some(net) => net.network().with_rss(args.rss),
        None if net == NetArg::User => Network::User,
        None => Network::None,
    };
    if net == NetArg::User {
        config.user_forwards = USER_FORWARDS.to_vec();
    }
    if let Some(m) = args.machine {
        config.machine = m.into();
    }
    if let Some(t) = &tap {
        if args.print_qemu {
            // The same steps a run takes, for a shell (as root); the last
            // line deletes the namespace again.
            println!("# the network namespace, its loopback and a {}-queue tap", t.queues);
            for step in t.setup_plan() {
                println!("{}", step.iter().map(|w| qemu::shell_quote(w)).collect::<Vec<_>>().join(" "));
            }
        }
    }
    if args.print_qemu {
        if tap.is_some() {
            config.netns = tap.as_ref().map(|t| t.netns.clone());
        }
        println!("{}", config.command_line());
        if let Some(t) = &tap {
            println!(
                "# afterwards: {}",
                t.teardown().iter().map(|w| qemu::shell_quote(w)).collect::<Vec<_>>().join(" ")
            );
        }
        for line in how_to_reach(tap.as_ref(), net) {
            println!("# {line}");
        }
        return Ok(0);
    }
    // The Ctrl-C/SIGTERM/SIGHUP handler goes in before the namespace exists,
    // so that from then on a stop request ends the run through the runner
    // (and the guard below) instead of killing xtask.
    let stop = stop_flag();
    // Deleted when the guard goes: after the runner returns (VM ended, timed
    // out, Ctrl-C, SIGTERM) or on any error or panic in between. A SIGKILL
    // leaves it behind; the next run then names the `ip netns del` command.
    let netns = match &tap {
        Some(net) => {
            let guard = NetnsGuard::create(net)?;
            config.netns = Some(net.netns.clone());
            let mut queues = if net.queues == 1 { "1 queue".to_string() } else { format!("{} queues", net.queues) };
            if args.rss {
                queues.push_str(", RSS offered");
            }
            say!(
                "network: namespace {}, tap {} with {queues}, host {}, guest {}",
                net.netns,
                net.tap,
                net.host_addr,
                net.guest_addr
            );
            Some(guard)
        }
        None => None,
    };
    say!("{}", config.command_line());
    for line in how_to_reach(tap.as_ref(), net) {
        say!("{line}");
    }
    match args.timeout {
        Some(t) => say!("the VM stops after {:.1} s or on Ctrl-C", t.as_secs_f64()),
        None => say!("the VM runs until Ctrl-C"),
    }
    let mut opts = RunOptions { timeout: args.timeout, echo: true, stop: Some(stop), ..Default::default() };
    let report = runner::run(&config, &mut opts);
    let cleanup = match netns {
        Some(guard) => {
            let name = guard.network().netns.clone();
            guard.delete().map(|()| say!("network namespace {name} deleted"))
        }
        None => Ok(()),
    };
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            if let Err(c) = cleanup {
                say!("error: {c}");
            }
            return Err(e);
        }
    };
    // QEMU's note that it got our SIGTERM is expected, not news.
    let stderr: Vec<&str> = report.stderr.lines().filter(|l| !l.contains("terminating on signal")).collect();
    if !stderr.is_empty() {
        say!("QEMU said:\n{}", stderr.join("\n"));
    }
    if let Some(line) = boot_summary(&report) {
        say!("{line}");
    }
    say!("{} after {:.1} s", report.outcome, report.elapsed.as_secs_f64());
    // A namespace left behind is a failure of the run, whatever the VM did.
    cleanup?;
    Ok(report.outcome.exit_code())
}
