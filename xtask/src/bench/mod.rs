//! `cargo xtask bench`: benchmarks. They print tables and write JSON (and
//! CSV and a chart); they never pass or fail on speed (the exit status only
//! says whether every measurement could be taken).
//!
//! - `bench` (or `bench iperf`): the netperf-style multiqueue matrix, the
//!   host's iperf3 against the guest's iperf3 server ([`iperf`]).
//! - `bench echo`: TCP echo loads of this executable's `tcp-load` ([`echo`]).
//! - `bench raw`: the raw driver mode ([`raw`]).
//! - `bench rr`: request/response latency against the RR service ([`rr`]).

mod echo;
pub mod iperf;
mod matrix;
mod measure;
pub mod raw;
mod report;
pub mod rr;
mod svg;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use boot::accel::{Accel, AccelChoice};
use boot::image::Firmware;
use boot::netns::{NetnsGuard, TapNetwork};
use boot::prereq::{self, Tool};
use boot::qemu::{self, QemuConfig};
use boot::runner::{self, During, RunOptions, RunReport, Started};

use crate::cli::{AccelArg, BenchArgs, BenchBootArgs, BenchCmd};
use crate::kbuild;
use crate::run::say;
use serde_json::{json, Value};

pub fn bench(args: BenchArgs) -> Result<i32, String> {
    match args.bench {
        Some(BenchCmd::Echo(a)) => echo::run(a),
        Some(BenchCmd::Raw(a)) => raw::raw(a),
        Some(BenchCmd::Rr(a)) => rr::rr(a),
        Some(BenchCmd::Iperf(a)) => iperf::main(a),
        None => iperf::main(args.iperf),
    }
}

/// `<target>/bench`: the kernel is `<target>/x86_64-unknown-none/release/kernel`.
fn bench_dir(built: &kbuild::Built) -> PathBuf {
    built.kernel.ancestors().nth(3).map_or_else(|| kbuild::workspace_root().join("target"), PathBuf::from).join("bench")
}

/// A benchmark creates a network namespace and a tap: without root it
/// stops before the (slow) kernel build, with the command to use.
fn require_root(what: &str) -> Result<(), String> {
    if prereq::is_root() {
        return Ok(());
    }
    let again: Vec<String> = std::env::args().skip(1).map(|x| qemu::shell_quote(&x)).collect();
    Err(format!(
        "{what} needs root: it creates a network namespace and a tap device. Run it as root, e.g.\n    \
         sudo -E env \"PATH=$PATH\" cargo xtask {}",
        again.join(" ")
    ))
}

/// What `bench echo`, `bench raw` and `bench rr` check and build before
/// their first boot, in this order so that a mistake shows before the
/// (slow) kernel build: the namespace name, root, `ip`, that no namespace
/// of that name is left over, QEMU and the accelerator. `what` names the
/// command for the root hint.
fn prepare(what: &str, netns: &str, accel: AccelArg, boot: Firmware) -> Result<(AccelChoice, kbuild::Built), String> {
    TapNetwork::new(netns, 1)?;
    require_root(what)?;
    prereq::ensure(&[Tool::Iproute2], &mut |m| say!("{m}"))?;
    boot::netns::check_absent(netns)?;
    let choice = crate::run::prepare(boot, accel.into())?;
    say!("accelerator: {} ({}); boot: {}", choice.accel, choice.reason, boot.name());
    let built = kbuild::build(true, &[boot])?;
    Ok((choice, built))
}

/// One benchmark boot: the guest to start and when its host-side work
/// begins. Every benchmark boots through [`with_guest`], so that all of
/// them get the same namespace, tap, boot allowance and clean-up.
pub struct Guest<'a> {
    /// The namespace created for this boot alone (and deleted after it).
    pub netns: &'a str,
    pub accel: Accel,
    /// How it is booted (`--boot`).
    pub boot: Firmware,
    pub vcpus: u16,
    /// Queue pairs of the NIC and its tap.
    pub queues: u16,
    /// `None`: QEMU's configuration default.
    pub memory_mib: Option<u32>,
    /// Offer virtio-net RSS and hash reports.
    pub rss: bool,
    pub vhost: bool,
    /// The NIC offers its checksum and segmentation offloads (QEMU's
    /// default; off: `boot::qemu::OFFLOADS_OFF`).
    pub offloads: bool,
    /// Kernel boot options after the guest's `ip=` (white space folded).
    pub cmdline: String,
    /// The serial line the work waits for.
    pub ready: &'a str,
    /// What that line says, for the error when it never comes: "the guest
    /// never {ready_means}".
    pub ready_means: &'a str,
    /// How long the work may take, on top of [`boot_budget`].
    pub budget: Duration,
    /// How long the guest runs on after the work (for its last reports).
    pub then_wait: Duration,
    /// The boot in the log: `LABEL: QEMU command line`.
    pub label: String,
    /// Whether to say that the namespace is gone (the matrix keeps its log
    /// short under its progress bar and does not).
    pub say_deleted: bool,
}

/// Guest memory of the `bench echo` and `bench rr` boots.
const MEMORY_MIB: u32 = 512;

impl BenchBootArgs {
    /// A boot of `bench echo` or `bench rr` with `queues` pairs whose work
    /// starts once the guest's stacks are up: `options` go before the
    /// user's `--cmdline`; `budget` and `then_wait` as in [`Guest`].
    fn guest<'a>(
        &self,
        netns: &'a str,
        accel: Accel,
        queues: u16,
        options: &str,
        budget: Duration,
        then_wait: Duration,
    ) -> Guest<'a> {
        Guest {
            netns,
            accel,
            boot: self.boot.into(),
            vcpus: self.smp,
            queues,
            memory_mib: Some(MEMORY_MIB),
            rss: self.rss,
            vhost: false,
            offloads: true,
            cmdline: format!("{options} {}", self.cmdline),
            ready: crate::boot_tests::NET_READY,
            ready_means: "reported its stacks up",
            budget,
            then_wait,
            label: format!("queues {queues}"),
            say_deleted: true,
        }
    }
}

/// What the work of [`with_guest`] is handed once the guest is ready.
pub struct Up<'a> {
    pub tap: &'a TapNetwork,
    pub started: Started,
    /// Taken just before QEMU started; the serial lines' times count from
    /// its start, a few milliseconds later, so windows timed from here
    /// bracket the guest's reports of them.
    pub since: Instant,
}

/// How long a boot may take until the guest is ready.
fn boot_budget(accel: Accel) -> Duration {
    match accel {
        Accel::Tcg => Duration::from_secs(90),
        Accel::Kvm { .. } => Duration::from_secs(240),
    }
}

/// The tap and QEMU configuration of `guest`, checked before anything is
/// created.
fn configure(guest: &Guest, built: &kbuild::Built) -> Result<(TapNetwork, QemuConfig), String> {
    let tap = TapNetwork::new(guest.netns, guest.queues)?;
    let cmdline = format!("ip={}/{} {}", tap.guest_addr, tap.prefix_len, guest.cmdline);
    let mut qemu = QemuConfig::new(guest.accel, crate::run::boot_for(guest.boot, built)?)
        .with_kernel_cmdline(&cmdline.split_whitespace().collect::<Vec<_>>().join(" "));
    qemu.cpus = guest.vcpus;
    if let Some(mib) = guest.memory_mib {
        qemu.memory_mib = mib;
    }
    qemu.network = tap.network().with_rss(guest.rss);
    qemu.vhost = guest.vhost;
    qemu.nic_offloads = guest.offloads;
    qemu.netns = Some(tap.netns.clone());
    qemu.validate()?;
    Ok((tap, qemu))
}

/// Boots `guest` in its namespace (created here and deleted once QEMU has
/// ended, whatever happened), runs `work` once the guest prints its ready
/// line, then lets it run on for `then_wait` and stops it. `log` takes the
/// progress lines. Returns QEMU's command line (empty when the boot could
/// not be set up) and what `work` returned with the run's report, or why
/// it never ran.
pub fn with_guest<T: Send + 'static>(
    guest: &Guest,
    built: &kbuild::Built,
    stop: &Arc<AtomicBool>,
    log: &dyn Fn(String),
    work: impl FnOnce(Up) -> T + Send + 'static,
) -> (String, Result<(T, RunReport), String>) {
    let (tap, qemu) = match configure(guest, built) {
        Ok(x) => x,
        Err(e) => return (String::new(), Err(e)),
    };
    let command = qemu.command_line();
    // Deleted when `guard` goes, after QEMU has ended, whatever happened.
    let guard = match NetnsGuard::create(&tap) {
        Ok(g) => g,
        Err(e) => return (command, Err(e)),
    };
    log(format!("{}: {command}", guest.label));
    let slot: Arc<Mutex<Option<T>>> = Arc::default();
    let since = Instant::now();
    let action = {
        let slot = slot.clone();
        move |started: Started| {
            let t = work(Up { tap: &tap, started, since });
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(t);
            Ok(String::new())
        }
    };
    let mut opts = RunOptions {
        timeout: Some(boot_budget(guest.accel) + guest.budget),
        echo: false,
        stop: Some(stop.clone()),
        sample_cpu_after: None,
        during: Some(During { after: guest.ready.into(), action: Box::new(action), then_wait: guest.then_wait }),
    };
    let report = runner::run(&qemu, &mut opts);
    let deleted = guard.delete();
    if deleted.is_ok() && guest.say_deleted {
        log(format!("network namespace {} deleted", guest.netns));
    }
    let done = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
    let result = match (report, deleted, done) {
        (_, Err(e), _) | (Err(e), _, _) => Err(e),
        (Ok(r), Ok(()), Some(t)) => Ok((t, r)),
        // The work ran and panicked (its message is on stderr).
        (Ok(RunReport { action: Some(Err(e)), .. }), Ok(()), None) => Err(e),
        (Ok(r), Ok(()), None) => {
            let tail: Vec<&str> = r.lines.iter().rev().take(5).map(|l| l.text.as_str()).collect();
            Err(format!(
                "the guest never {} ({} after {:.1} s); last lines: {}",
                guest.ready_means,
                r.outcome,
                r.elapsed.as_secs_f64(),
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            ))
        }
    };
    (command, result)
}

/// Runs `load` once per connection count of `connections`, each `pause`
/// after the last (so that the guest's reports fall between them), until a
/// stop is asked for; returns what the loads gave, in order.
fn each_load<R>(connections: &[u32], pause: Duration, stop: &AtomicBool, mut load: impl FnMut(u32) -> R) -> Vec<R> {
    let mut out = Vec::new();
    for &n in connections {
        std::thread::sleep(pause);
        if stop.load(Ordering::SeqCst) {
            break;
        }
        out.push(load(n));
    }
    out
}

/// Boots once per item of `plan` (none once a stop was asked for), gathering
/// every boot's rows and, per boot, `{what…, "error": null | why}` as JSON.
/// `label` says what the item is (for JSON and the console).
fn each_boot<P, R>(
    plan: impl IntoIterator<Item = P>,
    stop: &AtomicBool,
    label: impl Fn(&P) -> Value,
    mut boot: impl FnMut(P) -> Result<Vec<R>, String>,
) -> (Vec<R>, Vec<Value>) {
    let (mut rows, mut boots) = (Vec::new(), Vec::new());
    for item in plan {
        let what = label(&item);
        let outcome = if stop.load(Ordering::SeqCst) { Err("interrupted".to_string()) } else { boot(item) };
        let error = match outcome {
            Ok(r) => {
                rows.extend(r);
                Value::Null
            }
            Err(e) => {
                say!("{what}: {e}");
                Value::String(e)
            }
        };
        let mut b = what;
        match &mut b {
            Value::Object(m) => {
                m.insert("error".into(), error);
            }
            other => *other = json!({"boot": other.clone(), "error": error}),
        }
        boots.push(b);
    }
    (rows, boots)
}

/// Writes `contents` to `path`, creating its directory.
fn write_out(path: &Path, contents: &str) -> Result<(), String> {
    path.parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(path, contents))
        .map_err(|e| format!("could not write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_go_to_the_target_directory() {
        let built = kbuild::Built {
            kernel: "/w/target/x86_64-unknown-none/release/kernel".into(),
            images_dir: "/w/target/x86_64-unknown-none/release/images".into(),
        };
        assert_eq!(bench_dir(&built), PathBuf::from("/w/target/bench"));
    }

    /// The QEMU configuration of a benchmark boot, as the benchmarks built
    /// it each for itself before they shared [`with_guest`].
    #[test]
    fn guests_are_configured_as_each_benchmark_did() {
        use crate::cli::{BenchCmd, Cli, Cmd};
        use clap::Parser;
        let built = kbuild::Built { kernel: "/w/k".into(), images_dir: "/w/images".into() };
        let tap = TapNetwork::new("mqnet-bench", 2).unwrap();
        let want = |cmdline: &str, cpus, memory_mib| {
            let mut q = QemuConfig::new(Accel::Tcg, crate::run::boot_for(Firmware::Pvh, &built).unwrap())
                .with_kernel_cmdline(cmdline);
            (q.cpus, q.memory_mib, q.network, q.netns) =
                (cpus, memory_mib, tap.network().with_rss(true), Some(tap.netns.clone()));
            q
        };
        let cli = Cli::try_parse_from(["xtask", "bench", "echo", "--rss", "--cmdline", "log=debug"]).unwrap();
        let Cmd::Bench(b) = cli.command else { panic!() };
        let Some(BenchCmd::Echo(e)) = b.bench else { panic!() };
        let echo = e.boot.guest(&e.netns, Accel::Tcg, 2, "net-stats=500", Duration::ZERO, Duration::ZERO);
        let (_, qemu) = configure(&echo, &built).unwrap();
        assert_eq!(qemu, want("ip=10.99.0.2/24 net-stats=500 log=debug", 4, 512));
        assert_eq!((echo.label.as_str(), echo.ready), ("queues 2", crate::boot_tests::NET_READY));
        assert_eq!(echo.boot, Firmware::Pvh, "direct boot unless --boot says otherwise");
        // Without options the boot options end at `ip=`; without a memory
        // size the guest gets QEMU's configuration default (`bench raw`).
        let bare = Guest { cmdline: " ".into(), memory_mib: None, ..echo };
        assert_eq!(configure(&bare, &built).unwrap().1, want("ip=10.99.0.2/24", 4, 256));
        // The matrix's vhost-net is refused with RSS before any namespace exists.
        let vhost = Guest { vhost: true, ..bare };
        assert!(configure(&vhost, &built).unwrap_err().contains("vhost-net cannot be used with RSS"));
    }

    #[test]
    fn files_are_written_with_their_directory() {
        let dir = std::env::temp_dir().join(format!("mqnet-bench-write-{}", std::process::id()));
        let path = dir.join("a/b.txt");
        write_out(&path, "x\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "x\n");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(write_out(Path::new("/proc/no/such/place.txt"), "x").unwrap_err().contains("could not write"));
    }
}
