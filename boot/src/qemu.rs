//! The QEMU command line, built from typed options so that no caller pastes
//! argument strings together.

use std::ffi::OsString;
use std::path::PathBuf;

use kernel::abi;

use crate::accel::Accel;

pub const QEMU: &str = "qemu-system-x86_64";

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

/// Firmware and the disk image it boots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Boot {
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
    pub network: Network,
    pub fw_cfg: Vec<FwCfgString>,
}

impl QemuConfig {
    /// A headless VM with the debug-exit device, serial on stdio, no network.
    pub fn new(accel: Accel, boot: Boot) -> QemuConfig {
        QemuConfig {
            machine: Machine::default_for(accel),
            accel,
            cpus: 1,
            max_cpus: None,
            memory_mib: 256,
            boot,
            serial: Serial::Stdio,
            debug_exit: true,
            network: Network::None,
            fw_cfg: Vec::new(),
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
        a.pair("-machine", self.machine.arg());
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
        if self.debug_exit {
            a.pair(
                "-device",
                format!("isa-debug-exit,iobase={:#x},iosize={:#x}", abi::DEBUG_EXIT_IOBASE, abi::DEBUG_EXIT_IOSIZE),
            );
        }
        match self.network {
            Network::None => a.pair("-nic", "none"),
            Network::User => {
                a.pair("-netdev", "user,id=net0");
                a.pair("-device", "virtio-net-pci,netdev=net0,disable-legacy=on");
            }
        }
        for f in &self.fw_cfg {
            a.pair("-fw_cfg", format!("name={},string={}", escape(&f.name), escape(&f.value)));
        }
        a.0
    }

    /// The whole command, for display.
    pub fn command_line(&self) -> String {
        let mut s = String::from(QEMU);
        for arg in self.args() {
            let arg = arg.to_string_lossy();
            s.push(' ');
            if arg.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') {
                s.push('\'');
                s.push_str(&arg.replace('\'', r"'\''"));
                s.push('\'');
            } else {
                s.push_str(&arg);
            }
        }
        s
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
        c.network = Network::User;
        c.debug_exit = false;
        c.machine = Machine::Pc { version: None };
        let a = strings(&c);
        assert_eq!(value_of(&a, "-serial"), ["file:/tmp/serial.log"]);
        assert_eq!(value_of(&a, "-netdev"), ["user,id=net0"]);
        assert_eq!(value_of(&a, "-device"), ["virtio-net-pci,netdev=net0,disable-legacy=on"]);
        assert_eq!(value_of(&a, "-machine"), ["pc"]);
        assert!(value_of(&a, "-nic").is_empty());
    }

    #[test]
    fn command_line_quotes_what_a_shell_would_split() {
        let c = QemuConfig::new(Accel::Tcg, bios()).with_kernel_cmdline("exit=after-boot log=debug");
        assert!(c.command_line().starts_with("qemu-system-x86_64 -name mqnet,debug-threads=on -machine q35 "));
        assert!(c.command_line().ends_with(" -fw_cfg 'name=opt/mqnet/cmdline,string=exit=after-boot log=debug'"));
    }
}
