//! The host end of the guest's multiqueue network: a network namespace that
//! the run itself creates, holding a tap device with one kernel queue per
//! virtio-net queue pair.
//!
//! Every packet of a run stays inside that namespace (the network rule, see
//! `--net tap` in README.md): QEMU is started inside it (`ip netns exec`), the host end
//! of the link has its address there, and host-side clients are run there
//! too. Nothing here touches an interface outside the namespace, and nothing
//! adds routes, forwarding, NAT or bridges.
//!
//! [`NetnsGuard`] owns the namespace: creating it runs [`TapNetwork::setup_plan`]
//! and dropping it deletes the namespace, which also removes the tap. A
//! namespace that already exists is never reused or deleted, since this run
//! did not create it. If the process is killed outright (SIGKILL), no
//! destructor runs and the namespace stays behind; the next run then fails at
//! [`NetnsGuard::create`] with the exact `ip netns del` command that removes it.

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use crate::qemu::Network;

/// The iproute2 program.
pub const IP: &str = "ip";

/// The namespace `cargo xtask run --net tap` creates unless told otherwise.
pub const DEFAULT_NETNS: &str = "mqnet";
/// The tap's name inside the namespace.
pub const DEFAULT_TAP: &str = "mqtap0";
/// The most queue pairs a run sets up (QEMU's tap allows more). The kernel
/// uses at most one pair per vCPU, so extra pairs would only sit idle.
pub const MAX_QUEUES: u16 = 16;
/// Linux interface names (and, by convention here, namespace names) are at
/// most IFNAMSIZ - 1 bytes.
pub const MAX_NAME_LEN: usize = 15;
/// The MTUs a tap accepts: Ethernet's minimum for IPv4 (ETH_MIN_MTU) to the
/// tun driver's maximum (MAX_MTU).
pub const MTU_RANGE: std::ops::RangeInclusive<u32> = 68..=65535;

/// What the host end of a tap network looks like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TapNetwork {
    /// The network namespace the run creates (and deletes).
    pub netns: String,
    /// The tap device inside it.
    pub tap: String,
    /// Queue pairs: one tap queue (one file descriptor in QEMU) each.
    pub queues: u16,
    /// The host end's address, on the tap inside the namespace.
    pub host_addr: Ipv4Addr,
    /// The subnet's prefix length, for `host_addr`.
    pub prefix_len: u8,
    /// The address the guest is expected to use (for the hints printed to
    /// the user; the host side does not configure it).
    pub guest_addr: Ipv4Addr,
    /// The tap's MTU, when not Linux's default of 1500: a larger one lets
    /// the host send the guest frames bigger than its own MTU (jumbo frames).
    pub mtu: Option<u32>,
}

impl Default for TapNetwork {
    fn default() -> TapNetwork {
        TapNetwork {
            netns: DEFAULT_NETNS.into(),
            tap: DEFAULT_TAP.into(),
            queues: 1,
            host_addr: Ipv4Addr::new(10, 99, 0, 1),
            prefix_len: 24,
            guest_addr: Ipv4Addr::new(10, 99, 0, 2),
            mtu: None,
        }
    }
}

impl TapNetwork {
    /// The defaults with namespace `netns` and `queues` queue pairs, checked.
    pub fn new(netns: &str, queues: u16) -> Result<TapNetwork, String> {
        let net = TapNetwork { netns: netns.into(), queues, ..TapNetwork::default() };
        net.validate()?;
        Ok(net)
    }

    /// Checks every field, so that no command is built from a bad value.
    pub fn validate(&self) -> Result<(), String> {
        validate_name("network namespace", &self.netns)?;
        validate_name("tap device", &self.tap)?;
        validate_queues(self.queues)?;
        if !(1..=30).contains(&self.prefix_len) {
            return Err(format!("prefix length /{} must be between /1 and /30", self.prefix_len));
        }
        let mask = u32::MAX << (32 - u32::from(self.prefix_len));
        if u32::from(self.host_addr) & mask != u32::from(self.guest_addr) & mask {
            return Err(format!("guest address {} is not in the host's subnet {}", self.guest_addr, self.host_cidr()));
        }
        if self.host_addr == self.guest_addr {
            return Err(format!("host and guest cannot both be {}", self.host_addr));
        }
        if let Some(mtu) = self.mtu.filter(|m| !MTU_RANGE.contains(m)) {
            return Err(format!("MTU {mtu}: use {} to {}", MTU_RANGE.start(), MTU_RANGE.end()));
        }
        Ok(())
    }

    /// The host end's address with its prefix, as `ip addr add` takes it.
    pub fn host_cidr(&self) -> String {
        format!("{}/{}", self.host_addr, self.prefix_len)
    }

    /// The commands that set the network up, in order, each starting with
    /// the program. Every command after the first works inside the
    /// namespace (`ip -n NAME`), so none can touch the host's interfaces.
    ///
    /// The tap is multiqueue only when there is more than one queue: QEMU
    /// opens a one-queue tap without `IFF_MULTI_QUEUE`, and the kernel
    /// refuses that on a device created multiqueue (EINVAL). An MTU is set
    /// before the tap goes up, so no frame ever leaves with the old one.
    pub fn setup_plan(&self) -> Vec<Vec<String>> {
        let (ns, tap) = (self.netns.as_str(), self.tap.as_str());
        let mut add_tap = vec![IP, "-n", ns, "tuntap", "add", "dev", tap, "mode", "tap"];
        if self.queues > 1 {
            add_tap.push("multi_queue");
        }
        let host = self.host_cidr();
        let mtu = self.mtu.map(|m| m.to_string());
        let set_mtu = mtu.as_deref().map(|m| vec![IP, "-n", ns, "link", "set", tap, "mtu", m]);
        [
            Some(vec![IP, "netns", "add", ns]),
            Some(vec![IP, "-n", ns, "link", "set", "lo", "up"]),
            Some(add_tap),
            Some(vec![IP, "-n", ns, "addr", "add", host.as_str(), "dev", tap]),
            set_mtu,
            Some(vec![IP, "-n", ns, "link", "set", tap, "up"]),
        ]
        .into_iter()
        .flatten()
        .map(|cmd| cmd.into_iter().map(String::from).collect())
        .collect()
    }

    /// The command that undoes the whole plan: the tap, its address and the
    /// loopback all go with the namespace.
    pub fn teardown(&self) -> Vec<String> {
        [IP, "netns", "del", self.netns.as_str()].map(String::from).to_vec()
    }

    /// The guest's NIC on this network.
    pub fn network(&self) -> Network {
        Network::Tap { tap: self.tap.clone(), queues: self.queues, mac: None, vectors: None, rss: false }
    }
}

/// Names of namespaces and taps: 1 to 15 characters of `A-Z a-z 0-9 _ -`, so
/// they are valid interface names and need no quoting anywhere.
pub fn validate_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!("{what} name `{name}` must be 1 to {MAX_NAME_LEN} characters long"));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-')) {
        return Err(format!("{what} name `{name}` contains `{c}`: use only letters, digits, `_` and `-`"));
    }
    Ok(())
}

pub fn validate_queues(queues: u16) -> Result<(), String> {
    if !(1..=MAX_QUEUES).contains(&queues) {
        return Err(format!("{queues} queues: use 1 to {MAX_QUEUES}"));
    }
    Ok(())
}

/// The namespace names in `ip netns list` output (`NAME` or `NAME (id: N)`).
pub fn parse_netns_list(out: &str) -> Vec<String> {
    out.lines().filter_map(|l| l.split_whitespace().next()).map(String::from).collect()
}

/// The host's network namespaces, as `ip netns list` shows them.
pub fn list() -> Result<Vec<String>, String> {
    run_ip(&[IP, "netns", "list"].map(String::from)).map(|out| parse_netns_list(&out))
}

/// Fails, saying what to do, if namespace `netns` exists already: a run
/// checks this early, before the work that comes before [`NetnsGuard::create`]
/// (which checks again).
pub fn check_absent(netns: &str) -> Result<(), String> {
    if list()?.iter().any(|n| n == netns) {
        return Err(already_exists(netns));
    }
    Ok(())
}

fn already_exists(netns: &str) -> String {
    format!(
        "network namespace `{netns}` already exists: an earlier run was killed before it could delete it, or \
         something else uses it. This run neither reuses nor deletes a namespace it did not create; if it is a \
         leftover, delete it with:\n    ip netns del {netns}\nor choose another name with --netns"
    )
}

/// Runs one command (the program first) and returns its standard output.
type Exec = fn(&[String]) -> Result<String, String>;

/// Runs `cmd` in a process group of its own, so that a Ctrl-C meant for
/// xtask cannot stop it halfway; xtask's handler lets the run finish and
/// clean up instead.
fn run_ip(cmd: &[String]) -> Result<String, String> {
    let (program, args) = cmd.split_first().ok_or("empty command")?;
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .process_group(0)
        .output()
        .map_err(|e| format!("could not start `{}`: {e}", cmd.join(" ")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!("`{}` failed ({}): {}", cmd.join(" "), out.status, stderr.trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Owns the namespace of a [`TapNetwork`]: it exists from [`NetnsGuard::create`]
/// until [`NetnsGuard::delete`] or the guard is dropped (also when unwinding
/// from a panic).
#[derive(Debug)]
pub struct NetnsGuard {
    net: TapNetwork,
    exec: Exec,
    deleted: bool,
}

impl NetnsGuard {
    /// Creates the namespace and the tap inside it (needs root). If any step
    /// fails, the namespace is deleted again before the error is returned.
    /// Fails without touching it when the namespace already exists.
    pub fn create(net: &TapNetwork) -> Result<NetnsGuard, String> {
        NetnsGuard::create_with(net, run_ip)
    }

    fn create_with(net: &TapNetwork, exec: Exec) -> Result<NetnsGuard, String> {
        net.validate()?;
        let exists = |exec: Exec| {
            exec(&[IP, "netns", "list"].map(String::from)).is_ok_and(|out| parse_netns_list(&out).contains(&net.netns))
        };
        let already = || already_exists(&net.netns);
        if exists(exec) {
            return Err(already());
        }
        let mut plan = net.setup_plan().into_iter();
        let add = plan.next().expect("the plan starts with `ip netns add`");
        if let Err(e) = exec(&add) {
            // Someone may have created it since the check above; either way
            // it is not ours, so it is left alone.
            return Err(if exists(exec) { already() } else { e });
        }
        // From here on the namespace is ours: dropping the guard on an error
        // below deletes it, and with it everything the later steps made.
        let guard = NetnsGuard { net: net.clone(), exec, deleted: false };
        for cmd in plan {
            exec(&cmd).map_err(|e| format!("setting up network namespace `{}`: {e}", net.netns))?;
        }
        Ok(guard)
    }

    pub fn network(&self) -> &TapNetwork {
        &self.net
    }

    /// Deletes the namespace now, reporting a failure (which `Drop` can only print).
    pub fn delete(mut self) -> Result<(), String> {
        self.delete_once()
    }

    /// A namespace that is gone anyway (someone deleted it by hand) is not
    /// an error: nothing is left behind.
    fn delete_once(&mut self) -> Result<(), String> {
        if self.deleted {
            return Ok(());
        }
        self.deleted = true;
        let Err(e) = (self.exec)(&self.net.teardown()) else { return Ok(()) };
        let listed = (self.exec)(&[IP, "netns", "list"].map(String::from)).map(|out| parse_netns_list(&out));
        if listed.is_ok_and(|names| !names.contains(&self.net.netns)) {
            return Ok(());
        }
        Err(format!(
            "could not delete network namespace `{ns}` ({e}); delete it with:\n    ip netns del {ns}",
            ns = self.net.netns
        ))
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = self.delete_once() {
            eprintln!("warning: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn strings(cmd: &[&str]) -> Vec<String> {
        cmd.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn multiqueue_plan() {
        let net = TapNetwork::new("mqnet", 4).unwrap();
        assert_eq!(
            net.setup_plan(),
            [
                strings(&["ip", "netns", "add", "mqnet"]),
                strings(&["ip", "-n", "mqnet", "link", "set", "lo", "up"]),
                strings(&["ip", "-n", "mqnet", "tuntap", "add", "dev", "mqtap0", "mode", "tap", "multi_queue"]),
                strings(&["ip", "-n", "mqnet", "addr", "add", "10.99.0.1/24", "dev", "mqtap0"]),
                strings(&["ip", "-n", "mqnet", "link", "set", "mqtap0", "up"]),
            ]
        );
        assert_eq!(net.teardown(), strings(&["ip", "netns", "del", "mqnet"]));
        assert_eq!(
            net.network(),
            Network::Tap { tap: "mqtap0".into(), queues: 4, mac: None, vectors: None, rss: false }
        );
    }

    #[test]
    fn one_queue_gets_a_plain_tap() {
        let plan = TapNetwork::new("other", 1).unwrap().setup_plan();
        assert_eq!(plan[2], strings(&["ip", "-n", "other", "tuntap", "add", "dev", "mqtap0", "mode", "tap"]));
        // Every step after `netns add` stays inside the namespace.
        assert!(plan[1..].iter().all(|c| c[1..3] == ["-n", "other"]));
    }

    #[test]
    fn an_mtu_is_set_before_the_tap_goes_up() {
        let net = TapNetwork { mtu: Some(9000), ..TapNetwork::new("jumbo", 2).unwrap() };
        assert_eq!(net.validate(), Ok(()));
        let plan = net.setup_plan();
        assert_eq!(plan.len(), 6);
        assert_eq!(plan[4], strings(&["ip", "-n", "jumbo", "link", "set", "mqtap0", "mtu", "9000"]));
        assert_eq!(plan[5], strings(&["ip", "-n", "jumbo", "link", "set", "mqtap0", "up"]));
        assert!(plan[1..].iter().all(|c| c[1..3] == ["-n", "jumbo"]));
        // Without one, no MTU step at all.
        let plan = TapNetwork::new("jumbo", 2).unwrap().setup_plan();
        assert!(!plan.iter().flatten().any(|w| w == "mtu"), "{plan:?}");
    }

    #[test]
    fn mtus_are_checked() {
        let net = |mtu| TapNetwork { mtu: Some(mtu), ..TapNetwork::default() };
        assert_eq!(net(68).validate(), Ok(()));
        assert_eq!(net(65535).validate(), Ok(()));
        assert_eq!(net(67).validate().unwrap_err(), "MTU 67: use 68 to 65535");
        assert!(net(65536).validate().is_err());
        fake(&[], None);
        assert!(NetnsGuard::create_with(&net(0), fake_ip).is_err());
        assert!(log().is_empty(), "nothing runs with a bad MTU: {:?}", log());
    }

    #[test]
    fn defaults() {
        let net = TapNetwork::default();
        assert_eq!((net.netns.as_str(), net.tap.as_str(), net.queues, net.mtu), ("mqnet", "mqtap0", 1, None));
        assert_eq!((net.host_cidr(), net.guest_addr.to_string()), ("10.99.0.1/24".into(), "10.99.0.2".into()));
        assert_eq!(net.validate(), Ok(()));
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(validate_name("x", "mq_net-0"), Ok(()));
        assert_eq!(validate_name("x", "a23456789012345"), Ok(()));
        assert!(validate_name("tap device", "a234567890123456").unwrap_err().contains("1 to 15 characters"));
        assert!(validate_name("x", "").unwrap_err().contains("1 to 15"));
        assert!(validate_name("x", "a b").unwrap_err().contains("contains ` `"));
        assert!(validate_name("x", "../etc").unwrap_err().contains("contains `.`"));
        assert!(validate_name("x", "näme").is_err());
        assert!(TapNetwork::new("bad/name", 2).unwrap_err().contains("network namespace name `bad/name`"));
        let net = TapNetwork { tap: "tap,x".into(), ..TapNetwork::default() };
        assert!(net.validate().unwrap_err().contains("tap device name"));
    }

    #[test]
    fn queues_are_checked() {
        assert!(TapNetwork::new("mqnet", 0).unwrap_err().contains("use 1 to 16"));
        assert!(TapNetwork::new("mqnet", 17).is_err());
        assert!(TapNetwork::new("mqnet", 16).is_ok());
    }

    #[test]
    fn addresses_are_checked() {
        let net =
            |guest: [u8; 4], prefix_len| TapNetwork { guest_addr: guest.into(), prefix_len, ..TapNetwork::default() };
        assert_eq!(net([10, 99, 0, 200], 24).validate(), Ok(()));
        assert!(net([10, 98, 0, 2], 24).validate().unwrap_err().contains("not in the host's subnet 10.99.0.1/24"));
        assert_eq!(net([10, 98, 0, 2], 8).validate(), Ok(()));
        assert!(net([10, 99, 0, 1], 24).validate().unwrap_err().contains("cannot both be"));
        assert!(net([10, 99, 0, 2], 31).validate().is_err());
        assert!(net([10, 99, 0, 2], 0).validate().is_err());
    }

    #[test]
    fn netns_list_output() {
        assert_eq!(parse_netns_list("mqnet (id: 0)\nother\n\n"), ["mqnet", "other"]);
        assert!(parse_netns_list("").is_empty());
    }

    // A fake `ip` (per test thread): records commands, fails those that
    // start with `fail_at`, and keeps the list of namespaces that `netns add`
    // and `netns del` change.
    thread_local! {
        static LOG: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
        static FAIL_AT: RefCell<Option<String>> = const { RefCell::new(None) };
        static EXISTING: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    }

    fn fake_ip(cmd: &[String]) -> Result<String, String> {
        let line = cmd.join(" ");
        LOG.with(|l| l.borrow_mut().push(line.clone()));
        if line == "ip netns list" {
            return Ok(EXISTING.with(|e| e.borrow().iter().map(|n| format!("{n} (id: 0)\n")).collect()));
        }
        if FAIL_AT.with(|f| f.borrow().as_ref().is_some_and(|p| line.starts_with(p.as_str()))) {
            return Err(format!("`{line}` failed"));
        }
        if let Some(ns) = line.strip_prefix("ip netns add ") {
            EXISTING.with(|e| e.borrow_mut().push(ns.to_string()));
        } else if let Some(ns) = line.strip_prefix("ip netns del ") {
            EXISTING.with(|e| e.borrow_mut().retain(|n| n != ns));
        }
        Ok(String::new())
    }

    fn fake(existing: &[&str], fail_at: Option<&str>) {
        LOG.with(|l| l.borrow_mut().clear());
        EXISTING.with(|e| *e.borrow_mut() = existing.iter().map(|n| n.to_string()).collect());
        FAIL_AT.with(|f| *f.borrow_mut() = fail_at.map(String::from));
    }

    fn log() -> Vec<String> {
        LOG.with(|l| l.borrow().clone())
    }

    fn existing() -> Vec<String> {
        EXISTING.with(|e| e.borrow().clone())
    }

    #[test]
    fn guard_runs_the_plan_and_deletes_on_drop() {
        fake(&["other"], None);
        let net = TapNetwork::new("mqnet", 2).unwrap();
        let guard = NetnsGuard::create_with(&net, fake_ip).unwrap();
        assert_eq!(log().len(), 6, "list + 5 steps: {:?}", log());
        assert_eq!(existing(), ["other", "mqnet"]);
        drop(guard);
        assert_eq!(log().last().unwrap(), "ip netns del mqnet");
        assert_eq!(existing(), ["other"]);
    }

    #[test]
    fn explicit_delete_runs_once_and_reports_failure() {
        fake(&[], Some("ip netns del"));
        let guard = NetnsGuard::create_with(&TapNetwork::default(), fake_ip).unwrap();
        let err = guard.delete().unwrap_err();
        assert!(err.contains("delete it with:\n    ip netns del mqnet"), "{err}");
        assert_eq!(log().iter().filter(|c| c.starts_with("ip netns del")).count(), 1, "not again on drop");
    }

    #[test]
    fn a_namespace_deleted_by_someone_else_is_not_an_error() {
        fake(&[], None);
        let guard = NetnsGuard::create_with(&TapNetwork::default(), fake_ip).unwrap();
        fake(&[], Some("ip netns del"));
        assert_eq!(guard.delete(), Ok(()));
        assert_eq!(log(), ["ip netns del mqnet", "ip netns list"]);
    }

    #[test]
    fn a_failing_step_undoes_what_was_done() {
        fake(&[], Some("ip -n mqnet addr add"));
        let err = NetnsGuard::create_with(&TapNetwork::default(), fake_ip).unwrap_err();
        assert!(err.contains("setting up network namespace `mqnet`"), "{err}");
        let log = log();
        assert_eq!(&log[log.len() - 2..], ["ip -n mqnet addr add 10.99.0.1/24 dev mqtap0", "ip netns del mqnet"]);
        assert!(!log.iter().any(|c| c.contains("link set mqtap0 up")), "no step after the failure: {log:?}");
        assert!(existing().is_empty());
    }

    #[test]
    fn an_existing_namespace_is_neither_reused_nor_deleted() {
        fake(&["mqnet"], None);
        let err = NetnsGuard::create_with(&TapNetwork::default(), fake_ip).unwrap_err();
        assert!(err.contains("already exists") && err.contains("ip netns del mqnet"), "{err}");
        assert_eq!(log(), ["ip netns list"]);
        assert_eq!(existing(), ["mqnet"]);
    }

    #[test]
    fn a_failing_netns_add_deletes_nothing() {
        fake(&[], Some("ip netns add"));
        let err = NetnsGuard::create_with(&TapNetwork::default(), fake_ip).unwrap_err();
        assert_eq!(err, "`ip netns add mqnet` failed");
        assert!(!log().iter().any(|c| c.starts_with("ip netns del")), "{:?}", log());
    }

    #[test]
    fn bad_input_runs_nothing() {
        fake(&[], None);
        let net = TapNetwork { queues: 0, ..TapNetwork::default() };
        assert!(NetnsGuard::create_with(&net, fake_ip).is_err());
        assert!(log().is_empty());
    }

    /// Really creates and deletes a namespace (no packets are sent). Needs
    /// root and `ip`, so it is ignored by a plain `cargo test` (and reported
    /// as skipped); `cargo xtask test` runs it when it runs as root.
    #[test]
    #[ignore = "needs root and ip (cargo xtask test runs it as root)"]
    fn real_namespace_is_created_and_deleted() {
        assert!(crate::prereq::is_root(), "needs root");
        assert!(crate::prereq::find_in_path(IP).is_some(), "needs ip (iproute2)");
        let net =
            TapNetwork { mtu: Some(9000), ..TapNetwork::new(&format!("mqnet-t{}", std::process::id()), 3).unwrap() };
        let ns = net.netns.clone();
        assert!(!list().unwrap().contains(&ns), "{ns} exists before the test");
        let guard = NetnsGuard::create(&net).unwrap();
        assert!(list().unwrap().contains(&ns));
        let link = run_ip(&strings(&["ip", "-n", &ns, "-d", "addr", "show", "dev", "mqtap0"])).unwrap();
        assert!(link.contains("tun type tap") && link.contains("multi_queue"), "{link}");
        assert!(link.contains("inet 10.99.0.1/24") && link.contains(" mtu 9000 "), "{link}");

        // A second run with the same name fails and leaves the first one alone.
        let err = NetnsGuard::create(&net).unwrap_err();
        assert!(err.contains("already exists"), "{err}");
        assert!(list().unwrap().contains(&ns), "the failed second create deleted {ns}");

        drop(guard);
        assert!(!list().unwrap().contains(&ns), "{ns} is still there after the guard was dropped");
    }
}
