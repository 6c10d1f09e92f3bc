//! The x86_64 CPU exceptions: what each vector is called and how to decode
//! the error codes that carry meaning, for the kernel's exception report.

use core::fmt;

/// Static facts about one exception vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExceptionInfo {
    pub vector: u8,
    /// Intel's mnemonic, e.g. `#PF`.
    pub mnemonic: &'static str,
    pub name: &'static str,
    /// Whether the CPU pushes an error code.
    pub has_error_code: bool,
}

const fn e(vector: u8, mnemonic: &'static str, name: &'static str, has_error_code: bool) -> ExceptionInfo {
    ExceptionInfo { vector, mnemonic, name, has_error_code }
}

/// Every architecturally defined exception (vectors 0–31 that are not reserved).
pub const EXCEPTIONS: [ExceptionInfo; 23] = [
    e(0, "#DE", "divide error", false),
    e(1, "#DB", "debug", false),
    e(2, "NMI", "non-maskable interrupt", false),
    e(3, "#BP", "breakpoint", false),
    e(4, "#OF", "overflow", false),
    e(5, "#BR", "bound range exceeded", false),
    e(6, "#UD", "invalid opcode", false),
    e(7, "#NM", "device not available", false),
    e(8, "#DF", "double fault", true),
    e(10, "#TS", "invalid TSS", true),
    e(11, "#NP", "segment not present", true),
    e(12, "#SS", "stack-segment fault", true),
    e(13, "#GP", "general protection fault", true),
    e(14, "#PF", "page fault", true),
    e(16, "#MF", "x87 floating-point error", false),
    e(17, "#AC", "alignment check", true),
    e(18, "#MC", "machine check", false),
    e(19, "#XM", "SIMD floating-point exception", false),
    e(20, "#VE", "virtualization exception", false),
    e(21, "#CP", "control protection exception", true),
    e(28, "#HV", "hypervisor injection exception", false),
    e(29, "#VC", "VMM communication exception", true),
    e(30, "#SX", "security exception", true),
];

/// Looks up an exception vector; `None` for reserved vectors and interrupts.
pub fn info(vector: u8) -> Option<&'static ExceptionInfo> {
    EXCEPTIONS.iter().find(|x| x.vector == vector)
}

/// A decoded page-fault error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageFaultCode(pub u64);

impl fmt::Display for PageFaultCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.0;
        let bit = |n: u32| c & (1 << n) != 0;
        f.write_str(if bit(0) { "protection violation" } else { "page not present" })?;
        f.write_str(if bit(1) { ", write" } else { ", read" })?;
        if bit(4) {
            f.write_str(", instruction fetch")?;
        }
        f.write_str(if bit(2) { ", user mode" } else { ", kernel mode" })?;
        if bit(3) {
            f.write_str(", reserved bit set")?;
        }
        if bit(5) {
            f.write_str(", protection key")?;
        }
        if bit(6) {
            f.write_str(", shadow stack")?;
        }
        Ok(())
    }
}

/// A decoded selector error code (#TS, #NP, #SS, #GP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SelectorCode(pub u64);

impl fmt::Display for SelectorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.0;
        if c == 0 {
            return f.write_str("no selector");
        }
        let table = match (c >> 1) & 0b11 {
            0 => "GDT",
            1 | 3 => "IDT",
            _ => "LDT",
        };
        write!(f, "{table} index {}", (c >> 3) & 0x1fff)?;
        if c & 1 != 0 {
            f.write_str(", external event")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_unique_and_has_the_error_code_vectors() {
        for w in EXCEPTIONS.windows(2) {
            assert!(w[0].vector < w[1].vector);
        }
        let with_code: Vec<u8> = EXCEPTIONS.iter().filter(|x| x.has_error_code).map(|x| x.vector).collect();
        assert_eq!(with_code, [8, 10, 11, 12, 13, 14, 17, 21, 29, 30]);
        assert_eq!(info(14).unwrap().name, "page fault");
        assert!(info(9).is_none() && info(15).is_none() && info(32).is_none());
    }

    #[test]
    fn page_fault_codes_decode() {
        assert_eq!(PageFaultCode(0b10).to_string(), "page not present, write, kernel mode");
        assert_eq!(PageFaultCode(0b10101).to_string(), "protection violation, read, instruction fetch, user mode");
    }

    #[test]
    fn selector_codes_decode() {
        assert_eq!(SelectorCode(0).to_string(), "no selector");
        assert_eq!(SelectorCode(0x10).to_string(), "GDT index 2");
        assert_eq!(SelectorCode((14 << 3) | 0b11).to_string(), "IDT index 14, external event");
    }
}
