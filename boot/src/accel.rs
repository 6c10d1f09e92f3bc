//! Choosing the accelerator.
//!
//! Hardware KVM is used only where `kvm_intel` or `kvm_amd` is loaded. Some
//! hosts have `/dev/kvm` backed by `kvm_pvm`, a software nested hypervisor:
//! there OVMF cannot boot and a BIOS boot takes about 50 s against 2–3 s
//! under TCG, so `auto` picks TCG and says why.

use std::fmt;
use std::path::Path;

/// What the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccelRequest {
    Auto,
    Kvm,
    Tcg,
}

/// The accelerator QEMU is started with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// KVM; `pvm` when `/dev/kvm` is the kvm_pvm software hypervisor.
    Kvm { pvm: bool },
    /// Multi-threaded TCG: one host thread per vCPU.
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm { pvm: false } => "kvm",
            Accel::Kvm { pvm: true } => "kvm (kvm_pvm)",
            Accel::Tcg => "tcg",
        })
    }
}

/// What the host offers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostFacts {
    pub kvm_intel: bool,
    pub kvm_amd: bool,
    pub kvm_pvm: bool,
    /// `/dev/kvm` exists and can be opened read-write.
    pub dev_kvm: bool,
}

impl HostFacts {
    pub fn probe() -> HostFacts {
        let module = |m: &str| Path::new("/sys/module").join(m).exists();
        HostFacts {
            kvm_intel: module("kvm_intel"),
            kvm_amd: module("kvm_amd"),
            kvm_pvm: module("kvm_pvm"),
            dev_kvm: std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok(),
        }
    }

    fn hardware_kvm(&self) -> bool {
        (self.kvm_intel || self.kvm_amd) && self.dev_kvm
    }
}

/// The chosen accelerator and a sentence saying why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccelChoice {
    pub accel: Accel,
    pub reason: String,
}

/// Picks the accelerator. `uefi` matters because OVMF cannot boot under kvm_pvm.
pub fn choose(request: AccelRequest, host: HostFacts, uefi: bool) -> Result<AccelChoice, String> {
    let module = if host.kvm_intel { "kvm_intel" } else { "kvm_amd" };
    match request {
        AccelRequest::Tcg => Ok(AccelChoice { accel: Accel::Tcg, reason: "requested with --accel tcg".into() }),
        AccelRequest::Auto if host.hardware_kvm() => Ok(AccelChoice {
            accel: Accel::Kvm { pvm: false },
            reason: format!("{module} is loaded and /dev/kvm is usable"),
        }),
        AccelRequest::Auto => {
            let why = if host.kvm_pvm {
                "/dev/kvm is kvm_pvm, a software nested hypervisor (slow boots, no UEFI); \
                 kvm_intel/kvm_amd are not loaded"
            } else if host.kvm_intel || host.kvm_amd {
                "/dev/kvm cannot be opened read-write"
            } else {
                "neither kvm_intel nor kvm_amd is loaded"
            };
            Ok(AccelChoice { accel: Accel::Tcg, reason: why.into() })
        }
        AccelRequest::Kvm if !host.dev_kvm => {
            Err("--accel kvm: /dev/kvm is missing or cannot be opened read-write; use --accel tcg".into())
        }
        AccelRequest::Kvm if host.hardware_kvm() => Ok(AccelChoice {
            accel: Accel::Kvm { pvm: false },
            reason: format!("requested with --accel kvm ({module} loaded)"),
        }),
        AccelRequest::Kvm if host.kvm_pvm && uefi => {
            Err("--accel kvm: /dev/kvm is kvm_pvm, under which OVMF (UEFI) cannot boot; use --bios or --accel tcg"
                .into())
        }
        AccelRequest::Kvm => Ok(AccelChoice {
            accel: Accel::Kvm { pvm: host.kvm_pvm },
            reason: if host.kvm_pvm {
                "requested with --accel kvm; /dev/kvm is kvm_pvm (software nested): expect ~50 s boots".into()
            } else {
                "requested with --accel kvm".into()
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PVM: HostFacts = HostFacts { kvm_intel: false, kvm_amd: false, kvm_pvm: true, dev_kvm: true };
    const INTEL: HostFacts = HostFacts { kvm_intel: true, kvm_amd: false, kvm_pvm: false, dev_kvm: true };
    const AMD: HostFacts = HostFacts { kvm_intel: false, kvm_amd: true, kvm_pvm: false, dev_kvm: true };
    const NONE: HostFacts = HostFacts { kvm_intel: false, kvm_amd: false, kvm_pvm: false, dev_kvm: false };

    #[test]
    fn auto_uses_hardware_kvm_only() {
        let c = choose(AccelRequest::Auto, INTEL, false).unwrap();
        assert_eq!(c.accel, Accel::Kvm { pvm: false });
        assert!(c.reason.contains("kvm_intel"), "{}", c.reason);
        assert!(choose(AccelRequest::Auto, AMD, true).unwrap().reason.contains("kvm_amd"));
    }

    #[test]
    fn auto_avoids_kvm_pvm_and_says_why() {
        let c = choose(AccelRequest::Auto, PVM, false).unwrap();
        assert_eq!(c.accel, Accel::Tcg);
        assert!(c.reason.contains("kvm_pvm"), "{}", c.reason);
        let c = choose(AccelRequest::Auto, NONE, false).unwrap();
        assert_eq!(c.accel, Accel::Tcg);
        assert!(c.reason.contains("neither"), "{}", c.reason);
        let locked = HostFacts { dev_kvm: false, ..INTEL };
        assert!(choose(AccelRequest::Auto, locked, false).unwrap().reason.contains("cannot be opened"));
    }

    #[test]
    fn explicit_requests() {
        assert_eq!(choose(AccelRequest::Tcg, INTEL, false).unwrap().accel, Accel::Tcg);
        assert_eq!(choose(AccelRequest::Kvm, PVM, false).unwrap().accel, Accel::Kvm { pvm: true });
        assert!(choose(AccelRequest::Kvm, PVM, true).unwrap_err().contains("OVMF"));
        assert!(choose(AccelRequest::Kvm, NONE, false).unwrap_err().contains("/dev/kvm"));
        assert_eq!(choose(AccelRequest::Kvm, INTEL, true).unwrap().accel, Accel::Kvm { pvm: false });
    }
}
