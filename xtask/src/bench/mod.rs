//! `cargo xtask bench`: benchmarks. They print tables and write JSON (and
//! CSV and a chart); they never pass or fail on speed (the exit status only
//! says whether every measurement could be taken).
//!
//! - `bench` (or `bench iperf`): the netperf-style multiqueue matrix, the
//!   host's iperf3 against the guest's iperf3 server ([`iperf`]).
//! - `bench echo`: TCP echo loads of this executable's `tcp-load` ([`echo`]).
//! - `bench raw`: the raw driver mode ([`raw`]).
//! - `bench rr`: request/response latency against the RR service ([`rr`]).

mod echo;
pub mod iperf;
mod matrix;
mod measure;
pub mod raw;
mod report;
pub mod rr;
mod svg;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use boot::prereq;
use boot::qemu;

use crate::cli::{BenchArgs, BenchCmd};
use crate::kbuild;
use crate::run::say;
use serde_json::{json, Value};

pub fn bench(args: BenchArgs) -> Result<i32, String> {
    match args.bench {
        Some(BenchCmd::Echo(a)) => echo::run(a),
        Some(BenchCmd::Raw(a)) => raw::raw(a),
        Some(BenchCmd::Rr(a)) => rr::rr(a),
        Some(BenchCmd::Iperf(a)) => iperf::main(a),
        None => iperf::main(args.iperf),
    }
}

/// `<target>/bench`: the kernel is `<target>/x86_64-unknown-none/release/kernel`.
fn bench_dir(built: &kbuild::Built) -> PathBuf {
    built.kernel.ancestors().nth(3).map_or_else(|| kbuild::workspace_root().join("target"), PathBuf::from).join("bench")
}

/// A benchmark creates a network namespace and a tap: without root it
/// stops before the (slow) kernel build, with the command to use.
fn require_root(what: &str) -> Result<(), String> {
    if prereq::is_root() {
        return Ok(());
    }
    let again: Vec<String> = std::env::args().skip(1).map(|x| qemu::shell_quote(&x)).collect();
    Err(format!(
        "{what} needs root: it creates a network namespace and a tap device. Run it as root, e.g.\n    \
         sudo -E env \"PATH=$PATH\" cargo xtask {}",
        again.join(" ")
    ))
}

/// Boots once per item of `plan` (none once a stop was asked for), gathering
/// every boot's rows and, per boot, `{what…, "error": null | why}` as JSON.
/// `label` says what the item is (for JSON and the console).
fn each_boot<P, R>(
    plan: impl IntoIterator<Item = P>,
    stop: &AtomicBool,
    label: impl Fn(&P) -> Value,
    mut boot: impl FnMut(P) -> Result<Vec<R>, String>,
) -> (Vec<R>, Vec<Value>) {
    let (mut rows, mut boots) = (Vec::new(), Vec::new());
    for item in plan {
        let what = label(&item);
        let outcome = if stop.load(Ordering::SeqCst) { Err("interrupted".to_string()) } else { boot(item) };
        let error = match outcome {
            Ok(r) => {
                rows.extend(r);
                Value::Null
            }
            Err(e) => {
                say!("{what}: {e}");
                Value::String(e)
            }
        };
        let mut b = what;
        match &mut b {
            Value::Object(m) => {
                m.insert("error".into(), error);
            }
            other => *other = json!({"boot": other.clone(), "error": error}),
        }
        boots.push(b);
    }
    (rows, boots)
}

/// Writes `contents` to `path`, creating its directory.
fn write_out(path: &Path, contents: &str) -> Result<(), String> {
    path.parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(path, contents))
        .map_err(|e| format!("could not write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_go_to_the_target_directory() {
        let built = kbuild::Built {
            kernel: "/w/target/x86_64-unknown-none/release/kernel".into(),
            images_dir: "/w/target/x86_64-unknown-none/release/images".into(),
        };
        assert_eq!(bench_dir(&built), PathBuf::from("/w/target/bench"));
    }

    #[test]
    fn files_are_written_with_their_directory() {
        let dir = std::env::temp_dir().join(format!("mqnet-bench-write-{}", std::process::id()));
        let path = dir.join("a/b.txt");
        write_out(&path, "x\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "x\n");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(write_out(Path::new("/proc/no/such/place.txt"), "x").unwrap_err().contains("could not write"));
    }
}
