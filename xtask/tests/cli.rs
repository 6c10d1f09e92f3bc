//! The xtask binary itself: bad input gives a clear error and status 2.

use std::process::Command;

fn xtask(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask")).args(args).output().expect("xtask runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn unknown_option_exits_2_and_names_it() {
    let (code, err) = xtask(&["run", "--frobnicate"]);
    assert_eq!(code, 2);
    assert!(err.contains("unexpected argument '--frobnicate'"), "{err}");
}

#[test]
fn bad_value_exits_2_and_lists_the_choices() {
    let (code, err) = xtask(&["run", "--accel", "hvf"]);
    assert_eq!(code, 2);
    assert!(err.contains("invalid value 'hvf'") && err.contains("auto, kvm, tcg"), "{err}");
    let (code, err) = xtask(&["run", "--memory", "lots"]);
    assert_eq!(code, 2);
    assert!(err.contains("`lots` is not a size"), "{err}");
}

#[test]
fn unknown_command_exits_2() {
    let (code, err) = xtask(&["launch"]);
    assert_eq!(code, 2);
    assert!(err.contains("unrecognized subcommand 'launch'"), "{err}");
}

#[test]
fn help_lists_the_commands() {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask")).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["build", "run", "test", "bench"] {
        assert!(text.contains(cmd), "{text}");
    }
    // tcp-load is the tests' and benchmarks' own client: not listed.
    assert!(!text.contains("tcp-load"), "{text}");
}

#[test]
fn tcp_load_usage_errors_exit_2() {
    let (code, err) = xtask(&["tcp-load", "echo", "--addr", "10.99.0.2"]);
    assert_eq!(code, 2);
    assert!(err.contains("--bytes"), "{err}");
    let (code, err) = xtask(&["tcp-load", "chargen", "--addr", "10.99.0.2", "--bytes", "1"]);
    assert_eq!(code, 2);
    assert!(err.contains("invalid value 'chargen'") && err.contains("echo, discard"), "{err}");
    let (code, _) = xtask(&["bench", "echo", "--queues", "0"]);
    assert_eq!(code, 2);
}

#[test]
fn tap_options_without_net_tap_exit_2() {
    let (code, err) = xtask(&["run", "--net", "user", "--queues", "4"]);
    assert_eq!(code, 2);
    assert!(err.contains("--queues, --netns and --rss need a tap network"), "{err}");
    let (code, err) = xtask(&["run", "--net", "none", "--rss"]);
    assert_eq!(code, 2);
    assert!(err.contains("--queues, --netns and --rss need a tap network"), "{err}");
    let (code, err) = xtask(&["run", "--net", "tap", "--netns", "no/slash"]);
    assert_eq!(code, 2);
    assert!(err.contains("network namespace name `no/slash` contains `/`"), "{err}");
}
