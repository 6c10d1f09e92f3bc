//! Boot tests: the real kernel image under QEMU, judged by what it prints on
//! the serial console and by QEMU's exit status.

use std::collections::BTreeMap;
use std::time::Duration;

use boot::abi;
use boot::accel::Accel;
use boot::image::Firmware;
use boot::outcome::{Outcome, StopReason};
use boot::runner::RunReport;

use crate::rr::{RrShape, RrSummary};
use crate::tcpload::LoadSummary;
use kernel::raw::RawMode;

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
    /// The kernel refuses to boot, before its banner: these lines in order
    /// and the failure status (never a triple fault, which QEMU would
    /// report as a reset).
    Refused(&'static [&'static str]),
    /// Raw driver mode on `pairs` queue pairs: see `boot_raw::check`.
    Raw { pairs: u16 },
    /// The kernel gives up on its network (a device fault it was told to
    /// act out): these lines in order after boot, and the kernel still
    /// running, without a panic, when the host's traffic is done.
    NetworkStopped(&'static [&'static str]),
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
    /// Direct boot only: the kernel's command line in the start_info
    /// (`-append`), after the fw_cfg one (`cmdline`).
    pub append: &'static str,
    /// Direct boot only: the kernel gets a start_info of the test's making
    /// (through `boot::pvh::shim`) instead of QEMU's.
    pub start_info: Option<BadStartInfo>,
    /// Boot under KVM (skipped where /dev/kvm cannot be used), whatever the
    /// other cases use: what only a hypervisor provides (kvmclock).
    pub kvm: bool,
    /// Direct boot through SeaBIOS and QEMU's PVH option ROM even where
    /// qboot is installed (the default then).
    pub seabios: bool,
}

/// A start_info with something wrong in it, for the kernel to report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadStartInfo {
    /// No memory map (`memmap_entries` 0): the kernel cannot boot.
    NoMemoryMap,
    /// A command line of 5000 bytes without a terminator, beside a good
    /// memory map: the kernel boots without it.
    UnterminatedCmdline,
}

impl BadStartInfo {
    /// The start_info itself, for a guest of `memory_mib`.
    pub fn start_info(self, memory_mib: u32) -> boot::pvh::StartInfo {
        match self {
            BadStartInfo::NoMemoryMap => {
                boot::pvh::StartInfo { memory_map: vec![], cmdline: Some(b"exit=after-boot\0".to_vec()) }
            }
            BadStartInfo::UnterminatedCmdline => boot::pvh::StartInfo {
                memory_map: boot::pvh::StartInfo::qemu_map(memory_mib),
                cmdline: Some(vec![b'a'; 5000]),
            },
        }
    }
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
    /// ICMP floods (`ping -f`), one per payload size in turn, after the
    /// pings and flows; then [`AFTER_FLOOD_PINGS`] ordinary pings.
    pub floods: &'static [u32],
    /// The tap's MTU (Linux's 1500 when `None`).
    pub tap_mtu: Option<u32>,
    /// [`JUMBO_PINGS`] pings with this payload size, larger than the
    /// guest's MTU, after the rest (needs `tap_mtu`).
    pub jumbo_pings: Option<u32>,
    /// At the end, one ARP request for the guest from the tap, which must
    /// get exactly one reply however many stacks the guest runs.
    pub arp_probe: bool,
    /// Then one scrape of the guest's Prometheus endpoint (port 9100),
    /// which must parse and have one row per vCPU.
    pub metrics: bool,
    /// Then TCP loads against the guest's echo, discard and RR services.
    pub tcp: Option<TcpCase>,
    /// Offer the guest virtio-net RSS and hash reports (`rss=on,hash=on`).
    pub rss: bool,
    /// Then the host's real `iperf3` client against the guest's iperf3
    /// server ([`IPERF_RUNS`]), a malformed control exchange and one more
    /// run; the case's command line sets [`TEST_STEER_KEY`], so that the
    /// `-P 4` streams' client ports can be picked to land on 4 vCPUs.
    pub iperf: bool,
    /// Then `iperf3 -s -1` on the host, for the guest's own iperf3 client
    /// (the case's command line sets `iperf-client=`).
    pub iperf_client: bool,
    /// Raw driver mode (`raw=`): the host side and the checks are
    /// `boot_raw`'s instead of all of the above.
    pub raw: Option<kernel::raw::RawMode>,
    /// The device offers its checksum and segmentation offloads (QEMU's
    /// default); off, QEMU is started with [`boot::qemu::OFFLOADS_OFF`].
    pub offloads: bool,
}

/// The TCP step of a network case: an echo load, then (if it passed) a
/// discard load, each run by `xtask tcp-load` inside the namespace, then
/// (if that passed too) request/response transactions, by `xtask rr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpCase {
    /// Concurrent echo connections × bytes each.
    pub echo_connections: u32,
    pub echo_bytes: u64,
    /// Concurrent discard connections, bytes in all.
    pub discard_connections: u32,
    pub discard_bytes: u64,
    pub rr: Option<RrStep>,
}

/// Transactions against the guest's RR service (port 5202): `connections`
/// at once, each one transaction at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RrStep {
    pub connections: u32,
    pub shape: RrShape,
}

impl TcpCase {
    /// Connections the host opens in all.
    pub fn connections(&self) -> u64 {
        u64::from(self.echo_connections)
            + u64::from(self.discard_connections)
            + self.rr.map_or(0, |r| u64::from(r.connections))
    }
}

impl NetCase {
    const fn new(queues: u16) -> NetCase {
        NetCase {
            queues,
            vectors: None,
            pings: 20,
            flows: 32,
            per_flow: 4,
            flap_link: false,
            floods: &[],
            tap_mtu: None,
            jumbo_pings: None,
            arp_probe: false,
            metrics: false,
            tcp: None,
            rss: false,
            iperf: false,
            iperf_client: false,
            raw: None,
            offloads: true,
        }
    }
}

/// Echo requests per flood: ping stops at this many replies.
pub const FLOOD_COUNT: u32 = 40_000;
/// Requests a flood keeps in flight (`ping -l`).
pub const FLOOD_PRELOAD: u32 = 32;
/// How long ping may flood before giving up (`ping -w`). A flood takes
/// 0.5–3 s here; against a guest whose data path wedged ping runs until
/// this deadline, or until its first ICMP error (the host's neighbour entry
/// for a guest that no longer transmits fails), whichever comes first.
pub const FLOOD_DEADLINE: Duration = Duration::from_secs(60);
/// Most requests one flood may lose. When ping has its last reply it stops
/// with up to [`FLOOD_PRELOAD`] requests still in flight, counted as lost;
/// the rest allows a few frames dropped on the way (a full tap queue), while
/// a data path that loses frames steadily shows hundreds.
pub const FLOOD_MAX_LOST: u32 = 64;
/// Ordinary pings after the floods, every one to be answered: a guest whose
/// transmit path wedged during a flood answers none.
pub const AFTER_FLOOD_PINGS: u32 = 5;
/// Pings with a payload beyond the guest's MTU, every one to be answered
/// intact.
pub const JUMBO_PINGS: u32 = 20;
/// How long the ARP probe listens for replies after its one request.
pub const ARP_LISTEN: Duration = Duration::from_millis(1500);
/// Step names in the host-side transcript (see [`crate::traffic::section`]).
pub const STEP_PING: &str = "ping";
pub const STEP_FLOWS: &str = "udp flows";
pub const STEP_AFTER_FLOODS: &str = "ping after the floods";
pub const STEP_ARP: &str = "arp";
pub const STEP_METRICS: &str = "metrics";

pub const STEP_TCP_ECHO: &str = "tcp echo";
/// iperf3 steps: metrics around the `-P 4` runs, the malformed exchange,
/// and the run after it.
pub const STEP_METRICS_BEFORE: &str = "metrics before -P 4";
pub const STEP_METRICS_AFTER: &str = "metrics after -P 4";
pub const STEP_IPERF_MALFORMED: &str = "iperf3 malformed";
pub const STEP_IPERF_AFTER: &str = "iperf3 after malformed";
/// The host's `iperf3 -s -1` that the guest's client runs against.
pub const STEP_IPERF_SERVER: &str = "iperf3 server";
/// The guest's lines about its client test.
pub const IPERF_CLIENT_DONE: &str = "iperf3-client: done:";
pub const IPERF_CLIENT_JSON: &str = "iperf3-client-json: ";
/// The iperf3 runs of a network case with `iperf`: (step name, client
/// arguments), 2 s each. `-P 4` runs get `--cport`.
pub const IPERF_RUNS: [(&str, &[&str]); 6] = [
    ("iperf3 -P 1", &["-P", "1"]),
    ("iperf3 -P 1 -R", &["-P", "1", "-R"]),
    ("iperf3 -P 4", &["-P", "4"]),
    ("iperf3 -P 4 -R", &["-P", "4", "-R"]),
    ("iperf3 -l 512", &["-l", "512"]),
    ("iperf3 -l 512 -R", &["-l", "512", "-R"]),
];
/// Seconds per iperf3 run, and the most one may take.
pub const IPERF_SECONDS: u32 = 2;
pub const IPERF_DEADLINE: Duration = Duration::from_secs(40);
/// The steering key of the iperf3 and TCP cases (RSS's well-known default
/// key), as a literal for `concat!`.
macro_rules! test_steer_key {
    () => {
        "6d5a56da255b0ec24167253d43a38fb0d0ca2bcbae7b30b477cb2da38030f20c6a42b73bbeac01fa"
    };
}
/// The steering key of the iperf3 and TCP cases (RSS's well-known default
/// key). Without it each boot draws its own, and with Linux's habit of
/// giving successive connections client ports two apart, about one key in
/// 64 leaves a low bit of the Toeplitz hash (the queue index) the same for
/// every connection: two of four vCPUs then get none.
pub const TEST_STEER_KEY: &str = test_steer_key!();
/// SERVER_ERROR (-2), "unable to receive parameters" (114), errno 0: the
/// answer to a malformed parameter message.
pub const IPERF_PARAMS_ERROR: &str = "fe 00 00 00 72 00 00 00 00";
pub const STEP_TCP_DISCARD: &str = "tcp discard";
pub const STEP_TCP_RR: &str = "tcp rr";

/// The TCP cases' load: 64 concurrent echo connections of 1 MiB each, then
/// 100 MiB discarded over 4 connections, then [`TCP_RR`].
pub const TCP_LOAD: TcpCase = TcpCase {
    echo_connections: 64,
    echo_bytes: 1 << 20,
    discard_connections: 4,
    discard_bytes: 100 << 20,
    rr: Some(TCP_RR),
};
/// The TCP cases' RR step: 8 connections (enough that they land on more
/// than one vCPU) of 32-byte requests and 4 KiB responses (three segments)
/// for 2 s.
pub const TCP_RR: RrStep =
    RrStep { connections: 8, shape: RrShape { request: 32, response: 4096, time: Duration::from_secs(2) } };
/// How much earlier than the host's clock says a guest report may have
/// been made: the host's clock for a step starts just before QEMU does, a
/// serial line's when QEMU has started.
pub const REPORT_SKEW: Duration = Duration::from_millis(250);
/// Quiet time before the RR step: longer than the TCP cases' report period
/// (`net-stats=1000`) plus [`REPORT_SKEW`], so that a report made after the
/// discard load's connections and before the RR step's is there to count
/// from.
pub const RR_QUIET: Duration = Duration::from_millis(1500);
const _: () = assert!(RR_QUIET.as_millis() > 1000 + REPORT_SKEW.as_millis());
/// Deadline of the echo load: 64 MiB each way takes 10–60 s under
/// multi-threaded TCG on 2 host cores; a hung guest fails the step then.
pub const TCP_ECHO_DEADLINE: Duration = Duration::from_secs(240);
/// Deadline of the discard load.
pub const TCP_DISCARD_DEADLINE: Duration = Duration::from_secs(120);
/// Frames of one flow that may reach a vCPU other than its owner without
/// RSS, while the tap has not yet learnt the flow's queue from the guest's
/// replies (it steers a flow to the queue the guest last transmitted it on).
pub const MISSES_PER_FLOW: u64 = 4;

/// The transcript step of the flood with `size` bytes of payload.
pub fn flood_step(size: u32) -> String {
    format!("flood -s {size}")
}

/// The transcript step of the jumbo pings with `size` bytes of payload.
pub fn jumbo_step(size: u32) -> String {
    format!("ping -s {size}")
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

/// An ICMP flood case on a fresh boot: `cpus` vCPUs with a queue pair each,
/// counters reported every second, so the last report comes after the
/// floods.
fn flood_case(name: &'static str, cpus: u16) -> BootCase {
    BootCase {
        net: Some(NetCase { floods: &[56, 1400], ..NetCase::new(cpus) }),
        ..case(
            name,
            Firmware::Bios,
            cpus,
            256,
            "net-stats=1000",
            Expect::Network { pairs: cpus, vectors: Vectors::PerQueue },
        )
    }
}

/// A TCP case: 4 vCPUs, `queues` queue pairs (RSS offered or not), the
/// pings and UDP flows, then [`TCP_LOAD`]; counters every second. 1 GiB, so
/// that each vCPU's connection cap (its share of half the heap, less the
/// five services' listeners) is far above the 64 echo connections' worst
/// spread (with 512 MiB it was 24, which about 1 boot in 30 would exceed).
fn tcp_case(name: &'static str, queues: u16, rss: bool) -> BootCase {
    // The kernel names the vCPUs left without a queue pair of their own;
    // checksum offload and large segments both ways (HOST_TSO4/6, GUEST_TSO)
    // are negotiated, except transmit checksums (and so TSO) in the
    // one-pair case, which turns them off (`tx-csum=off`) so that the stacks' own
    // checksums go through the same loads (the host verifies those). That
    // case also cuts coalesced segments for the three vCPUs without a
    // queue into inbox-sized ones (`splits`, checked in `check_tcp`).
    const ALL: &str = "negotiated CSUM GUEST_CSUM MAC GUEST_TSO4 GUEST_TSO6 HOST_TSO4 HOST_TSO6 ";
    let also: &'static [&'static str] = match queues {
        1 => &["negotiated GUEST_CSUM MAC GUEST_TSO4 GUEST_TSO6 ", "cpus 1..3 have no queue pair of their own"],
        2 => &[ALL, "cpus 2..3 have no queue pair of their own"],
        3 => &[ALL, "cpus 3..3 have no queue pair of their own"],
        _ => &[ALL],
    };
    let cmdline = if queues == 1 {
        concat!("net-stats=1000 tx-csum=off steer-key=", test_steer_key!())
    } else {
        concat!("net-stats=1000 steer-key=", test_steer_key!())
    };
    BootCase {
        net: Some(NetCase { tcp: Some(TCP_LOAD), rss, ..NetCase::new(queues) }),
        also,
        ..case(
            name,
            Firmware::Bios,
            4,
            1024,
            cmdline,
            Expect::Network { pairs: queues.min(4), vectors: Vectors::PerQueue },
        )
    }
}

/// The TCP step of the iperf3 cases: a checksummed transfer both ways (the
/// echo, compared byte for byte) before the iperf3 runs.
pub const IPERF_CASE_LOAD: TcpCase =
    TcpCase { echo_connections: 8, echo_bytes: 4 << 20, discard_connections: 2, discard_bytes: 32 << 20, rr: None };

/// An iperf3 case: 4 vCPUs, 4 pairs, [`IPERF_CASE_LOAD`] then the iperf3
/// runs, with the device's offloads on or off.
fn iperf_case(name: &'static str, offloads: bool) -> BootCase {
    BootCase {
        net: Some(NetCase { iperf: true, pings: 4, flows: 8, tcp: Some(IPERF_CASE_LOAD), offloads, ..NetCase::new(4) }),
        also: if offloads {
            &["negotiated CSUM GUEST_CSUM MAC GUEST_TSO4 GUEST_TSO6 HOST_TSO4 HOST_TSO6 "]
        } else {
            &["negotiated MAC MRG_RXBUF STATUS "]
        },
        ..case(
            name,
            Firmware::Bios,
            4,
            1024,
            concat!("net-stats=1000 steer-key=", test_steer_key!()),
            Expect::Network { pairs: 4, vectors: Vectors::PerQueue },
        )
    }
}

/// A raw-mode case: 2 vCPUs, 2 queue pairs, `mode` (in `cmdline` too).
fn raw_case(name: &'static str, mode: RawMode, cmdline: &'static str) -> BootCase {
    BootCase {
        net: Some(NetCase { raw: Some(mode), ..NetCase::new(2) }),
        ..case(name, Firmware::Bios, 2, 256, cmdline, Expect::Raw { pairs: 2 })
    }
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
        append: "",
        start_info: None,
        kvm: false,
        seabios: false,
    }
}

pub fn cases() -> Vec<BootCase> {
    use Firmware::{Bios, Pvh, Uefi};
    const EXIT: &str = "exit=after-boot";
    const SELFTEST: &str = "selftest=smp exit=after-boot";
    const NET: &str = "net-stats=400";
    vec![
        // Direct boot (the default of run and bench).
        BootCase {
            also: &["pvh: start_info v1: ", "booted by PVH"],
            ..case("pvh-smp1", Pvh, 1, 256, EXIT, Expect::CleanExit)
        },
        case("pvh-smp2-selftest", Pvh, 2, 512, SELFTEST, Expect::SmpSelftest { cpus: 2 }),
        BootCase {
            // The other firmware of direct boot (when qboot is the default).
            seabios: true,
            net: Some(NetCase::new(2)),
            ..case(
                "net-pvh-seabios-smp2-queues2",
                Pvh,
                2,
                256,
                NET,
                Expect::Network { pairs: 2, vectors: Vectors::PerQueue },
            )
        },
        case("pvh-smp4-selftest", Pvh, 4, 1024, SELFTEST, Expect::SmpSelftest { cpus: 4 }),
        BootCase {
            // The memory map and the command line from QEMU's start_info:
            // `-append` comes after fw_cfg's options, and its `cpus=1`
            // limits the two vCPUs to one.
            append: "cpus=1 log=info",
            also: &[
                // (RAM up to 767 MiB with SeaBIOS, 768 with qboot; the
                // memory line is checked against the 768 MiB configured.)
                "MiB, command line 15 bytes",
                "boot options: selftest=smp exit=after-boot cpus=1 log=info",
                "cpus: 1 enabled processors not used: limited to 1 by cpus=1",
            ],
            ..case("pvh-command-line-and-memory-map-from-start-info", Pvh, 2, 768, SELFTEST, Expect::SmpSelftest {
                cpus: 1,
            })
        },
        BootCase {
            start_info: Some(BadStartInfo::NoMemoryMap),
            ..case(
                "pvh-start-info-without-memory-map-is-refused",
                Pvh,
                1,
                256,
                EXIT,
                Expect::Refused(&["ERROR pvh: start_info has no memory map: cannot boot"]),
            )
        },
        BootCase {
            start_info: Some(BadStartInfo::UnterminatedCmdline),
            also: &[
                "WARN  pvh: the command line has no terminator within 4095 bytes: command line ignored",
                "command line 0 bytes",
                "boot options: exit=after-boot",
            ],
            ..case("pvh-start-info-command-line-unterminated-is-ignored", Pvh, 1, 256, EXIT, Expect::CleanExit)
        },
        BootCase {
            kvm: true,
            also: &["GHz, from kvmclock", "clock: checked against the PIT: "],
            ..case("pvh-kvm-clock-from-kvmclock-checked-against-the-pit", Pvh, 1, 256, "exit=after-boot clock-check=on", Expect::CleanExit)
        },
        BootCase {
            net: Some(NetCase { tcp: Some(TCP_LOAD), arp_probe: true, metrics: true, ..NetCase::new(4) }),
            ..case(
                "net-pvh-smp4-queues4",
                Pvh,
                4,
                1024,
                concat!("net-stats=1000 steer-key=", test_steer_key!()),
                Expect::Network { pairs: 4, vectors: Vectors::PerQueue },
            )
        },
        BootCase {
            net: Some(NetCase::new(2)),
            ..case("net-pvh-smp2-queues2", Pvh, 2, 256, NET, Expect::Network { pairs: 2, vectors: Vectors::PerQueue })
        },
        BootCase {
            net: Some(NetCase { metrics: true, ..NetCase::new(1) }),
            ..case("net-pvh-smp1-queues1", Pvh, 1, 256, NET, Expect::Network { pairs: 1, vectors: Vectors::PerQueue })
        },
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
            net: Some(NetCase { arp_probe: true, metrics: true, ..NetCase::new(4) }),
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
        // The single-queue floods are booted three times: a transmit path
        // that stalls does so on some boots only.
        flood_case("net-flood-smp1-queues1-boot1", 1),
        flood_case("net-flood-smp1-queues1-boot2", 1),
        flood_case("net-flood-smp1-queues1-boot3", 1),
        flood_case("net-flood-smp2-queues2-boot1", 2),
        flood_case("net-flood-smp2-queues2-boot2", 2),
        BootCase {
            // 4042-byte frames, two merged 2 KiB receive buffers each; the
            // guest keeps its MTU of 1500 and answers in IP fragments.
            net: Some(NetCase { tap_mtu: Some(9000), jumbo_pings: Some(4000), ..NetCase::new(2) }),
            ..case(
                "net-jumbo-frames-from-a-mtu9000-tap",
                Bios,
                2,
                256,
                NET,
                Expect::Network { pairs: 2, vectors: Vectors::PerQueue },
            )
        },
        BootCase {
            // The device applies VQ_PAIRS_SET at once; the kernel is told to
            // act as if the answer never came: it must reset the device (so
            // the command cannot take effect behind its back) and set it up
            // again with one pair, which then works.
            net: Some(NetCase::new(2)),
            also: &[
                "WARN  virtio-net 00:02.0: net-fault=ctrl-unanswered: not waiting for the answer",
                "WARN  virtio-net 00:02.0: VQ_PAIRS_SET 2: no answer within 1 s; the device was reset: setting it up again with one queue pair",
                "cpus 1..1 have no queue pair of their own",
            ],
            ..case(
                "net-vq-pairs-set-unanswered-resets-and-uses-one-pair",
                Bios,
                2,
                256,
                "net-stats=400 net-fault=ctrl-unanswered",
                Expect::Network { pairs: 1, vectors: Vectors::PerQueue },
            )
        },
        BootCase {
            // After 10 frames the kernel writes a used index a ring and a
            // half ahead into cpu0's receive ring, as a device that lost
            // track would: the queue must refuse it, the device be reset and
            // the network stopped, loudly, and nothing panic.
            net: Some(NetCase::new(1)),
            ..case(
                "net-broken-ring-resets-the-device",
                Bios,
                1,
                256,
                "net-stats=400 net-fault=used-index-jump",
                Expect::NetworkStopped(&[
                    "WARN  net-fault=used-index-jump: writing used index",
                    "ERROR virtio-net: cpu0 queue 0 is broken: the used index jumped from",
                    "ERROR virtio-net: device reset; the network is stopped",
                ]),
            )
        },
        BootCase {
            transitional_nic: true,
            also: &["WARN  virtio-net 00:02.0: transitional device (id 1000) is not supported; start QEMU with"],
            ..case("transitional-virtio-net-is-refused", Bios, 1, 256, EXIT, Expect::CleanExit)
        },
        // TCP echo and discard on every vCPU: with a queue pair per vCPU
        // (flows steered by the tap's learning, or by RSS), and with fewer
        // pairs than vCPUs (flows of queue-less vCPUs through their inboxes).
        tcp_case("net-tcp-smp4-queues4", 4, false),
        tcp_case("net-tcp-smp4-queues4-rss", 4, true),
        tcp_case("net-tcp-smp4-queues2", 2, false),
        tcp_case("net-tcp-smp4-queues1", 1, false),
        // The guest as an iperf3 client of the host's real server: two
        // streams, opened by different vCPUs.
        BootCase {
            net: Some(NetCase { iperf_client: true, pings: 4, flows: 8, ..NetCase::new(2) }),
            ..case(
                "net-iperf-client-smp2-queues2",
                Bios,
                2,
                512,
                "net-stats=1000 iperf-client=10.99.0.1 iperf-parallel=2 iperf-time=2",
                Expect::Network { pairs: 2, vectors: Vectors::PerQueue },
            )
        },
        // The real iperf3 client against the guest's server on every vCPU,
        // after an echo load (every byte compared) and a discard load: with
        // the device's offloads (64 KiB segments from the host, partial
        // checksums both ways), and with none (QEMU properties off).
        iperf_case("net-iperf-smp4-queues4", true),
        iperf_case("net-iperf-smp4-queues4-offloads-off", false),
        // Raw mode, one boot per mode: the guest moves frames with no
        // stack, the host counts them on the tap (see boot_raw).
        raw_case("net-raw-rxonly-smp2-queues2", RawMode::RxOnly, "net-stats=400 raw=rxonly"),
        raw_case(
            "net-raw-txonly-smp2-queues2",
            RawMode::TxOnly,
            "net-stats=400 raw=txonly raw-len=300 raw-count=20000 raw-delay=2000",
        ),
        raw_case("net-raw-macswap-smp2-queues2", RawMode::MacSwap, "net-stats=400 raw=macswap"),
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
            // The boot CPU's stack in .bss under direct boot: its guard
            // page must be unmapped for the overflow to be caught.
            "pvh-exception-double-fault-on-ist-stack",
            Pvh,
            1,
            256,
            "exit=after-boot fault=stack-overflow",
            Expect::Failure(&["CPU EXCEPTION #DF double fault (vector 8) on cpu0", "error code 0x0"]),
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
    let base = match (accel, &case.expect) {
        (_, Expect::IdleUntilStopped) => idle_window(accel),
        (Accel::Tcg, Expect::Network { .. } | Expect::NetworkStopped(_) | Expect::Raw { .. }) => {
            Duration::from_secs(90)
        }
        (Accel::Tcg, _) => Duration::from_secs(60),
        // kvm_pvm: ~50 s BIOS boots measured; hardware KVM is far faster.
        (Accel::Kvm { .. }, _) => Duration::from_secs(240),
    };
    // Every flood may run into its deadline (a wedged guest); the case
    // should then end with the checks' verdict, not with a timeout.
    let floods = case.net.map_or(0, |n| n.floods.len() as u32);
    // Likewise every TCP load, and the grace its client gets beyond that.
    let tcp = match case.net.and_then(|n| n.tcp) {
        Some(t) => {
            let rr = t.rr.map_or(Duration::ZERO, |r| RR_QUIET + crate::traffic::rr_limit(r.shape.time));
            TCP_ECHO_DEADLINE + TCP_DISCARD_DEADLINE + 2 * crate::traffic::TCP_LOAD_GRACE + rr
        }
        None => Duration::ZERO,
    };
    base + FLOOD_DEADLINE * floods + tcp
}

/// How long a network case's VM keeps running after the host-side traffic:
/// three `net-stats=` periods, so every CPU reports after the traffic.
pub fn then_wait(case: &BootCase) -> Duration {
    let period = case.cmdline.split_whitespace().find_map(|w| w.strip_prefix("net-stats=")?.parse::<u64>().ok());
    Duration::from_millis(3 * period.unwrap_or(400))
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
    if let Expect::Refused(lines) = &case.expect {
        let mut from = 0;
        for needle in *lines {
            let at = report.lines[from..]
                .iter()
                .position(|l| l.text.contains(needle))
                .ok_or_else(|| format!("no line containing `{needle}` (in order)"))?;
            from += at + 1;
        }
        return expect_outcome(report, Outcome::KernelFailure);
    }
    let banner = format!("{} v{}", abi::BANNER, env!("CARGO_PKG_VERSION"));
    let must_see = |needle: &str| -> Result<usize, String> {
        report
            .lines
            .iter()
            .position(|l| l.text.contains(needle))
            .ok_or_else(|| format!("no line containing `{needle}`"))
    };
    let banner_at = must_see(&banner)?;
    let firmware = case.firmware.banner();
    if !report.lines[banner_at].text.contains(firmware) {
        return Err(format!("banner does not say {firmware}: {}", report.lines[banner_at].text));
    }
    check_memory(report, case.memory_mib)?;
    let ready_at = must_see(abi::READY)?;
    if ready_at < banner_at || !report.lines[ready_at].text.contains("ms in the kernel") {
        return Err(format!("bad boot-complete line: {}", report.lines[ready_at].text));
    }
    check_phases(case, report)?;
    check_clock_agreement(report)?;
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
        Expect::Raw { pairs } => {
            expect_outcome(report, Outcome::Stopped(StopReason::Finished))?;
            let mode = case.net.and_then(|n| n.raw).ok_or("a raw expectation without a raw mode")?;
            crate::boot_raw::check(mode, report, case.cpus, *pairs)?;
        }
        Expect::SmpSelftest { cpus } => {
            expect_outcome(report, Outcome::Success)?;
            check_smp(report, *cpus)?;
            if let Some(l) = report.lines.iter().find(|l| l.text.contains(" WARN ") || l.text.contains(" ERROR ")) {
                return Err(format!("unexpected warning: {}", l.text));
            }
        }
        Expect::NetworkStopped(lines) => {
            expect_outcome(report, Outcome::Stopped(StopReason::Finished))?;
            let mut from = ready_at;
            for needle in *lines {
                let at = report.lines[from..]
                    .iter()
                    .position(|l| l.text.contains(needle))
                    .ok_or_else(|| format!("no line containing `{needle}` (after line {from})"))?;
                from += at;
            }
            if let Some(l) =
                report.lines.iter().find(|l| l.text.contains("KERNEL PANIC") || l.text.contains("CPU EXCEPTION"))
            {
                return Err(format!("the kernel did not survive the fault: {}", l.text));
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
        Expect::Refused(_) => unreachable!("checked first"),
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

/// One side (RX or TX) of a `net-stats:` report: every `key value` pair in
/// any order, so that new counters can be added to the kernel's line
/// without breaking older checks. A key the line lacks reads as 0 (older
/// kernels print fewer counters).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    values: BTreeMap<String, u64>,
    /// The keys that follow the plain word `drops`: frames dropped, by reason.
    drops: Vec<String>,
}

impl Counters {
    /// A word that is not a number followed by a number is a pair; a word
    /// followed by another word (`drops`) starts a group of pairs.
    fn parse(text: &str) -> Counters {
        let words: Vec<&str> = text.split_whitespace().collect();
        let number = |w: Option<&&str>| w.and_then(|w| w.parse::<u64>().ok());
        let mut c = Counters::default();
        let mut group = "";
        let mut i = 0;
        while i < words.len() {
            let word = words[i];
            match (number(Some(&word)), number(words.get(i + 1))) {
                (Some(_), _) => i += 1,
                (None, Some(value)) => {
                    if !c.values.contains_key(word) {
                        c.values.insert(word.to_string(), value);
                        if group == "drops" {
                            c.drops.push(word.to_string());
                        }
                    }
                    i += 2;
                }
                (None, None) => {
                    group = word;
                    i += 1;
                }
            }
        }
        c
    }

    /// The counter `key`, 0 when the line does not have it.
    pub fn get(&self, key: &str) -> u64 {
        self.values.get(key).copied().unwrap_or(0)
    }

    /// Every drop counter: those the kernel groups under `drops`, and the
    /// known receive drop reasons even if a line should print them elsewhere.
    pub fn drop_counters(&self) -> Vec<(&str, u64)> {
        let known =
            RX_DROPS.iter().copied().filter(|k| self.values.contains_key(*k) && !self.drops.iter().any(|d| d == k));
        self.drops.iter().map(String::as_str).chain(known).map(|k| (k, self.get(k))).collect()
    }
}

/// The receive drop reasons the kernel counts: a used length the buffer
/// cannot hold, a used id it never handed out, an unreadable virtio-net
/// header, a merged frame whose buffers do not add up, a frame longer than
/// the stack accepts.
pub const RX_DROPS: [&str; 5] = ["bad_len", "bad_id", "header", "merge", "too_long"];

/// One `net-stats:` report of one CPU: its queue pair's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    pub cpu: u32,
    pub rxq: u16,
    pub txq: u16,
    pub rx: Counters,
    pub tx: Counters,
}

/// Parses `net-stats: cpuN rxq Q packets P ... drops bad_len 0 ... | txq T
/// packets P ...`: the RX side before ` | `, the TX side after it. `None`
/// for any other line, or one without `rxq` and `txq`.
pub fn parse_net_stats(line: &str) -> Option<NetStats> {
    let rest = &line[line.find("net-stats: cpu")? + "net-stats: cpu".len()..];
    let (cpu, rest) = rest.split_once(' ')?;
    let (rx, tx) = rest.split_once(" | ")?;
    let (rx, tx) = (Counters::parse(rx), Counters::parse(tx));
    let queue = |c: &Counters, key: &str| c.values.get(key).and_then(|&q| u16::try_from(q).ok());
    Some(NetStats { cpu: cpu.parse().ok()?, rxq: queue(&rx, "rxq")?, txq: queue(&tx, "txq")?, rx, tx })
}

/// Each CPU's last report, by CPU index.
pub fn last_net_stats(report: &RunReport) -> BTreeMap<u32, NetStats> {
    report.lines.iter().filter_map(|l| parse_net_stats(&l.text)).map(|s| (s.cpu, s)).collect()
}

/// Parses `net-cpu: cpuN accepted A active B closed C reset D misses E
/// inbox_in F inbox_drops G` (keys in any order, missing ones 0): a vCPU's
/// TCP service and flow-steering counters. `None` for any other line.
pub fn parse_net_cpu(line: &str) -> Option<(u32, Counters)> {
    let rest = &line[line.find("net-cpu: cpu")? + "net-cpu: cpu".len()..];
    let (cpu, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    Some((cpu.parse().ok()?, Counters::parse(rest)))
}

/// Each vCPU's last `net-cpu:` report, by CPU index.
pub fn last_net_cpu(lines: &[boot::runner::Line]) -> BTreeMap<u32, Counters> {
    lines.iter().filter_map(|l| parse_net_cpu(&l.text)).collect()
}

/// `key` of every vCPU's report, `17/16/18/17`.
fn per_cpu(reports: &BTreeMap<u32, Counters>, key: &str) -> String {
    reports.values().map(|c| c.get(key).to_string()).collect::<Vec<_>>().join("/")
}

/// What a passing network case reports besides passing: the receive
/// spread, how often the transmit path kicked the device, and how often
/// anything had to step in (`full` transmit rings, `rescues`, `watchdog`,
/// the RSS workaround's `nudges`);
/// then each flood's time and loss, merged receive buffers and ARP
/// replies where the case has them. For information: none of these
/// figures is a failure by itself.
pub fn network_note(case: &BootCase, report: &RunReport) -> String {
    if case.net.is_some_and(|n| n.raw.is_some()) {
        return crate::boot_raw::note(report);
    }
    let last = last_net_stats(report);
    let mut parts: Vec<String> =
        last.values().map(|s| format!("rxq{} {} pkts/{} irqs", s.rxq, s.rx.get("packets"), s.rx.get("irqs"))).collect();
    let sum = |f: &dyn Fn(&NetStats) -> u64| last.values().map(f).sum::<u64>();
    let (kicks, packets) = (sum(&|s| s.tx.get("kicks")), sum(&|s| s.tx.get("packets")));
    if packets > 0 {
        parts.push(format!("tx kicks/1000 pkts {:.1}", kicks as f64 * 1000.0 / packets as f64));
    }
    parts.push(format!("tx full {}", sum(&|s| s.tx.get("full"))));
    parts.push(format!("rescues {}", sum(&|s| s.rx.get("rescues") + s.tx.get("rescues"))));
    parts.push(format!("watchdog {}", sum(&|s| s.rx.get("watchdog") + s.tx.get("watchdog"))));
    // Receive queues notified for QEMU's software RSS (only with RSS).
    let nudges = sum(&|s| s.rx.get("nudges"));
    if nudges > 0 {
        parts.push(format!("starved refills {}, RSS nudges {nudges}", sum(&|s| s.rx.get("starved"))));
    }
    let (Some(net), Some(Ok(out))) = (case.net, &report.action) else { return parts.join(", ") };
    for &size in net.floods {
        let step = flood_step(size);
        if let Some(p) = crate::traffic::find_section(out, &step).map(|o| crate::traffic::parse_ping(&o)) {
            let secs = p.time_ms.map_or("?".into(), |ms| format!("{:.1}", ms as f64 / 1000.0));
            parts.push(format!("{step}: {} replies in {secs} s, {} lost", p.received, p.lost()));
        }
    }
    if net.jumbo_pings.is_some() {
        parts.push(format!("merged {}", sum(&|s| s.rx.get("merged"))));
    }
    if let Some(n) = crate::traffic::find_section(out, STEP_ARP).as_deref().and_then(crate::traffic::parse_arp_replies)
    {
        parts.push(format!("ARP replies {n}"));
    }
    if net.tcp.is_some() {
        for step in [STEP_TCP_ECHO, STEP_TCP_DISCARD] {
            if let Some(s) = crate::traffic::find_section(out, step).as_deref().and_then(LoadSummary::parse) {
                parts.push(format!("{step} {}", s.describe()));
            }
        }
        if let Some(s) = crate::traffic::find_section(out, STEP_TCP_RR).as_deref().and_then(RrSummary::parse) {
            parts.push(s.describe());
        }
        let cpus = last_net_cpu(&report.lines);
        let sum = |k: &str| cpus.values().map(|c| c.get(k)).sum::<u64>();
        parts.push(format!("accepted per vCPU {}", per_cpu(&cpus, "accepted")));
        parts.push(format!("misses {} (sum {})", per_cpu(&cpus, "misses"), sum("misses")));
        parts.push(format!("inbox_in {}", per_cpu(&cpus, "inbox_in")));
        parts.push(format!("inbox_drops {}", sum("inbox_drops")));
        parts.push(format!("resets sent {}", sum("resets_sent")));
        parts.push(format!("zero-window ACKs {}", sum("zero_window_acks")));
    }
    parts.join(", ")
}

/// Frames a stack may keep without answering any: what the host sends on
/// its own when the tap comes up (IPv6 router solicitations, MLD reports,
/// duplicate address detection), which the tap may all put on one queue.
pub const UNSOLICITED_FRAMES: u64 = 16;

/// Checks every pair-owning CPU's last report: its own queues, interrupts
/// behind what it received (unless polled), a reply path that carried
/// something whenever its stack kept frames that want an answer (beyond
/// [`UNSOLICITED_FRAMES`]; frames it steered to their owners, `misses` in
/// its `net-cpu` line, are answered by them), and no frame dropped for any
/// reason.
fn check_queue_reports(
    last: &BTreeMap<u32, NetStats>,
    steered: &BTreeMap<u32, Counters>,
    cpus: u16,
    pairs: u16,
    polled: bool,
) -> Result<(u64, u32), String> {
    let (mut total, mut busy_queues) = (0, 0);
    for cpu in 0..u32::from(cpus) {
        let q = match (last.get(&cpu), cpu < u32::from(pairs)) {
            (Some(q), true) => q,
            (None, true) => return Err(format!("no net-stats report from cpu{cpu}")),
            (Some(_), false) => return Err(format!("cpu{cpu} owns no queue pair but reported one")),
            (None, false) => continue,
        };
        if u32::from(q.rxq) != 2 * cpu || u32::from(q.txq) != 2 * cpu + 1 {
            return Err(format!("cpu{cpu} reports queues {}/{}, not its own pair", q.rxq, q.txq));
        }
        let received = q.rx.get("packets");
        total += received;
        if received > 0 {
            busy_queues += 1;
            if !polled && q.rx.get("irqs") == 0 {
                return Err(format!("cpu{cpu} received {received} packets on rxq {} without an interrupt", q.rxq));
            }
            // Every stack answers something (ARP, ICMP, port unreachable),
            // on its own transmit queue; none at all means a wedged TX path.
            let kept = received.saturating_sub(steered.get(&cpu).map_or(0, |c| c.get("misses")));
            if kept > UNSOLICITED_FRAMES && q.tx.get("packets") == 0 {
                return Err(format!(
                    "cpu{cpu} kept {kept} of the {received} packets it received on rxq {} but transmitted none \
                     on txq {}",
                    q.rxq, q.txq
                ));
            }
        }
        for (side, queue, counters) in [("rxq", q.rxq, &q.rx), ("txq", q.txq, &q.tx)] {
            if let Some((reason, n)) = counters.drop_counters().into_iter().find(|(_, n)| *n > 0) {
                return Err(format!("cpu{cpu} dropped {n} frames on {side} {queue}: {reason} {n}"));
            }
        }
    }
    if let Some(cpu) = last.keys().find(|c| **c >= u32::from(cpus)) {
        return Err(format!("a net-stats report from cpu{cpu}, but the VM has {cpus} CPUs"));
    }
    Ok((total, busy_queues))
}

fn check_network(case: &BootCase, report: &RunReport, pairs: u16, vectors: Vectors) -> Result<(), String> {
    let polled = vectors == Vectors::Polled;
    let net = case.net.ok_or("a network expectation without a network")?;
    let has = |needle: &str| report.lines.iter().any(|l| l.text.contains(needle));
    let need = |needle: String| if has(&needle) { Ok(()) } else { Err(format!("no line containing `{needle}`")) };
    // A queue the kernel gave up on (the data path's last resort) fails the
    // case whatever the traffic showed.
    if let Some(l) = report.lines.iter().find(|l| l.text.to_ascii_lowercase().contains("broken")) {
        return Err(format!("the kernel reports something broken: {}", l.text));
    }
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
    let out = match &report.action {
        Some(Ok(out)) => out,
        Some(Err(e)) => return Err(format!("host-side traffic failed: {e}")),
        None => return Err("the host-side traffic never ran".into()),
    };
    let arrived = check_traffic(&net, out)?;
    if net.metrics {
        let scrape = crate::traffic::find_section(out, STEP_METRICS).ok_or("no metrics scrape in the transcript")?;
        check_metrics(&scrape, usize::from(case.cpus))?;
    }
    if let Some(tcp) = net.tcp {
        check_tcp(case, &net, &tcp, out, report)?;
    }
    if net.iperf {
        check_iperf(out, usize::from(case.cpus), net.offloads)?;
    }
    if net.iperf_client {
        check_iperf_client(out, report)?;
    }
    let last = last_net_stats(report);
    let steered = last_net_cpu(&report.lines);
    let (total, busy_queues) = check_queue_reports(&last, &steered, case.cpus, pairs, polled)?;
    if total < arrived {
        return Err(format!("the guest's last reports count {total} frames received, fewer than the {arrived} sent"));
    }
    if pairs > 1 && busy_queues < 2 {
        return Err(format!("{} flows all arrived on one receive queue", net.flows));
    }
    if let Some(size) = net.jumbo_pings {
        if !last.values().any(|s| s.rx.get("merged") > 0) {
            return Err(format!("{} answered, but no CPU counts a merged receive buffer (merged 0)", jumbo_step(size)));
        }
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

/// Checks the host side's transcript: every ping answered, every flood
/// complete within its deadline and with at most [`FLOOD_MAX_LOST`] lost,
/// the guest still answering afterwards, jumbo replies intact, one ARP
/// reply. Returns how many frames must have reached the guest (at least).
fn check_traffic(net: &NetCase, out: &str) -> Result<u64, String> {
    use crate::traffic::{find_section, parse_arp_replies, parse_ping, PingResult};
    let ping = |step: &str| find_section(out, step).map(|o| parse_ping(&o)).ok_or(format!("no `{step}` step ran"));
    let all_answered = |step: &str, p: &PingResult, count: u32| {
        if p.sent == count && p.received == count {
            Ok(())
        } else {
            Err(format!("{step}: {} sent, {} answered, {count} expected", p.sent, p.received))
        }
    };
    let first = ping(STEP_PING)?;
    all_answered(STEP_PING, &first, net.pings)?;
    let mut arrived = u64::from(net.flows) * u64::from(net.per_flow) + u64::from(net.pings);
    for &size in net.floods {
        let step = flood_step(size);
        let p = ping(&step)?;
        if p.received < FLOOD_COUNT {
            let secs = p.time_ms.map_or("?".into(), |ms| format!("{:.1}", ms as f64 / 1000.0));
            return Err(format!(
                "{step} did not complete: {} of {FLOOD_COUNT} echo requests answered, {} sent, {} errors; \
                 ping stopped after {secs} s (deadline {} s)",
                p.received,
                p.sent,
                p.errors,
                FLOOD_DEADLINE.as_secs()
            ));
        }
        if p.lost() > FLOOD_MAX_LOST {
            return Err(format!("{step}: {} of {} requests lost, more than {FLOOD_MAX_LOST}", p.lost(), p.sent));
        }
        arrived += u64::from(p.received);
    }
    if !net.floods.is_empty() {
        let after = ping(STEP_AFTER_FLOODS)?;
        all_answered(STEP_AFTER_FLOODS, &after, AFTER_FLOOD_PINGS)?;
        arrived += u64::from(after.received);
    }
    if let Some(size) = net.jumbo_pings {
        let step = jumbo_step(size);
        let p = ping(&step)?;
        if let Some(line) = p.damaged.first() {
            return Err(format!("{step}: a damaged reply: {line}"));
        }
        all_answered(&step, &p, JUMBO_PINGS)?;
        arrived += u64::from(p.received);
    }
    if net.arp_probe {
        let replies = find_section(out, STEP_ARP)
            .as_deref()
            .and_then(parse_arp_replies)
            .ok_or(format!("no `arp replies N` from the `{STEP_ARP}` step"))?;
        if replies != 1 {
            return Err(format!("one ARP request for the guest's address got {replies} replies, not exactly 1"));
        }
    }
    Ok(arrived)
}

/// Checks a TCP case: both loads complete without an error, moving every
/// byte; then every vCPU's last `net-cpu:` report: each accepted
/// connections, together at least as many as the host opened, none still
/// active, none reset; with RSS no frame reached a vCPU that does not own
/// its flow (`misses`), with a queue pair per vCPU (the tap learning each
/// flow's queue) at most [`MISSES_PER_FLOW`] per flow, with fewer pairs no
/// bound (queue-less vCPUs' flows all pass through their inboxes).
fn check_tcp(case: &BootCase, net: &NetCase, tcp: &TcpCase, out: &str, report: &RunReport) -> Result<(), String> {
    use crate::traffic::find_section;
    let step = |name: &str, connections: u32, bytes: u64| -> Result<LoadSummary, String> {
        let o = find_section(out, name).ok_or(format!("no `{name}` step ran"))?;
        let s = LoadSummary::parse(&o).ok_or(format!("{name}: no summary from tcp-load: {}", o.trim()))?;
        none_failed(name, s.errors, s.connections, &s.error_list)?;
        if s.connections != u64::from(connections) || s.completed != s.connections || s.done != bytes {
            return Err(format!(
                "{name}: {} of {} connections completed, {} bytes done, expected {connections} and {bytes}",
                s.completed, s.connections, s.done
            ));
        }
        Ok(s)
    };
    step(STEP_TCP_ECHO, tcp.echo_connections, u64::from(tcp.echo_connections) * tcp.echo_bytes)?;
    step(STEP_TCP_DISCARD, tcp.discard_connections, tcp.discard_bytes)?;
    let rr_window = tcp.rr.map(|rr| check_rr(&rr, out).map(|window| (rr, window))).transpose()?;

    let cpus = last_net_cpu(&report.lines);
    for cpu in 0..u32::from(case.cpus) {
        let c = cpus.get(&cpu).ok_or(format!("no net-cpu report from cpu{cpu}"))?;
        if c.get("accepted") == 0 {
            return Err(format!("cpu{cpu} accepted no connection (accepted per vCPU: {})", per_cpu(&cpus, "accepted")));
        }
    }
    if let Some(cpu) = cpus.keys().find(|c| **c >= u32::from(case.cpus)) {
        return Err(format!("a net-cpu report from cpu{cpu}, but the VM has {} CPUs", case.cpus));
    }
    let sum = |k: &str| cpus.values().map(|c| c.get(k)).sum::<u64>();
    if sum("accepted") < tcp.connections() {
        return Err(format!(
            "the vCPUs accepted {} connections ({}), fewer than the {} the host opened",
            sum("accepted"),
            per_cpu(&cpus, "accepted"),
            tcp.connections()
        ));
    }
    if sum("active") != 0 {
        return Err(format!(
            "{} connections still active after the loads (per vCPU: {})",
            sum("active"),
            per_cpu(&cpus, "active")
        ));
    }
    // iperf3 ends its streams with a reset (its client closes them with
    // data unread), so with iperf3 runs in the case the count covers those.
    if sum("reset") != 0 && !net.iperf {
        return Err(format!("{} connections were reset (per vCPU: {})", sum("reset"), per_cpu(&cpus, "reset")));
    }
    // A reset for a flow another vCPU owns means a segment reached a stack
    // that does not own its connection: steering failed.
    if sum("resets_unowned") != 0 {
        return Err(format!(
            "{} TCP resets answered flows of another vCPU (per vCPU: {}): a segment reached a stack that does \
             not own its connection",
            sum("resets_unowned"),
            per_cpu(&cpus, "resets_unowned")
        ));
    }
    // One pair for four vCPUs, with GUEST_TSO: the pair's owner cuts the
    // others' coalesced segments to fit their inboxes.
    if net.queues == 1 && net.offloads && sum("splits") == 0 {
        return Err(format!(
            "no coalesced segment was split for another vCPU (misses per vCPU: {})",
            per_cpu(&cpus, "misses")
        ));
    }
    let misses = sum("misses");
    if net.rss && misses != 0 {
        return Err(format!(
            "with RSS, {misses} frames arrived on a vCPU that does not own their flow (misses per vCPU: {}), \
             expected none",
            per_cpu(&cpus, "misses")
        ));
    }
    if !net.rss && net.queues >= case.cpus {
        // Every flow the host starts may miss until the tap learns it: the
        // TCP connections, each UDP flow (whose datagrams the guest never
        // answers on that flow, so the tap never learns it) and the pings.
        let flows = tcp.connections() + u64::from(net.flows) + 1 + if net.iperf { iperf_connections() } else { 0 };
        let budget = MISSES_PER_FLOW * flows;
        if misses > budget {
            return Err(format!(
                "{misses} frames arrived on a vCPU that does not own their flow (misses per vCPU: {}), more \
                 than {MISSES_PER_FLOW} for each of the {flows} flows",
                per_cpu(&cpus, "misses")
            ));
        }
    }
    if let Some((rr, (from, to))) = rr_window {
        check_rr_spread(case, &rr, from, to, &report.lines)?;
    }
    Ok(())
}

/// A load's client-side verdict: `NAME: E of N connections failed: ...`
/// with the errors it listed, when any failed.
fn none_failed(name: &str, errors: u64, connections: u64, listed: &[String]) -> Result<(), String> {
    if errors == 0 {
        return Ok(());
    }
    Err(format!("{name}: {errors} of {connections} connections failed: {}", listed.join("; ")))
}

/// Checks the RR step (`window FROM TO`, seconds since QEMU started, then
/// `status STATUS` of `xtask rr`, then its output): it exited with 0, every
/// connection ran transactions (each response checked by the client) and
/// none failed. Its speed is not judged. Returns the window.
fn check_rr(rr: &RrStep, out: &str) -> Result<(Duration, Duration), String> {
    let name = STEP_TCP_RR;
    let o = crate::traffic::find_section(out, name).ok_or(format!("no `{name}` step ran"))?;
    let field = |key: &str| o.lines().find_map(|l| l.strip_prefix(key)).map(str::trim);
    let window = field("window ").and_then(|w| {
        let (from, to) = w.split_once(' ')?;
        Some((
            Duration::try_from_secs_f64(from.parse().ok()?).ok()?,
            Duration::try_from_secs_f64(to.parse().ok()?).ok()?,
        ))
    });
    let (Some((from, to)), Some(status)) = (window, field("status ")) else {
        return Err(format!("{name}: no window and status in: {}", o.trim()));
    };
    let s = RrSummary::parse(&o).ok_or(format!("{name}: no summary from xtask rr: {}", o.trim()))?;
    none_failed(name, s.errors, s.connections, &s.error_list)?;
    let RrShape { request, response, .. } = rr.shape;
    if (s.connections, s.request, s.response) != (u64::from(rr.connections), request, response) {
        return Err(format!(
            "{name}: the load was {} connections of {}/{} bytes, expected {} of {request}/{response}",
            s.connections, s.request, s.response, rr.connections
        ));
    }
    if s.completed != s.connections || s.transactions == 0 || s.per_connection_transactions.contains(&0) {
        return Err(format!(
            "{name}: {} of {} connections completed, {} transactions (per connection {:?})",
            s.completed, s.connections, s.transactions, s.per_connection_transactions
        ));
    }
    if status != "exit status: 0" {
        return Err(format!("{name}: xtask rr ended with {status}"));
    }
    Ok((from, to))
}

/// Checks where the RR step's connections were served: the guest's net-cpu
/// reports from before and after its window (`from`, `to`) count exactly
/// its connections as accepted, on more than one vCPU when there are
/// several.
fn check_rr_spread(
    case: &BootCase,
    rr: &RrStep,
    from: Duration,
    to: Duration,
    lines: &[boot::runner::Line],
) -> Result<(), String> {
    let name = STEP_TCP_RR;
    let accepted = accepted_between(lines, case.cpus, from.saturating_sub(REPORT_SKEW), to)?;
    let per_vcpu = accepted.iter().map(u64::to_string).collect::<Vec<_>>().join("/");
    if accepted.iter().sum::<u64>() != u64::from(rr.connections) {
        return Err(format!(
            "{name}: the vCPUs accepted {per_vcpu} connections during the load, not its {} in all",
            rr.connections
        ));
    }
    if case.cpus > 1 && accepted.iter().filter(|&&n| n > 0).count() < 2 {
        return Err(format!("{name}: one vCPU accepted every connection ({per_vcpu}): they were not spread"));
    }
    Ok(())
}

/// How many connections each vCPU (0..`cpus`) accepted between `from` and
/// `to` (since QEMU started): its first net-cpu report at or after `to`
/// minus its last at or before `from` (0 without one).
fn accepted_between(lines: &[boot::runner::Line], cpus: u16, from: Duration, to: Duration) -> Result<Vec<u64>, String> {
    let reports: Vec<(u32, Duration, u64)> =
        lines.iter().filter_map(|l| parse_net_cpu(&l.text).map(|(cpu, c)| (cpu, l.at, c.get("accepted")))).collect();
    (0..u32::from(cpus))
        .map(|cpu| {
            let mine = || reports.iter().filter(move |r| r.0 == cpu);
            let before = mine().rfind(|r| r.1 <= from).map_or(0, |r| r.2);
            let after = mine().find(|r| r.1 >= to).ok_or(format!(
                "no net-cpu report from cpu{cpu} after the {STEP_TCP_RR} step ({:.1} s)",
                to.as_secs_f64()
            ))?;
            Ok(after.2.saturating_sub(before))
        })
        .collect()
}

/// Checks a scrape of `GET /metrics` (`status N` then the body): HTTP 200;
/// every line a comment or `mqnet_name{labels} value`; every series with
/// one sample per vCPU (`rows`); frames counted as received.
pub fn check_metrics(scrape: &str, rows: usize) -> Result<(), String> {
    let mut samples: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    let parsed = crate::traffic::parse_metrics(scrape)?;
    for m in &parsed {
        samples.entry(m.name.as_str()).or_default().push(m.value);
    }
    if samples.is_empty() {
        return Err("GET /metrics returned no samples".into());
    }
    if let Some((name, v)) = samples.iter().find(|(_, v)| v.len() != rows) {
        return Err(format!("{name} has {} samples, not one per vCPU ({rows})", v.len()));
    }
    if samples.get("mqnet_rx_packets").is_none_or(|v| v.iter().sum::<u64>() == 0) {
        return Err("mqnet_rx_packets counts no received frame".into());
    }
    Ok(())
}

/// One iperf3 run's transcript (`exit N`, then the client's JSON): exit
/// 0, no error, data both counted sent and received; returns the JSON.
pub fn check_iperf_run(step: &str, text: &str) -> Result<serde_json::Value, String> {
    let (first, json) = text.split_once('\n').unwrap_or((text, ""));
    if first.trim() != "exit 0" {
        return Err(format!("{step}: the client ended with {:?}: {}", first.trim(), json.trim()));
    }
    let json = json.split("\nstderr:\n").next().unwrap_or("");
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("{step}: its JSON does not parse: {e}"))?;
    if let Some(e) = v.get("error") {
        return Err(format!("{step}: iperf3 reports an error: {e}"));
    }
    for side in ["sum_sent", "sum_received"] {
        let bps = v["end"][side]["bits_per_second"].as_f64().unwrap_or(0.0);
        if bps <= 0.0 {
            return Err(format!("{step}: end.{side}.bits_per_second is {bps}"));
        }
    }
    Ok(v)
}

/// Values of one series in a metrics scrape, by the label `label`'s value.
fn series_by(scrape: &str, name: &str, label: &str) -> BTreeMap<String, u64> {
    let key = format!("{label}=\"");
    scrape
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix('{')?;
            let (labels, value) = rest.split_once("} ")?;
            let at = labels.find(&key)? + key.len();
            let id = labels[at..].split('"').next()?;
            Some((id.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// TCP connections the iperf3 steps open: a control connection and the
/// streams of each run in [`IPERF_RUNS`], then the malformed exchange's one
/// and the last run's two.
pub fn iperf_connections() -> u64 {
    IPERF_RUNS.iter().map(|(_, args)| 1 + iperf_streams(args) as u64).sum::<u64>() + 1 + 2
}

/// The data streams an iperf3 run with client arguments `args` opens (`-P`).
fn iperf_streams(args: &[&str]) -> usize {
    args.windows(2).find(|w| w[0] == "-P").and_then(|w| w[1].parse().ok()).unwrap_or(1)
}

/// The iperf3 steps: every run passes ([`check_iperf_run`]); the `-P 4`
/// runs have 4 streams, and between the scrapes around them every vCPU
/// accepted a connection and every receive queue received; the malformed
/// exchange got SERVER_ERROR and the next run passed.
fn check_iperf(out: &str, cpus: usize, offloads: bool) -> Result<(), String> {
    let find = |step: &str| crate::traffic::find_section(out, step).ok_or(format!("no `{step}` step ran"));
    for (step, args) in IPERF_RUNS {
        let v = check_iperf_run(step, &find(step)?)?;
        let streams = v["end"]["streams"].as_array().map_or(0, Vec::len);
        let want = iperf_streams(args);
        if streams != want {
            return Err(format!("{step}: {streams} streams in the results, not {want}"));
        }
    }
    let (before, after) = (find(STEP_METRICS_BEFORE)?, find(STEP_METRICS_AFTER)?);
    check_metrics(&before, cpus)?;
    check_metrics(&after, cpus)?;
    let delta = |name: &str, label: &str| -> Vec<(String, u64)> {
        let (b, a) = (series_by(&before, name, label), series_by(&after, name, label));
        a.iter().map(|(k, v)| (k.clone(), v.saturating_sub(b.get(k).copied().unwrap_or(0)))).collect()
    };
    let rx = delta("mqnet_rx_packets", "rxq");
    if rx.len() != cpus || rx.iter().any(|(_, n)| *n == 0) {
        return Err(format!("not every receive queue carried the -P 4 runs: packets by rxq {rx:?}"));
    }
    let accepted = delta("mqnet_tcp_accepted", "cpu");
    if accepted.len() != cpus || accepted.iter().any(|(_, n)| *n == 0) {
        return Err(format!("the -P 4 streams were not served on every vCPU: accepted by cpu {accepted:?}"));
    }
    // The host's sender hands the tap segments of up to 64 KiB when the
    // guest took GUEST_TSO4, and the guest's stacks hand the device such
    // segments when it took HOST_TSO4 (the loads are IPv4); never without.
    for (series, what) in [("mqnet_rx_large", "coalesced segment received"), ("mqnet_tx_large", "TSO segment sent")] {
        let total: u64 = delta(series, "rxq").iter().map(|(_, n)| n).sum();
        match (offloads, total) {
            (true, 0) => return Err(format!("the -P 4 runs had no {what} ({series} 0 on every queue)")),
            (false, n) if n > 0 => return Err(format!("{n} × {what} with the device's offloads off")),
            _ => {}
        }
    }
    let bad = find(STEP_IPERF_MALFORMED)?;
    let answer = bad.lines().find_map(|l| l.strip_prefix("answer ")).unwrap_or("");
    if !bad.contains("first 09") || answer.trim() != IPERF_PARAMS_ERROR {
        return Err(format!("a malformed parameter message got {bad:?}, not PARAM_EXCHANGE then {IPERF_PARAMS_ERROR}"));
    }
    check_iperf_run(STEP_IPERF_AFTER, &find(STEP_IPERF_AFTER)?)?;
    Ok(())
}

/// The guest's client test against the host's `iperf3 -s -1`: the server
/// exited 0 with the guest's bytes counted and no error; the guest says it
/// is done, with its streams on more than one vCPU, and its JSON line says
/// ok with a non-zero rate.
fn check_iperf_client(out: &str, report: &RunReport) -> Result<(), String> {
    let server = crate::traffic::find_section(out, STEP_IPERF_SERVER).ok_or("the host's iperf3 server never ran")?;
    let (first, json) = server.split_once('\n').unwrap_or((&server, ""));
    let json = json.split("\nstderr:\n").next().unwrap_or("");
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("the server's JSON does not parse: {e}"))?;
    if first.trim() != "exit 0" || v.get("error").is_some() {
        return Err(format!("the host's iperf3 server ended with {:?}: {}", first.trim(), v["error"]));
    }
    if v["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0) <= 0.0 {
        return Err("the host's iperf3 server received nothing from the guest".into());
    }
    let line = |prefix: &str| report.lines.iter().find_map(|l| l.text.split_once(prefix).map(|(_, r)| r.to_string()));
    let done = line(IPERF_CLIENT_DONE).ok_or("the guest never reported its iperf3 client done")?;
    let cpus = done.split_once("on vCPUs [").and_then(|(_, r)| r.split_once(']')).map(|(c, _)| c.to_string());
    let mut cpus: Vec<&str> = cpus.as_deref().unwrap_or("").split(", ").collect();
    cpus.sort_unstable();
    cpus.dedup();
    if cpus.len() < 2 {
        return Err(format!("the guest's client streams were all opened by one vCPU: {done}"));
    }
    let json = line(IPERF_CLIENT_JSON).ok_or("no iperf3-client-json line")?;
    let g: serde_json::Value = serde_json::from_str(&json).map_err(|e| format!("iperf3-client-json: {e}"))?;
    if g["ok"] != serde_json::Value::Bool(true) || g["bits_per_second"].as_f64().unwrap_or(0.0) <= 0.0 {
        return Err(format!("the guest's client reports {json}"));
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
/// The boot-time breakdown (`kernel::phases`): present, parseable, its
/// phases in boot order, ending with the stacks' services for a network
/// case and with the NIC otherwise. No time is judged.
fn check_phases(case: &BootCase, report: &RunReport) -> Result<(), String> {
    use kernel::phases::{parse, Phase, LINE};
    let line = report.find(LINE).ok_or("no boot-phases line")?;
    let (phases, _) = parse(&line.text).ok_or_else(|| format!("cannot parse: {}", line.text))?;
    let order: Vec<&str> = Phase::ALL.iter().map(|p| p.name()).collect();
    let mut next = 0;
    for (name, ms) in &phases {
        let at = order[next..]
            .iter()
            .position(|o| o == name)
            .ok_or_else(|| format!("phase `{name}` out of order: {}", line.text))?;
        next += at + 1;
        if !ms.is_finite() || *ms < 0.0 {
            return Err(format!("phase `{name}` took {ms} ms: {}", line.text));
        }
    }
    // A NIC the kernel gives up on (`NetworkStopped`) may do so before or
    // after the stacks are up.
    let lasts: &[&str] = match (case.net, &case.expect) {
        (Some(_), Expect::NetworkStopped(_)) => &["nic", "services"],
        (Some(n), _) if n.raw.is_none() => &["services"],
        _ => &["nic"],
    };
    // No firmware phase when the TSC did not start at power-on (kvm_pvm).
    let ends = phases.last().is_some_and(|p| lasts.contains(&p.0));
    if !ends || !matches!(phases.first().map(|p| p.0), Some("firmware" | "clock")) {
        return Err(format!(
            "boot phases from firmware (or the clock) to {} expected: {}",
            lasts.join(" or "),
            line.text
        ));
    }
    Ok(())
}

/// Most the stated TSC frequency and the PIT's count may differ
/// (`clock-check=on`): 1 %; measured, they are some 800 ppm apart under
/// kvm_pvm, whose PIT is emulated in a nested hypervisor.
const CLOCK_AGREEMENT_PPM: u64 = 10_000;

/// With `clock-check=on`, the two frequencies agree.
fn check_clock_agreement(report: &RunReport) -> Result<(), String> {
    let Some(line) = report.find("clock: checked against the PIT: ") else { return Ok(()) };
    let ppm: u64 = line
        .text
        .split(", ")
        .find_map(|p| p.strip_suffix(" ppm apart"))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| format!("cannot read: {}", line.text))?;
    if ppm > CLOCK_AGREEMENT_PPM {
        return Err(format!("the stated TSC frequency and the PIT's are {ppm} ppm apart: {}", line.text));
    }
    Ok(())
}

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

    /// A run's report of `lines`; unless they have their own, with the
    /// boot-phases line a good boot prints (ending with the stacks'
    /// services when the lines show a NIC): `check_phases` has tests of its
    /// own.
    fn report(outcome: Outcome, lines: &[&str]) -> RunReport {
        let mut lines: Vec<Line> = lines.iter().map(|t| Line { at: Duration::ZERO, text: t.to_string() }).collect();
        if !lines.iter().any(|l| l.text.contains(kernel::phases::LINE)) {
            let nic = lines.iter().any(|l| l.text.contains("virtio-net"));
            lines.push(Line { at: Duration::ZERO, text: phases_line(nic) });
        }
        RunReport {
            outcome,
            lines,
            stderr: String::new(),
            elapsed: Duration::from_secs(1),
            cpu_sample: None,
            action: None,
        }
    }

    fn phases_line(services: bool) -> String {
        let tail = if services { ", services 3.1 ms; services ready 149.0 ms" } else { "; nic done 145.9 ms" };
        format!(
            "[ 0.1] cpu0 INFO  boot phases: firmware 42.5 ms, clock 30.8 ms, memory 4.3 ms, acpi 2.6 ms, apic 12.0 ms, \
             cpus 12.0 ms, nic 12.1 ms{tail} after power-on"
        )
    }

    #[test]
    fn the_boot_phases_must_be_there_in_order() {
        let clean = bios256();
        let with = |line: &str| {
            let mut l = good_boot();
            l.push(line.to_string());
            check(&clean, &report(Outcome::Success, &lines(&l)))
        };
        assert_eq!(with(&phases_line(false)), Ok(()));
        // Without the firmware phase (a TSC that did not start at power-on).
        assert_eq!(with("boot phases: clock 7.0 ms, nic 25.6 ms; nic done 216.2 ms after kernel entry"), Ok(()));
        let bad = [
            ("boot phases: firmware 1.0 ms, clock 2.0 ms; clock done 3.0 ms after power-on", "to nic expected"),
            (
                "boot phases: firmware 1.0 ms, nic 2.0 ms, clock 2.0 ms; clock done 5.0 ms after power-on",
                "out of order",
            ),
            ("boot phases: firmware 1.0 ms, nic 2.0 ms, services 1.0 ms; services ready 4 ms", "to nic expected"),
            ("boot phases: firmware 1 s, nic 2 ms; x", "cannot parse"),
            ("boot phases: memory 1.0 ms, nic 2.0 ms; nic done 3.0 ms after kernel entry", "expected"),
        ];
        for (line, why) in bad {
            let err = with(line).unwrap_err();
            assert!(err.contains(why), "{line}: {err}");
        }
        // A network case ends with the services.
        let net = smp4_queues4();
        let err = check_phases(&net, &report(Outcome::Success, &[phases_line(false).as_str()])).unwrap_err();
        assert!(err.contains("to services expected"), "{err}");
        let stopped = cases().into_iter().find(|c| matches!(c.expect, Expect::NetworkStopped(_))).unwrap();
        for services in [false, true] {
            assert_eq!(check_phases(&stopped, &report(Outcome::Success, &[phases_line(services).as_str()])), Ok(()));
        }
        assert_eq!(check_phases(&net, &report(Outcome::Success, &[phases_line(true).as_str()])), Ok(()));
    }

    #[test]
    fn the_stated_clock_must_agree_with_the_pit() {
        let r = |ppm: u32| {
            report(Outcome::Success, &[&format!("clock: checked against the PIT: 2.598179 GHz, {ppm} ppm apart")])
        };
        assert_eq!(check_clock_agreement(&r(783)), Ok(()));
        assert!(check_clock_agreement(&r(10_001)).unwrap_err().contains("10001 ppm apart"));
        assert_eq!(check_clock_agreement(&report(Outcome::Success, &[])), Ok(()), "no check asked for");
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

    const OLD_STATS: &str = "[ 1.1] cpu2 INFO  net-stats: cpu2 rxq 4 packets 9 bytes 810 irqs 3 polls 11 no_buffers 0 drops bad_len 0 bad_id 0 header 0 | txq 5 packets 2 bytes 84 irqs 1 full 0 kicks 2";
    const NEW_STATS: &str = "[ 2.0] cpu0 INFO  net-stats: cpu0 rxq 0 packets 120 bytes 9000 irqs 14 polls 30 kicks 3 no_buffers 0 merged 0 rescues 0 watchdog 0 drops bad_len 0 bad_id 0 header 0 merge 0 too_long 0 | txq 1 packets 118 bytes 8800 irqs 0 full 0 kicks 10 rescues 0 watchdog 0";

    #[test]
    fn net_stats_lines_are_parsed() {
        let s = parse_net_stats(OLD_STATS).unwrap();
        assert_eq!((s.cpu, s.rxq, s.txq), (2, 4, 5));
        assert_eq!((s.rx.get("packets"), s.rx.get("irqs"), s.rx.get("polls")), (9, 3, 11));
        assert_eq!((s.tx.get("packets"), s.tx.get("bytes"), s.tx.get("kicks")), (2, 84, 2));
        // Counters the older kernel does not print read as 0.
        assert_eq!((s.rx.get("merged"), s.rx.get("too_long"), s.tx.get("watchdog")), (0, 0, 0));
        assert_eq!(s.rx.drop_counters(), [("bad_len", 0), ("bad_id", 0), ("header", 0)]);
        assert!(s.tx.drop_counters().is_empty());

        let s = parse_net_stats(NEW_STATS).unwrap();
        assert_eq!((s.cpu, s.rxq, s.txq), (0, 0, 1));
        assert_eq!((s.rx.get("packets"), s.rx.get("kicks"), s.tx.get("packets"), s.tx.get("kicks")), (120, 3, 118, 10));
        assert_eq!(s.rx.drop_counters().iter().map(|d| d.0).collect::<Vec<_>>(), RX_DROPS);
        // The RX side's counters are not the TX side's.
        assert_eq!(s.tx.get("bytes"), 8800);
        assert_eq!(s.rx.get("full"), 0);
    }

    #[test]
    fn net_stats_keys_may_come_in_any_order_and_new_ones_appear() {
        let l =
            "net-stats: cpu1 packets 7 future_counter 99 rxq 2 drops too_long 4 new_reason 1 | kicks 3 txq 3 packets 6";
        let s = parse_net_stats(l).unwrap();
        assert_eq!((s.cpu, s.rxq, s.txq, s.rx.get("packets"), s.tx.get("packets")), (1, 2, 3, 7, 6));
        assert_eq!(s.rx.get("future_counter"), 99);
        assert_eq!(s.rx.drop_counters(), [("too_long", 4), ("new_reason", 1)]);
        // A known drop reason outside the `drops` group still counts.
        let s = parse_net_stats("net-stats: cpu0 rxq 0 merge 2 packets 1 | txq 1 packets 1").unwrap();
        assert_eq!(s.rx.drop_counters(), [("merge", 2)]);
    }

    #[test]
    fn other_lines_are_not_net_stats() {
        assert_eq!(parse_net_stats("net-stats: cpu2 rxq"), None);
        assert_eq!(parse_net_stats("cpu1 WARN  net-stats: cpu1 took 3 interrupts of other CPUs' queues"), None);
        assert_eq!(parse_net_stats("net-stats: cpu0 packets 3 | txq 1 packets 2"), None, "no rxq");
        assert_eq!(parse_net_stats("net-stats: cpu0 rxq 0 packets 3 | packets 2"), None, "no txq");
        assert_eq!(parse_net_stats("net-stats: cpuX rxq 0 | txq 1"), None);
        assert_eq!(parse_net_stats("net-stats: cpu0 rxq 99999 | txq 1"), None, "not a queue number");
    }

    fn net_case_lines(stats: &dyn Fn(u16) -> String) -> Vec<String> {
        pair_lines(4, stats)
    }

    /// A boot with `pairs` queue pairs (per-queue MSI-X), cpu`p`'s net-stats
    /// report `stats(p)`.
    fn pair_lines(pairs: u16, stats: &dyn Fn(u16) -> String) -> Vec<String> {
        let mut l = good_boot();
        l.push(format!(
            "virtio-net 00:02.0: MAC 52:54:00:12:34:56, link up, {pairs} pairs offered, {pairs} in use, 10 MSI-X entries"
        ));
        if pairs > 1 {
            l.push(format!("virtio-net 00:02.0: VQ_PAIRS_SET {pairs}: acknowledged"));
        }
        for p in 0..pairs {
            l.push(format!(
                "virtio-net 00:02.0: pair {p}: rxq {} MSI-X entry {} -> vector {:#x}, txq {} MSI-X entry {} -> vector {:#x}, cpu{p} (APIC id {p})",
                2 * p, 2 * p, 0x40 + 2 * p, 2 * p + 1, 2 * p + 1, 0x41 + 2 * p
            ));
            l.push(stats(p));
        }
        l
    }

    /// cpu`p`'s report in the new form, `rx_packets` received and `tx` the rest of the TX side.
    fn new_stats(p: u16, rx_packets: u32, drops: &str, tx: &str) -> String {
        format!(
            "[ 2.0] cpu{p} INFO  net-stats: cpu{p} rxq {} packets {rx_packets} bytes 9000 irqs 14 polls 30 kicks 3 \
             no_buffers 0 merged 0 rescues 0 watchdog 0 drops {drops} | txq {} {tx}",
            2 * p,
            2 * p + 1
        )
    }

    const NO_DROPS: &str = "bad_len 0 bad_id 0 header 0 merge 0 too_long 0";
    const TX_OK: &str = "packets 60 bytes 8800 irqs 0 full 2 kicks 12 rescues 1 watchdog 0";
    const OK_PING: &str = "20 packets transmitted, 20 received, 0% packet loss, time 1s";

    /// A transcript of the host-side steps.
    fn transcript(steps: &[(&str, &str)]) -> String {
        steps.iter().map(|(name, out)| crate::traffic::section(name, out)).collect()
    }

    /// What `net-smp4-queues4`'s host side sees from a good guest.
    fn ok_traffic() -> String {
        transcript(&[
            (STEP_PING, OK_PING),
            (STEP_FLOWS, "128 datagrams on 32 flows"),
            (STEP_ARP, "arp replies 1"),
            (STEP_METRICS, OK_METRICS),
        ])
    }

    /// A good scrape of a 4-vCPU guest.
    const OK_METRICS: &str = "status 200\n# TYPE mqnet_rx_packets counter\nmqnet_rx_packets{cpu=\"0\"} 9\n\
        mqnet_rx_packets{cpu=\"1\"} 9\nmqnet_rx_packets{cpu=\"2\"} 9\nmqnet_rx_packets{cpu=\"3\"} 9\n";

    fn net_report(l: &[String]) -> RunReport {
        let mut r = report(Outcome::Stopped(StopReason::Finished), &lines(l));
        r.action = Some(Ok(ok_traffic()));
        r
    }

    fn smp4_queues4() -> BootCase {
        BootCase { memory_mib: 256, ..cases().into_iter().find(|c| c.name == "net-smp4-queues4").unwrap() }
    }

    #[test]
    fn network_results_are_checked() {
        let c = smp4_queues4();
        let l = net_case_lines(&|p| {
            format!(
                "cpu{p} INFO  net-stats: cpu{p} rxq {} packets 60 bytes 1 irqs 5 polls 1 | txq {} packets 5 bytes 1 irqs 0",
                2 * p,
                2 * p + 1
            )
        });
        let mut r = net_report(&l);
        assert_eq!(check(&c, &r), Ok(()));
        r.action = Some(Ok(ok_traffic().replace("20 received", "19 received")));
        assert!(check(&c, &r).unwrap_err().contains("19 answered"));
        let mut bad = l.clone();
        bad.push("cpu1 WARN  net-stats: cpu1 took 3 interrupts of other CPUs' queues".into());
        assert!(check(&c, &net_report(&bad)).unwrap_err().contains("wrong CPU"));
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
        assert!(check(&c, &net_report(&one_queue)).is_err(), "fewer frames than sent, all on one queue");
    }

    #[test]
    fn the_new_net_stats_form_passes_and_is_noted() {
        let c = smp4_queues4();
        let r = net_report(&net_case_lines(&|p| new_stats(p, 60, NO_DROPS, TX_OK)));
        assert_eq!(check(&c, &r), Ok(()));
        assert_eq!(
            network_note(&c, &r),
            "rxq0 60 pkts/14 irqs, rxq2 60 pkts/14 irqs, rxq4 60 pkts/14 irqs, rxq6 60 pkts/14 irqs, \
             tx kicks/1000 pkts 200.0, tx full 8, rescues 4, watchdog 0, ARP replies 1"
        );
    }

    #[test]
    fn a_cpu_that_receives_must_transmit() {
        let c = smp4_queues4();
        let tx = |p: u16| if p == 2 { "packets 0 bytes 0 irqs 0 full 0 kicks 0" } else { TX_OK };
        let r = net_report(&net_case_lines(&|p| new_stats(p, 60, NO_DROPS, tx(p))));
        assert_eq!(
            check(&c, &r).unwrap_err(),
            "cpu2 kept 60 of the 60 packets it received on rxq 4 but transmitted none on txq 5"
        );
        // Frames it steered to their owners are theirs to answer, and a few
        // unsolicited ones (the host's IPv6 chatter) want no answer.
        let mut lines = net_case_lines(&|p| new_stats(p, if p == 2 { 36 } else { 60 }, NO_DROPS, tx(p)));
        lines.push("[ 5.0] cpu2 INFO  net-cpu: cpu2 accepted 0 active 0 closed 0 reset 0 misses 32".into());
        assert_eq!(check(&c, &net_report(&lines)), Ok(()));
        lines.pop();
        lines.push("[ 5.0] cpu2 INFO  net-cpu: cpu2 accepted 0 active 0 closed 0 reset 0 misses 19".into());
        assert_eq!(
            check(&c, &net_report(&lines)).unwrap_err(),
            "cpu2 kept 17 of the 36 packets it received on rxq 4 but transmitted none on txq 5"
        );
        // A CPU that received nothing need not transmit.
        let r = net_report(&net_case_lines(&|p| {
            if p == 2 {
                new_stats(p, 0, NO_DROPS, tx(p))
            } else {
                new_stats(p, 80, NO_DROPS, TX_OK)
            }
        }));
        assert_eq!(check(&c, &r), Ok(()));
    }

    #[test]
    fn every_receive_drop_fails_naming_cpu_queue_and_reason() {
        let c = smp4_queues4();
        for reason in RX_DROPS {
            let drops = NO_DROPS.replace(&format!("{reason} 0"), &format!("{reason} 3"));
            let r = net_report(&net_case_lines(&|p| new_stats(p, 60, if p == 3 { &drops } else { NO_DROPS }, TX_OK)));
            assert_eq!(check(&c, &r).unwrap_err(), format!("cpu3 dropped 3 frames on rxq 6: {reason} 3"));
        }
        // The older form's drop counters are checked too.
        let r = net_report(&net_case_lines(&|p| {
            new_stats(p, 60, if p == 1 { "bad_len 0 bad_id 1 header 0" } else { "bad_len 0 bad_id 0 header 0" }, TX_OK)
        }));
        assert_eq!(check(&c, &r).unwrap_err(), "cpu1 dropped 1 frames on rxq 2: bad_id 1");
    }

    #[test]
    fn full_kicks_rescues_and_watchdog_are_not_failures() {
        let c = smp4_queues4();
        let tx = "packets 60 bytes 8800 irqs 0 full 500 kicks 60 rescues 7 watchdog 3";
        let r = net_report(&net_case_lines(&|p| new_stats(p, 60, NO_DROPS, tx)));
        assert_eq!(check(&c, &r), Ok(()));
        assert!(network_note(&c, &r)
            .ends_with("tx kicks/1000 pkts 1000.0, tx full 2000, rescues 28, watchdog 12, ARP replies 1"));
    }

    #[test]
    fn broken_and_error_lines_fail_a_network_case() {
        let c = smp4_queues4();
        let mut l = net_case_lines(&|p| new_stats(p, 60, NO_DROPS, TX_OK));
        l.push("[ 3.0] cpu1 WARN  virtio-net: txq 3 broken: the device stopped using buffers".into());
        assert!(check(&c, &net_report(&l)).unwrap_err().starts_with("the kernel reports something broken: "));
        let mut l = net_case_lines(&|p| new_stats(p, 60, NO_DROPS, TX_OK));
        l.push("[ 3.0] cpu0 ERROR nic: something failed".into());
        assert!(check(&c, &net_report(&l)).unwrap_err().starts_with("unexpected warning: "));
    }

    #[test]
    fn reports_must_come_from_the_right_cpus() {
        let c = smp4_queues4();
        let l: Vec<String> = net_case_lines(&|p| new_stats(p, 60, NO_DROPS, TX_OK))
            .into_iter()
            .filter(|x| !x.contains("net-stats: cpu3"))
            .collect();
        assert_eq!(check(&c, &net_report(&l)).unwrap_err(), "no net-stats report from cpu3");
        let mut l = net_case_lines(&|p| new_stats(p, 60, NO_DROPS, TX_OK));
        l.push(new_stats(4, 60, NO_DROPS, TX_OK));
        assert_eq!(check(&c, &net_report(&l)).unwrap_err(), "a net-stats report from cpu4, but the VM has 4 CPUs");
        let l: Vec<String> = net_case_lines(&|p| new_stats(p, 60, NO_DROPS, TX_OK))
            .into_iter()
            .map(|x| x.replace("net-stats: cpu1 rxq 2 ", "net-stats: cpu1 rxq 4 "))
            .collect();
        assert_eq!(check(&c, &net_report(&l)).unwrap_err(), "cpu1 reports queues 4/3, not its own pair");
    }

    #[test]
    fn the_last_report_of_each_cpu_counts() {
        let c = smp4_queues4();
        let mut l = net_case_lines(&|p| new_stats(p, 60, NO_DROPS, TX_OK));
        // An early report (cpu0 had received a frame and not yet answered)
        // is superseded by the later one.
        l.insert(5, new_stats(0, 1, NO_DROPS, "packets 0"));
        assert_eq!(check(&c, &net_report(&l)), Ok(()));
        let mut l = net_case_lines(&|p| new_stats(p, 60, NO_DROPS, TX_OK));
        l.push(new_stats(0, 61, NO_DROPS, "packets 0"));
        assert!(check(&c, &net_report(&l)).unwrap_err().contains("cpu0 kept 61 of the 61 packets"));
    }

    fn named(name: &str) -> BootCase {
        cases().into_iter().find(|c| c.name == name).unwrap()
    }

    /// A flood of `FLOOD_COUNT` replies with `lost` more requests sent.
    fn flood_out(received: u32, lost: u32) -> String {
        format!(
            "PING 10.99.0.2 (10.99.0.2) 56(84) bytes of data.\n\n--- 10.99.0.2 ping statistics ---\n\
             {} packets transmitted, {received} received, 0.1% packet loss, time 1843ms\n",
            received + lost
        )
    }

    const AFTER_OK: &str = "5 packets transmitted, 5 received, 0% packet loss, time 204ms";

    fn flood_report(pairs: u16, rx_per_cpu: u32, steps: &[(&str, &str)]) -> RunReport {
        let mut r = net_report(&pair_lines(pairs, &|p| new_stats(p, rx_per_cpu, NO_DROPS, TX_OK)));
        r.action = Some(Ok(transcript(steps)));
        r
    }

    #[test]
    fn flood_cases_exist_with_generous_bounded_limits() {
        for (name, cpus) in [
            ("net-flood-smp1-queues1-boot1", 1),
            ("net-flood-smp1-queues1-boot2", 1),
            ("net-flood-smp1-queues1-boot3", 1),
            ("net-flood-smp2-queues2-boot1", 2),
            ("net-flood-smp2-queues2-boot2", 2),
        ] {
            let c = named(name);
            let net = c.net.unwrap();
            assert_eq!((c.cpus, net.queues, net.floods), (cpus, cpus, &[56, 1400][..]), "{name}");
            assert!(matches!(c.expect, Expect::Network { pairs, .. } if pairs == cpus));
            assert_eq!(time_limit(&c, Accel::Tcg), Duration::from_secs(90 + 2 * 60));
            assert_eq!(then_wait(&c), Duration::from_secs(3), "a report after the floods");
        }
        assert_eq!(time_limit(&named("net-smp2-queues8"), Accel::Tcg), Duration::from_secs(90));
        assert_eq!(then_wait(&named("net-smp2-queues8")), Duration::from_millis(1200));
    }

    #[test]
    fn floods_must_complete_with_few_losses() {
        let c = named("net-flood-smp2-queues2-boot1");
        let (f56, f1400) = (flood_step(56), flood_step(1400));
        let ok = |lost56: u32, lost1400: u32| {
            vec![
                (STEP_PING, OK_PING.to_string()),
                (STEP_FLOWS, String::new()),
                (f56.as_str(), flood_out(FLOOD_COUNT, lost56)),
                (f1400.as_str(), flood_out(FLOOD_COUNT, lost1400)),
                (STEP_AFTER_FLOODS, AFTER_OK.to_string()),
            ]
        };
        let run = |steps: &[(&str, String)], rx: u32| {
            let steps: Vec<(&str, &str)> = steps.iter().map(|(n, o)| (*n, o.as_str())).collect();
            let r = flood_report(2, rx, &steps);
            check(&c, &r).map(|()| network_note(&c, &r))
        };
        let note = run(&ok(12, FLOOD_MAX_LOST), 40_100).unwrap();
        assert!(
            note.ends_with(
                "flood -s 56: 40000 replies in 1.8 s, 12 lost, flood -s 1400: 40000 replies in 1.8 s, 64 lost"
            ),
            "{note}"
        );
        assert_eq!(
            run(&ok(12, FLOOD_MAX_LOST + 1), 40_100).unwrap_err(),
            "flood -s 1400: 65 of 40065 requests lost, more than 64"
        );
        // A guest that stalled: ping ran into its deadline, the next flood never started.
        let mut stalled = ok(0, 0);
        stalled[2].1 = "52000 packets transmitted, 2100 received, 95.9% packet loss, time 60004ms".into();
        stalled.remove(3);
        let err = run(&stalled, 40_100).unwrap_err();
        assert_eq!(
            err,
            "flood -s 56 did not complete: 2100 of 40000 echo requests answered, 52000 sent, 0 errors; \
             ping stopped after 60.0 s (deadline 60 s)"
        );
        // ping -w stops at its first error (the host's neighbour entry for a
        // guest that no longer transmits fails).
        stalled[2].1 =
            "19332 packets transmitted, 17207 received, +4 errors, 10.9921% packet loss, time 37585ms".into();
        assert!(run(&stalled, 40_100)
            .unwrap_err()
            .contains("17207 of 40000 echo requests answered, 19332 sent, 4 errors; ping stopped after 37.6 s"));
        // Floods done, but the guest no longer answers.
        let mut wedged = ok(0, 0);
        wedged[4].1 = "5 packets transmitted, 0 received, 100% packet loss, time 4050ms".into();
        assert_eq!(run(&wedged, 40_100).unwrap_err(), "ping after the floods: 5 sent, 0 answered, 5 expected");
        let mut missing = ok(0, 0);
        missing.remove(4);
        assert_eq!(run(&missing, 40_100).unwrap_err(), "no `ping after the floods` step ran");
        // The last reports must count the floods: reported before them, they cannot.
        assert!(run(&ok(0, 0), 100).unwrap_err().contains("fewer than the 80153 sent"));
    }

    #[test]
    fn jumbo_replies_must_all_come_back_intact_through_merged_buffers() {
        let c = named("net-jumbo-frames-from-a-mtu9000-tap");
        let net = c.net.unwrap();
        assert_eq!((net.tap_mtu, net.jumbo_pings, net.queues, c.cpus), (Some(9000), Some(4000), 2, 2));
        let jumbo = jumbo_step(4000);
        let good = "4008 bytes from 10.99.0.2: icmp_seq=1 ttl=64 time=1.1 ms\n\
                    20 packets transmitted, 20 received, 0% packet loss, time 1000ms";
        let run = |out: &str, merged: u32| {
            let steps = [(STEP_PING, OK_PING), (STEP_FLOWS, ""), (jumbo.as_str(), out)];
            let l =
                pair_lines(2, &|p| new_stats(p, 100, NO_DROPS, TX_OK).replace("merged 0", &format!("merged {merged}")));
            let mut r = net_report(&l);
            r.action = Some(Ok(transcript(&steps)));
            check(&c, &r).map(|()| network_note(&c, &r))
        };
        assert!(run(good, 40).unwrap().ends_with("merged 80"));
        assert_eq!(
            run(good, 0).unwrap_err(),
            "ping -s 4000 answered, but no CPU counts a merged receive buffer (merged 0)"
        );
        let dropped = "20 packets transmitted, 0 received, 100% packet loss, time 1000ms";
        assert_eq!(run(dropped, 0).unwrap_err(), "ping -s 4000: 20 sent, 0 answered, 20 expected");
        let damaged = format!("wrong data byte #2000 should be 0xd0 but was 0x0\n{good}");
        assert_eq!(
            run(&damaged, 40).unwrap_err(),
            "ping -s 4000: a damaged reply: wrong data byte #2000 should be 0xd0 but was 0x0"
        );
    }

    #[test]
    fn one_arp_request_gets_exactly_one_reply() {
        let c = smp4_queues4();
        assert!(c.net.unwrap().arp_probe);
        let run = |arp: Option<&str>| {
            let mut r = net_report(&net_case_lines(&|p| new_stats(p, 60, NO_DROPS, TX_OK)));
            let mut steps = vec![(STEP_PING, OK_PING), (STEP_FLOWS, "")];
            steps.extend(arp.map(|a| (STEP_ARP, a)));
            steps.push((STEP_METRICS, OK_METRICS));
            r.action = Some(Ok(transcript(&steps)));
            check(&c, &r)
        };
        assert_eq!(run(Some("reply from 52:54:00:12:34:56\narp replies 1")), Ok(()));
        let four = "reply from 52:54:00:12:34:56\n".repeat(4) + "arp replies 4";
        assert_eq!(
            run(Some(&four)).unwrap_err(),
            "one ARP request for the guest's address got 4 replies, not exactly 1"
        );
        assert!(run(Some("arp replies 0")).unwrap_err().contains("got 0 replies"));
        assert_eq!(run(None).unwrap_err(), "no `arp replies N` from the `arp` step");
        // Cases without the probe do not ask for it.
        let without =
            BootCase { net: Some(NetCase { arp_probe: false, metrics: false, ..c.net.unwrap() }), ..c.clone() };
        let mut r = net_report(&net_case_lines(&|p| new_stats(p, 60, NO_DROPS, TX_OK)));
        r.action = Some(Ok(transcript(&[(STEP_PING, OK_PING), (STEP_FLOWS, "")])));
        assert_eq!(check(&without, &r), Ok(()));
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

    /// A TCP case's boot: its queue pairs' net-stats, the kernel's note on
    /// vCPUs without a pair, and `cpu(c)` as vCPU `c`'s last net-cpu report
    /// (at 9 s), after the RR step's window ([`RR_WINDOW`]); the report
    /// before the window (at 6 s) counts two connections fewer accepted.
    fn tcp_lines(c: &BootCase, cpu: &dyn Fn(u16) -> String) -> Vec<String> {
        tcp_lines_rr(c, cpu, &|_| 2)
    }

    /// [`tcp_lines`] with vCPU `c` accepting `rr(c)` connections during
    /// the RR step.
    fn tcp_lines_rr(c: &BootCase, cpu: &dyn Fn(u16) -> String, rr: &dyn Fn(u16) -> u64) -> Vec<String> {
        let pairs = c.net.unwrap().queues.min(c.cpus);
        let mut l = pair_lines(pairs, &|p| new_stats(p, 5000, NO_DROPS, TX_OK));
        l.extend(c.also.iter().map(|a| format!("[ 1.0] cpu0 INFO  virtio-net 00:02.0: {a}")));
        for p in 0..c.cpus {
            // An early report, superseded by the last one.
            l.push(format!("[ 5.0] cpu{p} INFO  net-cpu: cpu{p} accepted 1 active 1 closed 0 reset 0 misses 0"));
        }
        for p in 0..c.cpus {
            let last = cpu(p);
            let (_, counters) = parse_net_cpu(&format!("net-cpu: cpu{p} {last}")).unwrap();
            let before = counters.get("accepted").saturating_sub(rr(p));
            l.push(format!("[ 6.0] cpu{p} INFO  net-cpu: cpu{p} accepted {before} active 0 closed {before} reset 0"));
        }
        for p in 0..c.cpus {
            l.push(format!("[ 9.0] cpu{p} INFO  net-cpu: cpu{p} {}", cpu(p)));
        }
        l
    }

    /// The RR step's window in [`tcp_lines`]' time, seconds.
    const RR_WINDOW: &str = "window 7.000 8.000";

    /// The RR step's output: window, status, `xtask rr`'s lines.
    fn rr_output(status: &str, s: &RrSummary) -> String {
        format!("{RR_WINDOW}\nstatus {status}\n{}\n{}\n", s.describe(), s.to_json())
    }

    /// [`TCP_RR`] as it went, `per_connection` transactions each.
    fn rr_summary(per_connection: &[u64], errors: &[&str]) -> RrSummary {
        let transactions = per_connection.iter().sum();
        RrSummary {
            connections: per_connection.len() as u64,
            request: 32,
            response: 4096,
            time_s: 2.0,
            completed: (per_connection.iter().filter(|&&n| n > 0).count() - errors.len()) as u64,
            errors: errors.len() as u64,
            error_list: errors.iter().map(|e| e.to_string()).collect(),
            transactions,
            elapsed_s: 2.0,
            tps: transactions as f64 / 2.0,
            per_connection_transactions: per_connection.to_vec(),
            per_connection_tps: per_connection.iter().map(|&n| n as f64 / 2.0).collect(),
            p50_us: 7000.0,
            p90_us: 9000.0,
            p99_us: 12000.0,
            max_us: 30000.0,
        }
    }

    fn good_rr() -> Option<String> {
        Some(rr_output("exit status: 0", &rr_summary(&[250; 8], &[])))
    }

    /// A vCPU that accepted `accepted` connections and closed them all.
    fn cpu_ok(accepted: u64, misses: u64) -> String {
        format!(
            "accepted {accepted} active 0 closed {accepted} reset 0 misses {misses} inbox_in {} inbox_drops 0",
            3 * misses
        )
    }

    fn load_summary(mode: &str, connections: u64, bytes: u64, done: u64, errors: &[&str]) -> String {
        LoadSummary {
            mode: mode.into(),
            connections,
            bytes,
            completed: connections - errors.len() as u64,
            done,
            elapsed_s: 16.0,
            mb_per_s: done as f64 / 16.0 / 1e6,
            errors: errors.len() as u64,
            error_list: errors.iter().map(|e| e.to_string()).collect(),
            per_connection: vec![],
        }
        .to_json()
    }

    const ECHO_OK: u64 = 64 << 20;
    const DISCARD_OK: u64 = 100 << 20;

    /// The host side of a TCP case: pings, flows, then the loads' summaries.
    fn tcp_traffic(echo: Option<String>, discard: Option<String>) -> String {
        tcp_traffic_rr(echo, discard, good_rr())
    }

    fn tcp_traffic_rr(echo: Option<String>, discard: Option<String>, rr: Option<String>) -> String {
        let mut steps = vec![(STEP_PING, OK_PING.to_string()), (STEP_FLOWS, "128 datagrams on 32 flows".to_string())];
        steps.extend(echo.map(|e| (STEP_TCP_ECHO, format!("{e}\n"))));
        steps.extend(discard.map(|d| (STEP_TCP_DISCARD, d)));
        steps.extend(rr.map(|r| (STEP_TCP_RR, r)));
        steps.iter().map(|(n, o)| crate::traffic::section(n, o)).collect()
    }

    fn good_echo() -> Option<String> {
        Some(load_summary("echo", 64, 1 << 20, ECHO_OK, &[]))
    }

    fn good_discard() -> Option<String> {
        Some(load_summary("discard", 4, DISCARD_OK, DISCARD_OK, &[]))
    }

    fn good_loads() -> String {
        tcp_traffic(good_echo(), good_discard())
    }

    /// Runs TCP case `name` (memory as the fake boot lines say) against
    /// `cpu`'s net-cpu reports and the host side `traffic`.
    fn tcp_run(name: &str, cpu: &dyn Fn(u16) -> String, traffic: String) -> Result<String, String> {
        let c = BootCase { memory_mib: 256, ..named(name) };
        tcp_check(&c, &tcp_lines(&c, cpu), traffic)
    }

    /// Checks case `c` against its serial `l`ines, each arriving at the time
    /// it shows (`[ 9.0] ...`), and the host side `traffic`.
    fn tcp_check(c: &BootCase, l: &[String], traffic: String) -> Result<String, String> {
        let mut r = report(Outcome::Stopped(StopReason::Finished), &lines(l));
        for line in &mut r.lines {
            let shown = line.text.strip_prefix('[').and_then(|t| t.split_once(']')).map(|(t, _)| t.trim());
            line.at = Duration::from_secs_f64(shown.and_then(|t| t.parse().ok()).unwrap_or(0.0));
        }
        r.action = Some(Ok(traffic));
        check(c, &r).map(|()| network_note(c, &r))
    }

    /// Linux gives successive connections to one destination client ports
    /// two apart from a random start: under the TCP cases' key, 64 echo
    /// connections from any such run of ports reach every one of 4 vCPUs.
    #[test]
    fn the_tcp_cases_key_spreads_connections_from_ports_two_apart() {
        for c in cases().iter().filter(|c| c.net.is_some_and(|n| n.tcp.is_some())) {
            assert!(c.cmdline.contains(&format!("steer-key={TEST_STEER_KEY}")), "{}", c.name);
        }
        for start in (32768u16..60999 - 128).step_by(2 * 37) {
            let per = crate::traffic::tests::owners_of(4, (0..64).map(|i| start + 2 * i), 7);
            assert!(per.iter().all(|&n| n >= 8), "ports {start}.. (two apart): {per:?}");
        }
    }

    #[test]
    fn the_iperf_case_steers_with_the_key_its_traffic_assumes() {
        let c = named("net-iperf-smp4-queues4");
        assert!(c.cmdline.contains(&format!("steer-key={TEST_STEER_KEY}")));
        assert!(c.net.unwrap().iperf && c.net.unwrap().queues == c.cpus);
        // The key picks client ports that spread 4 streams over 4 vCPUs.
        let key = crate::traffic::kernel_key(TEST_STEER_KEY).unwrap();
        let port = crate::traffic::spread_ports(key, 4, [10, 99, 0, 1], [10, 99, 0, 2], 5201, 4, 20000);
        assert_eq!(crate::traffic::tests::owners(4, port, 4), [1, 1, 1, 1]);
    }

    #[test]
    fn iperf_runs_are_judged_by_exit_json_and_throughput() {
        let good =
            "exit 0\n{\"end\":{\"sum_sent\":{\"bits_per_second\":1e9},\"sum_received\":{\"bits_per_second\":9e8}}}";
        assert!(check_iperf_run("x", good).is_ok());
        assert!(check_iperf_run("x", &good.replace("exit 0", "exit 1")).unwrap_err().contains("ended with"));
        assert!(check_iperf_run("x", &good.replace("9e8", "0")).unwrap_err().contains("sum_received"));
        assert!(check_iperf_run("x", "exit 0\n{\"error\":\"busy\"}").unwrap_err().contains("error"));
        assert!(check_iperf_run("x", "exit 0\n{\"end\":").unwrap_err().contains("parse"));
        let scrape = "status 200\nmqnet_rx_packets{cpu=\"0\",rxq=\"0\",txq=\"1\"} 5\nmqnet_rx_packets{cpu=\"1\"} 7\n";
        let by = series_by(scrape, "mqnet_rx_packets", "rxq");
        assert_eq!(by.into_iter().collect::<Vec<_>>(), [("0".to_string(), 5)]);
    }

    #[test]
    fn tcp_cases_exist_with_their_loads_and_limits() {
        for (name, queues, rss) in [
            ("net-tcp-smp4-queues4", 4, false),
            ("net-tcp-smp4-queues4-rss", 4, true),
            ("net-tcp-smp4-queues2", 2, false),
            ("net-tcp-smp4-queues1", 1, false),
        ] {
            let c = named(name);
            let net = c.net.unwrap();
            assert_eq!((c.cpus, c.memory_mib, net.queues, net.rss), (4, 1024, queues, rss), "{name}");
            assert!(matches!(c.expect, Expect::Network { pairs, vectors: Vectors::PerQueue } if pairs == queues));
            let tcp = net.tcp.unwrap();
            assert_eq!((tcp.echo_connections, tcp.echo_bytes), (64, 1 << 20));
            assert_eq!((tcp.discard_connections, tcp.discard_bytes, tcp.connections()), (4, 100 << 20, 76));
            let shape = RrShape { request: 32, response: 4096, time: Duration::from_secs(2) };
            let rr = RrStep { connections: 8, shape };
            assert_eq!(tcp.rr, Some(rr));
            assert!(c.cmdline.contains("net-stats="), "counters on");
            // Every load may run into its deadline (and the client's grace)
            // and the case still end with the checks' verdict.
            let rr = Duration::from_millis(1500) + Duration::from_secs(2 + 20 + 10);
            assert_eq!(time_limit(&c, Accel::Tcg), Duration::from_secs(90 + 240 + 120 + 20) + rr);
            assert_eq!(then_wait(&c), Duration::from_secs(3));
        }
        // The iperf3 cases have a small load before their runs, with the
        // device's offloads on and off.
        let iperf: Vec<_> = cases().into_iter().filter(|c| c.net.is_some_and(|n| n.iperf)).collect();
        let loads: Vec<_> = iperf.iter().map(|c| (c.net.unwrap().tcp, c.net.unwrap().offloads)).collect();
        assert_eq!(loads, [(Some(IPERF_CASE_LOAD), true), (Some(IPERF_CASE_LOAD), false)]);
        assert_eq!(iperf_connections(), 2 + 2 + 5 + 5 + 2 + 2 + 1 + 2, "each flow may miss until learned");
        // So has the direct-boot network case with four vCPUs.
        let pvh = cases().into_iter().find(|c| c.name == "net-pvh-smp4-queues4").unwrap();
        assert_eq!((pvh.firmware, pvh.net.unwrap().tcp), (Firmware::Pvh, Some(TCP_LOAD)));
        // The other network cases have no TCP load and no RSS, and keep the
        // device's offloads.
        assert!(cases()
            .iter()
            .filter(|c| !c.name.starts_with("net-tcp-") && !c.net.is_some_and(|n| n.iperf) && c.name != pvh.name)
            .all(|c| c.net.is_none_or(|n| n.tcp.is_none() && !n.rss && n.offloads)));
    }

    #[test]
    fn tcp_cases_pass_with_good_loads_and_counters() {
        let note = tcp_run("net-tcp-smp4-queues4", &|p| cpu_ok(19, u64::from(p)), good_loads()).unwrap();
        assert!(
            note.ends_with(
                "tcp echo 64×1 MiB: 16.0 s, 4.19 MB/s, tcp discard 100 MiB in 4 conns: 16.0 s, 6.55 MB/s, \
                 rr 8 conns, 32 B/4 KiB, 2.0 s: 1000 transactions/s (125.0 per conn), latency µs p50 7000 p90 9000 \
                 p99 12000 max 30000, accepted per vCPU 19/19/19/19, misses 0/1/2/3 (sum 6), inbox_in 0/3/6/9, \
                 inbox_drops 0, resets sent 0, zero-window ACKs 0"
            ),
            "{note}"
        );
        assert_eq!(tcp_run("net-tcp-smp4-queues4-rss", &|_| cpu_ok(19, 0), good_loads()).map(|_| ()), Ok(()));
        assert!(tcp_run("net-tcp-smp4-queues2", &|_| cpu_ok(19, 40), good_loads()).is_ok());
        // One queue: the flows of three vCPUs travel through their inboxes,
        // misses are not bounded, inbox drops are reported.
        let drops = |p: u16| {
            cpu_ok(19, 5000).replace("inbox_drops 0", &format!("inbox_drops {p}")).replace("misses", "splits 40 misses")
        };
        let note = tcp_run("net-tcp-smp4-queues1", &drops, good_loads()).unwrap();
        assert!(
            note.contains("misses 5000/5000/5000/5000 (sum 20000), inbox_in 15000/15000/15000/15000, inbox_drops 6,"),
            "{note}"
        );
        // There, with GUEST_TSO, some coalesced segments must have been cut
        // for the vCPUs without a queue.
        let err = tcp_run("net-tcp-smp4-queues1", &|_| cpu_ok(19, 5000), good_loads()).unwrap_err();
        assert!(err.starts_with("no coalesced segment was split for another vCPU"), "{err}");
    }

    #[test]
    fn failed_tcp_loads_fail_the_case_saying_why() {
        let ok = |_: u16| cpu_ok(19, 0);
        let bad = "conn 5: mismatch at receive offset 1234: expected 0x12, got 0x13";
        let echo = load_summary("echo", 64, 1 << 20, ECHO_OK - 1000, &[bad]);
        assert_eq!(
            tcp_run("net-tcp-smp4-queues4", &ok, tcp_traffic(Some(echo), None)).unwrap_err(),
            format!("tcp echo: 1 of 64 connections failed: {bad}")
        );
        let discard =
            load_summary("discard", 4, DISCARD_OK, 0, &["conn 0: refused at connect offset 0: Connection refused"; 4]);
        let traffic = tcp_traffic(Some(load_summary("echo", 64, 1 << 20, ECHO_OK, &[])), Some(discard));
        let err = tcp_run("net-tcp-smp4-queues4", &ok, traffic).unwrap_err();
        assert!(err.starts_with("tcp discard: 4 of 4 connections failed: conn 0: refused at connect"), "{err}");
        // Fewer bytes than asked for, without an error, is a failure too.
        let short = tcp_traffic(
            Some(load_summary("echo", 64, 1 << 20, ECHO_OK - 1, &[])),
            Some(load_summary("discard", 4, DISCARD_OK, DISCARD_OK, &[])),
        );
        assert_eq!(
            tcp_run("net-tcp-smp4-queues4", &ok, short).unwrap_err(),
            "tcp echo: 64 of 64 connections completed, 67108863 bytes done, expected 64 and 67108864"
        );
        let only_echo = tcp_traffic(Some(load_summary("echo", 64, 1 << 20, ECHO_OK, &[])), None);
        assert_eq!(tcp_run("net-tcp-smp4-queues4", &ok, only_echo).unwrap_err(), "no `tcp discard` step ran");
        let garbled = tcp_traffic(Some("Traceback".into()), None);
        assert_eq!(
            tcp_run("net-tcp-smp4-queues4", &ok, garbled).unwrap_err(),
            "tcp echo: no summary from tcp-load: Traceback"
        );
    }

    #[test]
    fn every_vcpu_must_accept_and_close_its_connections() {
        let run = |cpu: &dyn Fn(u16) -> String| tcp_run("net-tcp-smp4-queues4", cpu, good_loads());
        let idle3 = |p: u16| if p == 3 { cpu_ok(0, 0) } else { cpu_ok(25, 0) };
        assert_eq!(run(&idle3).unwrap_err(), "cpu3 accepted no connection (accepted per vCPU: 25/25/25/0)");
        assert_eq!(
            run(&|_| cpu_ok(18, 0)).unwrap_err(),
            "the vCPUs accepted 72 connections (18/18/18/18), fewer than the 76 the host opened"
        );
        let active = |p: u16| if p == 1 { cpu_ok(19, 0).replace("active 0", "active 2") } else { cpu_ok(19, 0) };
        assert_eq!(run(&active).unwrap_err(), "2 connections still active after the loads (per vCPU: 0/2/0/0)");
        let reset = |p: u16| if p == 2 { cpu_ok(19, 0).replace("reset 0", "reset 1") } else { cpu_ok(19, 0) };
        assert_eq!(run(&reset).unwrap_err(), "1 connections were reset (per vCPU: 0/0/1/0)");
        // Every vCPU must report.
        let c = BootCase { memory_mib: 256, ..named("net-tcp-smp4-queues4") };
        let l: Vec<String> =
            tcp_lines(&c, &|_| cpu_ok(19, 0)).into_iter().filter(|l| !l.contains("net-cpu: cpu2")).collect();
        let mut r = report(Outcome::Stopped(StopReason::Finished), &lines(&l));
        r.action = Some(Ok(good_loads()));
        assert_eq!(check(&c, &r).unwrap_err(), "no net-cpu report from cpu2");
        let mut l = tcp_lines(&c, &|_| cpu_ok(19, 0));
        l.push(format!("[ 9.0] cpu0 INFO  net-cpu: cpu4 {}", cpu_ok(1, 0)));
        let mut r = report(Outcome::Stopped(StopReason::Finished), &lines(&l));
        r.action = Some(Ok(good_loads()));
        assert_eq!(check(&c, &r).unwrap_err(), "a net-cpu report from cpu4, but the VM has 4 CPUs");
    }

    #[test]
    fn misses_are_bounded_by_the_steering() {
        // RSS: the device steers each flow to its owner, so none.
        let one_miss = |p: u16| cpu_ok(19, u64::from(p == 1));
        assert_eq!(
            tcp_run("net-tcp-smp4-queues4-rss", &one_miss, good_loads()).unwrap_err(),
            "with RSS, 1 frames arrived on a vCPU that does not own their flow (misses per vCPU: 0/1/0/0), expected none"
        );
        // A pair per vCPU without RSS: at most 4 per flow (76 connections,
        // 32 UDP flows, the pings) = 436.
        assert!(tcp_run("net-tcp-smp4-queues4", &|_| cpu_ok(19, 109), good_loads()).is_ok());
        assert_eq!(
            tcp_run("net-tcp-smp4-queues4", &|p| cpu_ok(19, 109 + u64::from(p == 0)), good_loads()).unwrap_err(),
            "437 frames arrived on a vCPU that does not own their flow (misses per vCPU: 110/109/109/109), more than 4 \
             for each of the 109 flows"
        );
        // Fewer pairs than vCPUs: no bound.
        assert!(tcp_run("net-tcp-smp4-queues2", &|_| cpu_ok(19, 100_000), good_loads()).is_ok());
        // Whatever the queues: a reset for another vCPU's flow is a steering failure.
        let foreign_reset = |p: u16| format!("{} resets_sent 2 resets_unowned {}", cpu_ok(19, 0), u64::from(p == 3));
        assert_eq!(
            tcp_run("net-tcp-smp4-queues2", &foreign_reset, good_loads()).unwrap_err(),
            "1 TCP resets answered flows of another vCPU (per vCPU: 0/0/0/1): a segment reached a stack that does not \
             own its connection"
        );
    }

    #[test]
    fn rr_steps_must_run_clean_and_spread_over_the_vcpus() {
        let ok = |_: u16| cpu_ok(19, 0);
        let run =
            |rr: Option<String>| tcp_run("net-tcp-smp4-queues4", &ok, tcp_traffic_rr(good_echo(), good_discard(), rr));
        assert!(run(good_rr()).is_ok());
        assert_eq!(run(None).unwrap_err(), "no `tcp rr` step ran");
        let bad = "conn 2: mismatch at receive offset 5123: response 1 byte 1027: expected 0x04, got 0x48";
        assert_eq!(
            run(Some(rr_output("exit status: 1", &rr_summary(&[250, 250, 1, 250, 250, 250, 250, 250], &[bad]))))
                .unwrap_err(),
            format!("tcp rr: 1 of 8 connections failed: {bad}")
        );
        // A connection without a transaction, or a client that failed
        // without saying why, is a failure too.
        assert_eq!(
            run(Some(rr_output("exit status: 1", &rr_summary(&[250, 250, 0, 250, 250, 250, 250, 250], &[])))).unwrap_err(),
            "tcp rr: 7 of 8 connections completed, 1750 transactions (per connection [250, 250, 0, 250, 250, 250, 250, 250])"
        );
        assert_eq!(
            run(Some(rr_output("exit status: 1", &rr_summary(&[250; 8], &[])))).unwrap_err(),
            "tcp rr: xtask rr ended with exit status: 1"
        );
        let small = RrSummary { response: 1, ..rr_summary(&[250; 8], &[]) };
        assert_eq!(
            run(Some(rr_output("exit status: 0", &small))).unwrap_err(),
            "tcp rr: the load was 8 connections of 32/1 bytes, expected 8 of 32/4096"
        );
        assert_eq!(run(Some("Traceback".into())).unwrap_err(), "tcp rr: no window and status in: Traceback");
        let garbled = format!("{RR_WINDOW}\nstatus exit status: 0\n{{\"mode\":\"rr\"}}\n");
        assert!(run(Some(garbled)).unwrap_err().starts_with("tcp rr: no summary from xtask rr: window"));
        // Slow is not a failure: no timing is checked.
        assert!(run(Some(rr_output("exit status: 0", &rr_summary(&[1; 8], &[])))).is_ok());

        // Where the connections went, from the reports around the window.
        let c = BootCase { memory_mib: 256, ..named("net-tcp-smp4-queues4") };
        let spread = |rr: &dyn Fn(u16) -> u64| tcp_check(&c, &tcp_lines_rr(&c, &ok, rr), good_loads());
        assert!(spread(&|p| [5, 0, 0, 3][usize::from(p)]).is_ok());
        assert_eq!(
            spread(&|p| if p == 2 { 8 } else { 0 }).unwrap_err(),
            "tcp rr: one vCPU accepted every connection (0/0/8/0): they were not spread"
        );
        assert_eq!(
            spread(&|p| u64::from(p)).unwrap_err(),
            "tcp rr: the vCPUs accepted 0/1/2/3 connections during the load, not its 8 in all"
        );
        // A report made just after the load started (within REPORT_SKEW of
        // its window's start) is not taken for one from before it.
        let mut l = tcp_lines_rr(&c, &ok, &|_| 2);
        let at9 = l.iter().position(|l| l.starts_with("[ 9.0]")).unwrap();
        l.splice(at9..at9, (0..4).map(|p| format!("[ 6.9] cpu{p} INFO  net-cpu: cpu{p} accepted 18 active 1")));
        assert_eq!(tcp_check(&c, &l, good_loads()).map(|_| ()), Ok(()));
        // Without reports after the window nothing can be said.
        let late =
            tcp_traffic_rr(good_echo(), good_discard(), good_rr().map(|r| r.replace(RR_WINDOW, "window 7.0 9.5")));
        assert_eq!(
            tcp_run("net-tcp-smp4-queues4", &ok, late).unwrap_err(),
            "no net-cpu report from cpu0 after the tcp rr step (9.5 s)"
        );
    }

    #[test]
    fn metrics_scrapes_are_checked() {
        let row = |c: u32, rx: u64| {
            format!("mqnet_rx_packets{{cpu=\"{c}\",rxq=\"{}\"}} {rx}\nmqnet_tcp_active{{cpu=\"{c}\"}} 0\n", 2 * c)
        };
        let body = format!(
            "status 200\n# HELP mqnet_rx_packets x\n# TYPE mqnet_rx_packets counter\n{}{}",
            row(0, 5),
            row(1, 0)
        );
        assert_eq!(check_metrics(&body, 2), Ok(()));
        assert_eq!(check_metrics(&body, 3).unwrap_err(), "mqnet_rx_packets has 2 samples, not one per vCPU (3)");
        assert!(check_metrics("status 404\nnothing", 2).unwrap_err().contains("not status 200"));
        assert!(check_metrics(&format!("{body}garbage line\n"), 2).unwrap_err().contains("not a metrics sample"));
        let idle = format!("status 200\n{}{}", row(0, 0), row(1, 0));
        assert_eq!(check_metrics(&idle, 2).unwrap_err(), "mqnet_rx_packets counts no received frame");
        assert_eq!(check_metrics("status 200\n", 2).unwrap_err(), "GET /metrics returned no samples");
    }

    #[test]
    fn net_cpu_lines_are_parsed() {
        let (cpu, c) =
            parse_net_cpu("[ 3.1] cpu2 INFO  net-cpu: cpu2 accepted 16 active 0 closed 16 reset 0 misses 3 inbox_in 120 inbox_drops 0")
                .unwrap();
        assert_eq!(cpu, 2);
        assert_eq!(
            ["accepted", "active", "closed", "reset", "misses", "inbox_in", "inbox_drops"].map(|k| c.get(k)),
            [16, 0, 16, 0, 3, 120, 0]
        );
        // Any order, new keys, missing keys read 0.
        let (_, c) = parse_net_cpu("net-cpu: cpu0 misses 1 future 9 accepted 2").unwrap();
        assert_eq!((c.get("accepted"), c.get("misses"), c.get("future"), c.get("reset")), (2, 1, 9, 0));
        assert_eq!(parse_net_cpu("net-stats: cpu0 rxq 0 packets 1 | txq 1 packets 1"), None);
        assert_eq!(parse_net_cpu("net-cpu: cpuX accepted 1"), None);
    }

    #[test]
    fn case_names_are_unique() {
        let mut names: Vec<_> = cases().iter().map(|c| c.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), cases().len());
    }
}
