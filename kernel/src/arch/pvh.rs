//! Direct boot (PVH): the 32-bit entry named in the Xen ELF note, and the
//! page tables it and the boot CPU's first Rust code set up.
//!
//! The loader (QEMU's `-kernel`) has copied the kernel to its physical
//! addresses (linker.ld: KERNEL_PHYS) and starts `mqnet_pvh_start32` in
//! 32-bit protected mode without paging, %ebx holding the physical address
//! of the start_info ([`kernel::pvh`]). The entry reads the TSC, maps the
//! first 4 GiB twice with 2 MiB pages (at their own addresses, so that the
//! instructions after paging is turned on can be fetched, and the first
//! GiB again at KERNEL_VIRT, where the kernel is linked), turns on long
//! mode (PAE, EFER.LME|NXE, PG|WP), and jumps to the kernel's own address
//! with a stack in .bss. Rust code then maps all RAM at [`DIRECT_MAP`]
//! (the direct map every other part of the kernel uses) and takes the
//! identity mapping away. Everything here lives in .bss, which the loader
//! zeroes; under the bootloader none of it is used.
//!
//! (No crate sets up long mode from a PVH entry for a Rust kernel; the
//! bootloader crate does the same job for its own disk-image entry only.)

use kernel::frames::PhysRange;
use x86_64::registers::control::{Cr3, Cr3Flags};
use x86_64::structures::paging::PhysFrame;
use x86_64::PhysAddr;

/// Where the linker puts the kernel (linker.ld): virtual = physical + this.
pub const KERNEL_VIRT: u64 = 0xffff_ffff_8000_0000;
/// Where physical memory is mapped after a PVH boot (PML4 slot 256, the
/// first of the upper half).
pub const DIRECT_MAP: u64 = 0xffff_8000_0000_0000;
/// RAM the direct map can cover: one PD page of 2 MiB entries per GiB.
const DIRECT_MAP_GIB: usize = 64;
/// The boot CPU's stack until its run loop (the bootloader gives 256 KiB).
const STACK_SIZE: usize = 256 * 1024;

core::arch::global_asm!(
    r#"
    .set KV, 0xffffffff80000000

    .section .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .long mqnet_pvh_start32 - KV
    .balign 4

    .section .text.pvh_entry, "ax"
    .global mqnet_pvh_start32
    .code32
mqnet_pvh_start32:
    cli
    cld
    movl %ebx, %esi
    rdtsc
    movl %eax, (mqnet_pvh_entry_tsc - KV)
    movl %edx, (mqnet_pvh_entry_tsc - KV + 4)

    /* 2048 entries of 2 MiB: physical 0 to 4 GiB. */
    movl $(mqnet_pvh_pd - KV), %edi
    xorl %ecx, %ecx
1:
    movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax
    movl %eax, (%edi,%ecx,8)
    incl %ecx
    cmpl $2048, %ecx
    jne 1b

    /* Identity: PML4[0] -> PDPT (4 GiB); KERNEL_VIRT: PML4[511] -> PDPT[510] -> the first GiB. */
    movl $(mqnet_pvh_pdpt_low - KV), %edi
    movl $(mqnet_pvh_pd - KV + 0x003), %eax
    movl %eax, 0(%edi)
    addl $0x1000, %eax
    movl %eax, 8(%edi)
    addl $0x1000, %eax
    movl %eax, 16(%edi)
    addl $0x1000, %eax
    movl %eax, 24(%edi)
    movl $(mqnet_pvh_pdpt_high - KV), %edi
    movl $(mqnet_pvh_pd - KV + 0x003), %eax
    movl %eax, (510 * 8)(%edi)
    movl $(mqnet_pvh_pml4 - KV), %edi
    movl $(mqnet_pvh_pdpt_low - KV + 0x003), %eax
    movl %eax, 0(%edi)
    movl $(mqnet_pvh_pdpt_high - KV + 0x003), %eax
    movl %eax, (511 * 8)(%edi)

    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl $(mqnet_pvh_pml4 - KV), %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx
    rdmsr
    orl $0x900, %eax
    wrmsr
    lgdt (mqnet_pvh_gdt_ptr - KV)
    movl %cr0, %eax
    orl $0x80010001, %eax
    movl %eax, %cr0
    ljmp $0x08, $(mqnet_pvh_start64 - KV)

    .code64
    /* The flat data segments, as the AP trampoline (smp.rs) loads them. */
mqnet_pvh_start64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    movabsq $mqnet_pvh_high, %rax
    jmpq *%rax
mqnet_pvh_high:
    leaq mqnet_pvh_stack_top(%rip), %rsp
    movl %esi, %edi
    callq mqnet_pvh_entry
    ud2

    .balign 8
mqnet_pvh_gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
mqnet_pvh_gdt_ptr:
    .word 23
    .long mqnet_pvh_gdt - KV

    .section .bss.pvh, "aw", @nobits
    .balign 4096
    .global mqnet_pvh_pml4, mqnet_pvh_pd, mqnet_pvh_guard, mqnet_pvh_entry_tsc
mqnet_pvh_pml4:
    .skip 4096
mqnet_pvh_pdpt_low:
    .skip 4096
mqnet_pvh_pdpt_high:
    .skip 4096
mqnet_pvh_pd:
    .skip 4 * 4096
    /* Unmapped once in long mode: an overflow of the stack faults here. */
mqnet_pvh_guard:
    .skip 4096
mqnet_pvh_stack:
    .skip {stack}
mqnet_pvh_stack_top:
mqnet_pvh_entry_tsc:
    .quad 0
    .text
"#,
    stack = const STACK_SIZE,
    options(att_syntax)
);

unsafe extern "C" {
    static mut mqnet_pvh_pml4: [u64; 512];
    /// The first GiB's 2 MiB pages (the kernel's, at KERNEL_VIRT), then
    /// the identity map's other three.
    static mut mqnet_pvh_pd: [[u64; 512]; 4];
    static mqnet_pvh_guard: u8;
    static mqnet_pvh_entry_tsc: u64;
}

/// The 4 KiB pages of the 2 MiB page that holds the boot stack's guard
/// page, which this table leaves unmapped.
#[repr(C, align(4096))]
struct GuardTable([u64; 512]);

static mut GUARD_TABLE: GuardTable = GuardTable([0; 512]);

/// Page tables of the direct map: one PDPT (512 GiB) and a PD per GiB.
#[repr(C, align(4096))]
struct DirectTables {
    pdpt: [u64; 512],
    pd: [[u64; 512]; DIRECT_MAP_GIB],
}

static mut DIRECT_TABLES: DirectTables = DirectTables { pdpt: [0; 512], pd: [[0; 512]; DIRECT_MAP_GIB] };

const PRESENT_WRITABLE: u64 = 0x3;
const HUGE: u64 = 0x80;
const NO_EXECUTE: u64 = 1 << 63;

/// The TSC as the 32-bit entry read it, first thing.
pub fn entry_tsc() -> u64 {
    // SAFETY: written once by the entry code before any Rust code runs.
    unsafe { core::ptr::addr_of!(mqnet_pvh_entry_tsc).read_volatile() }
}

/// Reads physical memory below 4 GiB through the entry's identity mapping
/// (valid until [`switch_to_direct_map`]); false for anything else.
pub fn read_identity(phys: u64, buf: &mut [u8]) -> bool {
    let Some(end) = phys.checked_add(buf.len() as u64) else { return false };
    if phys == 0 || end > 1 << 32 {
        return false;
    }
    // SAFETY: the entry maps physical 0..4 GiB at the same addresses, and
    // nothing the kernel owns is written meanwhile (this runs on the boot
    // CPU alone, before memory set-up). Reading RAM or ROM has no side
    // effects; the loader's structures are plain RAM.
    unsafe { core::ptr::copy_nonoverlapping(phys as *const u8, buf.as_mut_ptr(), buf.len()) };
    true
}

/// The kernel image's physical range, from its load address to the end of
/// .bss (page tables and stack included).
pub fn kernel_image() -> PhysRange {
    unsafe extern "C" {
        static __kernel_start: u8;
        static __kernel_end: u8;
    }
    let start = core::ptr::addr_of!(__kernel_start) as u64 - KERNEL_VIRT;
    let end = core::ptr::addr_of!(__kernel_end) as u64 - KERNEL_VIRT;
    PhysRange::new(start, end)
}

/// Maps physical memory `0..end` (rounded up to 2 MiB, at most
/// [`DIRECT_MAP_GIB`] GiB) at [`DIRECT_MAP`], not executable, removes the
/// identity mapping of the entry, and unmaps the page below the boot
/// stack (a 2 MiB page cannot leave a hole, so the one holding it becomes
/// 512 pages of 4 KiB): an overflow then raises a page fault, which the
/// CPU cannot deliver on the broken stack, so a double fault on its own
/// stack reports it. Returns how much is mapped.
pub fn switch_to_direct_map(end: u64) -> u64 {
    const GIB: u64 = 1 << 30;
    let mapped = end.next_multiple_of(2 << 20).min(DIRECT_MAP_GIB as u64 * GIB);
    let phys = |virt: u64| virt - KERNEL_VIRT;
    // SAFETY: only the boot CPU runs, once, before anything else reads
    // these tables; the tables are the kernel's own statics, and their
    // physical addresses are their virtual ones less KERNEL_VIRT (the
    // kernel was loaded at its physical addresses). The PML4 is the one
    // in CR3: slot 256 is empty until now, slot 0 is the entry's identity
    // map, which nothing uses after this (the code, stack and statics are
    // at KERNEL_VIRT, and the caller is done reading loader memory). The
    // guard table maps the same pages as the 2 MiB entry it replaces, less
    // the guard page, which nothing uses (it lies below the stack's end).
    unsafe {
        let tables = &mut *core::ptr::addr_of_mut!(DIRECT_TABLES);
        for (gib, pd) in tables.pd.iter_mut().enumerate().take(mapped.div_ceil(GIB) as usize) {
            for (i, entry) in pd.iter_mut().enumerate() {
                let addr = gib as u64 * GIB + i as u64 * (2 << 20);
                if addr < mapped {
                    *entry = addr | PRESENT_WRITABLE | HUGE | NO_EXECUTE;
                }
            }
            tables.pdpt[gib] = phys(pd.as_ptr() as u64) | PRESENT_WRITABLE;
        }
        let pml4 = &mut *core::ptr::addr_of_mut!(mqnet_pvh_pml4);
        pml4[256] = phys(tables.pdpt.as_ptr() as u64) | PRESENT_WRITABLE;
        pml4[0] = 0;
        // The guard page: in the kernel's first GiB (linker.ld), mapped
        // through the first PD, as everything else there, writable and
        // executable.
        let guard = phys(core::ptr::addr_of!(mqnet_pvh_guard) as u64);
        let big = guard & !((2 << 20) - 1);
        let table = &mut (*core::ptr::addr_of_mut!(GUARD_TABLE)).0;
        for (i, entry) in table.iter_mut().enumerate() {
            let page = big + i as u64 * 4096;
            *entry = if page == guard { 0 } else { page | PRESENT_WRITABLE };
        }
        let pd = &mut (*core::ptr::addr_of_mut!(mqnet_pvh_pd))[0];
        pd[(big >> 21) as usize] = phys(table.as_ptr() as u64) | PRESENT_WRITABLE;
        let frame = PhysFrame::containing_address(PhysAddr::new(phys(pml4.as_ptr() as u64)));
        // Reloading CR3 drops every cached translation, the identity ones too.
        Cr3::write(frame, Cr3Flags::empty());
    }
    mapped
}
