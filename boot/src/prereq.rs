//! Host programs the project needs, and installing them when they are missing.
//!
//! When something is missing and the user is root on a system with apt-get,
//! it is installed (saying so); otherwise the error gives the exact command.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Something on the host that a command needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    Qemu,
    /// UEFI firmware for QEMU.
    Ovmf,
    Iperf3,
    /// `ip`, for the network namespace and tap of `--net tap`.
    Iproute2,
    /// `ping`, for the network tests.
    Ping,
    /// `python3`, whose sockets generate many-flow test traffic.
    Python3,
    /// `curl`, which reads the guest's metrics as a user would.
    Curl,
}

impl Tool {
    /// The Debian package that provides it.
    pub const fn package(self) -> &'static str {
        match self {
            Tool::Qemu => "qemu-system-x86",
            Tool::Ovmf => "ovmf",
            Tool::Iperf3 => "iperf3",
            Tool::Iproute2 => "iproute2",
            Tool::Ping => "iputils-ping",
            Tool::Python3 => "python3",
            Tool::Curl => "curl",
        }
    }

    pub const fn describe(self) -> &'static str {
        match self {
            Tool::Qemu => "qemu-system-x86_64",
            Tool::Ovmf => "OVMF (UEFI firmware)",
            Tool::Iperf3 => "iperf3",
            Tool::Iproute2 => "ip (iproute2)",
            Tool::Ping => "ping",
            Tool::Python3 => "python3",
            Tool::Curl => "curl",
        }
    }

    fn present(self) -> bool {
        match self {
            Tool::Qemu => find_in_path(crate::qemu::QEMU).is_some(),
            Tool::Ovmf => find_ovmf().is_some(),
            Tool::Iperf3 => find_in_path("iperf3").is_some(),
            Tool::Iproute2 => find_in_path(crate::netns::IP).is_some(),
            Tool::Ping => find_in_path("ping").is_some(),
            Tool::Python3 => find_in_path("python3").is_some(),
            Tool::Curl => find_in_path("curl").is_some(),
        }
    }
}

/// Where Debian's and other distributions' OVMF packages put a combined image.
const OVMF_CANDIDATES: [&str; 4] =
    ["/usr/share/ovmf/OVMF.fd", "/usr/share/OVMF/OVMF.fd", "/usr/share/qemu/OVMF.fd", "/usr/share/edk2/ovmf/OVMF.fd"];

pub fn find_ovmf() -> Option<PathBuf> {
    if let Some(p) = env::var_os("MQNET_OVMF") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    OVMF_CANDIDATES.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// qboot, the minimal firmware QEMU ships (Debian: qemu-system-data): it
/// starts a directly booted kernel some 40 ms sooner than SeaBIOS under
/// TCG (it leaves the NIC's BARs unassigned; the kernel assigns them).
const QBOOT_CANDIDATES: [&str; 2] = ["/usr/share/qemu/qboot.rom", "/usr/share/qboot/bios.bin"];

/// qboot's ROM, if installed (`MQNET_QBOOT=/path` names another,
/// `MQNET_QBOOT=none` asks for SeaBIOS).
pub fn find_qboot() -> Option<PathBuf> {
    if let Some(p) = env::var_os("MQNET_QBOOT") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    QBOOT_CANDIDATES.iter().map(PathBuf::from).find(|p| p.is_file())
}

pub fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path).map(|d| d.join(program)).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// What to do about missing tools.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    Nothing,
    /// Run these commands (as root, with apt-get).
    Install(Vec<Vec<String>>),
    /// Tell the user to run this command.
    AskUser(String),
}

/// Decides how to get `missing` (pure, for tests).
pub fn plan(missing: &[Tool], is_root: bool, has_apt: bool) -> Plan {
    if missing.is_empty() {
        return Plan::Nothing;
    }
    let mut packages: Vec<&str> = missing.iter().map(|t| t.package()).collect();
    packages.dedup();
    let install = |prefix: &[&str]| {
        let mut cmd: Vec<String> = prefix.iter().map(|s| s.to_string()).collect();
        cmd.extend(["apt-get", "install", "-y"].map(String::from));
        cmd.extend(packages.iter().map(|p| p.to_string()));
        cmd
    };
    if is_root && has_apt {
        Plan::Install(vec![vec!["apt-get".into(), "update".into()], install(&[])])
    } else if has_apt {
        Plan::AskUser(install(&["sudo"]).join(" "))
    } else {
        Plan::AskUser(format!("install {} with your package manager", packages.join(", ")))
    }
}

/// Whether this process runs as root (effective user id 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Makes sure every tool in `tools` is there, installing what is missing
/// when possible. `say` receives progress lines.
pub fn ensure(tools: &[Tool], say: &mut dyn FnMut(&str)) -> Result<(), String> {
    let missing: Vec<Tool> = tools.iter().copied().filter(|t| !t.present()).collect();
    let names = missing.iter().map(|t| t.describe()).collect::<Vec<_>>().join(", ");
    match plan(&missing, is_root(), find_in_path("apt-get").is_some()) {
        Plan::Nothing => Ok(()),
        Plan::AskUser(cmd) => Err(format!("missing {names}; install it with:\n    {cmd}")),
        Plan::Install(cmds) => {
            say(&format!("missing {names}: installing with apt-get"));
            for cmd in cmds {
                say(&format!("running: {}", cmd.join(" ")));
                let status = Command::new(&cmd[0])
                    .args(&cmd[1..])
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .status()
                    .map_err(|e| format!("could not start {}: {e}", cmd[0]))?;
                if !status.success() {
                    return Err(format!("`{}` failed ({status}); install {names} by hand", cmd.join(" ")));
                }
            }
            let still: Vec<&str> = missing.iter().filter(|t| !t.present()).map(|t| t.describe()).collect();
            if still.is_empty() {
                Ok(())
            } else {
                Err(format!("still missing after apt-get: {}", still.join(", ")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_missing_means_nothing_to_do() {
        assert_eq!(plan(&[], false, false), Plan::Nothing);
    }

    #[test]
    fn root_with_apt_installs() {
        assert_eq!(
            plan(&[Tool::Qemu, Tool::Ovmf], true, true),
            Plan::Install(vec![
                vec!["apt-get".into(), "update".into()],
                ["apt-get", "install", "-y", "qemu-system-x86", "ovmf"].map(String::from).to_vec(),
            ])
        );
    }

    #[test]
    fn otherwise_the_user_gets_the_exact_command() {
        assert_eq!(plan(&[Tool::Iperf3], false, true), Plan::AskUser("sudo apt-get install -y iperf3".into()));
        assert_eq!(plan(&[Tool::Iproute2], false, true), Plan::AskUser("sudo apt-get install -y iproute2".into()));
        assert_eq!(
            plan(&[Tool::Qemu], true, false),
            Plan::AskUser("install qemu-system-x86 with your package manager".into())
        );
    }

    #[test]
    fn path_lookup_finds_executables_only() {
        assert!(find_in_path("sh").is_some());
        assert!(find_in_path("surely-not-a-program-mqnet").is_none());
    }
}
