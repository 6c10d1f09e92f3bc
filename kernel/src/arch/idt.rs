//! The interrupt descriptor table: every CPU exception gets a handler that
//! reports the vector, the decoded error code and the CPU state, then stops
//! the kernel with a failure status.

use alloc::boxed::Box;
use kernel::abi;
use kernel::exceptions::{self, PageFaultCode, SelectorCode};
use x86_64::registers::control::{Cr0, Cr2, Cr3, Cr4};
use x86_64::structures::idt::{InterruptDescriptorTable, InterruptStackFrame, PageFaultErrorCode};

use super::percpu::{self, CpuStats};
use super::smp::{self, StopRole};
use super::{apic, gdt};

macro_rules! handlers {
    ($($name:ident = $vector:literal;)*) => {$(
        extern "x86-interrupt" fn $name(frame: InterruptStackFrame) {
            fatal($vector, &frame, None)
        }
    )*};
}
macro_rules! handlers_with_code {
    ($($name:ident = $vector:literal;)*) => {$(
        extern "x86-interrupt" fn $name(frame: InterruptStackFrame, code: u64) {
            fatal($vector, &frame, Some(code))
        }
    )*};
}

handlers! {
    divide_error = 0; debug = 1; breakpoint = 3; overflow = 4;
    bound_range = 5; invalid_opcode = 6; device_not_available = 7;
    x87_floating_point = 16; simd_floating_point = 19; virtualization = 20;
    hv_injection = 28;
}
handlers_with_code! {
    invalid_tss = 10; segment_not_present = 11; stack_segment = 12;
    general_protection = 13; alignment_check = 17; cp_protection = 21;
    vmm_communication = 29; security = 30;
}

/// An NMI is how a failing CPU stops the others; any other NMI is fatal.
extern "x86-interrupt" fn nmi(frame: InterruptStackFrame) {
    if smp::stopping() {
        smp::halt_stopped();
    }
    fatal(2, &frame, None)
}

fn count(f: impl FnOnce(&CpuStats)) {
    if let Some(cpu) = percpu::current() {
        CpuStats::add(&cpu.stats.interrupts, 1);
        f(&cpu.stats);
    }
}

/// The local APIC timer: its only job is to end a `hlt`.
extern "x86-interrupt" fn timer(_frame: InterruptStackFrame) {
    count(|s| CpuStats::add(&s.timer_interrupts, 1));
    apic::end_of_interrupt();
}

/// Another CPU left work for this one.
extern "x86-interrupt" fn wake(_frame: InterruptStackFrame) {
    count(|s| CpuStats::add(&s.wake_ipis, 1));
    apic::end_of_interrupt();
}

/// Counted, and the error bits kept for the report; interrupt handlers never
/// log (the interrupted code may hold the console).
extern "x86-interrupt" fn apic_error(_frame: InterruptStackFrame) {
    let errors = apic::take_errors();
    count(|s| {
        CpuStats::add(&s.apic_errors, 1);
        s.apic_error_bits.fetch_or(errors, core::sync::atomic::Ordering::Relaxed);
    });
    apic::end_of_interrupt();
}

/// Spurious interrupts get no EOI.
extern "x86-interrupt" fn spurious(_frame: InterruptStackFrame) {
    count(|s| CpuStats::add(&s.spurious, 1));
}

// One handler per NIC queue vector (0x40 + queue index): each counts the
// interrupt against its queue on the CPU that took it; the interrupt itself
// is what wakes that CPU's event loop.
extern "x86-interrupt" fn nic_queue<const Q: usize>(_frame: InterruptStackFrame) {
    crate::nic::count_queue_irq(Q);
    apic::end_of_interrupt();
}

macro_rules! nic_queue_handlers {
    ($($q:literal)*) => { [$(nic_queue::<$q> as extern "x86-interrupt" fn(InterruptStackFrame)),*] };
}

const NIC_QUEUE_HANDLERS: [extern "x86-interrupt" fn(InterruptStackFrame); 64] = nic_queue_handlers!(
    0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31
    32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63
);

/// The NIC's configuration-change interrupt: flags the change for the boot
/// CPU's loop, which this interrupt wakes.
extern "x86-interrupt" fn nic_config(_frame: InterruptStackFrame) {
    count(|_| {});
    crate::nic::config_changed();
    apic::end_of_interrupt();
}

extern "x86-interrupt" fn page_fault(frame: InterruptStackFrame, code: PageFaultErrorCode) {
    fatal(14, &frame, Some(code.bits()))
}

extern "x86-interrupt" fn double_fault(frame: InterruptStackFrame, code: u64) -> ! {
    fatal(8, &frame, Some(code))
}

extern "x86-interrupt" fn machine_check(frame: InterruptStackFrame) -> ! {
    fatal(18, &frame, None)
}

/// Builds this CPU's own IDT (on the heap, never freed) and loads it.
pub fn init_this_cpu() {
    let idt: &'static mut InterruptDescriptorTable = Box::leak(Box::new(InterruptDescriptorTable::new()));
    {
        idt.divide_error.set_handler_fn(divide_error);
        idt.debug.set_handler_fn(debug);
        idt.breakpoint.set_handler_fn(breakpoint);
        idt.overflow.set_handler_fn(overflow);
        idt.bound_range_exceeded.set_handler_fn(bound_range);
        idt.invalid_opcode.set_handler_fn(invalid_opcode);
        idt.device_not_available.set_handler_fn(device_not_available);
        idt.invalid_tss.set_handler_fn(invalid_tss);
        idt.segment_not_present.set_handler_fn(segment_not_present);
        idt.stack_segment_fault.set_handler_fn(stack_segment);
        idt.general_protection_fault.set_handler_fn(general_protection);
        idt.page_fault.set_handler_fn(page_fault);
        idt.x87_floating_point.set_handler_fn(x87_floating_point);
        idt.alignment_check.set_handler_fn(alignment_check);
        idt.simd_floating_point.set_handler_fn(simd_floating_point);
        idt.virtualization.set_handler_fn(virtualization);
        idt.cp_protection_exception.set_handler_fn(cp_protection);
        idt.hv_injection_exception.set_handler_fn(hv_injection);
        idt.vmm_communication_exception.set_handler_fn(vmm_communication);
        idt.security_exception.set_handler_fn(security);
        // SAFETY: the stack indices name IST slots that gdt::init filled with
        // stacks of their own before this table is loaded.
        unsafe {
            idt.double_fault.set_handler_fn(double_fault).set_stack_index(gdt::DOUBLE_FAULT_IST);
            idt.non_maskable_interrupt.set_handler_fn(nmi).set_stack_index(gdt::NMI_IST);
            idt.machine_check.set_handler_fn(machine_check).set_stack_index(gdt::MACHINE_CHECK_IST);
        }
        idt[apic::TIMER_VECTOR].set_handler_fn(timer);
        idt[apic::WAKE_VECTOR].set_handler_fn(wake);
        idt[apic::ERROR_VECTOR].set_handler_fn(apic_error);
        idt[apic::SPURIOUS_VECTOR].set_handler_fn(spurious);
        idt[crate::nic::CONFIG_VECTOR].set_handler_fn(nic_config);
        for (q, handler) in NIC_QUEUE_HANDLERS.iter().enumerate() {
            idt[crate::nic::QUEUE_VECTOR_BASE + q as u8].set_handler_fn(*handler);
        }
    }
    let idt: &'static InterruptDescriptorTable = idt;
    idt.load();
}

/// Reports an exception and stops the kernel with a failure status.
fn fatal(vector: u8, frame: &InterruptStackFrame, code: Option<u64>) -> ! {
    let cpu = super::current_cpu();
    let (stopped, asked) = match smp::begin_stop() {
        StopRole::Reporter { stopped, asked } => (stopped, asked),
        StopRole::Nested => super::qemu::exit(super::qemu::ExitCode::Failure),
        StopRole::Bystander => smp::halt_stopped(),
    };
    crate::serial::emergency(|w| {
        let (mnemonic, name) = exceptions::info(vector).map_or(("?", "unknown"), |i| (i.mnemonic, i.name));
        let _ = writeln!(w, "{} {mnemonic} {name} (vector {vector}) on cpu{cpu}", abi::EXCEPTION);
        match (vector, code) {
            (14, Some(c)) => {
                let _ = writeln!(w, "  error code {c:#x}: {}", PageFaultCode(c));
                let _ = writeln!(w, "  faulting address (cr2) {:#018x}", Cr2::read_raw());
            }
            (10..=13, Some(c)) => {
                let _ = writeln!(w, "  error code {c:#x}: {}", SelectorCode(c));
            }
            (_, Some(c)) => {
                let _ = writeln!(w, "  error code {c:#x}");
            }
            (_, None) => {}
        }
        let _ = writeln!(
            w,
            "  rip {:#018x}  cs {:#06x}  rflags {:#010x}",
            frame.instruction_pointer.as_u64(),
            frame.code_segment.0,
            frame.cpu_flags.bits()
        );
        let _ = writeln!(w, "  rsp {:#018x}  ss {:#06x}", frame.stack_pointer.as_u64(), frame.stack_segment.0);
        let (cr3, _) = Cr3::read_raw();
        let _ = writeln!(
            w,
            "  cr0 {:#x}  cr3 {:#x}  cr4 {:#x}",
            Cr0::read_raw(),
            cr3.start_address().as_u64(),
            Cr4::read_raw()
        );
        let _ = writeln!(w, "  stopped {stopped} of {asked} other CPUs");
        let _ = writeln!(w, "  the kernel cannot continue: halting");
    });
    super::qemu::exit(super::qemu::ExitCode::Failure)
}
