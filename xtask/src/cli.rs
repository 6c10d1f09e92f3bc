//! The command line of `cargo xtask`.
//!
//! Parsing errors (unknown option, bad value) exit with status 2 and a
//! message naming the problem, as clap does for every usage error.

use std::time::Duration;

use boot::accel::AccelRequest;
use boot::image::Firmware;
use boot::netns::MAX_QUEUES;
use boot::qemu::Machine;
use clap::error::ErrorKind;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(name = "cargo xtask", about = "Build, run and test the mqnet unikernel", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Build the kernel and its BIOS and UEFI disk images.
    Build(BuildArgs),
    /// Build and boot the kernel in QEMU, streaming its serial console.
    Run(RunArgs),
    /// Host unit tests of every crate, then boot tests of the real kernel.
    Test(TestArgs),
    /// Benchmarks (they print tables and write JSON; they never pass or fail
    /// on speed). Without a subcommand: the iperf3 multiqueue matrix.
    #[command(args_conflicts_with_subcommands = true)]
    Bench(Box<BenchArgs>),
    /// Host-side TCP load against the guest's echo or discard service: run by
    /// the network tests and benchmarks inside their namespace, e.g.
    /// `ip netns exec NS xtask tcp-load echo --addr 10.99.0.2 ...`. Prints
    /// one JSON summary line; exits 1 if any connection failed.
    #[command(hide = true)]
    TcpLoad(TcpLoadArgs),
    /// Host side of the guest's raw mode (`raw=`), on the tap through an
    /// AF_PACKET socket: run inside the namespace, e.g. `ip netns exec NS
    /// xtask raw-load send --iface mqtap0 --len 60 --time 2`. Prints one
    /// JSON summary line.
    #[command(hide = true)]
    RawLoad(crate::rawload::RawLoadArgs),
    /// Host side of the guest's request/response service (port 5202): N
    /// connections, one transaction at a time each, for --time seconds; run
    /// inside the namespace like tcp-load. Prints a human line and one JSON
    /// line (transactions/s, latency percentiles); exits 1 on any error.
    #[command(hide = true)]
    Rr(crate::rr::RrArgs),
}

#[derive(Args, Debug, Clone)]
pub struct BuildArgs {
    /// Optimised kernel without debug info (what the tests and benchmarks boot).
    #[arg(long)]
    pub release: bool,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Boot the debug kernel (assertions, debug info; boots ~3× slower)
    /// instead of the release kernel, which is the default.
    #[arg(long)]
    pub debug: bool,
    /// The release kernel (the default; kept for scripts that say so).
    #[arg(long, hide = true, conflicts_with = "debug")]
    pub release: bool,
    /// Print the commands that boot the guest without xtask (the namespace
    /// and tap set-up, then QEMU's command line) and exit; builds the image
    /// the command line names.
    #[arg(long)]
    pub print_qemu: bool,
    /// How to boot: pvh (QEMU loads the kernel ELF itself, the fastest),
    /// or the bootloader's disk image under SeaBIOS (bios) or OVMF (uefi).
    #[arg(long, value_enum, default_value_t = BootArg::Pvh)]
    pub boot: BootArg,
    /// Short for --boot bios.
    #[arg(long, conflicts_with_all = ["uefi", "boot"])]
    pub bios: bool,
    /// Short for --boot uefi.
    #[arg(long, conflicts_with = "boot")]
    pub uefi: bool,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=255))]
    pub smp: u16,
    /// Guest memory: MiB, or with a unit (512M, 2G).
    #[arg(long, default_value = "512M", value_parser = parse_memory)]
    pub memory: u32,
    /// Accelerator: hardware KVM when kvm_intel/kvm_amd is loaded (auto), or forced.
    #[arg(long, value_enum, default_value_t = AccelArg::Auto)]
    pub accel: AccelArg,
    /// Stop the VM after this many seconds (default: run until Ctrl-C).
    #[arg(long, value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
    /// Machine type (default: q35; pc-i440fx-7.0 under kvm_pvm).
    #[arg(long, value_enum)]
    pub machine: Option<MachineArg>,
    /// Guest network: a multiqueue tap inside a network namespace this run
    /// creates (tap; root), QEMU user-mode networking with the services'
    /// ports forwarded from 127.0.0.1 (user; one queue, no root), none; or
    /// auto: tap when root, else user.
    #[arg(long, value_enum, default_value_t = NetArg::Auto)]
    pub net: NetArg,
    /// Queue pairs of the NIC and its tap, with a tap [default: one per vCPU].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_QUEUES)))]
    pub queues: Option<u16>,
    /// Network namespace to create (and delete) for a tap [default: mqnet].
    #[arg(long, value_parser = parse_netns)]
    pub netns: Option<String>,
    /// Offer virtio-net RSS and hash reports (rss=on,hash=on), with a tap.
    #[arg(long)]
    pub rss: bool,
    /// Kernel boot options, e.g. "log=debug" (see README).
    #[arg(long, default_value = "")]
    pub cmdline: String,
}

impl RunArgs {
    /// Checks what clap cannot express: --queues, --netns and --rss only
    /// make sense with a tap (`--net tap`, or `auto` as root), and silently
    /// ignoring them would mislead. The error is a usage error (status 2),
    /// like clap's own.
    pub fn check(&self) -> Result<(), clap::Error> {
        if matches!(self.net, NetArg::None | NetArg::User)
            && (self.queues.is_some() || self.netns.is_some() || self.rss)
        {
            return Err(
                Cli::command().error(ErrorKind::ArgumentConflict, "--queues, --netns and --rss need a tap network")
            );
        }
        Ok(())
    }

    /// Whether to boot the release kernel (the default).
    pub fn release(&self) -> bool {
        !self.debug
    }
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub bench: Option<BenchCmd>,
    /// The options of the matrix (`bench` alone is `bench iperf`).
    #[command(flatten)]
    pub iperf: BenchIperfArgs,
}

#[derive(Subcommand, Debug, Clone)]
pub enum BenchCmd {
    /// The netperf-style multiqueue matrix (the default): boots the release
    /// kernel once per vCPUs/queues configuration (inside a network
    /// namespace it creates; root) and drives the guest's iperf3 server with
    /// the host's iperf3 for every direction, message size and session
    /// count; prints the tables and writes iperf.json, iperf.csv and
    /// iperf.svg under target/bench/.
    Iperf(BenchIperfArgs),
    /// TCP echo throughput: boots the release kernel once per queue count
    /// (inside a network namespace it creates; root) and runs echo loads of
    /// each connection count from the host; prints a table and writes
    /// target/bench/echo.json.
    Echo(BenchEchoArgs),
    /// Raw driver mode (no TCP/IP stack): one boot per mode (txonly: per
    /// frame size), host-side AF_PACKET loads; frames/s per mode and size;
    /// writes target/bench/raw.json.
    Raw(crate::bench::raw::BenchRawArgs),
    /// TCP request/response latency (netperf TCP_RR style): boots the
    /// release kernel once per queue count (in a namespace it creates;
    /// root), runs `xtask rr` with each connection count; prints
    /// transactions/s and latency percentiles, writes target/bench/rr.json.
    Rr(crate::bench::rr::BenchRrArgs),
}

/// How every boot of `bench echo` and `bench rr` is started: one
/// definition, so that the two take the same options with the same
/// defaults and help. (`bench raw` and the matrix word theirs for their
/// own boots, and place them among their other options.)
#[derive(Args, Debug, Clone)]
pub struct BenchBootArgs {
    /// vCPUs of every boot.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=255))]
    pub smp: u16,
    /// Offer virtio-net RSS (rss=on,hash=on) in every boot.
    #[arg(long)]
    pub rss: bool,
    /// Extra kernel boot options for every boot, e.g. "tx-share=handoff".
    #[arg(long, default_value = "")]
    pub cmdline: String,
    /// Accelerator: hardware KVM when kvm_intel/kvm_amd is loaded (auto), or forced.
    #[arg(long, value_enum, default_value_t = AccelArg::Auto)]
    pub accel: AccelArg,
    /// How every guest is booted (see `run --boot`).
    #[arg(long, value_enum, default_value_t = BootArg::Pvh)]
    pub boot: BootArg,
}

#[derive(Args, Debug, Clone)]
pub struct BenchEchoArgs {
    /// Queue pairs to boot with, one boot each (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4",
          value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_QUEUES)))]
    pub queues: Vec<u16>,
    /// Concurrent connections per load, one load each (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,4,16",
          value_parser = clap::value_parser!(u32).range(1..=MAX_CONNECTIONS))]
    pub connections: Vec<u32>,
    /// Bytes each load echoes in all, split evenly over its connections (so
    /// every load moves about the same volume): 16M, 64M, 1G, ...
    #[arg(long, default_value = "16M", value_parser = parse_size)]
    pub bytes: u64,
    #[command(flatten)]
    pub boot: BenchBootArgs,
    /// Deadline of each load, in seconds.
    #[arg(long, default_value = "120", value_parser = parse_timeout)]
    pub timeout_secs: Duration,
    /// Network namespace to create (and delete) for the boots.
    #[arg(long, default_value = "mqnet-bench", value_parser = parse_netns)]
    pub netns: String,
}

#[derive(Args, Debug, Clone)]
pub struct BenchIperfArgs {
    /// vCPUs/queue pairs of each boot, one boot each (comma-separated)
    /// [default: 1/1,2/1,2/2; with --quick 2/2].
    #[arg(long, value_delimiter = ',', value_parser = parse_vm_config)]
    pub configs: Option<Vec<VmConfig>>,
    /// iperf3 parallel streams (-P) of each point (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8", conflicts_with = "quick",
          value_parser = clap::value_parser!(u32).range(1..=MAX_SESSIONS))]
    pub sessions: Vec<u32>,
    /// Message sizes (iperf3 -l): bytes or `default` (iperf3's own, 128 KiB for TCP).
    #[arg(long, value_delimiter = ',', default_value = "512,default", value_parser = parse_msg_len)]
    pub lengths: Vec<MsgLen>,
    /// Directions to measure (comma-separated).
    #[arg(long, value_delimiter = ',', value_enum, default_value = "host-to-guest,guest-to-host,guest-initiated")]
    pub directions: Vec<DirectionArg>,
    /// Runs of each point; the tables show the median.
    #[arg(long, default_value_t = 3, conflicts_with = "quick",
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub repeat: u32,
    /// Seconds measured per run (iperf3 -t).
    #[arg(long, default_value_t = 5, conflicts_with = "quick",
          value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub time: u32,
    /// Seconds of each run left out before measuring (iperf3 -O: slow start, steering settling).
    #[arg(long, default_value_t = 1, conflicts_with = "quick",
          value_parser = clap::value_parser!(u32).range(0..=60))]
    pub omit: u32,
    /// A smoke run of about a minute: one configuration (2/2 unless
    /// --configs), sessions 1 and 2, one run of 2 s per point, nothing omitted.
    #[arg(long)]
    pub quick: bool,
    /// vhost-net for the tap: on where /dev/vhost-net exists and RSS is off (auto), or forced.
    #[arg(long, value_enum, default_value_t = VhostArg::Auto)]
    pub vhost: VhostArg,
    /// Offer virtio-net RSS (rss=on,hash=on) in every boot (needs vhost off).
    #[arg(long)]
    pub rss: bool,
    /// Let iperf3 pick its client ports (random), instead of the default:
    /// every boot gets the same steering key and each run's client ports are
    /// chosen so that its sessions are spread evenly over the vCPUs. Random
    /// ports put 2 sessions on one vCPU half the time, which moves a
    /// multiqueue point by ±40 % from run to run.
    #[arg(long)]
    pub random_ports: bool,
    /// TCP congestion control of the host's iperf3 client sockets (iperf3
    /// -C), e.g. cubic; without it, the host's default
    /// (net.ipv4.tcp_congestion_control, recorded with the results).
    #[arg(long)]
    pub congestion: Option<String>,
    /// The NIC's checksum and segmentation offloads in each configuration's
    /// boots: on (QEMU's defaults), off (QEMU properties csum=off,
    /// guest_tso4=off, ...), or both, side by side (comma-separated)
    /// [default: on,off; with --quick on].
    #[arg(long, value_delimiter = ',', value_enum)]
    pub offloads: Option<Vec<OnOff>>,
    /// Accelerator: hardware KVM when kvm_intel/kvm_amd is loaded (auto), or forced.
    #[arg(long, value_enum, default_value_t = AccelArg::Auto)]
    pub accel: AccelArg,
    /// How every guest is booted (see `run --boot`).
    #[arg(long, value_enum, default_value_t = BootArg::Pvh)]
    pub boot: BootArg,
    /// Guest memory of every boot: MiB, or with a unit (512M, 2G).
    #[arg(long, default_value = "512M", value_parser = parse_memory)]
    pub memory: u32,
    /// Extra kernel boot options for every boot, e.g. "tcp-buf=1M".
    #[arg(long, default_value = "")]
    pub cmdline: String,
    /// Network namespace to create (and delete) for the boots.
    #[arg(long, default_value = "mqbench", value_parser = parse_netns)]
    pub netns: String,
    /// Directory for iperf.json, iperf.csv and iperf.svg [default: target/bench].
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

impl BenchIperfArgs {
    /// `bench --quick --netns NETNS`, every other option at its default.
    pub fn quick(netns: &str) -> Result<BenchIperfArgs, String> {
        let cli = Cli::try_parse_from(["xtask", "bench", "--quick", "--netns", netns]).map_err(|e| e.to_string())?;
        match cli.command {
            Cmd::Bench(b) => Ok(b.iperf),
            _ => Err("`bench --quick` parsed as another command".into()),
        }
    }
}

/// Most iperf3 streams of one point.
pub const MAX_SESSIONS: i64 = 128;

/// vCPUs and queue pairs of one benchmark boot, written `V/Q`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VmConfig {
    pub vcpus: u16,
    pub queues: u16,
    /// The NIC offers its checksum and segmentation offloads (`--offloads`).
    pub offloads: bool,
}

impl std::fmt::Display for VmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}{}", self.vcpus, self.queues, if self.offloads { "" } else { ":off" })
    }
}

/// `on` or `off`, as a command-line value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// `2/1` → 2 vCPUs, 1 queue pair. The kernel uses at most one pair per
/// vCPU, so more pairs than vCPUs is refused rather than measured as idle.
pub fn parse_vm_config(s: &str) -> Result<VmConfig, String> {
    let (v, q) = s.trim().split_once('/').ok_or_else(|| format!("`{s}` is not VCPUS/QUEUES, e.g. 2/2"))?;
    let num =
        |x: &str, what: &str| x.trim().parse::<u16>().map_err(|_| format!("`{s}`: `{x}` is not a number of {what}"));
    let (vcpus, queues) = (num(v, "vCPUs")?, num(q, "queue pairs")?);
    if !(1..=255).contains(&vcpus) {
        return Err(format!("`{s}`: use 1 to 255 vCPUs"));
    }
    boot::netns::validate_queues(queues).map_err(|e| format!("`{s}`: {e}"))?;
    if queues > vcpus {
        return Err(format!("`{s}`: more queue pairs than vCPUs (the kernel uses at most one pair per vCPU)"));
    }
    Ok(VmConfig { vcpus, queues, offloads: true })
}

/// An iperf3 message size: `-l BYTES`, or iperf3's default (no `-l`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MsgLen(pub Option<u32>);

/// iperf3 refuses TCP blocks above 1 MiB (MAX_BLOCKSIZE).
pub const MAX_MSG_LEN: u64 = 1 << 20;

/// `512`, `64K`, `default` → a message size.
pub fn parse_msg_len(s: &str) -> Result<MsgLen, String> {
    if s.trim().eq_ignore_ascii_case("default") {
        return Ok(MsgLen(None));
    }
    let n = parse_size(s)?;
    if n > MAX_MSG_LEN {
        return Err(format!("`{s}`: iperf3 takes at most 1 MiB per message"));
    }
    Ok(MsgLen(Some(n as u32)))
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DirectionArg {
    /// The host's iperf3 client sends to the guest's server.
    HostToGuest,
    /// The same client, reversed (-R): the guest's server sends.
    GuestToHost,
    /// The guest connects out as an iperf3 client to `iperf3 -s` on the host.
    GuestInitiated,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum VhostArg {
    Auto,
    On,
    Off,
}

impl From<VhostArg> for boot::vhost::VhostRequest {
    fn from(v: VhostArg) -> Self {
        match v {
            VhostArg::Auto => boot::vhost::VhostRequest::Auto,
            VhostArg::On => boot::vhost::VhostRequest::On,
            VhostArg::Off => boot::vhost::VhostRequest::Off,
        }
    }
}

/// Most connections one load opens.
pub const MAX_CONNECTIONS: i64 = 1024;

#[derive(Args, Debug, Clone)]
pub struct TcpLoadArgs {
    /// The guest service to load.
    #[arg(value_enum)]
    pub mode: LoadModeArg,
    /// The guest's address (inside the namespace this runs in).
    #[arg(long)]
    pub addr: std::net::IpAddr,
    /// The service's port [default: 7 for echo, 9 for discard].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// Concurrent connections.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=MAX_CONNECTIONS))]
    pub connections: u32,
    /// Echo: bytes per connection; discard: bytes in all (1048576, 1M, 25MiB, 1G).
    #[arg(long, value_parser = parse_size)]
    pub bytes: u64,
    /// Deadline of the whole load, in seconds: a connection still busy then fails.
    #[arg(long, default_value = "60", value_parser = parse_timeout)]
    pub timeout_secs: Duration,
    /// Seed of the pseudo-random data (each connection derives its own).
    #[arg(long, default_value_t = crate::tcpload::DEFAULT_SEED)]
    pub seed: u64,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadModeArg {
    Echo,
    Discard,
}

impl From<LoadModeArg> for crate::tcpload::Mode {
    fn from(m: LoadModeArg) -> Self {
        match m {
            LoadModeArg::Echo => crate::tcpload::Mode::Echo,
            LoadModeArg::Discard => crate::tcpload::Mode::Discard,
        }
    }
}

/// Largest `--bytes`: 64 GiB.
const MAX_BYTES: u64 = 64 << 30;

/// `4096`, `64K`, `25M`, `25MiB`, `1G` → bytes (binary units); 1 B to 64 GiB.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a size like 4096, 64K, 25M or 1G"))?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("unknown unit in `{s}`: use K, M or G")),
    };
    let bytes = n.checked_shl(shift).filter(|b| b >> shift == n).unwrap_or(u64::MAX);
    if !(1..=MAX_BYTES).contains(&bytes) {
        return Err(format!("`{s}`: use 1 byte to {} GiB", MAX_BYTES >> 30));
    }
    Ok(bytes)
}

#[derive(Args, Debug, Clone)]
pub struct TestArgs {
    /// Accelerator for the boot tests.
    #[arg(long, value_enum, default_value_t = AccelArg::Auto)]
    pub accel: AccelArg,
    /// Only the host unit tests.
    #[arg(long, conflicts_with = "boot_only")]
    pub host_only: bool,
    /// Only the boot tests.
    #[arg(long)]
    pub boot_only: bool,
    /// Only boot tests whose name contains this.
    #[arg(long)]
    pub filter: Option<String>,
    /// Boot each selected boot test this many times (a fresh VM each time),
    /// to catch what fails on some boots only.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub repeat: u32,
}

/// `--boot`: how the guest is booted.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootArg {
    Pvh,
    Bios,
    Uefi,
}

impl From<BootArg> for Firmware {
    fn from(b: BootArg) -> Self {
        match b {
            BootArg::Pvh => Firmware::Pvh,
            BootArg::Bios => Firmware::Bios,
            BootArg::Uefi => Firmware::Uefi,
        }
    }
}

impl RunArgs {
    /// `--boot`, or what `--bios`/`--uefi` say.
    pub fn firmware(&self) -> Firmware {
        match (self.bios, self.uefi) {
            (true, _) => Firmware::Bios,
            (_, true) => Firmware::Uefi,
            _ => self.boot.into(),
        }
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelArg {
    Auto,
    Kvm,
    Tcg,
}

impl From<AccelArg> for AccelRequest {
    fn from(a: AccelArg) -> Self {
        match a {
            AccelArg::Auto => AccelRequest::Auto,
            AccelArg::Kvm => AccelRequest::Kvm,
            AccelArg::Tcg => AccelRequest::Tcg,
        }
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineArg {
    Q35,
    Pc,
}

impl From<MachineArg> for Machine {
    fn from(m: MachineArg) -> Self {
        match m {
            MachineArg::Q35 => Machine::Q35,
            MachineArg::Pc => Machine::Pc { version: None },
        }
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetArg {
    /// A tap when root, else user-mode networking.
    Auto,
    None,
    User,
    Tap,
}

/// A namespace name that is also a valid interface name (see `boot::netns`).
pub fn parse_netns(s: &str) -> Result<String, String> {
    boot::netns::validate_name("network namespace", s)?;
    Ok(s.to_string())
}

const MIN_MEMORY_MIB: u32 = 64;
const MAX_MEMORY_MIB: u32 = 64 * 1024;

/// `512`, `512M`, `512MiB`, `2G`, `2GiB` → MiB.
pub fn parse_memory(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a size like 512M or 2G"))?;
    let mib = match unit.to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mib" => n,
        "g" | "gb" | "gib" => n.saturating_mul(1024),
        _ => return Err(format!("unknown unit in `{s}`: use M or G")),
    };
    if !(MIN_MEMORY_MIB as u64..=MAX_MEMORY_MIB as u64).contains(&mib) {
        return Err(format!("{mib} MiB is outside {MIN_MEMORY_MIB} MiB..{} GiB", MAX_MEMORY_MIB / 1024));
    }
    Ok(mib as u32)
}

/// Whole or fractional seconds, optionally with an `s` suffix; must be > 0.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let t = s.trim().trim_end_matches('s');
    let secs: f64 = t.parse().map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !(secs > 0.0 && secs <= 86_400.0) {
        return Err(format!("timeout must be between 0 and 86400 seconds, not `{s}`"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("xtask").chain(args.iter().copied()))
    }

    #[test]
    fn run_defaults() {
        let Cmd::Run(r) = parse(&["run"]).unwrap().command else { panic!() };
        assert!(!r.bios && !r.uefi && r.release() && !r.print_qemu);
        assert_eq!(r.firmware(), Firmware::Pvh, "direct boot by default");
        let firmware = |args: &[&str]| match parse(args).unwrap().command {
            Cmd::Run(r) => r.firmware(),
            _ => panic!(),
        };
        assert_eq!(firmware(&["run", "--bios"]), Firmware::Bios);
        assert_eq!(firmware(&["run", "--uefi"]), Firmware::Uefi);
        assert_eq!(firmware(&["run", "--boot", "uefi"]), Firmware::Uefi);
        assert_eq!(firmware(&["run", "--boot", "bios"]), Firmware::Bios);
        assert!(parse(&["run", "--boot", "pvh", "--bios"]).is_err(), "two answers to one question");
        assert_eq!((r.smp, r.memory, r.accel, r.timeout), (2, 512, AccelArg::Auto, None));
        assert_eq!((r.net, r.queues, r.netns.as_deref(), r.rss), (NetArg::Auto, None, None, false));
        assert!(r.check().is_ok());
        let Cmd::Run(r) = parse(&["run", "--debug", "--print-qemu"]).unwrap().command else { panic!() };
        assert!(!r.release() && r.print_qemu);
        assert!(parse(&["run", "--debug", "--release"]).is_err());
        let Cmd::Run(r) = parse(&["run", "--release"]).unwrap().command else { panic!() };
        assert!(r.release());
        // auto may become a tap: its options are taken.
        let Cmd::Run(r) = parse(&["run", "--queues", "2", "--rss"]).unwrap().command else { panic!() };
        assert!(r.check().is_ok());
    }

    #[test]
    fn run_with_a_tap_network() {
        let Cmd::Run(r) = parse(&["run", "--net", "tap"]).unwrap().command else { panic!() };
        assert_eq!((r.net, r.queues, r.netns.as_deref()), (NetArg::Tap, None, None));
        let cli = parse(&["run", "--net", "tap", "--queues", "4", "--netns", "mq-2"]).unwrap();
        let Cmd::Run(r) = cli.command else { panic!() };
        assert_eq!((r.net, r.queues, r.netns.as_deref()), (NetArg::Tap, Some(4), Some("mq-2")));
        assert!(!r.rss);
        assert!(r.check().is_ok());
        let Cmd::Run(r) = parse(&["run", "--net", "tap", "--queues", "4", "--rss"]).unwrap().command else { panic!() };
        assert!(r.rss);
        assert!(r.check().is_ok());
    }

    #[test]
    fn tap_options_are_checked() {
        let kind = |args: &[&str]| parse(args).unwrap_err().kind();
        assert_eq!(kind(&["run", "--net", "tap", "--queues", "0"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["run", "--net", "tap", "--queues", "17"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["run", "--net", "tap", "--netns", "a/b"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["run", "--net", "tap", "--netns", "sixteen-chars-xx"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["run", "--net", "bridge"]), ErrorKind::InvalidValue);
        for args in [
            &["run", "--net", "none", "--queues", "2"][..],
            &["run", "--net", "user", "--netns", "x"],
            &["run", "--net", "none", "--rss"],
            &["run", "--net", "user", "--rss"],
        ] {
            let Cmd::Run(r) = parse(args).unwrap().command else { panic!() };
            let err = r.check().unwrap_err();
            assert_eq!((err.kind(), err.exit_code()), (ErrorKind::ArgumentConflict, 2), "{args:?}");
            assert!(err.to_string().contains("--queues, --netns and --rss need a tap network"), "{err}");
        }
    }

    #[test]
    fn run_with_every_option() {
        let cli = parse(&[
            "run",
            "--release",
            "--uefi",
            "--smp",
            "4",
            "--memory",
            "1G",
            "--accel",
            "tcg",
            "--timeout",
            "2.5",
            "--machine",
            "pc",
            "--net",
            "user",
            "--cmdline",
            "log=debug",
        ])
        .unwrap();
        let Cmd::Run(r) = cli.command else { panic!() };
        assert!(r.uefi && r.release());
        assert_eq!((r.smp, r.memory, r.accel), (4, 1024, AccelArg::Tcg));
        assert_eq!(r.timeout, Some(Duration::from_millis(2500)));
        assert_eq!(r.machine, Some(MachineArg::Pc));
        assert_eq!(r.cmdline, "log=debug");
    }

    #[test]
    fn test_repeats_boot_cases() {
        let Cmd::Test(t) = parse(&["test", "--boot-only", "--filter", "net-flood", "--repeat", "20"]).unwrap().command
        else {
            panic!()
        };
        assert_eq!((t.repeat, t.filter.as_deref(), t.boot_only), (20, Some("net-flood"), true));
        let Cmd::Test(t) = parse(&["test"]).unwrap().command else { panic!() };
        assert_eq!(t.repeat, 1);
    }

    #[test]
    fn bad_input_is_a_usage_error() {
        let kind = |args: &[&str]| parse(args).unwrap_err().kind();
        assert_eq!(kind(&["run", "--frobnicate"]), ErrorKind::UnknownArgument);
        assert_eq!(kind(&["run", "--accel", "hvf"]), ErrorKind::InvalidValue);
        assert_eq!(kind(&["run", "--smp", "0"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["run", "--memory", "12T"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["run", "--bios", "--uefi"]), ErrorKind::ArgumentConflict);
        assert_eq!(kind(&["launch"]), ErrorKind::InvalidSubcommand);
        assert_eq!(kind(&["test", "--repeat", "0"]), ErrorKind::ValueValidation);
        assert_eq!(parse(&["run", "--smp", "x"]).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn tcp_load_arguments() {
        let cli = parse(&[
            "tcp-load",
            "echo",
            "--addr",
            "10.99.0.2",
            "--port",
            "7",
            "--connections",
            "64",
            "--bytes",
            "1M",
            "--timeout-secs",
            "240",
        ])
        .unwrap();
        let Cmd::TcpLoad(t) = cli.command else { panic!() };
        assert_eq!(
            (t.mode, t.addr.to_string(), t.port, t.connections),
            (LoadModeArg::Echo, "10.99.0.2".into(), Some(7), 64)
        );
        assert_eq!(
            (t.bytes, t.timeout_secs, t.seed),
            (1 << 20, Duration::from_secs(240), crate::tcpload::DEFAULT_SEED)
        );
        let Cmd::TcpLoad(t) =
            parse(&["tcp-load", "discard", "--addr", "10.99.0.2", "--bytes", "100MiB"]).unwrap().command
        else {
            panic!()
        };
        assert_eq!((t.mode, t.port, t.connections, t.bytes), (LoadModeArg::Discard, None, 1, 100 << 20));
        assert_eq!(t.timeout_secs, Duration::from_secs(60));
        let kind = |args: &[&str]| parse(args).unwrap_err().kind();
        let base = ["tcp-load", "echo", "--addr", "10.99.0.2", "--bytes", "1"];
        let with = |extra: &[&'static str]| base.iter().copied().chain(extra.iter().copied()).collect::<Vec<_>>();
        assert_eq!(kind(&with(&["--connections", "0"])), ErrorKind::ValueValidation);
        assert_eq!(kind(&with(&["--connections", "1025"])), ErrorKind::ValueValidation);
        assert_eq!(kind(&with(&["--port", "0"])), ErrorKind::ValueValidation);
        assert_eq!(kind(&with(&["--timeout-secs", "0"])), ErrorKind::ValueValidation);
        assert_eq!(kind(&["tcp-load", "chargen", "--addr", "10.99.0.2", "--bytes", "1"]), ErrorKind::InvalidValue);
        assert_eq!(kind(&["tcp-load", "echo", "--addr", "guest", "--bytes", "1"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["tcp-load", "echo", "--addr", "10.99.0.2"]), ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn bench_echo_arguments() {
        let Cmd::Bench(b) = parse(&["bench", "echo"]).unwrap().command else { panic!() };
        let Some(BenchCmd::Echo(e)) = b.bench else { panic!() };
        assert_eq!((e.queues, e.connections, e.bytes, e.boot.smp), (vec![1, 2, 4], vec![1, 4, 16], 16 << 20, 4));
        assert_eq!((e.boot.accel, e.boot.rss, e.netns.as_str()), (AccelArg::Auto, false, "mqnet-bench"));
        assert_eq!(e.timeout_secs, Duration::from_secs(120));
        let cli = parse(&[
            "bench",
            "echo",
            "--queues",
            "4,1",
            "--connections",
            "2,8,32",
            "--bytes",
            "64M",
            "--accel",
            "tcg",
            "--rss",
        ])
        .unwrap();
        let Cmd::Bench(b) = cli.command else { panic!() };
        let Some(BenchCmd::Echo(e)) = b.bench else { panic!() };
        assert_eq!(
            (e.queues, e.connections, e.bytes, e.boot.accel, e.boot.rss),
            (vec![4, 1], vec![2, 8, 32], 64 << 20, AccelArg::Tcg, true)
        );
        let kind = |args: &[&str]| parse(args).unwrap_err().kind();
        assert_eq!(kind(&["bench", "echo", "--queues", "1,17"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["bench", "echo", "--connections", "0"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["bench", "echo", "--bytes", "lots"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["bench", "netperf"]), ErrorKind::InvalidSubcommand);
    }

    #[test]
    fn plain_bench_is_the_iperf_matrix() {
        let Cmd::Bench(b) = parse(&["bench"]).unwrap().command else { panic!() };
        assert!(b.bench.is_none());
        let i = b.iperf;
        assert_eq!((i.configs, i.sessions, i.repeat, i.time, i.omit), (None, vec![1, 2, 4, 8], 3, 5, 1));
        assert_eq!(i.lengths, [MsgLen(Some(512)), MsgLen(None)]);
        use DirectionArg::*;
        assert_eq!(i.directions, [HostToGuest, GuestToHost, GuestInitiated]);
        assert_eq!(
            (i.vhost, i.accel, i.rss, i.quick, i.netns.as_str()),
            (VhostArg::Auto, AccelArg::Auto, false, false, "mqbench")
        );
        assert_eq!((i.memory, i.out), (512, None));

        let cli = parse(&[
            "bench",
            "--configs",
            "4/1,4/4,8/8",
            "--sessions",
            "1,16",
            "--lengths",
            "64K,default",
            "--directions",
            "guest-to-host",
            "--repeat",
            "5",
            "--time",
            "10",
            "--omit",
            "2",
            "--vhost",
            "off",
            "--accel",
            "tcg",
            "--out",
            "/tmp/x",
        ])
        .unwrap();
        let Cmd::Bench(b) = cli.command else { panic!() };
        let i = b.iperf;
        let c = |vcpus, queues| VmConfig { vcpus, queues, offloads: true };
        assert_eq!(i.configs, Some(vec![c(4, 1), c(4, 4), c(8, 8)]));
        assert_eq!((i.sessions, i.lengths), (vec![1, 16], vec![MsgLen(Some(65536)), MsgLen(None)]));
        assert_eq!((i.directions, i.repeat, i.time, i.omit), (vec![GuestToHost], 5, 10, 2));
        assert_eq!((i.vhost, i.accel, i.out), (VhostArg::Off, AccelArg::Tcg, Some("/tmp/x".into())));

        // `bench iperf` takes the same options.
        let Cmd::Bench(b) = parse(&["bench", "iperf", "--quick", "--configs", "1/1"]).unwrap().command else {
            panic!()
        };
        let Some(BenchCmd::Iperf(i)) = b.bench else { panic!() };
        assert!(i.quick);
        assert_eq!(i.configs, Some(vec![c(1, 1)]));

        let kind = |args: &[&str]| parse(args).unwrap_err().kind();
        assert_eq!(kind(&["bench", "--configs", "2/3"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["bench", "--configs", "0/1"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["bench", "--configs", "2-2"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["bench", "--sessions", "0"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["bench", "--lengths", "2M"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["bench", "--directions", "sideways"]), ErrorKind::InvalidValue);
        assert_eq!(kind(&["bench", "--vhost", "maybe"]), ErrorKind::InvalidValue);
        assert_eq!(kind(&["bench", "--quick", "--repeat", "2"]), ErrorKind::ArgumentConflict);
        assert_eq!(kind(&["bench", "--time", "0"]), ErrorKind::ValueValidation);
        // Matrix options belong to the matrix, not to `bench echo`.
        assert_eq!(kind(&["bench", "--quick", "echo"]), ErrorKind::ArgumentConflict);
        let q = BenchIperfArgs::quick("mq-t").unwrap();
        assert!(q.quick && q.configs.is_none());
        assert_eq!(q.netns, "mq-t");
        assert!(BenchIperfArgs::quick("a/b").is_err());
    }

    #[test]
    fn vm_configs_and_message_sizes() {
        assert_eq!(parse_vm_config("2/2"), Ok(VmConfig { vcpus: 2, queues: 2, offloads: true }));
        assert_eq!(parse_vm_config(" 8/1 "), Ok(VmConfig { vcpus: 8, queues: 1, offloads: true }));
        assert_eq!(VmConfig { vcpus: 4, queues: 2, offloads: true }.to_string(), "4/2");
        assert_eq!(VmConfig { vcpus: 4, queues: 2, offloads: false }.to_string(), "4/2:off");
        assert!(parse_vm_config("1/2").unwrap_err().contains("more queue pairs than vCPUs"));
        assert!(parse_vm_config("4/17").unwrap_err().contains("1 to 16"));
        assert!(parse_vm_config("256/1").unwrap_err().contains("1 to 255"));
        assert!(parse_vm_config("x/1").unwrap_err().contains("not a number of vCPUs"));
        assert!(parse_vm_config("4").unwrap_err().contains("VCPUS/QUEUES"));
        assert_eq!(parse_msg_len("512"), Ok(MsgLen(Some(512))));
        assert_eq!(parse_msg_len("Default"), Ok(MsgLen(None)));
        assert_eq!(parse_msg_len("1M"), Ok(MsgLen(Some(1 << 20))));
        assert!(parse_msg_len("0").is_err());
        assert!(parse_msg_len("lots").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("25MiB"), Ok(25 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("0").is_err());
        assert!(parse_size("65G").unwrap_err().contains("64 GiB"));
        assert!(parse_size("99999999999999999G").is_err());
        assert!(parse_size("1.5M").is_err());
        assert!(parse_size("1T").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("512"), Ok(512));
        assert_eq!(parse_memory("512M"), Ok(512));
        assert_eq!(parse_memory("2GiB"), Ok(2048));
        assert!(parse_memory("32M").unwrap_err().contains("outside"));
        assert!(parse_memory("1.5G").is_err());
        assert!(parse_memory("lots").is_err());
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_timeout("0.5s"), Ok(Duration::from_millis(500)));
        assert!(parse_timeout("0").is_err());
        assert!(parse_timeout("-3").is_err());
        assert!(parse_timeout("NaN").is_err());
        assert!(parse_timeout("soon").is_err());
    }
}
