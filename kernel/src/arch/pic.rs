//! The legacy 8259 interrupt controllers. They are masked for good: their
//! default vectors (8–15) collide with CPU exceptions, and interrupts come
//! from the local APIC instead.

use x86_64::instructions::port::Port;

const PIC1_DATA: u16 = 0x21;
const PIC2_DATA: u16 = 0xa1;

pub fn mask_legacy_pics() {
    // SAFETY: writing 0xff to the 8259 data ports (OCW1) masks every IRQ line;
    // it touches no memory and only stops interrupts we never asked for.
    unsafe {
        Port::<u8>::new(PIC1_DATA).write(0xff);
        Port::<u8>::new(PIC2_DATA).write(0xff);
    }
}
