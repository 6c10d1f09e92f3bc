//! The command line of `cargo xtask`.
//!
//! Parsing errors (unknown option, bad value) exit with status 2 and a
//! message naming the problem, as clap does for every usage error.

use std::time::Duration;

use boot::accel::AccelRequest;
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
}

#[derive(Args, Debug, Clone)]
pub struct BuildArgs {
    /// Optimised kernel without debug info (what the tests and benchmarks boot).
    #[arg(long)]
    pub release: bool,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub build: BuildArgs,
    /// Boot with SeaBIOS (the default).
    #[arg(long, conflicts_with = "uefi")]
    pub bios: bool,
    /// Boot with OVMF (UEFI).
    #[arg(long)]
    pub uefi: bool,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=255))]
    pub smp: u16,
    /// Guest memory: MiB, or with a unit (512M, 2G).
    #[arg(long, default_value = "256M", value_parser = parse_memory)]
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
    /// Guest network: none, QEMU user-mode networking (one queue, no root), or
    /// a multiqueue tap inside a network namespace this run creates (root).
    #[arg(long, value_enum, default_value_t = NetArg::None)]
    pub net: NetArg,
    /// Queue pairs of the NIC and its tap, with --net tap [default: 1].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_QUEUES)))]
    pub queues: Option<u16>,
    /// Network namespace to create (and delete) for --net tap [default: mqnet].
    #[arg(long, value_parser = parse_netns)]
    pub netns: Option<String>,
    /// Kernel boot options, e.g. "log=debug" (see README).
    #[arg(long, default_value = "")]
    pub cmdline: String,
}

impl RunArgs {
    /// Checks what clap cannot express: --queues and --netns only make sense
    /// with --net tap, and silently ignoring them would mislead. The error
    /// is a usage error (status 2), like clap's own.
    pub fn check(&self) -> Result<(), clap::Error> {
        if self.net != NetArg::Tap && (self.queues.is_some() || self.netns.is_some()) {
            return Err(Cli::command().error(ErrorKind::ArgumentConflict, "--queues and --netns need --net tap"));
        }
        Ok(())
    }
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
        assert!(!r.bios && !r.uefi && !r.build.release);
        assert_eq!((r.smp, r.memory, r.accel, r.timeout), (1, 256, AccelArg::Auto, None));
        assert_eq!((r.net, r.queues, r.netns.as_deref()), (NetArg::None, None, None));
        assert!(r.check().is_ok());
    }

    #[test]
    fn run_with_a_tap_network() {
        let Cmd::Run(r) = parse(&["run", "--net", "tap"]).unwrap().command else { panic!() };
        assert_eq!((r.net, r.queues, r.netns.as_deref()), (NetArg::Tap, None, None));
        let cli = parse(&["run", "--net", "tap", "--queues", "4", "--netns", "mq-2"]).unwrap();
        let Cmd::Run(r) = cli.command else { panic!() };
        assert_eq!((r.net, r.queues, r.netns.as_deref()), (NetArg::Tap, Some(4), Some("mq-2")));
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
        for args in [&["run", "--queues", "2"][..], &["run", "--net", "user", "--netns", "x"]] {
            let Cmd::Run(r) = parse(args).unwrap().command else { panic!() };
            let err = r.check().unwrap_err();
            assert_eq!((err.kind(), err.exit_code()), (ErrorKind::ArgumentConflict, 2), "{args:?}");
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
        assert!(r.uefi && r.build.release);
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
