//! Runs QEMU: streams the guest's serial console line by line, enforces a
//! timeout, honours a stop request (Ctrl-C) and interprets the exit.
//!
//! QEMU runs in a process group of its own, so a Ctrl-C in the terminal
//! reaches only the runner, which then ends QEMU itself (SIGTERM, then
//! SIGKILL after a grace period) and can clean up whatever it set up around
//! it. Only the process the runner started is ever signalled. Should the
//! runner itself be killed outright, the kernel sends QEMU SIGTERM
//! (PR_SET_PDEATHSIG), so no VM outlives the command that started it.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::outcome::{Outcome, StopReason};
use crate::procstat;
use crate::qemu::QemuConfig;

/// How long QEMU gets to exit after SIGTERM before it is killed.
const GRACE: Duration = Duration::from_secs(3);

/// One line of serial output and when it arrived (since QEMU started).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub at: Duration,
    pub text: String,
}

#[derive(Default)]
pub struct RunOptions {
    /// Stop QEMU after this long.
    pub timeout: Option<Duration>,
    /// Print each serial line to stdout as it arrives.
    pub echo: bool,
    /// Set by someone else (a Ctrl-C handler) to stop QEMU.
    pub stop: Option<Arc<AtomicBool>>,
    /// Sample the vCPU threads' CPU time when a line containing this
    /// arrives, and again just before the runner stops QEMU.
    pub sample_cpu_after: Option<String>,
    pub during: Option<During>,
}

/// Host-side work to do while the VM runs (traffic from the namespace, say).
pub struct During {
    /// Start once a serial line contains this.
    pub after: String,
    /// The work; its result ends up in the report. It must bound itself.
    pub action: Box<dyn FnOnce(Started) -> Result<String, String> + Send>,
    /// Keep the VM running this long after the work (for its last reports),
    /// then stop it.
    pub then_wait: Duration,
}

/// What [`During::action`] is handed when it starts.
pub struct Started {
    /// QEMU's process id (its threads are in `/proc/<pid>/task`).
    pub pid: u32,
    /// The serial console so far, growing while the VM runs.
    pub console: Console,
}

/// The serial lines of a run, shared between the runner, which appends
/// each line as it arrives, and the host-side work, which may look at them
/// while the VM runs.
#[derive(Clone, Debug, Default)]
pub struct Console(Arc<Mutex<Vec<Line>>>);

impl Console {
    fn push(&self, line: Line) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(line);
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<Line> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The first line so far that contains `needle`.
    pub fn find(&self, needle: &str) -> Option<Line> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).iter().find(|l| l.text.contains(needle)).cloned()
    }
}

/// CPU use of each vCPU thread between the marker line and the stop.
#[derive(Clone, Debug)]
pub struct CpuSample {
    pub window: Duration,
    /// (thread name, share of one host CPU).
    pub vcpus: Vec<(String, f64)>,
}

pub struct RunReport {
    pub outcome: Outcome,
    pub lines: Vec<Line>,
    /// QEMU's own diagnostics.
    pub stderr: String,
    pub elapsed: Duration,
    pub cpu_sample: Option<CpuSample>,
    /// What `During::action` returned, if it ran.
    pub action: Option<Result<String, String>>,
}

impl RunReport {
    /// The first line containing `needle`.
    pub fn find(&self, needle: &str) -> Option<&Line> {
        self.lines.iter().find(|l| l.text.contains(needle))
    }
}

/// Boots `config` and waits for the VM to end (or be ended).
pub fn run(config: &QemuConfig, opts: &mut RunOptions) -> Result<RunReport, String> {
    // With a network namespace this starts `ip netns exec`, which execs QEMU
    // in place: the child's PID, the process group and PR_SET_PDEATHSIG (kept
    // across exec) all carry over to QEMU.
    config.validate()?;
    let (program, args) = config.program_and_args();
    let mut command = Command::new(&program);
    command.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    // SAFETY: the closure runs in the forked child before exec and only
    // calls prctl(2), which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            // If the runner dies without cleaning up (SIGKILL), QEMU follows.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|e| format!("could not start {program}: {e}"))?;
    let started = Instant::now();

    let (tx, rx) = mpsc::channel::<Line>();
    let stdout = child.stdout.take().expect("stdout is piped");
    let reader = thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        while matches!(r.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
            let text = strip_terminal_controls(&String::from_utf8_lossy(&buf));
            buf.clear();
            if tx.send(Line { at: started.elapsed(), text }).is_err() {
                break;
            }
        }
    });
    let mut stderr_pipe = child.stderr.take().expect("stderr is piped");
    let stderr_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr_pipe.read_to_string(&mut s);
        s
    });

    let deadline = opts.timeout.map(|t| started + t);
    let console = Console::default();
    let mut stopped = None;
    let mut first_sample: Option<(Instant, Vec<procstat::ThreadTime>)> = None;
    let mut cpu_sample = None;
    let mut during = opts.during.take();
    let mut worker: Option<thread::JoinHandle<Result<String, String>>> = None;
    let mut action = None;
    let mut then_wait = Duration::ZERO;
    let mut finish_at: Option<Instant> = None;
    let status = loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => {
                if opts.echo {
                    println!("{}", line.text);
                }
                if first_sample.is_none() && opts.sample_cpu_after.as_ref().is_some_and(|m| line.text.contains(m)) {
                    first_sample = Some((Instant::now(), procstat::threads(child.id())));
                }
                if during.as_ref().is_some_and(|d| line.text.contains(&d.after)) {
                    let d = during.take().expect("checked");
                    then_wait = d.then_wait;
                    let started = Started { pid: child.id(), console: console.clone() };
                    console.push(line);
                    worker = Some(thread::spawn(move || (d.action)(started)));
                    continue;
                }
                console.push(line);
                continue;
            }
            Err(mpsc::RecvTimeoutError::Timeout | mpsc::RecvTimeoutError::Disconnected) => {}
        }
        if let Some(status) = child.try_wait().map_err(|e| format!("waiting for QEMU: {e}"))? {
            break status;
        }
        if worker.as_ref().is_some_and(|w| w.is_finished()) {
            action = worker.take().map(join_work);
            finish_at = Some(Instant::now() + then_wait);
        }
        let reason = if opts.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst)) {
            Some(StopReason::Interrupted)
        } else if finish_at.is_some_and(|t| Instant::now() >= t) {
            Some(StopReason::Finished)
        } else if deadline.is_some_and(|d| Instant::now() >= d) {
            Some(StopReason::Timeout)
        } else {
            None
        };
        if let Some(reason) = reason {
            if let Some((at, before)) = &first_sample {
                let after = procstat::threads(child.id());
                let window = at.elapsed();
                cpu_sample = Some(CpuSample { window, vcpus: procstat::vcpu_utilisation(before, &after, window) });
            }
            stopped = Some(reason);
            break terminate(&mut child)?;
        }
    };
    // QEMU is gone: its stdout reaches EOF, so the reader finishes.
    let _ = reader.join();
    for line in rx.try_iter() {
        if opts.echo {
            println!("{}", line.text);
        }
        console.push(line);
    }
    let stderr = stderr_reader.join().unwrap_or_default();
    use std::os::unix::process::ExitStatusExt;
    let outcome = Outcome::from_exit(status.code(), status.signal(), stopped);
    if let Some(w) = worker.take() {
        // QEMU ended first; the work is bounded, so wait for its result.
        action = Some(join_work(w));
    }
    Ok(RunReport { outcome, lines: console.lines(), stderr, elapsed: started.elapsed(), cpu_sample, action })
}

fn join_work(w: thread::JoinHandle<Result<String, String>>) -> Result<String, String> {
    w.join().unwrap_or_else(|_| Err("the host-side work panicked".into()))
}

/// SIGTERM, then SIGKILL if QEMU has not exited within [`GRACE`].
fn terminate(child: &mut Child) -> Result<std::process::ExitStatus, String> {
    signal(child, libc::SIGTERM);
    let until = Instant::now() + GRACE;
    while Instant::now() < until {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Ok(status);
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().map_err(|e| e.to_string())
}

fn signal(child: &Child, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else { return };
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our own
    // child, which has not been reaped yet (try_wait returned None), so the
    // PID cannot have been reused by another process.
    unsafe { libc::kill(pid, sig) };
}

/// Removes terminal control sequences (OVMF clears the screen) and trailing
/// line ends, so lines can be matched and echoed without side effects.
pub fn strip_terminal_controls(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                // CSI: ESC [ params final-byte(0x40..=0x7e); other escapes: skip one char.
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('\u{40}'..='\u{7e}').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\r' | '\n' => {}
            c if c.is_control() && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_controls_are_stripped() {
        assert_eq!(strip_terminal_controls("\u{1b}[2J\u{1b}[01;01H\u{1b}[=3hBdsDxe: ok\r\n"), "BdsDxe: ok");
        assert_eq!(strip_terminal_controls("[    0.1] cpu0 INFO  x\n"), "[    0.1] cpu0 INFO  x");
        assert_eq!(strip_terminal_controls("a\u{7}b\tc"), "ab\tc");
    }
}
