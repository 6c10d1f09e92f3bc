//! The mqnet kernel binary.
//!
//! Boot order on the boot CPU: serial → legacy PICs masked → TSC calibrated
//! → logger → boot options (fw_cfg) → memory (frames, heap) → page tables →
//! GDT/TSS/IDT → ACPI (MADT, MCFG) → local APIC → per-CPU data → APIC timer
//! → banner → application processors → boot complete. Then every CPU runs
//! its own event loop (`runloop`); the boot CPU's loop also watches the
//! self-tests and, for boot tests, exits QEMU.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![cfg_attr(target_os = "none", feature(abi_x86_interrupt))]
#![deny(clippy::undocumented_unsafe_blocks)]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod arch;
#[cfg(target_os = "none")]
mod faults;
#[cfg(target_os = "none")]
mod memory;
#[cfg(target_os = "none")]
mod nic;
#[cfg(target_os = "none")]
mod panic;
#[cfg(target_os = "none")]
mod runloop;
#[cfg(target_os = "none")]
mod selftest;
#[cfg(target_os = "none")]
mod serial;

#[cfg(target_os = "none")]
pub use boot::options as boot_options;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("the kernel runs on bare metal only: build and boot it with `cargo xtask run`");
    std::process::exit(2);
}

#[cfg(target_os = "none")]
mod boot {
    use core::sync::atomic::{AtomicBool, Ordering};

    use bootloader_api::config::{BootloaderConfig, Mapping};
    use bootloader_api::info::{MemoryRegionKind, Optional};
    use bootloader_api::{entry_point, BootInfo};
    use kernel::abi;
    use kernel::cmdline::{AfterBoot, BootOptions};
    use kernel::frames::PhysRange;
    use kernel::madt::{CpuPlan, Skip};
    use kernel::phases::{Phase, Phases};
    use kernel::pvh::StartInfo;
    use kernel::time::{BootTimes, Instant, Millis, TscSource};
    use log::{error, info, warn};
    use spin::Once;

    use crate::arch::apic::{self, TimerKind};
    use crate::arch::percpu::{self, PerCpu};
    use crate::nic::raw::RawNic;
    use crate::nic::CpuNic;
    use crate::runloop::{self, Poll};
    use crate::selftest::SelfTest;
    use crate::{arch, faults, memory, selftest, serial};

    /// What each CPU's loop keeps for its clients: composed here, so the
    /// loop and its clients do not know each other.
    #[derive(Default)]
    struct CpuState {
        selftest: SelfTest,
        /// This vCPU's share of the NIC and its stack, once claimed.
        nic: Option<CpuNic>,
        /// Or, in raw mode (`raw=`), its queue pair alone.
        raw: Option<RawNic>,
    }

    impl AsMut<Option<RawNic>> for CpuState {
        fn as_mut(&mut self) -> &mut Option<RawNic> {
            &mut self.raw
        }
    }

    impl AsMut<SelfTest> for CpuState {
        fn as_mut(&mut self) -> &mut SelfTest {
            &mut self.selftest
        }
    }

    impl AsRef<SelfTest> for CpuState {
        fn as_ref(&self) -> &SelfTest {
            &self.selftest
        }
    }

    impl AsMut<Option<CpuNic>> for CpuState {
        fn as_mut(&mut self) -> &mut Option<CpuNic> {
            &mut self.nic
        }
    }

    type Local = runloop::Local<CpuState>;

    const KERNEL_STACK_SIZE: u64 = 256 * 1024;
    /// How long the boot CPU waits for the self-tests before giving up.
    const SELFTEST_TIMEOUT_NS: u64 = 20_000_000_000;

    static BOOTLOADER_CONFIG: BootloaderConfig = {
        let mut config = BootloaderConfig::new_default();
        config.mappings.physical_memory = Some(Mapping::Dynamic);
        config.kernel_stack_size = KERNEL_STACK_SIZE;
        config
    };

    entry_point!(kernel_main, config = &BOOTLOADER_CONFIG);

    /// The boot options (valid once the boot CPU has read them).
    pub fn options() -> &'static BootOptions {
        &CONFIG.get().expect("boot options read before use").options
    }

    /// What every CPU needs to know, fixed before the APs start.
    struct Config {
        options: BootOptions,
        timer: TimerKind,
        tsc_hz: u64,
    }

    static CONFIG: Once<Config> = Once::new();
    /// Where boot time goes (printed once the boot is over).
    static PHASES: Phases = Phases::new();

    /// Marks the end of a boot phase, now.
    fn phases(phase: Phase) {
        PHASES.mark(phase, arch::time::rdtsc());
    }

    /// The boot's last phase is over: marks it and prints the breakdown.
    pub fn boot_over(last: Phase) {
        phases(last);
        let mut line = alloc::string::String::new();
        let _ = PHASES.write(arch::time::clock(), &mut line);
        info!("{line}");
    }
    /// Set once booting is over: every CPU that could start is online and
    /// the NIC is up.
    static BOOT_DONE: AtomicBool = AtomicBool::new(false);
    /// Set when a `fault=` that did not stop the kernel has been provoked.
    static FAULT_OVER: AtomicBool = AtomicBool::new(false);

    /// How the kernel was started, and what its loader told it.
    struct Loaded<'a> {
        /// For the banner: "bootloader 0.11 (BIOS)", "PVH".
        loader: &'a str,
        entry_tsc: u64,
        /// `arch::time::init`'s result.
        calibration: Result<(u64, TscSource), u64>,
        usable: &'a mut dyn Iterator<Item = PhysRange>,
        /// The end of the physical memory the direct map covers.
        phys_end: u64,
        direct_map_offset: u64,
        rsdp: Option<u64>,
        /// The loader's command line (PVH: `-append`), after fw_cfg's.
        cmdline: &'a str,
    }

    /// The bootloader's entry (BIOS and UEFI disk images).
    fn kernel_main(boot_info: &'static mut BootInfo) -> ! {
        let entry_tsc = arch::time::rdtsc();
        let Optional::Some(offset) = boot_info.physical_memory_offset else {
            panic!("the bootloader did not map physical memory (BootloaderConfig::mappings.physical_memory)");
        };
        let calibration = early_init(entry_tsc, &|virt| arch::paging::translate_early(offset, virt));
        let regions = &boot_info.memory_regions;
        let uefi = regions.iter().any(|r| matches!(r.kind, MemoryRegionKind::UnknownUefi(_)));
        // The direct map covers every region of the map, usable or not.
        let phys_end = regions.iter().map(|r| r.end).max().unwrap_or(0);
        let mut usable =
            regions.iter().filter(|r| r.kind == MemoryRegionKind::Usable).map(|r| PhysRange::new(r.start, r.end));
        start(Loaded {
            loader: if uefi { "bootloader 0.11 (UEFI)" } else { "bootloader 0.11 (BIOS)" },
            entry_tsc,
            calibration,
            usable: &mut usable,
            phys_end,
            direct_map_offset: offset,
            rsdp: boot_info.rsdp_addr.into_option(),
            cmdline: "",
        })
    }

    /// The direct-boot entry (`arch::pvh`), with the physical address of
    /// the loader's start_info.
    fn pvh_main(start_info: u32) -> ! {
        let entry_tsc = arch::pvh::entry_tsc();
        // The kernel runs where it was loaded, KERNEL_VIRT higher.
        let calibration = early_init(entry_tsc, &|virt| virt.checked_sub(arch::pvh::KERNEL_VIRT));
        let info = match StartInfo::parse(u64::from(start_info), &mut arch::pvh::read_identity) {
            Ok(info) => info,
            Err(e) => {
                error!("pvh: {e}: cannot boot");
                arch::qemu::exit(arch::qemu::ExitCode::Failure)
            }
        };
        if let Some(e) = info.cmdline_error {
            warn!("pvh: {e}: command line ignored");
        }
        let ram_end = info.ram_end();
        let mapped = arch::pvh::switch_to_direct_map(info.mapped_end());
        if mapped < ram_end {
            warn!("pvh: RAM ends at {} MiB; only the first {} MiB are used", ram_end >> 20, mapped >> 20);
        }
        let mut ranges = [PhysRange::new(0, 0); 64];
        let n = kernel::pvh::usable_ranges(info.memory_map(), &[arch::pvh::kernel_image()], &mut ranges);
        let mut usable =
            ranges[..n].iter().map(|r| PhysRange::new(r.start, r.end.min(mapped))).filter(|r| !r.is_empty());
        // (No heap yet: nothing here may allocate.)
        info!(
            "pvh: start_info v{}: {} memory map entries, RAM up to {} MiB, command line {} bytes, RSDP at {:#x}",
            info.version,
            info.memory_map().len(),
            ram_end >> 20,
            info.cmdline().len(),
            info.rsdp.unwrap_or(0),
        );
        start(Loaded {
            loader: "PVH",
            entry_tsc,
            calibration,
            usable: &mut usable,
            phys_end: mapped,
            direct_map_offset: arch::pvh::DIRECT_MAP,
            rsdp: info.rsdp,
            cmdline: info.cmdline(),
        })
    }

    /// Where `arch::pvh`'s entry code calls Rust, on the kernel's stack.
    #[unsafe(no_mangle)]
    extern "C" fn mqnet_pvh_entry(start_info: u32) -> ! {
        pvh_main(start_info)
    }

    /// Serial, the legacy PICs masked, the clock, the logger: what every
    /// entry does first. Returns the clock's calibration.
    fn early_init(entry_tsc: u64, to_phys: &dyn Fn(u64) -> Option<u64>) -> Result<(u64, TscSource), u64> {
        PHASES.mark(Phase::Firmware, entry_tsc);
        serial::init();
        arch::pic::mask_legacy_pics();
        let calibration = arch::time::init(entry_tsc, to_phys);
        serial::init_logger();
        phases(Phase::Clock);
        calibration
    }

    /// Everything after the entry, the same however the kernel was loaded.
    fn start(boot: Loaded<'_>) -> ! {
        let Loaded { loader, entry_tsc, calibration, usable, phys_end, direct_map_offset, rsdp, cmdline: appended } =
            boot;
        // Boot options: fw_cfg's file, then the loader's command line (a
        // later option overrides an earlier one).
        let mut fw_cfg_buf = [0u8; 1024];
        let from_fw_cfg = arch::fwcfg::read_file(abi::FW_CFG_CMDLINE, &mut fw_cfg_buf)
            .map(|n| core::str::from_utf8(&fw_cfg_buf[..n]).unwrap_or("").trim_end_matches('\0').trim())
            .unwrap_or("");
        let mut joined = [0u8; 1024 + 1 + kernel::pvh::MAX_CMDLINE];
        let cmdline = kernel::cmdline::join(&[from_fw_cfg, appended], &mut joined, |part| {
            warn!("boot options: too long; ignoring {part:?}")
        });
        let options = BootOptions::parse(cmdline, |problem| warn!("{problem}"));
        log::set_max_level(options.log_level);

        let mem = memory::init(usable, phys_end, direct_map_offset);
        arch::paging::init(mem.direct_map_offset);
        arch::gdt::init();
        arch::idt::init_this_cpu();
        phases(Phase::Memory);

        let clock = arch::time::clock();
        info!(
            "{} v{} ({} build), x86_64, booted by {}",
            abi::BANNER,
            env!("CARGO_PKG_VERSION"),
            if cfg!(debug_assertions) { "debug" } else { "release" },
            loader,
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
            Ok((hz, source)) => {
                info!("clock: TSC at {}.{:06} GHz, from {}", hz / 1_000_000_000, hz / 1_000 % 1_000_000, source.name());
                if options.clock_check && source != TscSource::Pit {
                    match arch::time::pit_hz() {
                        Some(pit) => info!(
                            "clock: checked against the PIT: {}.{:06} GHz, {} ppm apart",
                            pit / 1_000_000_000,
                            pit / 1_000 % 1_000_000,
                            kernel::time::ppm_apart(hz, pit)
                        ),
                        None => warn!("clock: checked against the PIT: the PIT does not count"),
                    }
                }
            }
            Err(hz) => {
                warn!("clock: TSC calibration failed, assuming {} MHz: timestamps are approximate", hz / 1_000_000)
            }
        }

        // Processors, from the MADT.
        let madt = match rsdp {
            Some(rsdp) => match arch::acpi::init(rsdp, memory::direct_map()) {
                Ok(acpi) => {
                    for r in &acpi.ecam {
                        info!(
                            "acpi: PCI ECAM segment {} buses {}-{} at {:#x}",
                            r.segment, r.bus_start, r.bus_end, r.physical_address
                        );
                    }
                    Some(&acpi.madt)
                }
                Err(e) => {
                    warn!("acpi: {e}: running on the boot CPU only");
                    None
                }
            },
            None => {
                warn!("acpi: the loader found no RSDP: running on the boot CPU only");
                None
            }
        };
        phases(Phase::Acpi);
        let apic_base = madt.map_or(0xfee0_0000, |m| m.local_apic_address);
        let (mode, tsc_deadline) = match apic::init_global(apic_base) {
            Ok(m) => m,
            Err(e) => panic!("local APIC: {e}"),
        };
        apic::enable_this_cpu();
        let bsp_apic_id = apic::id();
        let processors = madt.map_or(&[][..], |m| &m.processors[..]);
        let mut plan = CpuPlan::new(processors, bsp_apic_id, options.max_cpus);
        report_plan(&plan, processors.len(), &options);
        if let Some(id) = options.phantom_apic.filter(|id| !plan.apic_ids.contains(id)) {
            warn!("phantom-apic={id}: also starting a processor that does not exist");
            plan.apic_ids.push(id);
        }

        let cpus = percpu::init(&plan.apic_ids);
        percpu::install(&cpus[0]);
        cpus[0].online.store(true, Ordering::Release);

        let tsc_hz = clock.hz();
        let timer = if tsc_deadline {
            TimerKind::TscDeadline
        } else {
            // 2 ms: some 125,000 counts of QEMU's 62.5 MHz APIC timer.
            match apic::calibrate_timer(clock.nanos_to_ticks(2_000_000), tsc_hz) {
                Some(hz) => TimerKind::OneShot { hz },
                None => panic!("the local APIC timer does not count"),
            }
        };
        info!(
            "apic: {:?} mode, boot CPU APIC id {bsp_apic_id}, timer {}",
            mode,
            match timer {
                TimerKind::TscDeadline => alloc::string::String::from("TSC-deadline"),
                TimerKind::OneShot { hz } => alloc::format!("one-shot at {} kHz", hz / 1000),
            }
        );
        CONFIG.call_once(|| Config { options, timer, tsc_hz });
        phases(Phase::Apic);

        match arch::smp::start_aps(cpus, ap_main, mem.direct_map_offset) {
            Ok(started) => {
                let online = 1 + started.online;
                let at = Millis(clock.ticks_to_nanos(arch::time::rdtsc().wrapping_sub(entry_tsc)));
                if started.failed.is_empty() {
                    let cpus = if online == 1 { "CPU" } else { "CPUs" };
                    info!("smp: all {online} {cpus} online, {at} after kernel entry");
                } else {
                    error!(
                        "smp: {online} of {} CPUs online, {at} after kernel entry; failed: {:?}",
                        cpus.len(),
                        started.failed
                    );
                }
            }
            Err(e) => error!("smp: cannot start application processors: {e}; running on the boot CPU only"),
        }
        phases(Phase::Cpus);
        let online = percpu::online().count();
        crate::nic::init(online, options.max_queue_pairs);
        phases(Phase::Nic);

        let times = BootTimes::measure(clock, entry_tsc, arch::time::rdtsc());
        info!("{} {times}", abi::READY);
        if !crate::nic::serving() {
            boot_over(Phase::Nic);
        }
        BOOT_DONE.store(true, Ordering::Release);
        // APs that polled before this saw "not yet": let them look again.
        for cpu in percpu::online().skip(1) {
            cpu.wake();
        }

        let mut local = Local::new(&cpus[0], timer, tsc_hz, CpuState::default());
        add_common_work(&mut local);
        if options.smp_selftest {
            selftest::start_ipi_test(&mut local);
        }
        local.add_work(boot_monitor);
        runloop::run(local)
    }

    fn report_plan(plan: &CpuPlan, listed: usize, options: &BootOptions) {
        let using = plan.apic_ids.len();
        let ids = plan.apic_ids.iter().map(|id| alloc::format!("{id}")).collect::<alloc::vec::Vec<_>>().join(", ");
        info!("cpus: using {using} (APIC ids {ids}); the MADT lists {listed} processors");
        let over = plan.count(Skip::OverLimit);
        if over > 0 {
            info!("cpus: {over} enabled processors not used: limited to {} by cpus={}", using, options.max_cpus);
        }
        let disabled = plan.count(Skip::Disabled) + plan.count(Skip::OnlineCapable);
        if disabled > 0 {
            info!("cpus: {disabled} processor slots not enabled by the firmware (hot-plug slots): not started");
        }
        let dup = plan.count(Skip::Duplicate);
        if dup > 0 {
            warn!("cpus: {dup} duplicate MADT entries ignored");
        }
        if plan.bsp_missing_from_table && listed > 0 {
            warn!("cpus: the boot CPU's APIC id is not in the MADT");
        }
    }

    /// Work every CPU runs, and the self-test timer when enabled.
    fn add_common_work(local: &mut Local) {
        let config = CONFIG.get().expect("config set before any loop runs");
        let ticks = u128::from(config.options.halt_poll_us) * u128::from(config.tsc_hz) / 1_000_000;
        local.set_halt_poll(ticks as u64);
        local.add_work(selftest::answer_pings);
        if config.options.raw.mode.is_some() {
            local.add_work(crate::nic::raw::claim);
        } else {
            local.add_work(crate::nic::claim);
        }
        if config.options.smp_selftest {
            selftest::start_timer_test(local);
        }
        if config.options.fault.is_some() {
            local.add_work(provoke_fault);
        }
    }

    /// Provokes the configured fault on the configured CPU once all are up.
    fn provoke_fault(local: &mut Local) -> Poll {
        let options = &CONFIG.get().expect("config").options;
        if !BOOT_DONE.load(Ordering::Acquire) {
            return Poll::Idle;
        }
        let exists = (options.fault_cpu as usize) < percpu::all().len();
        if local.cpu.index == 0 && !exists {
            warn!("fault-cpu={}: there is no such CPU; provoking nothing", options.fault_cpu);
        }
        if local.cpu.index == options.fault_cpu || (local.cpu.index == 0 && !exists) {
            if let (Some(fault), true) = (options.fault, exists) {
                faults::provoke(fault);
            }
            FAULT_OVER.store(true, Ordering::Release);
            percpu::all()[0].wake();
        }
        Poll::Done
    }

    /// The boot CPU's watch over the self-tests and the end of a boot test.
    fn boot_monitor(local: &mut Local) -> Poll {
        let options = &CONFIG.get().expect("config").options;
        if options.smp_selftest && !selftest::finished(local) {
            static STARTED: Once<Instant> = Once::new();
            let started = *STARTED.call_once(arch::time::now);
            if arch::time::now().nanos_since(started, arch::time::clock()) < SELFTEST_TIMEOUT_NS {
                // Poll again after the next interrupt (the tests' own timers
                // and IPIs wake this CPU).
                return Poll::Idle;
            }
            warn!("selftest: not finished after {}", Millis(SELFTEST_TIMEOUT_NS));
        }
        if options.fault.is_some() && !FAULT_OVER.load(Ordering::Acquire) {
            // The fault (on whichever CPU) ends the VM; wait for it.
            return Poll::Idle;
        }
        if options.smp_selftest {
            selftest::report(local);
        }
        report_utilisation();
        match options.after_boot {
            AfterBoot::Exit => {
                info!("exit=after-boot: reporting success to the host");
                arch::qemu::exit(arch::qemu::ExitCode::Success)
            }
            AfterBoot::Idle => {
                info!("idle: all work done, every CPU halts until an interrupt");
                Poll::Done
            }
        }
    }

    fn report_utilisation() {
        let clock = arch::time::clock();
        for c in percpu::online() {
            let s = &c.stats;
            let busy = s.busy_tsc.load(Ordering::Relaxed);
            let halted = s.halted_tsc.load(Ordering::Relaxed);
            let permille = (busy * 1000).checked_div(busy + halted).unwrap_or(0);
            info!(
                "cpu{}: busy {}.{}% ({} busy, {} halted), {} loop iterations, {} interrupts ({} timer, {} wake), \
                 timer written at {} halts (already armed at {})",
                c.index,
                permille / 10,
                permille % 10,
                Millis(clock.ticks_to_nanos(busy)),
                Millis(clock.ticks_to_nanos(halted)),
                s.loop_iterations.load(Ordering::Relaxed),
                s.interrupts.load(Ordering::Relaxed),
                s.timer_interrupts.load(Ordering::Relaxed),
                s.wake_ipis.load(Ordering::Relaxed),
                s.timer_writes.load(Ordering::Relaxed),
                s.timer_unchanged.load(Ordering::Relaxed),
            );
            if s.apic_errors.load(Ordering::Relaxed) > 0 {
                warn!(
                    "cpu{}: {} local APIC errors, status bits {:#x}",
                    c.index,
                    s.apic_errors.load(Ordering::Relaxed),
                    s.apic_error_bits.load(Ordering::Relaxed)
                );
            }
        }
    }

    /// An application processor, from the trampoline.
    fn ap_main(cpu: &'static PerCpu) -> ! {
        arch::gdt::init();
        arch::idt::init_this_cpu();
        percpu::install(cpu);
        apic::enable_this_cpu();
        let id = apic::id();
        if id != cpu.apic_id {
            warn!("APIC id {id} differs from the MADT's {}", cpu.apic_id);
        }
        let config = CONFIG.get().expect("config set before APs start");
        let mut local = Local::new(cpu, config.timer, config.tsc_hz, CpuState::default());
        add_common_work(&mut local);
        info!("online: APIC id {id}");
        cpu.online.store(true, Ordering::Release);
        runloop::run(local)
    }
}
