//! Boot options: a whitespace-separated `key=value` list that the host passes
//! in the fw_cfg file [`crate::abi::FW_CFG_CMDLINE`].
//!
//! Parsing never fails as a whole: an unknown key or a bad value is recorded
//! as a [`Problem`] that the kernel logs, and the default stays in force.

use core::fmt;

use crate::raw::RawOptions;

/// What the kernel does once it has booted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterBoot {
    /// Halt and wait for interrupts forever (interactive runs).
    Idle,
    /// Report success to the host and leave QEMU (boot tests).
    Exit,
}

/// A failure the kernel provokes on purpose after booting, so the boot tests
/// can check that failures are reported and turned into a failure status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Panic,
    PageFault,
    InvalidOpcode,
    DivideError,
    GeneralProtection,
    Breakpoint,
    /// Unbounded recursion into the stack guard page: the page fault cannot
    /// be delivered on the broken stack, so the CPU raises a double fault,
    /// which only works because it runs on its own IST stack.
    StackOverflow,
}

impl Fault {
    pub const ALL: [Fault; 7] = [
        Fault::Panic,
        Fault::PageFault,
        Fault::InvalidOpcode,
        Fault::DivideError,
        Fault::GeneralProtection,
        Fault::Breakpoint,
        Fault::StackOverflow,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Fault::Panic => "panic",
            Fault::PageFault => "page-fault",
            Fault::InvalidOpcode => "invalid-opcode",
            Fault::DivideError => "divide-error",
            Fault::GeneralProtection => "general-protection",
            Fault::Breakpoint => "breakpoint",
            Fault::StackOverflow => "stack-overflow",
        }
    }

    pub fn from_name(name: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// Maximum log level, as in the `log` crate.
pub type LogLevel = log::LevelFilter;

/// Most CPUs the kernel will run on.
pub const MAX_CPUS: usize = 256;

/// The options the kernel understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootOptions {
    pub after_boot: AfterBoot,
    pub fault: Option<Fault>,
    /// Which CPU provokes `fault` (index; 0 is the boot CPU).
    pub fault_cpu: u32,
    pub log_level: LogLevel,
    /// Use at most this many CPUs (`cpus=`).
    pub max_cpus: usize,
    /// Run the SMP self-tests (per-CPU timers, IPI round trips) after boot.
    pub smp_selftest: bool,
    /// Also try to start a processor with this APIC id, which the MADT does
    /// not list (tests that a CPU that never comes up is reported, not waited
    /// for forever).
    pub phantom_apic: Option<u32>,
    /// Use at most this many virtio-net queue pairs (`queues=`).
    pub max_queue_pairs: Option<u16>,
    /// Log every CPU's queue and interrupt counters this often (`net-stats=`, ms).
    pub net_stats_ms: Option<u32>,
    /// Keep polling this many µs after the last busy round before halting
    /// (`haltpoll=`, 0–10000; 0, the default, halts at once).
    pub halt_poll_us: u32,
    /// Receive interrupt moderation (`rx-coalesce=auto|off|N/US`).
    pub rx_coalesce: RxCoalesce,
    /// Transmit checksum offload when the device offers CSUM
    /// (`tx-csum=on|off`; on by default).
    pub tx_csum: bool,
    /// Transmit segmentation offload (64 KiB TCP segments) when the device
    /// offers HOST_TSO4 (and HOST_TSO6, for IPv6) and transmit checksums are
    /// on (`tx-tso=on|off`; on by default).
    pub tx_tso: bool,
    /// Also count the TSC against the PIT when the CPU or hypervisor
    /// stated its frequency, and log how far apart the two are
    /// (`clock-check=on|off`; off by default: it costs 30 ms).
    pub clock_check: bool,
    /// Receive checksum offload when the device offers GUEST_CSUM
    /// (`rx-csum=on|off`; on by default).
    pub rx_csum: bool,
    /// Large receive segments when the device offers GUEST_TSO4/6 and
    /// GUEST_CSUM is on (`rx-tso=on|off`; on by default).
    pub rx_tso: bool,
    /// One MSI-X vector per queue pair instead of per queue (`msix=per-pair`).
    pub msix_per_pair: bool,
    /// The guest's IPv4 address and prefix length (`ip=10.99.0.2/24`).
    pub ip: Option<([u8; 4], u8)>,
    /// A device fault to act out, so that the driver's reaction can be
    /// tested under a device that behaves (`net-fault=`).
    pub net_fault: Option<NetFault>,
    /// Each TCP connection's receive and transmit buffer, bytes
    /// (`tcp-buf=256K`, 4K–16M). `None`: the services' default.
    pub tcp_buffer: Option<u32>,
    /// Delayed ACK of every TCP connection, in µs (`ack-delay=`, 0–100000;
    /// 0 acknowledges at once); `None`: the services' default (1 ms).
    pub ack_delay_us: Option<u32>,
    /// How a vCPU without a queue pair of its own transmits (`tx-share=`).
    pub tx_share: TxShare,
    /// The default gateway for destinations off the guest's subnet
    /// (`gw=a.b.c.d`).
    pub gateway: Option<[u8; 4]>,
    /// Run one iperf3 client test against this server at boot
    /// (`iperf-client=a.b.c.d[:port]`), shaped by `iperf-parallel=`,
    /// `iperf-len=`, `iperf-time=`, `iperf-omit=`, `iperf-mode=`.
    pub iperf_client: Option<IperfClient>,
    /// The flow steering (Toeplitz) key, 40 bytes as 80 hex digits
    /// (`steer-key=`), for runs that must know which vCPU owns a flow.
    /// `None`: a random key per boot.
    pub steer_key: Option<[u8; 40]>,
    /// The in-kernel TCP services to run (`services=echo,discard,metrics,iperf,rr`
    /// or `services=none`); all of them by default.
    pub services: Services,
    /// Raw driver mode and its options (`raw=`, `raw-len=`, `raw-count=`,
    /// `raw-dst=`; see [`crate::raw`]): no stacks, no services.
    pub raw: RawOptions,
}

/// Receive interrupt moderation (`rx-coalesce=`; the driver's
/// `virtio::moderation` explains the policies).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RxCoalesce {
    /// An interrupt for the first frame after a vCPU goes idle.
    Off,
    /// Wait for as many frames as the last busy period received.
    #[default]
    Auto,
    /// Wait for N frames, or US µs at the latest.
    Fixed(u16, u32),
}

impl RxCoalesce {
    /// `auto`, `off`, or `N/US` with N 1–128 and US 1–10000.
    fn parse(value: &str) -> Option<RxCoalesce> {
        match value {
            "auto" => Some(RxCoalesce::Auto),
            "off" => Some(RxCoalesce::Off),
            _ => value
                .split_once('/')
                .and_then(|(n, us)| Some((n.parse::<u16>().ok()?, us.parse::<u32>().ok()?)))
                .filter(|&(n, us)| (1..=128).contains(&n) && (1..=10_000).contains(&us))
                .map(|(n, us)| RxCoalesce::Fixed(n, us)),
        }
    }
}

/// How vCPUs without a queue pair of their own transmit.
///
/// Lock is the default because it measured faster where sharing matters
/// most (TCP echo, 4 vCPUs, TCG, median MB/s of 3 alternating runs; see
/// README): one pair, 1/4/16 connections: lock 26.4/29.8/21.4, handoff
/// 15.0/29.3/16.8; two pairs: lock 25.2/26.5/24.0, handoff 27.3/32.3/26.6.
/// The lock is held only while a frame is written into a descriptor;
/// handoff copies each frame once more and has to wake the pair's owner
/// (an IPI) and wait until it runs, which with one pair serialises three
/// vCPUs' transmissions behind one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TxShare {
    /// On the pair's transmit queue, under a lock shared with its owner.
    #[default]
    Lock,
    /// By handing frames to the pair's owner, which queues them.
    Handoff,
}

/// Which in-kernel services run (a bit set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Services {
    pub echo: bool,
    pub discard: bool,
    /// The counters in the Prometheus text format, HTTP port 9100.
    pub metrics: bool,
    /// The iperf3 server, port 5201.
    pub iperf: bool,
    /// Request/response transactions (netperf TCP_RR style), port 5202.
    pub rr: bool,
}

impl Default for Services {
    fn default() -> Self {
        Services { echo: true, discard: true, metrics: true, iperf: true, rr: true }
    }
}

impl Services {
    /// How many services run: each keeps its own listening sockets.
    pub fn count(self) -> usize {
        // Taken apart field by field, so that a service added to the struct
        // cannot be left out here.
        let Services { echo, discard, metrics, iperf, rr } = self;
        [echo, discard, metrics, iperf, rr].into_iter().filter(|&on| on).count()
    }

    fn parse(value: &str) -> Option<Services> {
        let mut s = Services { echo: false, discard: false, metrics: false, iperf: false, rr: false };
        if value == "none" {
            return Some(s);
        }
        for name in value.split(',') {
            match name {
                "echo" => s.echo = true,
                "discard" => s.discard = true,
                "metrics" => s.metrics = true,
                "iperf" | "iperf3" => s.iperf = true,
                "rr" => s.rr = true,
                _ => return None,
            }
        }
        Some(s)
    }
}

/// The guest's own iperf3 client test (`iperf-client=` and friends).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IperfClient {
    /// 0.0.0.0 until `iperf-client=` names the server: the other
    /// `iperf-*` options alone run nothing.
    pub server: [u8; 4],
    pub port: u16,
    /// Streams (`-P`), block size (`-l`), seconds (`-t`), omitted seconds
    /// (`-O`).
    pub parallel: u32,
    pub len: u32,
    pub time: u32,
    pub omit: u32,
    pub mode: IperfMode,
}

impl Default for IperfClient {
    /// iperf3's defaults: one stream, 128 KiB blocks, 10 seconds.
    fn default() -> Self {
        IperfClient {
            server: [0; 4],
            port: 5201,
            parallel: 1,
            len: 128 << 10,
            time: 10,
            omit: 0,
            mode: IperfMode::Send,
        }
    }
}

/// Which way the guest's client test sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IperfMode {
    /// The guest sends (iperf3's default).
    Send,
    /// The server sends (`-R`).
    Reverse,
    /// Both (`--bidir`).
    Bidir,
}

impl IperfMode {
    fn parse(value: &str) -> Option<IperfMode> {
        match value {
            "send" => Some(IperfMode::Send),
            "reverse" => Some(IperfMode::Reverse),
            "bidir" => Some(IperfMode::Bidir),
            _ => None,
        }
    }
}

/// `on` or `off`.
fn on_off(value: &str) -> Option<bool> {
    match value {
        "on" => Some(true),
        "off" => Some(false),
        _ => None,
    }
}

/// The client settings to change, made on first use.
fn client(opts: &mut BootOptions) -> &mut IperfClient {
    opts.iperf_client.get_or_insert_with(IperfClient::default)
}

/// `a.b.c.d`.
pub fn parse_ipv4(text: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = text.split('.');
    for b in out.iter_mut() {
        *b = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// `a.b.c.d` or `a.b.c.d:port` (port 1–65535; `default` when absent).
pub fn parse_ipv4_port(text: &str, default: u16) -> Option<([u8; 4], u16)> {
    match text.split_once(':') {
        Some((addr, port)) => Some((parse_ipv4(addr)?, port.parse().ok().filter(|&p| p != 0)?)),
        None => Some((parse_ipv4(text)?, default)),
    }
}

/// Parses 40 bytes written as exactly 80 hex digits.
pub fn parse_key(text: &str) -> Option<[u8; 40]> {
    let digits = text.as_bytes();
    if digits.len() != 80 {
        return None;
    }
    let mut key = [0u8; 40];
    for (byte, pair) in key.iter_mut().zip(digits.chunks(2)) {
        let hex = |c: u8| (c as char).to_digit(16);
        *byte = (hex(pair[0])? * 16 + hex(pair[1])?) as u8;
    }
    Some(key)
}

/// Parses a byte size with an optional K or M suffix (`256K`, `1M`, `65536`).
pub fn parse_size(text: &str) -> Option<u32> {
    let (digits, unit) = match text.as_bytes().last()? {
        b'K' | b'k' => (&text[..text.len() - 1], 1u32 << 10),
        b'M' | b'm' => (&text[..text.len() - 1], 1 << 20),
        _ => (text, 1),
    };
    digits.parse::<u32>().ok()?.checked_mul(unit)
}

/// Device misbehaviour the NIC driver can be told to act out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetFault {
    /// Treat the answer to VQ_PAIRS_SET as never having come.
    CtrlUnanswered,
    /// Once cpu0 has received 10 frames, write a used index one and a half
    /// rings ahead into its receive ring, as a broken device would.
    UsedIndexJump,
}

impl NetFault {
    pub const ALL: [NetFault; 2] = [NetFault::CtrlUnanswered, NetFault::UsedIndexJump];

    pub fn name(self) -> &'static str {
        match self {
            NetFault::CtrlUnanswered => "ctrl-unanswered",
            NetFault::UsedIndexJump => "used-index-jump",
        }
    }
}

/// Parses `a.b.c.d/len` (len 1–32; without `/len`, 24).
pub fn parse_ipv4_cidr(text: &str) -> Option<([u8; 4], u8)> {
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (a, l.parse::<u8>().ok().filter(|l| (1..=32).contains(l))?),
        None => (text, 24),
    };
    let out = parse_ipv4(addr)?;
    if out == [0; 4] || out[0] >= 224 {
        return None;
    }
    Some((out, len))
}

impl Default for BootOptions {
    fn default() -> Self {
        BootOptions {
            after_boot: AfterBoot::Idle,
            fault: None,
            fault_cpu: 0,
            log_level: LogLevel::Info,
            max_cpus: MAX_CPUS,
            smp_selftest: false,
            phantom_apic: None,
            max_queue_pairs: None,
            net_stats_ms: None,
            halt_poll_us: 0,
            rx_coalesce: RxCoalesce::Auto,
            tx_csum: true,
            tx_tso: true,
            clock_check: false,
            rx_csum: true,
            rx_tso: true,
            msix_per_pair: false,
            ip: None,
            net_fault: None,
            tcp_buffer: None,
            ack_delay_us: None,
            tx_share: TxShare::Lock,
            steer_key: None,
            gateway: None,
            iperf_client: None,
            services: Services::default(),
            raw: RawOptions::default(),
        }
    }
}

/// Something in the command line that was ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem<'a> {
    UnknownKey(&'a str),
    BadValue { key: &'a str, value: &'a str },
    MissingValue(&'a str),
}

impl fmt::Display for Problem<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::UnknownKey(k) => write!(f, "unknown boot option `{k}` ignored"),
            Problem::BadValue { key, value } => {
                write!(f, "bad value `{value}` for boot option `{key}` ignored")
            }
            Problem::MissingValue(k) => write!(f, "boot option `{k}` has no `=value`; ignored"),
        }
    }
}

impl BootOptions {
    /// Parses `text`, calling `on_problem` for every ignored word.
    pub fn parse<'a>(text: &'a str, mut on_problem: impl FnMut(Problem<'a>)) -> BootOptions {
        let mut opts = BootOptions::default();
        for word in text.split_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                on_problem(Problem::MissingValue(word));
                continue;
            };
            let ok = match key {
                "exit" => match value {
                    "never" => Some(AfterBoot::Idle),
                    "after-boot" => Some(AfterBoot::Exit),
                    _ => None,
                }
                .map(|v| opts.after_boot = v),
                "fault" => match value {
                    "none" => Some(None),
                    _ => Fault::from_name(value).map(Some),
                }
                .map(|v| opts.fault = v),
                "fault-cpu" => {
                    value.parse::<u32>().ok().filter(|&c| (c as usize) < MAX_CPUS).map(|c| opts.fault_cpu = c)
                }
                "log" => value.parse::<LogLevel>().ok().map(|l| opts.log_level = l),
                "cpus" => value.parse::<usize>().ok().filter(|n| (1..=MAX_CPUS).contains(n)).map(|n| opts.max_cpus = n),
                "queues" => value.parse::<u16>().ok().filter(|&n| n >= 1).map(|n| opts.max_queue_pairs = Some(n)),
                "net-stats" => value.parse::<u32>().ok().map(|ms| opts.net_stats_ms = (ms > 0).then_some(ms)),
                "ip" => parse_ipv4_cidr(value).map(|c| opts.ip = Some(c)),
                "msix" => match value {
                    "per-queue" => Some(false),
                    "per-pair" => Some(true),
                    _ => None,
                }
                .map(|v| opts.msix_per_pair = v),
                "phantom-apic" => value.parse::<u32>().ok().map(|id| opts.phantom_apic = Some(id)),
                "net-fault" => match value {
                    "none" => Some(None),
                    _ => NetFault::ALL.into_iter().find(|f| f.name() == value).map(Some),
                }
                .map(|v| opts.net_fault = v),
                "tcp-buf" => {
                    parse_size(value).filter(|n| (4 << 10..=16 << 20).contains(n)).map(|n| opts.tcp_buffer = Some(n))
                }
                "ack-delay" => value.parse::<u32>().ok().filter(|n| *n <= 100_000).map(|n| opts.ack_delay_us = Some(n)),
                "tx-share" => match value {
                    "lock" => Some(TxShare::Lock),
                    "handoff" => Some(TxShare::Handoff),
                    _ => None,
                }
                .map(|v| opts.tx_share = v),
                "services" => Services::parse(value).map(|v| opts.services = v),
                "steer-key" => parse_key(value).map(|k| opts.steer_key = Some(k)),
                "haltpoll" => value.parse::<u32>().ok().filter(|n| *n <= 10_000).map(|n| opts.halt_poll_us = n),
                "rx-coalesce" => RxCoalesce::parse(value).map(|c| opts.rx_coalesce = c),
                "tx-csum" => on_off(value).map(|on| opts.tx_csum = on),
                "tx-tso" => on_off(value).map(|on| opts.tx_tso = on),
                "clock-check" => on_off(value).map(|on| opts.clock_check = on),
                "rx-csum" => on_off(value).map(|on| opts.rx_csum = on),
                "rx-tso" => on_off(value).map(|on| opts.rx_tso = on),
                "gw" => parse_ipv4(value).map(|a| opts.gateway = Some(a)),
                "iperf-client" => parse_ipv4_port(value, 5201).map(|(server, port)| {
                    let c = opts.iperf_client.get_or_insert_with(IperfClient::default);
                    (c.server, c.port) = (server, port);
                }),
                "iperf-parallel" => {
                    value.parse::<u32>().ok().filter(|n| (1..=128).contains(n)).map(|n| client(&mut opts).parallel = n)
                }
                "iperf-len" => {
                    parse_size(value).filter(|n| (1..=1 << 20).contains(n)).map(|n| client(&mut opts).len = n)
                }
                "iperf-time" => {
                    value.parse::<u32>().ok().filter(|n| (1..=86_400).contains(n)).map(|n| client(&mut opts).time = n)
                }
                "iperf-omit" => value.parse::<u32>().ok().filter(|n| *n <= 86_400).map(|n| client(&mut opts).omit = n),
                "iperf-mode" => IperfMode::parse(value).map(|m| client(&mut opts).mode = m),
                k if RawOptions::is_key(k) => opts.raw.set(k, value),
                "selftest" => match value {
                    "smp" => Some(true),
                    "none" => Some(false),
                    _ => None,
                }
                .map(|v| opts.smp_selftest = v),
                _ => {
                    on_problem(Problem::UnknownKey(key));
                    continue;
                }
            };
            if ok.is_none() {
                on_problem(Problem::BadValue { key, value });
            }
        }
        opts
    }
}

/// The boot options of several sources (fw_cfg's file, then a loader's
/// command line) as one line, joined by spaces in `buf`, in order, so that
/// a later source's option overrides an earlier one's. Empty sources are
/// left out; a source that no longer fits is left out too and handed to
/// `dropped`.
pub fn join<'b>(parts: &[&str], buf: &'b mut [u8], mut dropped: impl FnMut(&str)) -> &'b str {
    let mut len = 0;
    for part in parts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        let sep = usize::from(len > 0);
        if len + sep + part.len() > buf.len() {
            dropped(part);
            continue;
        }
        buf[len..len + sep].fill(b' ');
        buf[len + sep..len + sep + part.len()].copy_from_slice(part.as_bytes());
        len += sep + part.len();
    }
    // Whole UTF-8 strings and ASCII spaces: always UTF-8.
    core::str::from_utf8(&buf[..len]).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_joined_in_order_and_the_later_one_wins() {
        let mut buf = [0u8; 64];
        let mut dropped = Vec::new();
        let line = join(&[" exit=after-boot ", "", "cpus=1 exit=never"], &mut buf, |p| dropped.push(p.to_string()));
        assert_eq!(line, "exit=after-boot cpus=1 exit=never");
        assert!(dropped.is_empty());
        assert_eq!(BootOptions::parse(line, |_| {}).after_boot, AfterBoot::Idle, "the later exit= stands");
        let mut small = [0u8; 20];
        let line = join(&["log=debug", "this one is too long", "cpus=2"], &mut small, |p| dropped.push(p.to_string()));
        assert_eq!((line, dropped.as_slice()), ("log=debug cpus=2", &["this one is too long".to_string()][..]));
        assert_eq!(join(&["", "  "], &mut small, |_| {}), "");
    }

    fn parse(text: &str) -> (BootOptions, Vec<String>) {
        let mut problems = Vec::new();
        let opts = BootOptions::parse(text, |p| problems.push(p.to_string()));
        (opts, problems)
    }

    #[test]
    fn the_iperf_client_and_gateway_options() {
        let (o, p) =
            parse("gw=10.99.0.1 iperf-client=10.99.0.1 iperf-parallel=4 iperf-len=512 iperf-time=3 iperf-mode=reverse");
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(o.gateway, Some([10, 99, 0, 1]));
        let c = o.iperf_client.unwrap();
        assert_eq!(
            c,
            IperfClient {
                server: [10, 99, 0, 1],
                port: 5201,
                parallel: 4,
                len: 512,
                time: 3,
                omit: 0,
                mode: IperfMode::Reverse
            }
        );
        let (o, _) = parse("iperf-client=10.0.0.9:6000 iperf-len=1M iperf-omit=1 iperf-mode=bidir");
        let c = o.iperf_client.unwrap();
        assert_eq!((c.server, c.port, c.len, c.omit, c.mode), ([10, 0, 0, 9], 6000, 1 << 20, 1, IperfMode::Bidir));
        assert_eq!(BootOptions::default().iperf_client, None);
        // Options alone, without a server, name no server.
        assert_eq!(parse("iperf-time=5").0.iperf_client.map(|c| c.server), Some([0; 4]));
        for bad in [
            "gw=10.99.0",
            "gw=10.99.0.1.5",
            "gw=300.1.1.1",
            "iperf-client=10.99.0.1:0",
            "iperf-client=10.99.0.1:99999",
            "iperf-client=host",
            "iperf-parallel=0",
            "iperf-parallel=129",
            "iperf-len=0",
            "iperf-len=2M",
            "iperf-time=0",
            "iperf-mode=sideways",
        ] {
            let (o, p) = parse(bad);
            assert_eq!(p.len(), 1, "{bad}: {p:?}");
            assert!(o.gateway.is_none() && o.iperf_client.is_none_or(|c| c == IperfClient::default()), "{bad}");
        }
    }

    #[test]
    fn receive_coalescing_is_adaptive_unless_asked() {
        assert_eq!(BootOptions::default().rx_coalesce, RxCoalesce::Auto);
        assert_eq!(parse("rx-coalesce=8/200").0.rx_coalesce, RxCoalesce::Fixed(8, 200));
        assert_eq!(parse("rx-coalesce=off").0.rx_coalesce, RxCoalesce::Off);
        assert_eq!(parse("rx-coalesce=off rx-coalesce=auto").0.rx_coalesce, RxCoalesce::Auto);
        for bad in ["rx-coalesce=8", "rx-coalesce=0/100", "rx-coalesce=129/100", "rx-coalesce=8/0", "rx-coalesce=a/b"] {
            let (o, p) = parse(bad);
            assert_eq!((o.rx_coalesce, p.len()), (RxCoalesce::Auto, 1), "{bad}");
        }
    }

    #[test]
    fn offloads_are_on_unless_turned_off() {
        assert!(BootOptions::default().rx_csum && BootOptions::default().rx_tso && BootOptions::default().tx_tso);
        assert!(!parse("tx-tso=off").0.tx_tso && parse("tx-tso=off").0.tx_csum);
        assert!(!parse("rx-csum=off").0.rx_csum && parse("rx-csum=off").0.rx_tso);
        assert!(!parse("rx-tso=off").0.rx_tso && parse("rx-tso=off").0.rx_csum);
        assert_eq!(parse("rx-tso=1").1.len(), 1, "only on and off");
        assert!(BootOptions::default().tx_csum);
        assert!(!parse("tx-csum=off").0.tx_csum);
        assert!(parse("tx-csum=off tx-csum=on").0.tx_csum);
        let (o, p) = parse("tx-csum=maybe");
        assert!(o.tx_csum && p.len() == 1, "a bad value is reported and ignored");
    }

    #[test]
    fn halt_polling_is_off_unless_asked() {
        assert_eq!(BootOptions::default().halt_poll_us, 0);
        assert_eq!(parse("haltpoll=50").0.halt_poll_us, 50);
        assert_eq!(parse("haltpoll=10000").0.halt_poll_us, 10_000);
        for bad in ["haltpoll=10001", "haltpoll=-1", "haltpoll=fast"] {
            let (o, p) = parse(bad);
            assert_eq!((o.halt_poll_us, p.len()), (0, 1), "{bad}");
        }
    }

    #[test]
    fn steering_keys_are_80_hex_digits() {
        let hex = "6d5a56da255b0ec24167253d43a38fb0d0ca2bcbae7b30b477cb2da38030f20c6a42b73bbeac01fa";
        let (o, p) = parse(&alloc::format!("steer-key={hex}"));
        assert!(p.is_empty(), "{p:?}");
        let key = o.steer_key.unwrap();
        assert_eq!((key[0], key[1], key[39]), (0x6d, 0x5a, 0xfa));
        assert_eq!(BootOptions::default().steer_key, None);
        for bad in ["", "6d5a", &hex[..79], &alloc::format!("{hex}00"), &hex.replace('6', "g")] {
            let (o, p) = parse(&alloc::format!("steer-key={bad}"));
            assert_eq!(o.steer_key, None, "{bad}");
            assert_eq!(p.len(), 1, "{bad}: {p:?}");
        }
    }

    #[test]
    fn empty_command_line_gives_defaults() {
        assert_eq!(parse("  \n"), (BootOptions::default(), vec![]));
        assert_eq!(BootOptions::default().after_boot, AfterBoot::Idle);
    }

    #[test]
    fn all_options_are_understood() {
        let (o, p) =
            parse("exit=after-boot fault=stack-overflow log=debug cpus=3 fault-cpu=2 selftest=smp phantom-apic=9 queues=2 net-stats=500 msix=per-pair net-fault=used-index-jump");
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(o.net_fault, Some(NetFault::UsedIndexJump));
        for f in NetFault::ALL {
            assert_eq!(parse(&format!("net-fault={}", f.name())).0.net_fault, Some(f));
        }
        assert_eq!(parse("net-fault=flaky").1, ["bad value `flaky` for boot option `net-fault` ignored"]);
        assert_eq!((o.max_queue_pairs, o.net_stats_ms, o.msix_per_pair), (Some(2), Some(500), true));
        assert_eq!(o.phantom_apic, Some(9));
        assert_eq!(o.after_boot, AfterBoot::Exit);
        assert_eq!(o.fault, Some(Fault::StackOverflow));
        assert_eq!(o.log_level, LogLevel::Debug);
        assert_eq!((o.max_cpus, o.fault_cpu, o.smp_selftest), (3, 2, true));
    }

    #[test]
    fn every_fault_name_round_trips() {
        for f in Fault::ALL {
            assert_eq!(Fault::from_name(f.name()), Some(f));
        }
        assert_eq!(Fault::from_name("meltdown"), None);
    }

    #[test]
    fn bad_words_are_reported_and_defaults_kept() {
        let (o, p) = parse("exit=sometimes colour=blue fault log=loud exit=after-boot");
        assert_eq!(o.after_boot, AfterBoot::Exit, "later valid word still applies");
        assert_eq!(o.log_level, LogLevel::Info);
        assert_eq!(
            p,
            vec![
                "bad value `sometimes` for boot option `exit` ignored",
                "unknown boot option `colour` ignored",
                "boot option `fault` has no `=value`; ignored",
                "bad value `loud` for boot option `log` ignored",
            ]
        );
    }

    #[test]
    fn ip_addresses() {
        assert_eq!(parse_ipv4_cidr("10.99.0.2/24"), Some(([10, 99, 0, 2], 24)));
        assert_eq!(parse_ipv4_cidr("192.168.7.9"), Some(([192, 168, 7, 9], 24)));
        for bad in
            ["10.99.0/24", "10.99.0.2.1", "10.99.0.256", "10.99.0.2/33", "10.99.0.2/0", "0.0.0.0", "239.1.1.1", "x"]
        {
            assert_eq!(parse_ipv4_cidr(bad), None, "{bad}");
        }
        let (o, p) = parse("ip=10.1.2.3/16 ip=nonsense");
        assert_eq!(o.ip, Some(([10, 1, 2, 3], 16)));
        assert_eq!(p, ["bad value `nonsense` for boot option `ip` ignored"]);
    }

    #[test]
    fn cpu_counts_are_range_checked() {
        let (o, p) = parse("cpus=0 cpus=257 cpus=many fault-cpu=999");
        assert_eq!(o.max_cpus, MAX_CPUS);
        assert_eq!(o.fault_cpu, 0);
        assert_eq!(p.len(), 4);
    }

    #[test]
    fn tcp_options() {
        let (o, p) = parse("tcp-buf=512K tx-share=handoff services=echo");
        assert!(p.is_empty(), "{p:?}");
        assert_eq!((o.tcp_buffer, o.tx_share), (Some(512 << 10), TxShare::Handoff));
        assert_eq!(o.services, Services { echo: true, discard: false, metrics: false, iperf: false, rr: false });
        let none = Services { echo: false, discard: false, metrics: false, iperf: false, rr: false };
        assert_eq!(parse("services=none").0.services, none);
        assert_eq!(parse("services=metrics,discard").0.services, Services { discard: true, metrics: true, ..none });
        assert_eq!(parse("services=rr").0.services, Services { rr: true, ..none });
        assert_eq!(parse("services=iperf3,echo").0.services, Services { echo: true, iperf: true, ..none });
        assert_eq!(
            BootOptions::default().services,
            Services { echo: true, discard: true, metrics: true, iperf: true, rr: true }
        );
        assert_eq!(parse("services=echo,discard,metrics,iperf,rr").0.services, BootOptions::default().services);
        assert_eq!((BootOptions::default().services.count(), parse("services=none").0.services.count()), (5, 0));
        assert_eq!(parse("services=rr,echo").0.services.count(), 2);
        assert_eq!(BootOptions::default().tx_share, TxShare::Lock);
        assert_eq!(parse("tcp-buf=1M").0.tcp_buffer, Some(1 << 20));
        assert_eq!(parse("ack-delay=0").0.ack_delay_us, Some(0));
        assert_eq!(parse("ack-delay=250").0.ack_delay_us, Some(250));
        assert_eq!(parse("ack-delay=100001").1.len(), 1, "at most 100 ms");
        assert_eq!(parse("tcp-buf=65536").0.tcp_buffer, Some(65536));
        let (o, p) = parse("tcp-buf=1K tcp-buf=64G tcp-buf=lots tx-share=maybe services=echo,ftp");
        assert_eq!((o.tcp_buffer, o.tx_share), (None, TxShare::Lock));
        assert_eq!(p.len(), 5, "{p:?}");
    }

    #[test]
    fn raw_mode_options() {
        use crate::raw::RawMode;
        assert_eq!(BootOptions::default().raw.mode, None);
        let (o, p) = parse("raw=macswap raw-len=1514 raw-count=5000 raw-dst=52:54:00:aa:bb:cc net-stats=250");
        assert!(p.is_empty(), "{p:?}");
        assert_eq!((o.raw.mode, o.raw.len, o.raw.count), (Some(RawMode::MacSwap), 1514, Some(5000)));
        assert_eq!((o.raw.dst, o.net_stats_ms), (Some([0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]), Some(250)));
        for m in RawMode::ALL {
            assert_eq!(parse(&format!("raw={}", m.name())).0.raw.mode, Some(m));
        }
        assert_eq!(parse("raw=txonly raw=none").0.raw.mode, None);
    }

    #[test]
    fn malformed_raw_options_are_reported_and_ignored() {
        let (o, p) = parse(
            "raw=rxonly raw=forward raw-len=40 raw-len=9000 raw-count=0 raw-count=x raw-dst=ff:ff raw raw-burst=32",
        );
        assert_eq!(
            (o.raw.mode, o.raw.len, o.raw.count, o.raw.dst),
            (Some(crate::raw::RawMode::RxOnly), 60, None, None)
        );
        assert_eq!(
            p,
            [
                "bad value `forward` for boot option `raw` ignored",
                "bad value `40` for boot option `raw-len` ignored",
                "bad value `9000` for boot option `raw-len` ignored",
                "bad value `0` for boot option `raw-count` ignored",
                "bad value `x` for boot option `raw-count` ignored",
                "bad value `ff:ff` for boot option `raw-dst` ignored",
                "boot option `raw` has no `=value`; ignored",
                "unknown boot option `raw-burst` ignored",
            ]
        );
    }

    #[test]
    fn last_word_wins() {
        let (o, _) = parse("fault=panic fault=none");
        assert_eq!(o.fault, None);
    }
}
