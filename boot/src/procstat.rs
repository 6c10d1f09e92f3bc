//! CPU time of a process's threads from `/proc/<pid>/task/*/stat`, so the
//! host can tell whether QEMU's vCPU threads were busy or idle (the guest's
//! own accounting is not enough: a spinning guest looks busy only here).

use std::fs;
use std::time::Duration;

/// One thread's name and its user+system CPU time so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadTime {
    pub tid: u32,
    pub name: String,
    pub cpu: Duration,
}

/// Parses a `stat` line: `tid (comm) state ... utime stime ...`. The name
/// may contain spaces and parentheses, so the fields are counted from the
/// last `)`. `ticks_per_sec` is `sysconf(_SC_CLK_TCK)`.
pub fn parse_stat(line: &str, ticks_per_sec: u64) -> Option<ThreadTime> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let tid = line[..open].trim().parse().ok()?;
    let name = line[open + 1..close].to_string();
    // After ")": state(3) ppid(4) ... utime is field 14, stime 15 (1-based).
    let fields: Vec<&str> = line[close + 1..].split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let ticks = utime + stime;
    let tps = ticks_per_sec.max(1);
    Some(ThreadTime { tid, name, cpu: Duration::from_nanos(ticks * 1_000_000_000 / tps) })
}

/// The threads of `pid` right now (threads that exit meanwhile are skipped).
pub fn threads(pid: u32) -> Vec<ThreadTime> {
    // SAFETY: sysconf has no preconditions.
    let tps = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    let mut out: Vec<ThreadTime> = dir
        .flatten()
        .filter_map(|e| fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|l| parse_stat(&l, tps))
        .collect();
    out.sort_by_key(|t| t.tid);
    out
}

/// QEMU names its vCPU threads `CPU <n>/TCG` or `CPU <n>/KVM`.
pub fn is_vcpu_thread(name: &str) -> bool {
    name.starts_with("CPU ") && (name.ends_with("/TCG") || name.ends_with("/KVM"))
}

/// vhost-net names its worker threads `vhost-<QEMU pid>`; from Linux 6.4
/// on they are threads of the QEMU process itself.
pub fn is_vhost_thread(name: &str) -> bool {
    name.starts_with("vhost-")
}

/// CPU time a process's threads used between two samples, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuByKind {
    /// The vCPU threads ([`is_vcpu_thread`]).
    pub vcpu: Duration,
    /// vhost-net workers ([`is_vhost_thread`]).
    pub vhost: Duration,
    /// Every other thread: QEMU's main loop (device models, the tap
    /// backend without vhost), I/O threads, worker threads.
    pub other: Duration,
}

/// What each kind of thread used between `before` and `after`. A thread
/// that started meanwhile counts from zero; one that ended meanwhile is
/// missing from `after` and its time is lost (QEMU's long-lived threads
/// do the work, so this is small).
pub fn used_between(before: &[ThreadTime], after: &[ThreadTime]) -> CpuByKind {
    let mut used = CpuByKind::default();
    for t in after {
        let start = before.iter().find(|b| b.tid == t.tid).map_or(Duration::ZERO, |b| b.cpu);
        let d = t.cpu.saturating_sub(start);
        if is_vcpu_thread(&t.name) {
            used.vcpu += d;
        } else if is_vhost_thread(&t.name) {
            used.vhost += d;
        } else {
            used.other += d;
        }
    }
    used
}

/// Per vCPU thread: the share of one host CPU it used between two samples.
pub fn vcpu_utilisation(before: &[ThreadTime], after: &[ThreadTime], wall: Duration) -> Vec<(String, f64)> {
    after
        .iter()
        .filter(|t| is_vcpu_thread(&t.name))
        .map(|t| {
            let start = before.iter().find(|b| b.tid == t.tid).map_or(Duration::ZERO, |b| b.cpu);
            let used = t.cpu.saturating_sub(start).as_secs_f64();
            (t.name.clone(), if wall.is_zero() { 0.0 } else { used / wall.as_secs_f64() })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "4242 (CPU 1/TCG) S 4240 4240 123 0 -1 4194624 30 0 0 0 250 50 0 0 20 0 5 0 1234 0 0";

    #[test]
    fn parses_names_with_spaces_and_slashes() {
        let t = parse_stat(LINE, 100).unwrap();
        assert_eq!(t.tid, 4242);
        assert_eq!(t.name, "CPU 1/TCG");
        assert_eq!(t.cpu, Duration::from_secs(3), "(250 + 50) ticks at 100 Hz");
        assert!(is_vcpu_thread(&t.name));
        assert!(!is_vcpu_thread("qemu-system-x86"));
        assert!(!is_vcpu_thread("CPU stuff"));
    }

    #[test]
    fn a_name_with_a_parenthesis_does_not_shift_fields() {
        let line = LINE.replace("(CPU 1/TCG)", "(a) b)");
        assert_eq!(parse_stat(&line, 100).unwrap().name, "a) b");
        assert_eq!(parse_stat("garbage", 100), None);
        assert_eq!(parse_stat("1 (x) S 1 2", 100), None, "too few fields");
    }

    #[test]
    fn utilisation_between_samples() {
        let t = |tid, name: &str, ms| ThreadTime { tid, name: name.into(), cpu: Duration::from_millis(ms) };
        let before = [t(1, "qemu", 500), t(2, "CPU 0/TCG", 1000), t(3, "CPU 1/TCG", 1000)];
        let after = [t(1, "qemu", 900), t(2, "CPU 0/TCG", 1050), t(3, "CPU 1/TCG", 3000)];
        let u = vcpu_utilisation(&before, &after, Duration::from_secs(2));
        assert_eq!(u, [("CPU 0/TCG".to_string(), 0.025), ("CPU 1/TCG".to_string(), 1.0)]);
    }

    #[test]
    fn cpu_by_kind_from_stat_text() {
        // Two /proc/<pid>/task/*/stat readings of a QEMU with two vCPUs, its
        // main thread, a vhost worker and a worker thread that started
        // between them; clock ticks at 100 Hz.
        let stat = |tid: u32, name: &str, utime: u64, stime: u64| {
            let line = format!("{tid} ({name}) S 1 1 1 0 -1 4194624 30 0 0 0 {utime} {stime} 0 0 20 0 5 0 1234 0 0");
            parse_stat(&line, 100).unwrap()
        };
        let before = [
            stat(100, "qemu-system-x86", 200, 100),
            stat(101, "CPU 0/TCG", 1000, 0),
            stat(102, "CPU 1/TCG", 500, 20),
            stat(103, "vhost-100", 0, 40),
        ];
        let after = [
            stat(100, "qemu-system-x86", 260, 140),
            stat(101, "CPU 0/TCG", 1090, 5),
            stat(102, "CPU 1/TCG", 520, 25),
            stat(103, "vhost-100", 0, 70),
            stat(104, "worker", 3, 2),
        ];
        let used = used_between(&before, &after);
        assert_eq!(used.vcpu, Duration::from_millis(950 + 250), "(95 + 25) ticks");
        assert_eq!(used.vhost, Duration::from_millis(300));
        assert_eq!(used.other, Duration::from_millis(1000 + 50), "main thread 100 ticks, the new worker 5");
        assert!(is_vhost_thread("vhost-4242") && !is_vhost_thread("CPU 0/KVM") && !is_vhost_thread("qemu"));
        assert_eq!(used_between(&after, &after), CpuByKind::default());
    }

    #[test]
    fn this_process_has_readable_threads() {
        let me = threads(std::process::id());
        assert!(!me.is_empty());
    }
}
