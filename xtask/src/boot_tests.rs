//! Boot tests: the real kernel image under QEMU, judged by what it prints on
//! the serial console and by QEMU's exit status.

use std::time::Duration;

use boot::abi;
use boot::accel::Accel;
use boot::image::Firmware;
use boot::outcome::{Outcome, StopReason};
use boot::runner::RunReport;

/// What a boot must show.
#[derive(Clone, Debug)]
pub enum Expect {
    /// Banner, memory, boot time, then exit=after-boot's success status.
    CleanExit,
    /// Banner, then an idle kernel that the runner stops at the timeout;
    /// the host must see every vCPU thread (nearly) idle meanwhile.
    IdleUntilStopped,
    /// `selftest=smp`: `cpus` CPUs online with their APIC ids, every CPU's
    /// timer on time, IPI round trips to every other CPU; then success.
    SmpSelftest { cpus: u16 },
    /// Network: `pairs` queue pairs in use, each queue's MSI-X vector aimed
    /// at its own CPU (or polled), every ping answered, the flows spread
    /// over the receive queues, every queue interrupt taken by its own CPU.
    Network { pairs: u16, vectors: Vectors },
    /// A failure report containing every one of these lines (substrings, in
    /// order) and the failure status.
    Failure(&'static [&'static str]),
}

#[derive(Clone, Debug)]
pub struct BootCase {
    pub name: &'static str,
    pub firmware: Firmware,
    pub cpus: u16,
    /// `-smp cpus,maxcpus=N`: hot-plug slots the firmware lists but does not enable.
    pub max_cpus: Option<u16>,
    pub memory_mib: u32,
    pub cmdline: &'static str,
    pub expect: Expect,
    /// Lines (substrings) that must appear besides what `expect` implies.
    pub also: &'static [&'static str],
    /// A multiqueue tap in a namespace of the test's own, and traffic.
    pub net: Option<NetCase>,
    /// A transitional virtio-net on QEMU user networking instead.
    pub transitional_nic: bool,
}

/// How the queues' interrupts are expected to be routed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vectors {
    PerQueue,
    PerPair,
    Polled,
}

/// The network side of a boot test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetCase {
    /// Tap queues (and the device's maximum queue pairs).
    pub queues: u16,
    /// MSI-X table size override (0: no MSI-X).
    pub vectors: Option<u16>,
    pub pings: u32,
    /// UDP flows × datagrams sent to the guest after the pings.
    pub flows: u16,
    pub per_flow: u16,
    /// Take the link down and up again (through QMP) after the traffic.
    pub flap_link: bool,
}

impl NetCase {
    const fn new(queues: u16) -> NetCase {
        NetCase { queues, vectors: None, pings: 20, flows: 32, per_flow: 4, flap_link: false }
    }
}

/// The kernel's line once every CPU's stack is up: traffic starts then.
pub const NET_READY: &str = "stacks up,";
/// The namespace the network tests create (and delete) unless
/// [`TEST_NETNS_VAR`] names another.
pub const TEST_NETNS: &str = "mqnet-test";
/// Names the test namespace instead, so that two checkouts can run their
/// network tests on one machine at the same time.
pub const TEST_NETNS_VAR: &str = "MQNET_TEST_NETNS";

/// The namespace to create: `value` (of [`TEST_NETNS_VAR`]) when set, which
/// must be a valid name, else [`TEST_NETNS`].
pub fn test_netns(value: Option<std::ffi::OsString>) -> Result<String, String> {
    let Some(value) = value else { return Ok(TEST_NETNS.into()) };
    let name = value.into_string().map_err(|v| format!("{TEST_NETNS_VAR}={v:?} is not UTF-8"))?;
    boot::netns::validate_name("network namespace", &name).map_err(|e| format!("{TEST_NETNS_VAR}: {e}"))?;
    Ok(name)
}

const fn case(
    name: &'static str,
    firmware: Firmware,
    cpus: u16,
    memory_mib: u32,
    cmdline: &'static str,
    expect: Expect,
) -> BootCase {
    BootCase {
        name,
        firmware,
        cpus,
        max_cpus: None,
        memory_mib,
        cmdline,
        expect,
        also: &[],
        net: None,
        transitional_nic: false,
    }
}

pub fn cases() -> Vec<BootCase> {
    use Firmware::{Bios, Uefi};
    const EXIT: &str = "exit=after-boot";
    const SELFTEST: &str = "selftest=smp exit=after-boot";
    const NET: &str = "net-stats=400";
    vec![
        case("bios-smp1", Bios, 1, 256, EXIT, Expect::CleanExit),
        case("bios-smp2", Bios, 2, 1024, EXIT, Expect::CleanExit),
        case("uefi-smp1", Uefi, 1, 256, EXIT, Expect::CleanExit),
        case("uefi-smp2", Uefi, 2, 512, EXIT, Expect::CleanExit),
        case("bios-smp4-idle-vcpus-halted", Bios, 4, 256, "", Expect::IdleUntilStopped),
        case("smp1-selftest", Bios, 1, 256, SELFTEST, Expect::SmpSelftest { cpus: 1 }),
        case("smp2-selftest", Bios, 2, 256, SELFTEST, Expect::SmpSelftest { cpus: 2 }),
        case("smp4-selftest", Bios, 4, 512, SELFTEST, Expect::SmpSelftest { cpus: 4 }),
        case("smp8-selftest-more-vcpus-than-host-cores", Bios, 8, 512, SELFTEST, Expect::SmpSelftest { cpus: 8 }),
        case("uefi-smp4-selftest", Uefi, 4, 512, SELFTEST, Expect::SmpSelftest { cpus: 4 }),
        BootCase {
            also: &["cpus: 2 enabled processors not used: limited to 2 by cpus=2"],
            ..case(
                "cpus-limit-below-vcpus",
                Bios,
                4,
                256,
                "cpus=2 selftest=smp exit=after-boot",
                Expect::SmpSelftest { cpus: 2 },
            )
        },
        BootCase {
            max_cpus: Some(4),
            also: &[
                "the MADT lists 4 processors",
                "cpus: 2 processor slots not enabled by the firmware (hot-plug slots): not started",
            ],
            ..case("hot-plug-slots-not-started", Bios, 2, 256, SELFTEST, Expect::SmpSelftest { cpus: 2 })
        },
        BootCase {
            also: &[
                "WARN  phantom-apic=7: also starting a processor that does not exist",
                "ERROR cpu2 (APIC id 7) did not come online within 1000 ms",
                "ERROR smp: 2 of 3 CPUs online",
                "selftest: ipi cpu0 -> cpu1 -> cpu0: 5 round trips",
            ],
            ..case(
                "ap-that-never-starts-is-reported",
                Bios,
                2,
                256,
                "phantom-apic=7 selftest=smp exit=after-boot",
                Expect::CleanExit,
            )
        },
        BootCase {
            net: Some(NetCase::new(4)),
            ..case("net-smp4-queues4", Bios, 4, 512, NET, Expect::Network { pairs: 4, vectors: Vectors::PerQueue })
        },
        BootCase {
            net: Some(NetCase::new(1)),
            also: &["cpus 1..3 have no queue pair of their own"],
            ..case(
                "net-smp4-queues1-mq-off",
                Bios,
                4,
                256,
                NET,
                Expect::Network { pairs: 1, vectors: Vectors::PerQueue },
            )
        },
        BootCase {
            net: Some(NetCase::new(8)),
            also: &["8 pairs offered, 2 in use"],
            ..case("net-smp2-queues8", Bios, 2, 256, NET, Expect::Network { pairs: 2, vectors: Vectors::PerQueue })
        },
        BootCase {
            net: Some(NetCase { flap_link: true, ..NetCase::new(2) }),
            also: &["INFO  virtio-net: link down", "INFO  virtio-net: link up"],
            ..case(
                "net-link-down-and-up-is-reported",
                Bios,
                2,
                256,
                NET,
                Expect::Network { pairs: 2, vectors: Vectors::PerQueue },
            )
        },
        BootCase {
            net: Some(NetCase::new(2)),
            ..case("net-uefi-smp2-queues2", Uefi, 2, 256, NET, Expect::Network { pairs: 2, vectors: Vectors::PerQueue })
        },
        BootCase {
            net: Some(NetCase::new(2)),
            ..case(
                "net-smp2-msix-per-pair",
                Bios,
                2,
                256,
                "net-stats=400 msix=per-pair",
                Expect::Network { pairs: 2, vectors: Vectors::PerPair },
            )
        },
        BootCase {
            net: Some(NetCase { vectors: Some(0), ..NetCase::new(2) }),
            also: &["WARN  virtio-net 00:02.0: 0 MSI-X vectors for 2 pairs: falling back to polling"],
            ..case(
                "net-no-msix-falls-back-to-polling",
                Bios,
                2,
                256,
                NET,
                Expect::Network { pairs: 2, vectors: Vectors::Polled },
            )
        },
        BootCase {
            transitional_nic: true,
            also: &["WARN  virtio-net 00:02.0: transitional device (id 1000) is not supported; start QEMU with"],
            ..case("transitional-virtio-net-is-refused", Bios, 1, 256, EXIT, Expect::CleanExit)
        },
        case(
            "panic-on-ap-stops-all-cpus",
            Bios,
            4,
            256,
            "exit=after-boot fault=panic fault-cpu=2",
            Expect::Failure(&[
                "KERNEL PANIC on cpu2: provoked by boot option fault=panic",
                "stopped 3 of 3 other CPUs",
            ]),
        ),
        case(
            "exception-on-ap-stops-all-cpus",
            Bios,
            2,
            256,
            "exit=after-boot fault=page-fault fault-cpu=1",
            Expect::Failure(&["CPU EXCEPTION #PF page fault (vector 14) on cpu1", "stopped 1 of 1 other CPUs"]),
        ),
        BootCase {
            also: &[
                "WARN  unknown boot option `colour` ignored",
                "WARN  bad value `loud` for boot option `log` ignored",
            ],
            ..case(
                "bad-boot-options-are-reported",
                Bios,
                1,
                256,
                "colour=blue log=loud exit=after-boot",
                Expect::CleanExit,
            )
        },
        case(
            "exception-page-fault",
            Bios,
            1,
            256,
            "exit=after-boot fault=page-fault",
            Expect::Failure(&[
                "CPU EXCEPTION #PF page fault (vector 14) on cpu0",
                "error code 0x0: page not present, read, kernel mode",
                "faulting address (cr2) 0x000003fffffff000",
                "rip 0x",
                "the kernel cannot continue: halting",
            ]),
        ),
        case(
            "exception-invalid-opcode-uefi",
            Uefi,
            2,
            256,
            "exit=after-boot fault=invalid-opcode",
            Expect::Failure(&["CPU EXCEPTION #UD invalid opcode (vector 6) on cpu0", "rip 0x"]),
        ),
        case(
            "exception-general-protection",
            Bios,
            1,
            256,
            "exit=after-boot fault=general-protection",
            Expect::Failure(&[
                "CPU EXCEPTION #GP general protection fault (vector 13) on cpu0",
                "error code 0x0: no selector",
            ]),
        ),
        case(
            "exception-double-fault-on-ist-stack",
            Bios,
            1,
            256,
            "exit=after-boot fault=stack-overflow",
            Expect::Failure(&["CPU EXCEPTION #DF double fault (vector 8) on cpu0", "error code 0x0"]),
        ),
        case(
            "panic",
            Bios,
            2,
            256,
            "exit=after-boot fault=panic",
            Expect::Failure(&["KERNEL PANIC on cpu0: provoked by boot option fault=panic at kernel/src/faults.rs:"]),
        ),
    ]
}

/// How long a case may take with `accel`.
pub fn time_limit(case: &BootCase, accel: Accel) -> Duration {
    match (accel, &case.expect) {
        (_, Expect::IdleUntilStopped) => idle_window(accel),
        (Accel::Tcg, Expect::Network { .. }) => Duration::from_secs(90),
        (Accel::Tcg, _) => Duration::from_secs(60),
        // kvm_pvm: ~50 s BIOS boots measured; hardware KVM is far faster.
        (Accel::Kvm { .. }, _) => Duration::from_secs(240),
    }
}

/// How long an idle kernel is left running before the runner stops it.
pub fn idle_window(accel: Accel) -> Duration {
    match accel {
        Accel::Tcg => Duration::from_secs(6),
        Accel::Kvm { pvm: false } => Duration::from_secs(6),
        Accel::Kvm { pvm: true } => Duration::from_secs(120),
    }
}

/// Checks a finished run against the case; `Err` says what was wrong.
pub fn check(case: &BootCase, report: &RunReport) -> Result<(), String> {
    let banner = format!("{} v{}", abi::BANNER, env!("CARGO_PKG_VERSION"));
    let must_see = |needle: &str| -> Result<usize, String> {
        report
            .lines
            .iter()
            .position(|l| l.text.contains(needle))
            .ok_or_else(|| format!("no line containing `{needle}`"))
    };
    let banner_at = must_see(&banner)?;
    let firmware = match case.firmware {
        Firmware::Bios => "(BIOS)",
        Firmware::Uefi => "(UEFI)",
    };
    if !report.lines[banner_at].text.contains(firmware) {
        return Err(format!("banner does not say {firmware}: {}", report.lines[banner_at].text));
    }
    check_memory(report, case.memory_mib)?;
    let ready_at = must_see(abi::READY)?;
    if ready_at < banner_at || !report.lines[ready_at].text.contains("ms in the kernel") {
        return Err(format!("bad boot-complete line: {}", report.lines[ready_at].text));
    }
    let mut after = 0;
    for needle in case.also {
        // In the order listed.
        let at = report.lines[after..]
            .iter()
            .position(|l| l.text.contains(needle))
            .ok_or_else(|| format!("no line containing `{needle}` (in order)"))?;
        after += at + 1;
    }
    match &case.expect {
        Expect::CleanExit => {
            expect_outcome(report, Outcome::Success)?;
            if case.also.is_empty() {
                if let Some(l) = report.lines.iter().find(|l| l.text.contains(" WARN ") || l.text.contains(" ERROR ")) {
                    return Err(format!("unexpected warning: {}", l.text));
                }
            }
        }
        Expect::IdleUntilStopped => {
            must_see(IDLE_MARKER)?;
            expect_outcome(report, Outcome::Stopped(StopReason::Timeout))?;
            check_idle_vcpus(report, case.cpus)?;
        }
        Expect::Network { pairs, vectors } => {
            expect_outcome(report, Outcome::Stopped(StopReason::Finished))?;
            check_network(case, report, *pairs, *vectors)?;
        }
        Expect::SmpSelftest { cpus } => {
            expect_outcome(report, Outcome::Success)?;
            check_smp(report, *cpus)?;
            if let Some(l) = report.lines.iter().find(|l| l.text.contains(" WARN ") || l.text.contains(" ERROR ")) {
                return Err(format!("unexpected warning: {}", l.text));
            }
        }
        Expect::Failure(lines) => {
            let mut from = ready_at;
            for needle in *lines {
                let at = report.lines[from..]
                    .iter()
                    .position(|l| l.text.contains(needle))
                    .ok_or_else(|| format!("failure report lacks `{needle}` (after line {from})"))?;
                from += at;
            }
            expect_outcome(report, Outcome::KernelFailure)?;
        }
    }
    Ok(())
}

/// The kernel's line once it has nothing left to do; the host's CPU sample starts here.
pub const IDLE_MARKER: &str = "idle: all work done";
/// Most a halted vCPU thread may use of a host CPU (TCG and KVM both sleep
/// a halted vCPU; a spinning one shows ~100%).
const IDLE_VCPU_MAX: f64 = 0.10;
/// Allowed deviation of each CPU's median timer interval from the requested 10 ms.
const TIMER_TOLERANCE: f64 = 0.10;

fn check_idle_vcpus(report: &RunReport, cpus: u16) -> Result<(), String> {
    let sample = report.cpu_sample.as_ref().ok_or("no host CPU sample of the vCPU threads")?;
    if sample.vcpus.len() != cpus as usize {
        return Err(format!("expected {cpus} vCPU threads, the host shows {}", sample.vcpus.len()));
    }
    for (name, share) in &sample.vcpus {
        if *share > IDLE_VCPU_MAX {
            return Err(format!(
                "{name} used {:.0}% of a host CPU over {:.1} s while the guest was idle",
                share * 100.0,
                sample.window.as_secs_f64()
            ));
        }
    }
    Ok(())
}

fn check_smp(report: &RunReport, cpus: u16) -> Result<(), String> {
    let has = |needle: &str| report.lines.iter().any(|l| l.text.contains(needle));
    let need = |needle: String| if has(&needle) { Ok(()) } else { Err(format!("no line containing `{needle}`")) };
    need(format!("cpus: using {cpus} "))?;
    need(format!("smp: all {cpus} CPU"))?;
    for i in 1..cpus {
        need(format!("cpu{i} INFO  online: APIC id {i}"))?;
    }
    for i in 0..cpus {
        let prefix = format!("selftest: cpu{i} timer: 10 intervals of 10.000 ms: median ");
        let line = report.find(&prefix).ok_or_else(|| format!("no timer result for cpu{i}"))?;
        let median = parse_ms_after(&line.text, &prefix).ok_or_else(|| format!("unreadable: {}", line.text))?;
        if (median - 10.0).abs() > 10.0 * TIMER_TOLERANCE {
            return Err(format!("cpu{i}'s timer median {median} ms is not within 10% of 10 ms"));
        }
    }
    for i in 1..cpus {
        let prefix = format!("selftest: ipi cpu0 -> cpu{i} -> cpu0: 5 round trips");
        let line = report.find(&prefix).ok_or_else(|| format!("no IPI round trips to cpu{i}"))?;
        if !line.text.ends_with(&format!("cpu{i}'s clock inside the round trip in 5 of 5")) {
            return Err(format!("cpu{i}'s TSC disagrees with cpu0's: {}", line.text));
        }
    }
    if has(&format!("cpu{cpus} INFO  online")) {
        return Err(format!("more than {cpus} CPUs came online"));
    }
    Ok(())
}

/// One CPU's last `net-stats:` report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueReport {
    pub rxq: u16,
    pub rx_packets: u64,
    pub rx_irqs: u64,
    pub txq: u16,
    pub tx_packets: u64,
}

/// Parses `net-stats: cpuN rxq Q packets P bytes B irqs I ... | txq T packets P ...`.
pub fn parse_net_stats(line: &str) -> Option<(u32, QueueReport)> {
    let rest = &line[line.find("net-stats: cpu")? + "net-stats: cpu".len()..];
    let (rx, tx) = rest.split_once(" | ")?;
    let words: Vec<&str> = rx.split_whitespace().collect();
    let cpu = words.first()?.parse().ok()?;
    let after = |ws: &[&str], key: &str| -> Option<u64> {
        ws.iter().position(|w| *w == key).and_then(|i| ws.get(i + 1)).and_then(|v| v.parse().ok())
    };
    let txw: Vec<&str> = tx.split_whitespace().collect();
    Some((
        cpu,
        QueueReport {
            rxq: after(&words, "rxq")? as u16,
            rx_packets: after(&words, "packets")?,
            rx_irqs: after(&words, "irqs")?,
            txq: after(&txw, "txq")? as u16,
            tx_packets: after(&txw, "packets")?,
        },
    ))
}

fn check_network(case: &BootCase, report: &RunReport, pairs: u16, vectors: Vectors) -> Result<(), String> {
    let polled = vectors == Vectors::Polled;
    let net = case.net.ok_or("a network expectation without a network")?;
    let has = |needle: &str| report.lines.iter().any(|l| l.text.contains(needle));
    let need = |needle: String| if has(&needle) { Ok(()) } else { Err(format!("no line containing `{needle}`")) };
    need(format!(", {pairs} in use, "))?;
    if pairs > 1 {
        need(format!("VQ_PAIRS_SET {pairs}: acknowledged"))?;
    }
    for p in 0..pairs {
        let (rxq, txq) = (2 * p, 2 * p + 1);
        let route = |q: u16| match vectors {
            Vectors::Polled => "polled".to_string(),
            Vectors::PerQueue => format!("MSI-X entry {q} -> vector {:#x}", 0x40 + q),
            Vectors::PerPair => format!("MSI-X entry {p} -> vector {:#x}", 0x40 + rxq),
        };
        need(format!("pair {p}: rxq {rxq} {}, txq {txq} {}, cpu{p} (APIC id {p})", route(rxq), route(txq)))?;
    }
    match &report.action {
        Some(Ok(out)) => {
            let ping = crate::traffic::parse_ping(out);
            if ping.sent != net.pings || ping.received != net.pings {
                return Err(format!("ping: {} sent, {} answered, {} expected", ping.sent, ping.received, net.pings));
            }
        }
        Some(Err(e)) => return Err(format!("host-side traffic failed: {e}")),
        None => return Err("the host-side traffic never ran".into()),
    }
    // Each CPU's last report.
    let mut last: Vec<Option<QueueReport>> = vec![None; case.cpus as usize];
    for l in &report.lines {
        if let Some((cpu, q)) = parse_net_stats(&l.text) {
            if let Some(slot) = last.get_mut(cpu as usize) {
                *slot = Some(q);
            }
        }
    }
    let mut total = 0;
    let mut busy_queues = 0;
    for (cpu, q) in last.iter().enumerate() {
        match (q, cpu < pairs as usize) {
            (Some(q), true) => {
                if q.rxq != 2 * cpu as u16 || q.txq != 2 * cpu as u16 + 1 {
                    return Err(format!("cpu{cpu} reports queues {}/{}, not its own pair", q.rxq, q.txq));
                }
                total += q.rx_packets;
                if q.rx_packets > 0 {
                    busy_queues += 1;
                    if !polled && q.rx_irqs == 0 {
                        return Err(format!(
                            "cpu{cpu} received {} packets on rxq {} without an interrupt",
                            q.rx_packets, q.rxq
                        ));
                    }
                }
            }
            (None, true) => return Err(format!("no net-stats report from cpu{cpu}")),
            (Some(_), false) => return Err(format!("cpu{cpu} owns no queue pair but reported one")),
            (None, false) => {}
        }
    }
    let sent = net.flows as u64 * net.per_flow as u64 + net.pings as u64;
    if total < sent {
        return Err(format!("the guest received {total} frames, fewer than the {sent} sent"));
    }
    if pairs > 1 && busy_queues < 2 {
        return Err(format!("{} flows all arrived on one receive queue", net.flows));
    }
    if let Some(l) = report.lines.iter().find(|l| l.text.contains("interrupts of other CPUs' queues")) {
        return Err(format!("a queue interrupt reached the wrong CPU: {}", l.text));
    }
    if let Some(l) = report.lines.iter().find(|l| {
        (l.text.contains(" WARN ") || l.text.contains(" ERROR ")) && !case.also.iter().any(|a| l.text.contains(a))
    }) {
        return Err(format!("unexpected warning: {}", l.text));
    }
    Ok(())
}

/// The number of milliseconds right after `prefix` in `line` ("10.002 ms").
fn parse_ms_after(line: &str, prefix: &str) -> Option<f64> {
    let rest = &line[line.find(prefix)? + prefix.len()..];
    rest.split_once(" ms")?.0.trim().parse().ok()
}

fn expect_outcome(report: &RunReport, want: Outcome) -> Result<(), String> {
    if report.outcome == want {
        Ok(())
    } else {
        Err(format!("expected \"{want}\", got \"{}\"", report.outcome))
    }
}

/// The kernel's `memory: N MiB usable` must match what QEMU was given: at
/// most the configured size, and no more than 10% lost to firmware.
fn check_memory(report: &RunReport, configured_mib: u32) -> Result<(), String> {
    let line = report.find("memory: ").ok_or("no memory line")?;
    let mib = parse_usable_mib(&line.text).ok_or_else(|| format!("cannot read memory line: {}", line.text))?;
    let low = configured_mib as u64 * 9 / 10;
    if mib > configured_mib as u64 || mib < low {
        return Err(format!("kernel found {mib} MiB usable with {configured_mib} MiB configured"));
    }
    Ok(())
}

fn parse_usable_mib(line: &str) -> Option<u64> {
    let rest = &line[line.find("memory: ")? + "memory: ".len()..];
    rest.split_once(" MiB usable")?.0.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use boot::runner::Line;

    fn report(outcome: Outcome, lines: &[&str]) -> RunReport {
        RunReport {
            outcome,
            lines: lines.iter().map(|t| Line { at: Duration::ZERO, text: t.to_string() }).collect(),
            stderr: String::new(),
            elapsed: Duration::from_secs(1),
            cpu_sample: None,
            action: None,
        }
    }

    fn good_boot() -> Vec<String> {
        vec![
            format!(
                "[    0.9] cpu0 INFO  mqnet kernel v{} (release build), x86_64, booted by bootloader 0.11 (BIOS)",
                env!("CARGO_PKG_VERSION")
            ),
            "[    0.9] cpu0 INFO  memory: 251 MiB usable in 3 regions, highest address 0xffdf000".into(),
            "[    1.0] cpu0 INFO  boot complete: 38.778 ms in the kernel, 1008.144 ms since power-on".into(),
        ]
    }

    fn lines(v: &[String]) -> Vec<&str> {
        v.iter().map(|s| s.as_str()).collect()
    }

    fn bios256() -> BootCase {
        cases().into_iter().find(|c| c.name == "bios-smp1").unwrap()
    }

    #[test]
    fn a_good_boot_passes() {
        assert_eq!(check(&bios256(), &report(Outcome::Success, &lines(&good_boot()))), Ok(()));
    }

    #[test]
    fn the_exit_status_matters() {
        let err = check(&bios256(), &report(Outcome::GuestReset, &lines(&good_boot()))).unwrap_err();
        assert!(err.contains("expected \"the kernel reported success\""), "{err}");
    }

    #[test]
    fn missing_banner_or_wrong_firmware_fails() {
        let mut l = good_boot();
        l.remove(0);
        assert!(check(&bios256(), &report(Outcome::Success, &lines(&l))).unwrap_err().contains("mqnet kernel v"));
        let l: Vec<String> = good_boot().into_iter().map(|s| s.replace("(BIOS)", "(UEFI)")).collect();
        assert!(check(&bios256(), &report(Outcome::Success, &lines(&l))).unwrap_err().contains("(BIOS)"));
    }

    #[test]
    fn memory_must_match_the_configuration() {
        let l: Vec<String> = good_boot().into_iter().map(|s| s.replace("251 MiB", "90 MiB")).collect();
        let err = check(&bios256(), &report(Outcome::Success, &lines(&l))).unwrap_err();
        assert_eq!(err, "kernel found 90 MiB usable with 256 MiB configured");
        assert_eq!(parse_usable_mib("x memory: 1019 MiB usable in 4 regions"), Some(1019));
    }

    #[test]
    fn warnings_fail_a_clean_boot() {
        let mut l = good_boot();
        l.push("[    1.0] cpu0 WARN  something odd".into());
        assert!(check(&bios256(), &report(Outcome::Success, &lines(&l))).unwrap_err().contains("unexpected warning"));
    }

    #[test]
    fn failure_reports_must_be_complete_and_in_order() {
        let pf = cases().into_iter().find(|c| c.name == "exception-page-fault").unwrap();
        let Expect::Failure(needles) = pf.expect else { panic!() };
        let mut l = good_boot();
        l.extend(needles.iter().map(|n| format!("  {n}")));
        assert_eq!(check(&pf, &report(Outcome::KernelFailure, &lines(&l))), Ok(()));
        assert!(check(&pf, &report(Outcome::Success, &lines(&l))).is_err(), "status must be failure");
        l.swap(3, 4);
        assert!(check(&pf, &report(Outcome::KernelFailure, &lines(&l))).unwrap_err().contains("lacks"));
    }

    fn smp_lines(cpus: u16, median: &str) -> Vec<String> {
        let mut l = good_boot();
        l.push(format!("[ 0.1] cpu0 INFO  cpus: using {cpus} (APIC ids ..); the MADT lists {cpus} processors"));
        l.push(format!("[ 0.1] cpu0 INFO  smp: all {cpus} CPUs online, 80 ms after kernel entry"));
        for i in 1..cpus {
            l.push(format!("[ 0.1] cpu{i} INFO  online: APIC id {i}"));
            l.push(format!(
                "[ 0.2] cpu0 INFO  selftest: ipi cpu0 -> cpu{i} -> cpu0: 5 round trips, median 0.1 ms, max 0.2 ms; \
                 cpu{i}'s clock inside the round trip in 5 of 5"
            ));
        }
        for i in 0..cpus {
            l.push(format!(
                "[ 0.2] cpu0 INFO  selftest: cpu{i} timer: 10 intervals of 10.000 ms: median {median} ms, min 9.9 ms"
            ));
        }
        l
    }

    #[test]
    fn smp_selftest_results_are_checked() {
        let c = BootCase { memory_mib: 256, ..cases().into_iter().find(|c| c.name == "smp4-selftest").unwrap() };
        assert_eq!(check(&c, &report(Outcome::Success, &lines(&smp_lines(4, "10.004")))), Ok(()));
        let err = check(&c, &report(Outcome::Success, &lines(&smp_lines(4, "11.500")))).unwrap_err();
        assert!(err.contains("not within 10%"), "{err}");
        let mut l = smp_lines(4, "10.0");
        l.retain(|x| !x.contains("cpu3 INFO  online"));
        assert!(check(&c, &report(Outcome::Success, &lines(&l))).unwrap_err().contains("cpu3 INFO  online"));
        let mut l = smp_lines(4, "10.0");
        l.retain(|x| !x.contains("-> cpu2 ->"));
        assert!(check(&c, &report(Outcome::Success, &lines(&l))).unwrap_err().contains("cpu2"));
        let l: Vec<String> = smp_lines(4, "10.0").into_iter().map(|x| x.replace("in 5 of 5", "in 3 of 5")).collect();
        assert!(check(&c, &report(Outcome::Success, &lines(&l))).unwrap_err().contains("TSC disagrees"));
        let l = smp_lines(5, "10.0");
        assert!(check(&c, &report(Outcome::Success, &lines(&l))).is_err(), "a fifth CPU is wrong too");
    }

    #[test]
    fn idle_vcpus_must_be_idle_on_the_host() {
        let c = cases().into_iter().find(|c| c.name == "bios-smp4-idle-vcpus-halted").unwrap();
        let mut l = good_boot();
        l.push(format!("[ 1.0] cpu0 INFO  {IDLE_MARKER}, every CPU halts"));
        let mut r = report(Outcome::Stopped(StopReason::Timeout), &lines(&l));
        assert!(check(&c, &r).unwrap_err().contains("no host CPU sample"));
        let vcpus = |busy: f64| (0..4).map(|i| (format!("CPU {i}/TCG"), if i == 2 { busy } else { 0.01 })).collect();
        r.cpu_sample = Some(boot::runner::CpuSample { window: Duration::from_secs(4), vcpus: vcpus(0.02) });
        assert_eq!(check(&c, &r), Ok(()));
        r.cpu_sample = Some(boot::runner::CpuSample { window: Duration::from_secs(4), vcpus: vcpus(0.97) });
        assert!(check(&c, &r).unwrap_err().contains("CPU 2/TCG used 97%"));
    }

    #[test]
    fn net_stats_lines_are_parsed() {
        let l = "[ 1.1] cpu2 INFO  net-stats: cpu2 rxq 4 packets 9 bytes 810 irqs 3 polls 11 no_buffers 0 drops bad_len 0 bad_id 0 header 0 | txq 5 packets 2 bytes 84 irqs 1 full 0 kicks 2";
        assert_eq!(
            parse_net_stats(l),
            Some((2, QueueReport { rxq: 4, rx_packets: 9, rx_irqs: 3, txq: 5, tx_packets: 2 }))
        );
        assert_eq!(parse_net_stats("net-stats: cpu2 rxq"), None);
    }

    #[test]
    fn network_results_are_checked() {
        let c = BootCase { memory_mib: 256, ..cases().into_iter().find(|c| c.name == "net-smp4-queues4").unwrap() };
        let mut l = good_boot();
        l.push(
            "virtio-net 00:02.0: MAC 52:54:00:12:34:56, link up, 4 pairs offered, 4 in use, 10 MSI-X entries".into(),
        );
        l.push("virtio-net 00:02.0: VQ_PAIRS_SET 4: acknowledged".into());
        for p in 0..4u16 {
            l.push(format!(
                "virtio-net 00:02.0: pair {p}: rxq {} MSI-X entry {} -> vector {:#x}, txq {} MSI-X entry {} -> vector {:#x}, cpu{p} (APIC id {p})",
                2 * p, 2 * p, 0x40 + 2 * p, 2 * p + 1, 2 * p + 1, 0x41 + 2 * p
            ));
            l.push(format!(
                "cpu{p} INFO  net-stats: cpu{p} rxq {} packets 60 bytes 1 irqs 5 polls 1 | txq {} packets 5 bytes 1 irqs 0",
                2 * p,
                2 * p + 1
            ));
        }
        let ok_ping = "20 packets transmitted, 20 received, 0% packet loss, time 1s".to_string();
        let mut r = report(Outcome::Stopped(StopReason::Finished), &lines(&l));
        r.action = Some(Ok(ok_ping.clone()));
        assert_eq!(check(&c, &r), Ok(()));
        r.action = Some(Ok("20 packets transmitted, 19 received".into()));
        assert!(check(&c, &r).unwrap_err().contains("19 answered"));
        r.action = Some(Ok(ok_ping));
        let mut bad = l.clone();
        bad.push("cpu1 WARN  net-stats: cpu1 took 3 interrupts of other CPUs' queues".into());
        let mut r2 = report(Outcome::Stopped(StopReason::Finished), &lines(&bad));
        r2.action = r.action.clone();
        assert!(check(&c, &r2).unwrap_err().contains("wrong CPU"));
        let one_queue: Vec<String> = l
            .iter()
            .map(|x| {
                if x.contains("net-stats") && !x.contains("rxq 0 ") {
                    x.replace("packets 60", "packets 0")
                } else {
                    x.clone()
                }
            })
            .collect();
        let mut r3 = report(Outcome::Stopped(StopReason::Finished), &lines(&one_queue));
        r3.action = r.action.clone();
        assert!(check(&c, &r3).is_err(), "fewer frames than sent, all on one queue");
    }

    #[test]
    fn the_test_namespace_can_be_renamed() {
        assert_eq!(test_netns(None), Ok("mqnet-test".into()));
        assert_eq!(test_netns(Some("mqnet-wt".into())), Ok("mqnet-wt".into()));
        let err = test_netns(Some("a/b".into())).unwrap_err();
        assert!(err.starts_with("MQNET_TEST_NETNS: network namespace name `a/b` contains `/`"), "{err}");
        assert!(test_netns(Some("".into())).unwrap_err().contains("1 to 15 characters"));
        assert!(test_netns(Some("sixteen-chars-xx".into())).is_err());
    }

    #[test]
    fn case_names_are_unique() {
        let mut names: Vec<_> = cases().iter().map(|c| c.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), cases().len());
    }
}
