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
        Firmware::Bios => Boot::Bios { image },
        Firmware::Uefi => Boot::Uefi {
            ovmf: prereq::find_ovmf().ok_or("OVMF firmware not found (set MQNET_OVMF to its path)")?,
            image,
        },
    })
}

/// The tap network `--net tap` asks for, once we know it can be set up:
/// checked before the (slow) kernel build, so a mistake shows at once.
fn tap_network(args: &RunArgs) -> Result<TapNetwork, String> {
    let net = TapNetwork::new(args.netns.as_deref().unwrap_or(DEFAULT_NETNS), args.queues.unwrap_or(1))?;
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

pub fn run(args: RunArgs) -> Result<i32, String> {
    let firmware = if args.uefi { Firmware::Uefi } else { Firmware::Bios };
    let tap = match args.net {
        NetArg::Tap => Some(tap_network(&args)?),
        NetArg::None | NetArg::User => None,
    };
    let choice = prepare(firmware, args.accel.into())?;
    say!("accelerator: {} ({})", choice.accel, choice.reason);
    let built = kbuild::build(args.build.release, &[firmware])?;
    // The guest's address follows the network it is on; the user's own
    // `--cmdline ip=...` comes later and wins.
    let ip = match (&tap, args.net) {
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
        None if args.net == NetArg::User => Network::User,
        None => Network::None,
    };
    if let Some(m) = args.machine {
        config.machine = m.into();
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
            say!("reach the guest with: ip netns exec {} ping -c 3 {}", net.netns, net.guest_addr);
            Some(guard)
        }
        None => None,
    };
    say!("{}", config.command_line());
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
    if let Some(ready) = report.find(boot::abi::READY) {
        say!("the kernel finished booting {:.2} s after QEMU started", ready.at.as_secs_f64());
    }
    say!("{} after {:.1} s", report.outcome, report.elapsed.as_secs_f64());
    // A namespace left behind is a failure of the run, whatever the VM did.
    cleanup?;
    Ok(report.outcome.exit_code())
}
