//! The QEMU command line, built from typed options so that no caller pastes
//! argument strings together.

use std::ffi::OsString;
use std::path::PathBuf;

use kernel::abi;

use crate::accel::Accel;

pub const QEMU: &str = "qemu-system-x86_64";

/// The guest NIC's MAC address unless told otherwise: QEMU's usual first
/// address, fixed so that neighbour entries look the same in every run.
pub const DEFAULT_MAC: &str = "52:54:00:12:34:56";

/// The machine type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Machine {
    /// Q35 (PCIe, MCFG/ECAM).
    Q35,
    /// i440FX, optionally a versioned type such as `pc-i440fx-7.0`.
    Pc { version: Option<String> },
}

impl Machine {
    /// The default for an accelerator: Q35, except under kvm_pvm where the
    /// versioned i440FX machine boots in ~50 s instead of ~120 s.
    pub fn default_for(accel: Accel) -> Machine {
        match accel {
            Accel::Kvm { pvm: true } => Machine::Pc { version: Some("7.0".into()) },
            _ => Machine::Q35,
        }
    }

    fn arg(&self) -> String {
        match self {
            Machine::Q35 => "q35".into(),
            Machine::Pc { version: None } => "pc".into(),
            Machine::Pc { version: Some(v) } => format!("pc-i440fx-{v}"),
        }
    }
}

/// How the guest is booted: direct (PVH) or firmware and a disk image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Boot {
    /// Direct boot: QEMU loads the kernel ELF itself (`-kernel`, which
    /// needs its PVH ELF note; QEMU 4.0 and later) and the firmware starts
    /// it with a start_info: `firmware` (`-bios`; qboot, see
    /// [`crate::prereq::find_qboot`]) when given, else SeaBIOS through
    /// QEMU's PVH option ROM. `append` is the command line the kernel reads
    /// there (`-append`; boot options from fw_cfg come first).
    Pvh { kernel: PathBuf, append: String, firmware: Option<PathBuf> },
    /// Direct boot of `kernel` through another PVH ELF, `via`, which the
    /// firmware starts instead (the kernel is only copied into memory, with
    /// `-device loader`): for tests that hand the kernel a start_info of
    /// their own making (`crate::pvh::shim`).
    PvhVia { via: PathBuf, kernel: PathBuf, firmware: Option<PathBuf> },
    /// SeaBIOS (QEMU's default) and a BIOS disk image.
    Bios { image: PathBuf },
    /// OVMF firmware at `ovmf` and a UEFI disk image.
    Uefi { ovmf: PathBuf, image: PathBuf },
}

/// Where the guest's COM1 goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Serial {
    /// QEMU's standard output (the runner reads it line by line).
    Stdio,
    File(PathBuf),
}

/// The guest's network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Network {
    /// No NIC at all (QEMU would otherwise add an e1000).
    None,
    /// QEMU user-mode networking on a virtio-net device: one queue, no root
    /// needed, traffic stays inside the QEMU process.
    User,
    /// The same with a transitional (legacy-capable) device, which the
    /// kernel refuses: tests that it says so.
    UserTransitional,
    /// A virtio-net device on an existing tap device with `queues` queue
    /// pairs (one tap file descriptor each), created by [`crate::netns`]
    /// inside a network namespace that QEMU is started in
    /// ([`QemuConfig::netns`]). `queues` must be at least 1.
    /// `vectors` overrides the MSI-X table size (default 2Q+2; 0 = no MSI-X).
    /// `rss` offers the guest receive-side scaling and hash reports
    /// (`rss=on,hash=on`; QEMU steers in software or eBPF, never in vhost,
    /// which the tap has off anyway).
    Tap { tap: String, queues: u16, mac: Option<String>, vectors: Option<u16>, rss: bool },
}

impl Network {
    /// The same network with RSS offered (a tap network) or not.
    pub fn with_rss(self, on: bool) -> Network {
        match self {
            Network::Tap { tap, queues, mac, vectors, .. } => Network::Tap { tap, queues, mac, vectors, rss: on },
            other => other,
        }
    }
}

/// A fw_cfg file with string contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FwCfgString {
    pub name: String,
    pub value: String,
}

/// Everything that makes up one QEMU invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QemuConfig {
    pub machine: Machine,
    pub accel: Accel,
    pub cpus: u16,
    /// CPU slots beyond `cpus` (hot-pluggable, present in the MADT but not enabled).
    pub max_cpus: Option<u16>,
    pub memory_mib: u32,
    pub boot: Boot,
    pub serial: Serial,
    /// Attach `isa-debug-exit` so the kernel can set QEMU's exit status.
    pub debug_exit: bool,
    /// A QMP control socket (a Unix socket on the host) for tests that
    /// change the VM while it runs, e.g. the NIC's link state.
    pub qmp: Option<PathBuf>,
    pub network: Network,
    pub fw_cfg: Vec<FwCfgString>,
    /// Start QEMU inside this network namespace (`ip netns exec NAME`), as
    /// the tap of [`Network::Tap`] lives there.
    pub netns: Option<String>,
    /// With [`Network::Tap`]: let vhost-net move the packets (host kernel
    /// worker threads) instead of QEMU's own threads. Off by default: then
    /// the host accounts the data path's CPU to QEMU's main loop. RSS
    /// needs it off ([`QemuConfig::validate`]); see [`crate::vhost`].
    pub vhost: bool,
    /// With [`Network::User`]: TCP ports of the host's loopback forwarded
    /// to the guest, (host port, guest port) each (`hostfwd=`).
    pub user_forwards: Vec<(u16, u16)>,
    /// With [`Network::Tap`]: the virtio-net device offers its checksum and
    /// segmentation offloads (QEMU's default). Off, it offers none of them
    /// ([`OFFLOADS_OFF`]), so every frame crosses the tap at most 1514
    /// bytes long with its checksums computed by the sender.
    pub nic_offloads: bool,
    /// A minimal machine: `-nodefaults` (no VGA, no default NIC, floppy or
    /// CD-ROM; SeaBIOS then skips the VGA ROM), and on Q35 no SMBus and no
    /// SATA controller. On by default for direct boot; the bootloader's
    /// BIOS stage wants a VGA card for its VESA mode set, so disk-image
    /// boots keep QEMU's defaults.
    pub minimal: bool,
}

/// The virtio-net-pci properties that turn every checksum and segmentation
/// offload off (each defaults to on in QEMU 7.2).
pub const OFFLOADS_OFF: &str = "csum=off,guest_csum=off,gso=off,guest_tso4=off,guest_tso6=off,guest_ecn=off,\
guest_ufo=off,host_tso4=off,host_tso6=off,host_ecn=off,host_ufo=off";

impl QemuConfig {
    /// A headless VM with the debug-exit device, serial on stdio, no network.
    pub fn new(accel: Accel, boot: Boot) -> QemuConfig {
        QemuConfig {
            machine: Machine::default_for(accel),
            accel,
            cpus: 1,
            max_cpus: None,
            memory_mib: 256,
            serial: Serial::Stdio,
            debug_exit: true,
            qmp: None,
            network: Network::None,
            fw_cfg: Vec::new(),
            netns: None,
            vhost: false,
            user_forwards: Vec::new(),
            nic_offloads: true,
            minimal: matches!(boot, Boot::Pvh { .. } | Boot::PvhVia { .. }),
            boot,
        }
    }

    /// Checks combinations the types allow but QEMU would refuse or
    /// silently change: vhost needs a tap network, and QEMU's RSS runs in
    /// QEMU, never in vhost-net.
    pub fn validate(&self) -> Result<(), String> {
        match (&self.network, self.vhost) {
            (_, false) => Ok(()),
            (Network::Tap { rss: true, .. }, true) => {
                Err("vhost-net cannot be used with RSS (rss=on runs in QEMU): turn one of them off".into())
            }
            (Network::Tap { .. }, true) => Ok(()),
            (_, true) => Err("vhost-net needs a tap network".into()),
        }
    }

    /// Passes the kernel's boot options (see `kernel::cmdline`).
    pub fn with_kernel_cmdline(mut self, cmdline: &str) -> QemuConfig {
        self.fw_cfg.retain(|f| f.name != abi::FW_CFG_CMDLINE);
        if !cmdline.trim().is_empty() {
            self.fw_cfg.push(FwCfgString { name: abi::FW_CFG_CMDLINE.into(), value: cmdline.trim().into() });
        }
        self
    }

    /// The arguments after the program name.
    pub fn args(&self) -> Vec<OsString> {
        let mut a = Args::default();
        // Named threads ("CPU 0/TCG") let the host account CPU per vCPU.
        a.pair("-name", "mqnet,debug-threads=on");
        let machine = match (&self.machine, self.minimal) {
            (Machine::Q35, true) => "q35,smbus=off,sata=off".to_string(),
            (m, _) => m.arg(),
        };
        a.pair("-machine", machine);
        if self.minimal {
            a.flag("-nodefaults");
        }
        match self.accel {
            Accel::Kvm { pvm } => {
                a.pair("-accel", "kvm");
                // kvm_pvm cannot virtualise IA32_ARCH_CAPABILITIES.
                a.pair("-cpu", if pvm { "host,-arch-capabilities" } else { "host" });
            }
            Accel::Tcg => {
                a.pair("-accel", "tcg,thread=multi");
                a.pair("-cpu", "max");
            }
        }
        match self.max_cpus {
            Some(max) if max > self.cpus => a.pair("-smp", format!("{},maxcpus={max}", self.cpus)),
            _ => a.pair("-smp", self.cpus.to_string()),
        }
        a.pair("-m", format!("{}M", self.memory_mib));
        match &self.boot {
            Boot::Pvh { kernel, append, firmware } => {
                if let Some(rom) = firmware {
                    a.pair("-bios", rom.clone().into_os_string());
                }
                a.pair("-kernel", kernel.clone().into_os_string());
                if !append.trim().is_empty() {
                    a.pair("-append", append.trim());
                }
            }
            Boot::PvhVia { via, kernel, firmware } => {
                if let Some(rom) = firmware {
                    a.pair("-bios", rom.clone().into_os_string());
                }
                a.pair("-kernel", via.clone().into_os_string());
                a.pair("-device", join("loader,file=", &escape_os(kernel.as_os_str())));
            }
            Boot::Bios { image } => a.drive(image),
            Boot::Uefi { ovmf, image } => {
                a.pair("-bios", ovmf.clone().into_os_string());
                a.drive(image);
            }
        }
        match &self.serial {
            Serial::Stdio => a.pair("-serial", "stdio"),
            Serial::File(p) => a.pair("-serial", join("file:", p.as_os_str())),
        }
        a.pair("-display", "none");
        a.pair("-monitor", "none");
        // A triple fault ends QEMU instead of rebooting the guest forever.
        a.flag("-no-reboot");
        if let Some(path) = &self.qmp {
            a.pair("-qmp", join_os(&join("unix:", &escape_os(path.as_os_str())), ",server=on,wait=off"));
        }
        if self.debug_exit {
            a.pair(
                "-device",
                format!("isa-debug-exit,iobase={:#x},iosize={:#x}", abi::DEBUG_EXIT_IOBASE, abi::DEBUG_EXIT_IOSIZE),
            );
        }
        match &self.network {
            Network::None => a.pair("-nic", "none"),
            Network::User | Network::UserTransitional => {
                // Forwards listen on 127.0.0.1 only: nothing outside the
                // machine reaches the guest.
                let forwards: String =
                    self.user_forwards.iter().map(|(h, g)| format!(",hostfwd=tcp:127.0.0.1:{h}-:{g}")).collect();
                a.pair("-netdev", format!("user,id=net0{forwards}"));
                let legacy = if self.network == Network::User { "on" } else { "off" };
                a.pair("-device", format!("virtio-net-pci,netdev=net0,disable-legacy={legacy}"));
            }
            Network::Tap { tap, queues, mac, vectors, rss } => {
                // The tap already exists (script=no: QEMU configures nothing
                // on the host). vhost=off keeps the data path in QEMU's own
                // threads; vhost=on hands it to vhost-net's worker threads
                // (threads of the QEMU process on Linux 6.4 and later).
                let vhost = if self.vhost { "on" } else { "off" };
                a.pair(
                    "-netdev",
                    format!("tap,id=net0,ifname={},script=no,downscript=no,vhost={vhost},queues={queues}", escape(tap)),
                );
                // One MSI-X vector per virtqueue (RX and TX per pair), one for
                // the control queue and one for configuration changes.
                let vectors = vectors.map_or(2 * u32::from(*queues) + 2, u32::from);
                let mq = if *queues > 1 { "on" } else { "off" };
                let mac = escape(mac.as_deref().unwrap_or(DEFAULT_MAC));
                // RSS (VIRTIO_NET_F_RSS) and hash reports (VIRTIO_NET_F_HASH_REPORT).
                let rss = if *rss { ",rss=on,hash=on" } else { "" };
                let offloads = if self.nic_offloads { String::new() } else { format!(",{OFFLOADS_OFF}") };
                a.pair(
                    "-device",
                    format!(
                        "virtio-net-pci,netdev=net0,disable-legacy=on,mq={mq},vectors={vectors}{rss}{offloads},mac={mac}"
                    ),
                );
            }
        }
        for f in &self.fw_cfg {
            a.pair("-fw_cfg", format!("name={},string={}", escape(&f.name), escape(&f.value)));
        }
        a.0
    }

    /// The program to start and its arguments: QEMU itself, or `ip netns
    /// exec NAME qemu-system-x86_64 ...` when it must run inside a network
    /// namespace. `ip` execs QEMU in place (no fork), so the process started
    /// is QEMU's: its PID, signals and exit status are QEMU's own.
    pub fn program_and_args(&self) -> (String, Vec<OsString>) {
        match &self.netns {
            None => (QEMU.into(), self.args()),
            Some(ns) => {
                let mut args: Vec<OsString> = ["netns", "exec", ns.as_str(), QEMU].map(OsString::from).to_vec();
                args.extend(self.args());
                (crate::netns::IP.into(), args)
            }
        }
    }

    /// The whole command, for display.
    pub fn command_line(&self) -> String {
        let (program, args) = self.program_and_args();
        let mut s = program;
        for arg in args {
            s.push(' ');
            s.push_str(&shell_quote(&arg.to_string_lossy()));
        }
        s
    }
}

/// `arg` as a POSIX shell would need it written to see one word.
pub fn shell_quote(arg: &str) -> String {
    if arg.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') {
        format!("'{}'", arg.replace('\'', r"'\''"))
    } else {
        arg.to_string()
    }
}

#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn flag(&mut self, f: &str) {
        self.0.push(f.into());
    }
    fn pair(&mut self, f: &str, v: impl Into<OsString>) {
        self.0.push(f.into());
        self.0.push(v.into());
    }
    /// A raw disk; `snapshot=on` keeps the image unmodified and lets several
    /// VMs boot the same image at once.
    fn drive(&mut self, image: &std::path::Path) {
        self.pair("-drive", join("format=raw,snapshot=on,file=", &escape_os(image.as_os_str())));
    }
}

fn join_os(a: &std::ffi::OsStr, b: &str) -> OsString {
    let mut s = a.to_os_string();
    s.push(b);
    s
}

fn join(prefix: &str, rest: &std::ffi::OsStr) -> OsString {
    let mut s = OsString::from(prefix);
    s.push(rest);
    s
}

/// QEMU option values use `,` as a separator; a literal comma is written `,,`.
fn escape(s: &str) -> String {
    s.replace(',', ",,")
}

fn escape_os(s: &std::ffi::OsStr) -> OsString {
    match s.to_str() {
        Some(s) => escape(s).into(),
        None => s.to_os_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(c: &QemuConfig) -> Vec<String> {
        c.args().into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    fn value_of(args: &[String], flag: &str) -> Vec<String> {
        args.windows(2).filter(|w| w[0] == flag).map(|w| w[1].clone()).collect()
    }

    fn bios() -> Boot {
        Boot::Bios { image: "/img/mqnet-bios.img".into() }
    }

    #[test]
    fn tcg_bios_command() {
        let mut c = QemuConfig::new(Accel::Tcg, bios()).with_kernel_cmdline("exit=after-boot");
        c.cpus = 2;
        c.memory_mib = 512;
        let a = strings(&c);
        assert_eq!(value_of(&a, "-name"), ["mqnet,debug-threads=on"]);
        assert_eq!(value_of(&a, "-machine"), ["q35"]);
        assert_eq!(value_of(&a, "-accel"), ["tcg,thread=multi"]);
        assert_eq!(value_of(&a, "-cpu"), ["max"]);
        assert_eq!(value_of(&a, "-smp"), ["2"]);
        assert_eq!(value_of(&a, "-m"), ["512M"]);
        assert_eq!(value_of(&a, "-drive"), ["format=raw,snapshot=on,file=/img/mqnet-bios.img"]);
        assert_eq!(value_of(&a, "-serial"), ["stdio"]);
        assert_eq!(value_of(&a, "-device"), ["isa-debug-exit,iobase=0xf4,iosize=0x4"]);
        assert_eq!(value_of(&a, "-nic"), ["none"]);
        assert_eq!(value_of(&a, "-fw_cfg"), ["name=opt/mqnet/cmdline,string=exit=after-boot"]);
        assert!(a.contains(&"-no-reboot".to_string()));
        assert!(value_of(&a, "-bios").is_empty());
    }

    #[test]
    fn qmp_socket() {
        let mut c = QemuConfig::new(Accel::Tcg, bios());
        c.qmp = Some("/tmp/mqnet-qmp.sock".into());
        assert_eq!(value_of(&strings(&c), "-qmp"), ["unix:/tmp/mqnet-qmp.sock,server=on,wait=off"]);
    }

    #[test]
    fn hot_plug_slots() {
        let mut c = QemuConfig::new(Accel::Tcg, bios());
        c.cpus = 2;
        c.max_cpus = Some(4);
        assert_eq!(value_of(&strings(&c), "-smp"), ["2,maxcpus=4"]);
        c.max_cpus = Some(2);
        assert_eq!(value_of(&strings(&c), "-smp"), ["2"], "no slots beyond cpus: plain -smp");
    }

    #[test]
    fn kvm_pvm_gets_the_workarounds() {
        let a = strings(&QemuConfig::new(Accel::Kvm { pvm: true }, bios()));
        assert_eq!(value_of(&a, "-machine"), ["pc-i440fx-7.0"]);
        assert_eq!(value_of(&a, "-accel"), ["kvm"]);
        assert_eq!(value_of(&a, "-cpu"), ["host,-arch-capabilities"]);
        let a = strings(&QemuConfig::new(Accel::Kvm { pvm: false }, bios()));
        assert_eq!(value_of(&a, "-machine"), ["q35"]);
        assert_eq!(value_of(&a, "-cpu"), ["host"]);
    }

    #[test]
    fn direct_boot_loads_the_kernel_itself() {
        let boot = Boot::Pvh { kernel: "/k/kernel".into(), append: " cpus=2 ".into(), firmware: None };
        let a = strings(&QemuConfig::new(Accel::Tcg, boot).with_kernel_cmdline("exit=after-boot"));
        assert_eq!(value_of(&a, "-kernel"), ["/k/kernel"]);
        assert_eq!(value_of(&a, "-append"), ["cpus=2"]);
        assert_eq!(value_of(&a, "-fw_cfg"), ["name=opt/mqnet/cmdline,string=exit=after-boot"]);
        assert!(value_of(&a, "-drive").is_empty() && value_of(&a, "-bios").is_empty());
        assert!(a.contains(&"-nodefaults".to_string()), "a minimal machine");
        assert_eq!(value_of(&a, "-machine"), ["q35,smbus=off,sata=off"]);
        let boot = Boot::Pvh { kernel: "/k".into(), append: String::new(), firmware: Some("/q/qboot.rom".into()) };
        let a = strings(&QemuConfig::new(Accel::Tcg, boot));
        assert!(value_of(&a, "-append").is_empty(), "no empty -append");
        assert_eq!(value_of(&a, "-bios"), ["/q/qboot.rom"]);
        let a = strings(&QemuConfig::new(Accel::Tcg, bios()));
        assert!(!a.contains(&"-nodefaults".to_string()), "the bootloader's BIOS stage wants its VGA");
        assert_eq!(value_of(&a, "-machine"), ["q35"]);
        let boot = Boot::PvhVia { via: "/t/shim.elf".into(), kernel: "/k,1/kernel".into(), firmware: None };
        let a = strings(&QemuConfig::new(Accel::Tcg, boot));
        assert_eq!(value_of(&a, "-kernel"), ["/t/shim.elf"]);
        assert!(value_of(&a, "-device").contains(&"loader,file=/k,,1/kernel".to_string()));
    }

    #[test]
    fn uefi_adds_the_firmware() {
        let boot = Boot::Uefi { ovmf: "/usr/share/ovmf/OVMF.fd".into(), image: "/i/u.img".into() };
        let a = strings(&QemuConfig::new(Accel::Tcg, boot));
        assert_eq!(value_of(&a, "-bios"), ["/usr/share/ovmf/OVMF.fd"]);
        assert_eq!(value_of(&a, "-drive"), ["format=raw,snapshot=on,file=/i/u.img"]);
    }

    #[test]
    fn commas_in_values_are_escaped() {
        let c = QemuConfig::new(Accel::Tcg, Boot::Bios { image: "/a,b/x.img".into() }).with_kernel_cmdline("a=1,2");
        let a = strings(&c);
        assert_eq!(value_of(&a, "-drive"), ["format=raw,snapshot=on,file=/a,,b/x.img"]);
        assert_eq!(value_of(&a, "-fw_cfg"), ["name=opt/mqnet/cmdline,string=a=1,,2"]);
    }

    #[test]
    fn empty_cmdline_adds_no_fw_cfg_and_a_new_one_replaces_the_old() {
        let c = QemuConfig::new(Accel::Tcg, bios()).with_kernel_cmdline("  ");
        assert!(value_of(&strings(&c), "-fw_cfg").is_empty());
        let c = c.with_kernel_cmdline("log=debug").with_kernel_cmdline("log=trace");
        assert_eq!(value_of(&strings(&c), "-fw_cfg"), ["name=opt/mqnet/cmdline,string=log=trace"]);
    }

    #[test]
    fn serial_file_user_network_and_no_debug_exit() {
        let mut c = QemuConfig::new(Accel::Tcg, bios());
        c.serial = Serial::File("/tmp/serial.log".into());
        c.network = Network::UserTransitional;
        assert_eq!(value_of(&strings(&c), "-device")[1], "virtio-net-pci,netdev=net0,disable-legacy=off");
        c.network = Network::User;
        c.debug_exit = false;
        c.machine = Machine::Pc { version: None };
        let a = strings(&c);
        assert_eq!(value_of(&a, "-serial"), ["file:/tmp/serial.log"]);
        assert_eq!(value_of(&a, "-netdev"), ["user,id=net0"]);
        assert_eq!(value_of(&a, "-device"), ["virtio-net-pci,netdev=net0,disable-legacy=on"]);
        assert_eq!(value_of(&a, "-machine"), ["pc"]);
        assert!(value_of(&a, "-nic").is_empty());
        c.user_forwards = vec![(5201, 5201), (10007, 7)];
        assert_eq!(
            value_of(&strings(&c), "-netdev"),
            ["user,id=net0,hostfwd=tcp:127.0.0.1:5201-:5201,hostfwd=tcp:127.0.0.1:10007-:7"]
        );
    }

    #[test]
    fn multiqueue_tap_network() {
        let mut c = QemuConfig::new(Accel::Tcg, bios());
        c.network = Network::Tap { tap: "mqtap0".into(), queues: 4, mac: None, vectors: None, rss: false };
        let a = strings(&c);
        assert_eq!(value_of(&a, "-netdev"), ["tap,id=net0,ifname=mqtap0,script=no,downscript=no,vhost=off,queues=4"]);
        assert_eq!(
            value_of(&a, "-device"),
            [
                "isa-debug-exit,iobase=0xf4,iosize=0x4",
                "virtio-net-pci,netdev=net0,disable-legacy=on,mq=on,vectors=10,mac=52:54:00:12:34:56"
            ]
        );
        assert!(value_of(&a, "-nic").is_empty());
    }

    #[test]
    fn single_queue_tap_network_without_mq() {
        let mut c = QemuConfig::new(Accel::Tcg, bios());
        c.debug_exit = false;
        c.network = Network::Tap {
            tap: "t,1".into(),
            queues: 1,
            mac: Some("52:54:00:00:00:01".into()),
            vectors: None,
            rss: false,
        };
        let a = strings(&c);
        assert_eq!(value_of(&a, "-netdev"), ["tap,id=net0,ifname=t,,1,script=no,downscript=no,vhost=off,queues=1"]);
        assert_eq!(
            value_of(&a, "-device"),
            ["virtio-net-pci,netdev=net0,disable-legacy=on,mq=off,vectors=4,mac=52:54:00:00:00:01"]
        );
        c.network = Network::Tap { tap: "t".into(), queues: 16, mac: None, vectors: None, rss: false };
        assert!(value_of(&strings(&c), "-device")[0].contains(",mq=on,vectors=34,"));
        c.network = Network::Tap { tap: "t".into(), queues: 2, mac: None, vectors: Some(0), rss: false };
        assert!(value_of(&strings(&c), "-device")[0].contains(",mq=on,vectors=0,"), "no MSI-X at all");
    }

    #[test]
    fn rss_and_hash_reports_are_offered_on_request() {
        let mut c = QemuConfig::new(Accel::Tcg, bios());
        c.debug_exit = false;
        c.network =
            Network::Tap { tap: "mqtap0".into(), queues: 4, mac: None, vectors: None, rss: false }.with_rss(true);
        let a = strings(&c);
        // vhost stays off: QEMU's RSS runs in QEMU (software or eBPF), not in vhost-net.
        assert_eq!(value_of(&a, "-netdev"), ["tap,id=net0,ifname=mqtap0,script=no,downscript=no,vhost=off,queues=4"]);
        assert_eq!(
            value_of(&a, "-device"),
            ["virtio-net-pci,netdev=net0,disable-legacy=on,mq=on,vectors=10,rss=on,hash=on,mac=52:54:00:12:34:56"]
        );
        c.network = c.network.with_rss(false);
        assert!(!value_of(&strings(&c), "-device")[0].contains("rss"));
        assert_eq!(Network::User.with_rss(true), Network::User, "only a tap network has the option");
    }

    #[test]
    fn nic_offloads_can_be_turned_off_one_by_one() {
        let mut c = QemuConfig::new(Accel::Tcg, bios());
        c.debug_exit = false;
        c.network = Network::Tap { tap: "mqtap0".into(), queues: 2, mac: None, vectors: None, rss: false };
        assert!(c.nic_offloads, "QEMU's default");
        assert!(!value_of(&strings(&c), "-device")[0].contains("=off"));
        c.nic_offloads = false;
        let device = value_of(&strings(&c), "-device")[0].clone();
        for prop in ["csum", "guest_csum", "gso", "guest_tso4", "guest_tso6", "guest_ecn", "guest_ufo", "host_tso4"] {
            assert!(device.contains(&format!(",{prop}=off,")), "{prop} in {device}");
        }
        assert!(device.ends_with(",host_ufo=off,mac=52:54:00:12:34:56"), "{device}");
    }

    #[test]
    fn vhost_on_request_and_never_with_rss() {
        let mut c = QemuConfig::new(Accel::Tcg, bios());
        assert!(!c.vhost, "off unless asked for");
        c.network = Network::Tap { tap: "mqtap0".into(), queues: 2, mac: None, vectors: None, rss: false };
        assert_eq!(c.validate(), Ok(()));
        c.vhost = true;
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(
            value_of(&strings(&c), "-netdev"),
            ["tap,id=net0,ifname=mqtap0,script=no,downscript=no,vhost=on,queues=2"]
        );
        c.network = c.network.with_rss(true);
        assert!(c.validate().unwrap_err().contains("RSS"));
        c.vhost = false;
        assert_eq!(c.validate(), Ok(()));
        assert!(value_of(&strings(&c), "-netdev")[0].contains(",vhost=off,"));
        c.network = Network::User;
        c.vhost = true;
        assert_eq!(c.validate().unwrap_err(), "vhost-net needs a tap network");
    }

    #[test]
    fn inside_a_namespace_qemu_is_started_by_ip_netns_exec() {
        let mut c = QemuConfig::new(Accel::Tcg, bios());
        let (program, args) = c.program_and_args();
        assert_eq!((program.as_str(), args), ("qemu-system-x86_64", c.args()));

        c.netns = Some("mqnet".into());
        let (program, args) = c.program_and_args();
        assert_eq!(program, "ip");
        assert_eq!(args[..4], ["netns", "exec", "mqnet", "qemu-system-x86_64"].map(OsString::from));
        assert_eq!(args[4..], c.args());
        assert!(c.command_line().starts_with("ip netns exec mqnet qemu-system-x86_64 -name mqnet,debug-threads=on "));
    }

    #[test]
    fn command_line_quotes_what_a_shell_would_split() {
        let c = QemuConfig::new(Accel::Tcg, bios()).with_kernel_cmdline("exit=after-boot log=debug");
        assert!(c.command_line().starts_with("qemu-system-x86_64 -name mqnet,debug-threads=on -machine q35 "));
        assert!(c.command_line().ends_with(" -fw_cfg 'name=opt/mqnet/cmdline,string=exit=after-boot log=debug'"));
    }
}
