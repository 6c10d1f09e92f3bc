//! `cargo xtask run`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use boot::accel::{self, HostFacts};
use boot::image::Firmware;
use boot::prereq::{self, Tool};
use boot::qemu::{Boot, QemuConfig};
use boot::runner::{self, RunOptions};

use crate::cli::RunArgs;
use crate::kbuild;

/// Prints a progress line of xtask's own (serial output goes to stdout).
macro_rules! say {
    ($($t:tt)*) => { eprintln!("xtask: {}", format_args!($($t)*)) };
}
pub(crate) use say;

/// Installs the Ctrl-C handler once and returns the flag it sets.
pub fn stop_flag() -> Arc<AtomicBool> {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        let f = flag.clone();
        if let Err(e) = ctrlc::set_handler(move || f.store(true, Ordering::SeqCst)) {
            say!("warning: no Ctrl-C handler ({e}); QEMU would outlive an interrupted xtask");
        }
        flag
    })
    .clone()
}

/// Prerequisites, accelerator and the firmware's boot description.
pub fn prepare(firmware: Firmware, request: accel::AccelRequest) -> Result<accel::AccelChoice, String> {
    let mut tools = vec![Tool::Qemu];
    if firmware == Firmware::Uefi {
        tools.push(Tool::Ovmf);
    }
    prereq::ensure(&tools, &mut |m| say!("{m}"))?;
    accel::choose(request, HostFacts::probe(), firmware == Firmware::Uefi)
}

pub fn boot_for(firmware: Firmware, built: &kbuild::Built) -> Result<Boot, String> {
    let image = built.image(firmware);
    Ok(match firmware {
        Firmware::Bios => Boot::Bios { image },
        Firmware::Uefi => Boot::Uefi {
            ovmf: prereq::find_ovmf().ok_or("OVMF firmware not found (set MQNET_OVMF to its path)")?,
            image,
        },
    })
}

pub fn run(args: RunArgs) -> Result<i32, String> {
    let firmware = if args.uefi { Firmware::Uefi } else { Firmware::Bios };
    let choice = prepare(firmware, args.accel.into())?;
    say!("accelerator: {} ({})", choice.accel, choice.reason);
    let built = kbuild::build(args.build.release, &[firmware])?;
    let mut config = QemuConfig::new(choice.accel, boot_for(firmware, &built)?).with_kernel_cmdline(&args.cmdline);
    config.cpus = args.smp;
    config.memory_mib = args.memory;
    config.network = args.net.into();
    if let Some(m) = args.machine {
        config.machine = m.into();
    }
    say!("{}", config.command_line());
    match args.timeout {
        Some(t) => say!("the VM stops after {:.1} s or on Ctrl-C", t.as_secs_f64()),
        None => say!("the VM runs until Ctrl-C"),
    }
    let opts = RunOptions { timeout: args.timeout, echo: true, stop: Some(stop_flag()), sample_cpu_after: None };
    let report = runner::run(&config, &opts)?;
    // QEMU's note that it got our SIGTERM is expected, not news.
    let stderr: Vec<&str> = report.stderr.lines().filter(|l| !l.contains("terminating on signal")).collect();
    if !stderr.is_empty() {
        say!("QEMU said:\n{}", stderr.join("\n"));
    }
    if let Some(ready) = report.find(boot::abi::READY) {
        say!("the kernel finished booting {:.2} s after QEMU started", ready.at.as_secs_f64());
    }
    say!("{} after {:.1} s", report.outcome, report.elapsed.as_secs_f64());
    Ok(report.outcome.exit_code())
}
