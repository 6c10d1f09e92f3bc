//! Choosing whether QEMU's tap backend uses vhost-net.
//!
//! With vhost-net the host kernel moves the packets of each queue in a
//! worker thread of its own (`vhost-<pid>`, a thread of the QEMU process on
//! Linux 6.4 and later), instead of QEMU's main loop moving every queue's
//! packets. It needs `/dev/vhost-net`. QEMU's RSS (`rss=on`) steers in QEMU
//! (software or eBPF), never in vhost-net, so RSS needs vhost off.

use std::path::Path;

/// The character device vhost-net needs.
pub const DEV_VHOST_NET: &str = "/dev/vhost-net";

/// What the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VhostRequest {
    /// On where `/dev/vhost-net` exists and RSS is not asked for.
    Auto,
    On,
    Off,
}

/// The decision and a sentence saying why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VhostChoice {
    pub on: bool,
    pub reason: String,
}

/// Whether this host has `/dev/vhost-net`.
pub fn probe() -> bool {
    Path::new(DEV_VHOST_NET).exists()
}

/// Decides vhost for a tap network: `dev_present` is [`probe`]'s answer,
/// `rss` whether RSS is offered to the guest. Asking for vhost on where it
/// cannot work is an error, not a silent off.
pub fn choose(request: VhostRequest, dev_present: bool, rss: bool) -> Result<VhostChoice, String> {
    let choice = |on, reason: &str| Ok(VhostChoice { on, reason: reason.into() });
    match request {
        VhostRequest::Off => choice(false, "requested with --vhost off"),
        VhostRequest::On if rss => {
            Err("--vhost on: QEMU's RSS (--rss) runs in QEMU, not in vhost-net; use --vhost off or drop --rss".into())
        }
        VhostRequest::On if !dev_present => {
            Err(format!("--vhost on: {DEV_VHOST_NET} does not exist (load the vhost_net module, or use --vhost off)"))
        }
        VhostRequest::On => choice(true, "requested with --vhost on"),
        VhostRequest::Auto if rss => choice(false, "RSS is offered, and QEMU's RSS needs vhost off"),
        VhostRequest::Auto if dev_present => choice(true, "/dev/vhost-net exists"),
        VhostRequest::Auto => {
            choice(false, "/dev/vhost-net does not exist: QEMU's main loop moves every queue's packets")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_follows_the_device_and_rss() {
        let c = choose(VhostRequest::Auto, true, false).unwrap();
        assert!(c.on);
        assert!(c.reason.contains("/dev/vhost-net exists"), "{}", c.reason);
        let c = choose(VhostRequest::Auto, false, false).unwrap();
        assert!(!c.on);
        assert!(c.reason.contains("does not exist"), "{}", c.reason);
        let c = choose(VhostRequest::Auto, true, true).unwrap();
        assert!(!c.on, "RSS needs vhost off");
        assert!(c.reason.contains("RSS"), "{}", c.reason);
    }

    #[test]
    fn explicit_requests() {
        assert!(choose(VhostRequest::On, true, false).unwrap().on);
        assert!(!choose(VhostRequest::Off, true, false).unwrap().on);
        assert!(!choose(VhostRequest::Off, false, true).unwrap().on);
        assert!(choose(VhostRequest::On, false, false).unwrap_err().contains("/dev/vhost-net does not exist"));
        assert!(choose(VhostRequest::On, true, true).unwrap_err().contains("RSS"));
    }
}
