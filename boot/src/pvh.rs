//! Direct boot from the host's side: the kernel's PVH entry, and a "shim"
//! loader for tests that hand the kernel a start_info of their own making.
//!
//! The shim is a tiny PVH ELF of its own. QEMU starts it (`-kernel`) with
//! its start_info in %ebx, while the kernel sits in memory already (copied
//! there by `-device loader`, at its physical addresses). The shim takes
//! QEMU's RSDP pointer over into the start_info it carries, puts that
//! start_info's address in %ebx and jumps to the kernel's entry: the kernel
//! boots exactly as from QEMU, except for what the test broke. (No crate
//! writes such an ELF; it is 3 headers and 22 bytes of code.)

/// `XEN_ELFNOTE_PHYS32_ENTRY`.
const NOTE_PHYS32_ENTRY: u32 = 18;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
/// Where the shim loads (1 MiB, below the kernel's 2 MiB).
pub const SHIM_BASE: u32 = 0x10_0000;

fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The physical entry address in an ELF64's Xen PVH note, if it has one.
pub fn entry_of(elf: &[u8]) -> Option<u32> {
    if elf.get(..4)? != b"\x7fELF" || *elf.get(4)? != 2 {
        return None;
    }
    let (phoff, phentsize, phnum) = (le64(elf, 32)? as usize, le16(elf, 54)? as usize, le16(elf, 56)? as usize);
    for i in 0..phnum {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if le32(elf, ph)? != PT_NOTE {
            continue;
        }
        let (offset, size) = (le64(elf, ph + 8)? as usize, le64(elf, ph + 32)? as usize);
        let mut at = offset;
        while at + 12 <= offset.checked_add(size)? {
            let (namesz, descsz, kind) = (le32(elf, at)? as usize, le32(elf, at + 4)? as usize, le32(elf, at + 8)?);
            let name = elf.get(at + 12..at + 12 + namesz)?;
            let desc_at = at + 12 + namesz.next_multiple_of(4);
            if name == b"Xen\0" && kind == NOTE_PHYS32_ENTRY && descsz >= 4 {
                return le32(elf, desc_at);
            }
            at = desc_at + descsz.next_multiple_of(4);
        }
    }
    None
}

/// One memory map entry: start, length, E820 type (1 = RAM).
pub type MemEntry = (u64, u64, u32);

/// The start_info a shim hands the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartInfo {
    /// Empty: none (memmap_entries 0).
    pub memory_map: Vec<MemEntry>,
    /// The command line's bytes, written as they are: a test that wants a
    /// terminator includes it.
    pub cmdline: Option<Vec<u8>>,
}

impl StartInfo {
    /// What QEMU's map looks like for `memory_mib` of RAM (below 2 GiB).
    pub fn qemu_map(memory_mib: u32) -> Vec<MemEntry> {
        vec![
            (0, 0x9fc00, 1),
            (0x9fc00, 0x400, 2),
            (0xf0000, 0x10000, 2),
            (0x10_0000, (u64::from(memory_mib) << 20) - 0x10_0000, 1),
        ]
    }
}

/// A PVH ELF that starts the kernel at `kernel_entry` with `info`.
pub fn shim(kernel_entry: u32, info: &StartInfo) -> Vec<u8> {
    // Layout of the one loaded segment, from SHIM_BASE.
    const CODE: usize = 0;
    const INFO: usize = 0x40;
    const MEMMAP: usize = 0x80;
    let cmdline_at = MEMMAP + 24 * info.memory_map.len();
    let addr = |off: usize| SHIM_BASE + off as u32;
    let mut seg = vec![0u8; cmdline_at + info.cmdline.as_ref().map_or(0, Vec::len)];
    // mov eax,[ebx+32]; mov [rsdp],eax; mov eax,[ebx+36]; mov [rsdp+4],eax:
    // QEMU's RSDP pointer, taken over.
    let mut code = vec![0x8b, 0x43, 0x20, 0xa3];
    code.extend(addr(INFO + 32).to_le_bytes());
    code.extend([0x8b, 0x43, 0x24, 0xa3]);
    code.extend(addr(INFO + 36).to_le_bytes());
    // mov ebx, info; mov eax, entry; jmp eax
    code.push(0xbb);
    code.extend(addr(INFO).to_le_bytes());
    code.push(0xb8);
    code.extend(kernel_entry.to_le_bytes());
    code.extend([0xff, 0xe0]);
    seg[CODE..CODE + code.len()].copy_from_slice(&code);
    let si = &mut seg[INFO..INFO + 56];
    si[0..4].copy_from_slice(&0x336e_c578u32.to_le_bytes());
    si[4..8].copy_from_slice(&1u32.to_le_bytes());
    if info.cmdline.is_some() {
        si[24..32].copy_from_slice(&u64::from(addr(cmdline_at)).to_le_bytes());
    }
    if !info.memory_map.is_empty() {
        si[40..48].copy_from_slice(&u64::from(addr(MEMMAP)).to_le_bytes());
        si[48..52].copy_from_slice(&(info.memory_map.len() as u32).to_le_bytes());
    }
    for (i, &(start, len, kind)) in info.memory_map.iter().enumerate() {
        let e = &mut seg[MEMMAP + 24 * i..MEMMAP + 24 * (i + 1)];
        e[0..8].copy_from_slice(&start.to_le_bytes());
        e[8..16].copy_from_slice(&len.to_le_bytes());
        e[16..20].copy_from_slice(&kind.to_le_bytes());
    }
    if let Some(c) = &info.cmdline {
        seg[cmdline_at..].copy_from_slice(c);
    }

    // The ELF: header, two program headers (the segment, its note), the
    // note, the segment.
    let mut note = Vec::new();
    note.extend(4u32.to_le_bytes());
    note.extend(4u32.to_le_bytes());
    note.extend(NOTE_PHYS32_ENTRY.to_le_bytes());
    note.extend(b"Xen\0");
    note.extend(addr(CODE).to_le_bytes());
    let (phoff, note_off) = (64u64, 64 + 2 * 56);
    let seg_off = (note_off + note.len() as u64).next_multiple_of(16);
    let mut elf = Vec::new();
    elf.extend(b"\x7fELF\x02\x01\x01");
    elf.resize(16, 0);
    elf.extend(2u16.to_le_bytes()); // ET_EXEC
    elf.extend(62u16.to_le_bytes()); // EM_X86_64
    elf.extend(1u32.to_le_bytes());
    elf.extend(u64::from(addr(CODE)).to_le_bytes()); // e_entry (unused: the note's is)
    elf.extend(phoff.to_le_bytes());
    elf.extend(0u64.to_le_bytes()); // no sections
    elf.extend(0u32.to_le_bytes());
    elf.extend(64u16.to_le_bytes());
    elf.extend(56u16.to_le_bytes());
    elf.extend(2u16.to_le_bytes());
    elf.extend([0u8; 6]); // no section headers
    let mut phdr = |kind: u32, flags: u32, off: u64, addr: u64, size: u64, align: u64| {
        elf.extend(kind.to_le_bytes());
        elf.extend(flags.to_le_bytes());
        for v in [off, addr, addr, size, size, align] {
            elf.extend(v.to_le_bytes());
        }
    };
    phdr(PT_LOAD, 7, seg_off, u64::from(SHIM_BASE), seg.len() as u64, 16);
    phdr(PT_NOTE, 4, note_off, 0, note.len() as u64, 4);
    elf.extend(&note);
    elf.resize(seg_off as usize, 0);
    elf.extend(&seg);
    elf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shim_names_its_own_entry_and_carries_the_start_info() {
        let info = StartInfo { memory_map: StartInfo::qemu_map(256), cmdline: Some(b"exit=after-boot\0".to_vec()) };
        let elf = shim(0x20_0000, &info);
        assert_eq!(entry_of(&elf), Some(SHIM_BASE), "its note points at its code");
        // The segment: code that ends in a jump to the kernel, then the
        // start_info with its magic, map and command line.
        let seg = &elf[elf.len() - (0x80 + 24 * 4 + 16)..];
        assert_eq!(&seg[0x10..0x19], &[0xbb, 0x40, 0, 0x10, 0, 0xb8, 0, 0, 0x20]);
        assert_eq!(le32(seg, 0x40), Some(0x336e_c578));
        assert_eq!(le64(seg, 0x40 + 40), Some(u64::from(SHIM_BASE) + 0x80));
        assert_eq!(le32(seg, 0x40 + 48), Some(4));
        assert_eq!(le64(seg, 0x80 + 3 * 24 + 8), Some((256 << 20) - 0x10_0000));
        assert_eq!(&seg[seg.len() - 16..], b"exit=after-boot\0");
        assert_eq!(le64(seg, 0x40 + 24), Some(u64::from(SHIM_BASE) + 0x80 + 96));
    }

    #[test]
    fn without_a_map_or_command_line_their_fields_are_zero() {
        let elf = shim(0x20_0000, &StartInfo { memory_map: vec![], cmdline: None });
        let seg = &elf[elf.len() - 0x80..];
        assert_eq!((le64(seg, 0x40 + 24), le64(seg, 0x40 + 40), le32(seg, 0x40 + 48)), (Some(0), Some(0), Some(0)));
    }

    #[test]
    fn no_note_no_entry() {
        assert_eq!(entry_of(b"not an ELF"), None);
        let mut elf = shim(0x20_0000, &StartInfo { memory_map: vec![], cmdline: None });
        let note_type = 64 + 2 * 56 + 8;
        elf[note_type] = 17;
        assert_eq!(entry_of(&elf), None);
    }
}
