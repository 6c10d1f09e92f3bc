//! What the end of a QEMU process means.

use std::fmt;

use kernel::abi;

/// Why the runner ended QEMU itself, if it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    Timeout,
    /// The user asked (Ctrl-C, SIGTERM, SIGHUP).
    Interrupted,
    /// What the run was for (host-side traffic) is done.
    Finished,
}

/// How a VM run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The kernel wrote the success code to isa-debug-exit.
    Success,
    /// The kernel reported a failure (panic, CPU exception).
    KernelFailure,
    /// QEMU exited 0: the guest reset or powered off without reporting
    /// (with `-no-reboot`, a triple fault ends up here).
    GuestReset,
    /// The runner stopped QEMU.
    Stopped(StopReason),
    /// QEMU itself failed (bad arguments, missing file, ...).
    QemuError(i32),
    /// QEMU died from a signal the runner did not send.
    Killed(i32),
}

impl Outcome {
    /// Interprets QEMU's exit (`code` or `signal`) given whether the runner
    /// stopped it.
    pub fn from_exit(code: Option<i32>, signal: Option<i32>, stopped: Option<StopReason>) -> Outcome {
        if let Some(reason) = stopped {
            // A kernel that reported before the stop took effect still counts.
            match code {
                Some(c) if c == abi::qemu_exit_status(abi::DEBUG_EXIT_SUCCESS) => return Outcome::Success,
                Some(c) if c == abi::qemu_exit_status(abi::DEBUG_EXIT_FAILURE) => return Outcome::KernelFailure,
                _ => return Outcome::Stopped(reason),
            }
        }
        match (code, signal) {
            (Some(c), _) if c == abi::qemu_exit_status(abi::DEBUG_EXIT_SUCCESS) => Outcome::Success,
            (Some(c), _) if c == abi::qemu_exit_status(abi::DEBUG_EXIT_FAILURE) => Outcome::KernelFailure,
            (Some(0), _) => Outcome::GuestReset,
            (Some(c), _) => Outcome::QemuError(c),
            (None, Some(s)) => Outcome::Killed(s),
            (None, None) => Outcome::QemuError(-1),
        }
    }

    /// Exit status for `cargo xtask run`: 0 when the kernel succeeded or the
    /// user's stop (timeout, Ctrl-C) ended an otherwise healthy run.
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::Success | Outcome::Stopped(_) => 0,
            _ => 1,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Success => f.write_str("the kernel reported success"),
            Outcome::KernelFailure => f.write_str("the kernel reported a failure"),
            Outcome::GuestReset => f.write_str("the guest reset or powered off without reporting (triple fault?)"),
            Outcome::Stopped(StopReason::Timeout) => f.write_str("stopped at the timeout"),
            Outcome::Stopped(StopReason::Interrupted) => f.write_str("stopped on request (Ctrl-C or SIGTERM)"),
            Outcome::Stopped(StopReason::Finished) => f.write_str("stopped after the host-side work finished"),
            Outcome::QemuError(c) => write!(f, "QEMU failed with exit status {c}"),
            Outcome::Killed(s) => write!(f, "QEMU was killed by signal {s}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_exit_codes_map_to_kernel_outcomes() {
        assert_eq!(Outcome::from_exit(Some(33), None, None), Outcome::Success);
        assert_eq!(Outcome::from_exit(Some(35), None, None), Outcome::KernelFailure);
        assert_eq!(Outcome::from_exit(Some(0), None, None), Outcome::GuestReset);
        assert_eq!(Outcome::from_exit(Some(1), None, None), Outcome::QemuError(1));
        assert_eq!(Outcome::from_exit(None, Some(9), None), Outcome::Killed(9));
    }

    #[test]
    fn a_stop_by_the_runner_is_not_a_crash() {
        let t = Some(StopReason::Timeout);
        assert_eq!(Outcome::from_exit(None, Some(15), t), Outcome::Stopped(StopReason::Timeout));
        assert_eq!(Outcome::from_exit(Some(0), None, t), Outcome::Stopped(StopReason::Timeout));
        assert_eq!(Outcome::from_exit(Some(35), None, t), Outcome::KernelFailure, "report wins the race");
        let i = Some(StopReason::Interrupted);
        assert_eq!(Outcome::from_exit(None, Some(2), i).to_string(), "stopped on request (Ctrl-C or SIGTERM)");
    }

    #[test]
    fn run_exit_codes() {
        assert_eq!(Outcome::Success.exit_code(), 0);
        assert_eq!(Outcome::Stopped(StopReason::Timeout).exit_code(), 0);
        assert_eq!(Outcome::KernelFailure.exit_code(), 1);
        assert_eq!(Outcome::GuestReset.exit_code(), 1);
        assert_eq!(Outcome::QemuError(1).exit_code(), 1);
    }
}
