//! Segmentation: a GDT with kernel code/data segments and a TSS whose
//! interrupt stack table gives the double fault, NMI and machine check
//! handlers stacks of their own (they must work even when the current stack
//! is what broke).

use alloc::boxed::Box;
use alloc::vec;
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

pub const DOUBLE_FAULT_IST: u16 = 0;
pub const NMI_IST: u16 = 1;
pub const MACHINE_CHECK_IST: u16 = 2;
const IST_STACK_SIZE: usize = 32 * 1024;

/// Builds this CPU's GDT and TSS (on the heap, never freed) and loads them.
pub fn init() {
    let tss: &'static mut TaskStateSegment = Box::leak(Box::new(TaskStateSegment::new()));
    for ist in [DOUBLE_FAULT_IST, NMI_IST, MACHINE_CHECK_IST] {
        let stack: &'static mut [u8] = vec![0u8; IST_STACK_SIZE].leak();
        let top = VirtAddr::from_ptr(stack.as_ptr_range().end).align_down(16u64);
        tss.interrupt_stack_table[ist as usize] = top;
    }
    let tss: &'static TaskStateSegment = tss;

    let gdt: &'static mut GlobalDescriptorTable = Box::leak(Box::new(GlobalDescriptorTable::new()));
    let code = gdt.append(Descriptor::kernel_code_segment());
    let data = gdt.append(Descriptor::kernel_data_segment());
    let tss_selector = gdt.append(Descriptor::tss_segment(tss));
    let gdt: &'static GlobalDescriptorTable = gdt;
    gdt.load();
    // SAFETY: the selectors index the GDT just loaded, whose code and data
    // descriptors are the flat 64-bit kernel segments the CPU already runs
    // with, and the TSS descriptor points at a TSS that lives forever.
    unsafe {
        CS::set_reg(code);
        SS::set_reg(data);
        DS::set_reg(data);
        ES::set_reg(data);
        load_tss(tss_selector);
    }
}
