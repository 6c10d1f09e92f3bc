//! Starting the application processors (INIT-SIPI-SIPI through a real-mode
//! trampoline below 1 MiB) and stopping every CPU on a fatal error.
//!
//! The trampoline switches straight from real mode to long mode: PAE, the
//! kernel's own PML4, EFER.LME|NXE, then PE|PG together and a far jump into a
//! 64-bit segment of a small GDT inside the trampoline page. The page is
//! identity-mapped so the instructions after paging is enabled can be
//! fetched. All APs get their INIT together; then they start one at a time,
//! since they share the trampoline's slots.

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use kernel::apic::{Delivery, Dest};
use x86_64::registers::control::{Cr0, Cr4, Cr4Flags};

use super::percpu::{self, PerCpu};
use super::{apic, time};

core::arch::global_asm!(
    r#"
    .section .rodata.ap_trampoline, "a"
    .global mqnet_ap_trampoline_start
    .global mqnet_ap_trampoline_end
    .global mqnet_tr_far_offset, mqnet_tr_long_mode, mqnet_tr_gdt, mqnet_tr_gdt_ptr
    .global mqnet_tr_cr4, mqnet_tr_cr3, mqnet_tr_cr0, mqnet_tr_stack, mqnet_tr_arg, mqnet_tr_entry
    .code16
mqnet_ap_trampoline_start:
    cli
    cld
    movw %cs, %ax
    movw %ax, %ds
    lgdt (mqnet_tr_gdt_ptr - mqnet_ap_trampoline_start)
    movl (mqnet_tr_cr4 - mqnet_ap_trampoline_start), %eax
    movl %eax, %cr4
    movl (mqnet_tr_cr3 - mqnet_ap_trampoline_start), %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx
    rdmsr
    orl $0x900, %eax
    wrmsr
    movl (mqnet_tr_cr0 - mqnet_ap_trampoline_start), %eax
    movl %eax, %cr0
    .byte 0x66, 0xea
mqnet_tr_far_offset:
    .long 0
    .word 0x08
    .code64
mqnet_tr_long_mode:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    movq mqnet_tr_stack(%rip), %rsp
    movq mqnet_tr_arg(%rip), %rdi
    movq mqnet_tr_entry(%rip), %rax
    callq *%rax
    ud2
    .balign 8
mqnet_tr_gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
mqnet_tr_gdt_ptr:
    .word 23
    .long 0
    .balign 4
mqnet_tr_cr4:
    .long 0
mqnet_tr_cr3:
    .long 0
mqnet_tr_cr0:
    .long 0
    .balign 8
mqnet_tr_stack:
    .quad 0
mqnet_tr_arg:
    .quad 0
mqnet_tr_entry:
    .quad 0
mqnet_ap_trampoline_end:
    .code64
    .text
"#,
    options(att_syntax)
);

unsafe extern "C" {
    static mqnet_ap_trampoline_start: u8;
    static mqnet_ap_trampoline_end: u8;
    static mqnet_tr_far_offset: u8;
    static mqnet_tr_long_mode: u8;
    static mqnet_tr_gdt: u8;
    static mqnet_tr_gdt_ptr: u8;
    static mqnet_tr_cr4: u8;
    static mqnet_tr_cr3: u8;
    static mqnet_tr_cr0: u8;
    static mqnet_tr_stack: u8;
    static mqnet_tr_arg: u8;
    static mqnet_tr_entry: u8;
}

/// Offset of a trampoline label from the trampoline's start.
macro_rules! offset_of_label {
    ($label:ident) => {
        (&raw const $label) as usize - (&raw const mqnet_ap_trampoline_start) as usize
    };
}

/// As large as the boot CPU's: every vCPU runs a network stack, whose
/// bring-up and poll rounds put big frames on the stack. 64 KiB was
/// overrun (silently: these stacks come from the heap, with no guard page
/// below them, so the overflow corrupted the heap next to them) once the
/// zero-window table was built on the stack.
const AP_STACK_SIZE: usize = 256 * 1024;
const START_TIMEOUT_MS: u64 = 1000;

/// What an AP needs to know, handed over in RDI.
#[repr(C)]
struct ApBoot {
    cpu: &'static PerCpu,
    started: AtomicBool,
    entry: fn(&'static PerCpu) -> !,
}

/// Result of bringing up the APs: how many came online, and the (index,
/// APIC id) of each that did not.
pub struct Started {
    pub online: usize,
    pub failed: Vec<(u32, u32)>,
}

fn trampoline() -> &'static [u8] {
    // SAFETY: the two symbols delimit the trampoline in .rodata (global_asm above).
    unsafe {
        let start = &raw const mqnet_ap_trampoline_start;
        let end = &raw const mqnet_ap_trampoline_end;
        core::slice::from_raw_parts(start, end as usize - start as usize)
    }
}

/// Starts every CPU in `cpus` but the first (the boot CPU); each runs `entry`.
pub fn start_aps(
    cpus: &'static [PerCpu],
    entry: fn(&'static PerCpu) -> !,
    phys_offset: u64,
) -> Result<Started, &'static str> {
    let mut result = Started { online: 0, failed: Vec::new() };
    if cpus.len() <= 1 {
        return Ok(result);
    }
    let page = crate::memory::allocate_low_frame().ok_or("no free page below 1 MiB for the AP trampoline")?;
    super::paging::identity_map(page)?;
    let pml4 = super::paging::pml4_phys();
    if pml4 > u32::MAX as u64 {
        return Err("the kernel's PML4 is above 4 GiB; the trampoline cannot load it");
    }
    let code = trampoline();
    if code.len() > 4096 {
        return Err("trampoline larger than a page");
    }
    let virt = (phys_offset + page) as *mut u8;
    let put = |off: usize, bytes: &[u8]| {
        assert!(off + bytes.len() <= code.len(), "trampoline patch out of range");
        // SAFETY: `page` is a frame reserved for the trampoline, direct-mapped
        // at `virt`; the write stays inside the trampoline's bytes (checked).
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), virt.add(off), bytes.len()) };
    };
    put(0, code);
    let linear = |off: usize| (page + off as u64) as u32;
    let cr4 = Cr4::read() - Cr4Flags::PCID;
    put(offset_of_label!(mqnet_tr_far_offset), &linear(offset_of_label!(mqnet_tr_long_mode)).to_le_bytes());
    put(offset_of_label!(mqnet_tr_gdt_ptr) + 2, &linear(offset_of_label!(mqnet_tr_gdt)).to_le_bytes());
    put(offset_of_label!(mqnet_tr_cr4), &(cr4.bits() as u32).to_le_bytes());
    put(offset_of_label!(mqnet_tr_cr3), &(pml4 as u32).to_le_bytes());
    put(offset_of_label!(mqnet_tr_cr0), &(Cr0::read().bits() as u32).to_le_bytes());
    put(offset_of_label!(mqnet_tr_entry), &(ap_entry as *const () as u64).to_le_bytes());

    let vector = (page >> 12) as u8;
    // INIT every AP first and wait the prescribed 10 ms once, not once per
    // AP; a virtual CPU needs no wait (its INIT is done when the IPI is
    // delivered), so none under a hypervisor (Linux skips it on CPUs of
    // this century, too).
    let mut init_failed = Vec::new();
    for cpu in &cpus[1..] {
        if apic::send(Delivery::Init, Dest::Apic(cpu.apic_id)).is_err() {
            init_failed.push(cpu.index);
        }
    }
    if !super::time::hypervisor() {
        wait_for(10_000_000, &|| false);
    }
    for cpu in &cpus[1..] {
        if init_failed.contains(&cpu.index) {
            log::error!("cpu{} (APIC id {}): INIT was not accepted", cpu.index, cpu.apic_id);
            result.failed.push((cpu.index, cpu.apic_id));
            continue;
        }
        let stack = vec![0u8; AP_STACK_SIZE].leak();
        let top = (stack.as_ptr_range().end as u64) & !0xf;
        let boot: &'static ApBoot = Box::leak(Box::new(ApBoot { cpu, started: AtomicBool::new(false), entry }));
        put(offset_of_label!(mqnet_tr_stack), &top.to_le_bytes());
        put(offset_of_label!(mqnet_tr_arg), &(boot as *const ApBoot as u64).to_le_bytes());
        if start_one(cpu.apic_id, vector, boot) {
            result.online += 1;
        } else {
            log::error!("cpu{} (APIC id {}) did not come online within {START_TIMEOUT_MS} ms", cpu.index, cpu.apic_id);
            result.failed.push((cpu.index, cpu.apic_id));
        }
    }
    Ok(result)
}

/// Busy-waits up to `nanos` for `done`.
fn wait_for(nanos: u64, done: &dyn Fn() -> bool) -> bool {
    let until = time::rdtsc() + time::clock().nanos_to_ticks(nanos);
    while time::rdtsc() < until {
        if done() {
            return true;
        }
        core::hint::spin_loop();
    }
    done()
}

/// (After INIT:) SIPI, up to 200 µs, a second SIPI if needed, then wait
/// for the AP to pick up its arguments and to report itself online.
fn start_one(apic_id: u32, vector: u8, boot: &ApBoot) -> bool {
    let started = || boot.started.load(Ordering::Acquire);
    let online = || boot.cpu.online.load(Ordering::Acquire);
    for _ in 0..2 {
        if apic::send(Delivery::Startup(vector), Dest::Apic(apic_id)).is_err() {
            return false;
        }
        if wait_for(200_000, &started) {
            break;
        }
    }
    wait_for(START_TIMEOUT_MS * 1_000_000, &started) && wait_for(START_TIMEOUT_MS * 1_000_000, &online)
}

/// First Rust code on an AP (called by the trampoline with RDI = &ApBoot).
extern "C" fn ap_entry(boot: &'static ApBoot) -> ! {
    let (cpu, entry) = (boot.cpu, boot.entry);
    boot.started.store(true, Ordering::Release);
    entry(cpu)
}

// ---- stopping every CPU -------------------------------------------------

const NOBODY: u32 = u32::MAX;
static STOPPER: AtomicU32 = AtomicU32::new(NOBODY);

/// What `begin_stop` found.
pub enum StopRole {
    /// This CPU reports; the others have been stopped (count confirmed, asked).
    Reporter { stopped: usize, asked: usize },
    /// This CPU failed again while reporting: skip straight to the exit.
    Nested,
    /// Another CPU is reporting; this one must just halt.
    Bystander,
}

/// Called on a fatal error: the first CPU to get here stops all others with
/// an NMI and waits (bounded) until they confirm.
pub fn begin_stop() -> StopRole {
    let me = percpu::current_index();
    match STOPPER.compare_exchange(NOBODY, me, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => {}
        Err(other) if other == me => return StopRole::Nested,
        Err(_) => return StopRole::Bystander,
    }
    let others: Vec<&PerCpu> =
        percpu::all().iter().filter(|c| c.index != me && c.online.load(Ordering::Acquire)).collect();
    if others.is_empty() || apic::send(Delivery::Nmi, Dest::AllExcludingSelf).is_err() {
        return StopRole::Reporter { stopped: 0, asked: others.len() };
    }
    let clock = time::clock();
    let until = time::rdtsc() + clock.nanos_to_ticks(100_000_000);
    while time::rdtsc() < until && !others.iter().all(|c| c.stopped.load(Ordering::Acquire)) {
        core::hint::spin_loop();
    }
    let stopped = others.iter().filter(|c| c.stopped.load(Ordering::Acquire)).count();
    StopRole::Reporter { stopped, asked: others.len() }
}

/// Whether a stop is in progress (the NMI handler's question).
pub fn stopping() -> bool {
    STOPPER.load(Ordering::Acquire) != NOBODY
}

/// Marks this CPU stopped and halts it for good.
pub fn halt_stopped() -> ! {
    if let Some(c) = percpu::current() {
        c.stopped.store(true, Ordering::Release);
    }
    super::halt_forever()
}
