//! The mqnet kernel binary.
//!
//! Boot order: serial → legacy PICs masked → TSC calibrated → logger → boot
//! options (fw_cfg) → memory (frames, heap) → GDT/TSS with IST stacks → IDT
//! → banner. Then either idle (halted) or, for boot tests, exit QEMU.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![cfg_attr(target_os = "none", feature(abi_x86_interrupt))]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod arch;
#[cfg(target_os = "none")]
mod faults;
#[cfg(target_os = "none")]
mod memory;
#[cfg(target_os = "none")]
mod panic;
#[cfg(target_os = "none")]
mod serial;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("the kernel runs on bare metal only: build and boot it with `cargo xtask run`");
    std::process::exit(2);
}

#[cfg(target_os = "none")]
mod boot {
    use bootloader_api::config::{BootloaderConfig, Mapping};
    use bootloader_api::{entry_point, BootInfo};
    use kernel::abi;
    use kernel::cmdline::{AfterBoot, BootOptions};
    use kernel::time::BootTimes;
    use log::{info, warn};

    use crate::{arch, faults, memory, serial};

    const KERNEL_STACK_SIZE: u64 = 256 * 1024;

    static BOOTLOADER_CONFIG: BootloaderConfig = {
        let mut config = BootloaderConfig::new_default();
        config.mappings.physical_memory = Some(Mapping::Dynamic);
        config.kernel_stack_size = KERNEL_STACK_SIZE;
        config
    };

    entry_point!(kernel_main, config = &BOOTLOADER_CONFIG);

    fn kernel_main(boot_info: &'static mut BootInfo) -> ! {
        let entry_tsc = arch::time::rdtsc();
        serial::init();
        arch::pic::mask_legacy_pics();
        let calibration = arch::time::init(entry_tsc);
        serial::init_logger();

        let mut cmdline_buf = [0u8; 1024];
        let cmdline = arch::fwcfg::read_file(abi::FW_CFG_CMDLINE, &mut cmdline_buf)
            .map(|n| core::str::from_utf8(&cmdline_buf[..n]).unwrap_or("").trim_end_matches('\0'))
            .unwrap_or("");
        let options = BootOptions::parse(cmdline, |problem| warn!("{problem}"));
        log::set_max_level(options.log_level);

        let mem = memory::init(boot_info);
        arch::gdt::init();
        arch::idt::init();

        let clock = arch::time::clock();
        info!(
            "{} v{} ({} build), x86_64, booted by bootloader 0.11 ({})",
            abi::BANNER,
            env!("CARGO_PKG_VERSION"),
            if cfg!(debug_assertions) { "debug" } else { "release" },
            if mem.uefi { "UEFI" } else { "BIOS" },
        );
        if cmdline.trim().is_empty() {
            info!("boot options: none");
        } else {
            info!("boot options: {}", cmdline.trim());
        }
        info!("memory: {}", mem.stats);
        info!(
            "heap: {} MiB at physical {:#x} (DMA-able, direct map at {:#x}); {} MiB left for frames",
            mem.heap_bytes >> 20,
            mem.heap_phys,
            mem.direct_map_offset,
            mem.frames_free >> 20,
        );
        match calibration {
            Ok(hz) => info!(
                "clock: TSC at {}.{:03} GHz, calibrated against the PIT",
                hz / 1_000_000_000,
                hz / 1_000_000 % 1000
            ),
            Err(hz) => {
                warn!("clock: TSC calibration failed, assuming {} MHz: timestamps are approximate", hz / 1_000_000)
            }
        }
        let times = BootTimes::measure(clock, entry_tsc, arch::time::rdtsc());
        info!("{} {times}", abi::READY);

        if let Some(fault) = options.fault {
            faults::provoke(fault);
        }
        match options.after_boot {
            AfterBoot::Exit => {
                info!("exit=after-boot: reporting success to the host");
                arch::qemu::exit(arch::qemu::ExitCode::Success)
            }
            AfterBoot::Idle => {
                info!("idle: all work done, halting until the host stops the VM");
                arch::halt_forever()
            }
        }
    }
}
