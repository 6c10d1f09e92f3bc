//! Direct boot (PVH): what a PVH loader hands the kernel.
//!
//! A loader that finds the Xen ELF note `XEN_ELFNOTE_PHYS32_ENTRY` in the
//! kernel (QEMU's `-kernel`, through its `pvh.bin` option ROM) copies the
//! segments to their physical addresses and starts that entry in 32-bit
//! protected mode, paging off, with the physical address of an
//! `hvm_start_info` structure in %ebx: the memory map (version 1 and
//! later), the command line (`-append`) and the ACPI RSDP. The layout is
//! Xen's public `arch-x86/hvm/start_info.h`.
//!
//! The structure comes from outside the kernel, so it is parsed like device
//! input: every address and length is checked, and what is wrong is
//! reported as a [`StartInfoError`] (a missing memory map stops the boot
//! with that message; an unusable command line is ignored with a warning),
//! never followed into a fault. Parsing goes through a reader of physical
//! memory, so the host tests can hand it any bytes.

use core::fmt;

use crate::frames::PhysRange;

/// `hvm_start_info.magic`.
pub const MAGIC: u32 = 0x336e_c578;
/// The fixed part of `hvm_start_info` (version 1): magic, version, flags,
/// nr_modules, modlist_paddr, cmdline_paddr, rsdp_paddr, memmap_paddr,
/// memmap_entries, reserved.
pub const START_INFO_LEN: usize = 56;
/// One `hvm_memmap_table_entry`: addr, size, type, reserved.
pub const MEMMAP_ENTRY_LEN: usize = 24;
/// `hvm_memmap_table_entry.type` of RAM, ACPI tables and ACPI NVS (the
/// E820 numbering).
pub const MEMMAP_RAM: u32 = 1;
pub const MEMMAP_ACPI: u32 = 3;
pub const MEMMAP_ACPI_NVS: u32 = 4;
/// Memory map entries kept; a longer map is an error.
pub const MAX_MEMMAP: usize = 128;
/// Longest command line accepted, terminator excluded.
pub const MAX_CMDLINE: usize = 4095;

/// One memory map entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

impl MemEntry {
    pub fn end(&self) -> u64 {
        self.addr.saturating_add(self.size)
    }
}

/// Why a start_info cannot be used (or a part of it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartInfoError {
    /// %ebx was 0.
    NoStartInfo,
    /// Memory at this address could not be read.
    Unreadable(u64),
    BadMagic(u32),
    /// Version 0 (no memory map fields), or no entries, or a null address.
    NoMemoryMap,
    MemoryMapTooLong(u32),
    /// The memory map lists no RAM at all.
    NoRam,
    /// No NUL within [`MAX_CMDLINE`] bytes.
    CmdlineUnterminated,
    CmdlineNotUtf8,
}

impl fmt::Display for StartInfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartInfoError::NoStartInfo => write!(f, "no start_info (%ebx is 0)"),
            StartInfoError::Unreadable(a) => write!(f, "start_info points at unreadable memory ({a:#x})"),
            StartInfoError::BadMagic(m) => write!(f, "start_info magic is {m:#x}, not {MAGIC:#x}"),
            StartInfoError::NoMemoryMap => write!(f, "start_info has no memory map"),
            StartInfoError::MemoryMapTooLong(n) => {
                write!(f, "start_info's memory map has {n} entries, more than {MAX_MEMMAP}")
            }
            StartInfoError::NoRam => write!(f, "start_info's memory map lists no RAM"),
            StartInfoError::CmdlineUnterminated => {
                write!(f, "the command line has no terminator within {MAX_CMDLINE} bytes")
            }
            StartInfoError::CmdlineNotUtf8 => write!(f, "the command line is not UTF-8"),
        }
    }
}

/// What the kernel takes from a start_info, copied out of the loader's
/// memory (which becomes free memory once booting goes on).
pub struct StartInfo {
    pub version: u32,
    memmap: [MemEntry; MAX_MEMMAP],
    entries: usize,
    cmdline: [u8; MAX_CMDLINE],
    cmdline_len: usize,
    /// Why the command line was not taken, if there was one.
    pub cmdline_error: Option<StartInfoError>,
    pub rsdp: Option<u64>,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl StartInfo {
    /// Parses the start_info at physical `addr`. `read(phys, buf)` fills
    /// `buf` from physical memory, or returns false where it cannot.
    pub fn parse(addr: u64, read: &mut dyn FnMut(u64, &mut [u8]) -> bool) -> Result<StartInfo, StartInfoError> {
        if addr == 0 {
            return Err(StartInfoError::NoStartInfo);
        }
        let mut head = [0u8; START_INFO_LEN];
        if !read(addr, &mut head) {
            return Err(StartInfoError::Unreadable(addr));
        }
        let magic = le32(&head, 0);
        if magic != MAGIC {
            return Err(StartInfoError::BadMagic(magic));
        }
        let version = le32(&head, 4);
        let (cmdline_paddr, rsdp_paddr) = (le64(&head, 24), le64(&head, 32));
        let (memmap_paddr, memmap_entries) = (le64(&head, 40), le32(&head, 48));
        if version < 1 || memmap_paddr == 0 || memmap_entries == 0 {
            return Err(StartInfoError::NoMemoryMap);
        }
        if memmap_entries as usize > MAX_MEMMAP {
            return Err(StartInfoError::MemoryMapTooLong(memmap_entries));
        }
        let mut info = StartInfo {
            version,
            memmap: [MemEntry::default(); MAX_MEMMAP],
            entries: memmap_entries as usize,
            cmdline: [0; MAX_CMDLINE],
            cmdline_len: 0,
            cmdline_error: None,
            rsdp: (rsdp_paddr != 0).then_some(rsdp_paddr),
        };
        for i in 0..info.entries {
            let at = memmap_paddr.checked_add((i * MEMMAP_ENTRY_LEN) as u64).ok_or(StartInfoError::NoMemoryMap)?;
            let mut e = [0u8; MEMMAP_ENTRY_LEN];
            if !read(at, &mut e) {
                return Err(StartInfoError::Unreadable(at));
            }
            info.memmap[i] = MemEntry { addr: le64(&e, 0), size: le64(&e, 8), kind: le32(&e, 16) };
        }
        if !info.memory_map().iter().any(|e| e.kind == MEMMAP_RAM && e.size > 0) {
            return Err(StartInfoError::NoRam);
        }
        if cmdline_paddr != 0 {
            match read_cmdline(cmdline_paddr, &mut info.cmdline, read) {
                Ok(len) => info.cmdline_len = len,
                Err(e) => info.cmdline_error = Some(e),
            }
        }
        Ok(info)
    }

    pub fn memory_map(&self) -> &[MemEntry] {
        &self.memmap[..self.entries]
    }

    /// The command line (`-append`), trimmed; empty without one.
    pub fn cmdline(&self) -> &str {
        core::str::from_utf8(&self.cmdline[..self.cmdline_len]).unwrap_or("").trim()
    }

    /// The end of the highest RAM entry.
    pub fn ram_end(&self) -> u64 {
        self.memory_map().iter().filter(|e| e.kind == MEMMAP_RAM).map(MemEntry::end).max().unwrap_or(0)
    }

    /// The end of the highest entry the kernel reads through its direct
    /// map: RAM, and the ACPI tables (E820 types 3 and 4), wherever the
    /// firmware put them.
    pub fn mapped_end(&self) -> u64 {
        let read = |e: &&MemEntry| matches!(e.kind, MEMMAP_RAM | MEMMAP_ACPI | MEMMAP_ACPI_NVS);
        self.memory_map().iter().filter(read).map(MemEntry::end).max().unwrap_or(0)
    }
}

/// Reads a NUL-terminated string at `addr` into `buf`, a byte at a time
/// (the string may end just before unreadable memory).
fn read_cmdline(
    addr: u64,
    buf: &mut [u8; MAX_CMDLINE],
    read: &mut dyn FnMut(u64, &mut [u8]) -> bool,
) -> Result<usize, StartInfoError> {
    for len in 0..=MAX_CMDLINE {
        let at = addr.checked_add(len as u64).ok_or(StartInfoError::CmdlineUnterminated)?;
        let mut byte = [0u8];
        if !read(at, &mut byte) {
            return Err(StartInfoError::Unreadable(at));
        }
        if byte[0] == 0 {
            core::str::from_utf8(&buf[..len]).map_err(|_| StartInfoError::CmdlineNotUtf8)?;
            return Ok(len);
        }
        if len == MAX_CMDLINE {
            break;
        }
        buf[len] = byte[0];
    }
    Err(StartInfoError::CmdlineUnterminated)
}

/// The RAM of `memmap` that the kernel may use: RAM entries, page-aligned
/// inwards, without the first page (the real-mode interrupt table and BIOS
/// data) and without the `reserved` ranges (the kernel image), however
/// many and in whatever order. At most `out.len()` ranges are written;
/// returns how many.
pub fn usable_ranges(memmap: &[MemEntry], reserved: &[PhysRange], out: &mut [PhysRange]) -> usize {
    const PAGE: u64 = 4096;
    // The reserved ranges widened to whole pages.
    let holes = || reserved.iter().map(|r| PhysRange::new(r.start & !(PAGE - 1), r.end.next_multiple_of(PAGE)));
    let mut n = 0;
    let mut push = |r: PhysRange| {
        if r.start < r.end && n < out.len() {
            out[n] = r;
            n += 1;
        }
    };
    for e in memmap.iter().filter(|e| e.kind == MEMMAP_RAM) {
        let mut start = e.addr.max(PAGE).next_multiple_of(PAGE);
        let end = e.end() & !(PAGE - 1);
        // The lowest hole still ahead in [start, end), one at a time
        // (`start` passes each: the loop ends).
        while let Some(h) = holes().filter(|h| h.start < end && h.end > start).min_by_key(|h| h.start) {
            push(PhysRange::new(start, h.start));
            start = h.end.min(end);
        }
        push(PhysRange::new(start, end));
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;
    use std::vec::Vec;

    /// Guest memory for the tests: bytes at addresses, unreadable elsewhere.
    struct Memory(Vec<(u64, Vec<u8>)>);

    impl Memory {
        fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
            self.0.iter().any(|(base, bytes)| {
                let Some(off) = addr.checked_sub(*base) else { return false };
                let off = off as usize;
                if off + buf.len() > bytes.len() {
                    return false;
                }
                buf.copy_from_slice(&bytes[off..off + buf.len()]);
                true
            })
        }

        fn parse(&self, addr: u64) -> Result<StartInfo, StartInfoError> {
            StartInfo::parse(addr, &mut |a, b| self.read(a, b))
        }
    }

    const INFO: u64 = 0x6000;
    const MEMMAP: u64 = 0x7000;
    const CMDLINE: u64 = 0x8000;

    /// QEMU's map for a 256 MiB pc machine.
    fn qemu_map() -> Vec<MemEntry> {
        vec![
            MemEntry { addr: 0, size: 0x9fc00, kind: 1 },
            MemEntry { addr: 0x9fc00, size: 0x400, kind: 2 },
            MemEntry { addr: 0xf0000, size: 0x10000, kind: 2 },
            MemEntry { addr: 0x100000, size: 0xff0_0000, kind: 1 },
            MemEntry { addr: 0xfffc_0000, size: 0x40000, kind: 2 },
        ]
    }

    fn start_info(version: u32, cmdline: u64, memmap: u64, entries: u32) -> Vec<u8> {
        let mut b = vec![0u8; START_INFO_LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&version.to_le_bytes());
        b[24..32].copy_from_slice(&cmdline.to_le_bytes());
        b[32..40].copy_from_slice(&0xf5a40u64.to_le_bytes());
        b[40..48].copy_from_slice(&memmap.to_le_bytes());
        b[48..52].copy_from_slice(&entries.to_le_bytes());
        b
    }

    fn memmap_bytes(map: &[MemEntry]) -> Vec<u8> {
        map.iter()
            .flat_map(|e| {
                let mut b = vec![0u8; MEMMAP_ENTRY_LEN];
                b[0..8].copy_from_slice(&e.addr.to_le_bytes());
                b[8..16].copy_from_slice(&e.size.to_le_bytes());
                b[16..20].copy_from_slice(&e.kind.to_le_bytes());
                b
            })
            .collect()
    }

    fn memory(info: Vec<u8>, cmdline: &[u8]) -> Memory {
        Memory(vec![(INFO, info), (MEMMAP, memmap_bytes(&qemu_map())), (CMDLINE, cmdline.to_vec())])
    }

    #[test]
    fn a_start_info_like_qemus_gives_its_map_command_line_and_rsdp() {
        let m = memory(start_info(1, CMDLINE, MEMMAP, 5), b"  net-stats=1000 cpus=2\0garbage");
        let info = m.parse(INFO).expect("valid");
        assert_eq!(info.memory_map(), qemu_map().as_slice());
        assert_eq!(info.cmdline(), "net-stats=1000 cpus=2");
        assert_eq!((info.rsdp, info.cmdline_error), (Some(0xf5a40), None));
        assert_eq!((info.ram_end(), info.mapped_end()), (0x1000_0000, 0x1000_0000));
        let mut acpi_high = qemu_map();
        acpi_high.push(MemEntry { addr: 0x1000_0000, size: 0x2_0000, kind: MEMMAP_ACPI });
        let m = Memory(vec![(INFO, start_info(1, 0, MEMMAP, 6)), (MEMMAP, memmap_bytes(&acpi_high))]);
        let info = m.parse(INFO).unwrap();
        assert_eq!((info.ram_end(), info.mapped_end()), (0x1000_0000, 0x1002_0000), "ACPI tables above RAM");
    }

    #[test]
    fn no_command_line_is_an_empty_one() {
        let m = memory(start_info(1, 0, MEMMAP, 5), b"");
        let info = m.parse(INFO).unwrap();
        assert_eq!((info.cmdline(), info.cmdline_error), ("", None));
    }

    #[test]
    fn what_cannot_be_booted_from_is_an_error() {
        let mut bad_magic = start_info(1, CMDLINE, MEMMAP, 5);
        bad_magic[0] ^= 1;
        let mut ram_none = memory(start_info(1, CMDLINE, MEMMAP, 1), b"\0");
        ram_none.0[1].1 = memmap_bytes(&[MemEntry { addr: 0, size: 0x1000, kind: 2 }]);
        let cases: Vec<(&str, Memory, u64, StartInfoError)> = vec![
            ("no start_info", memory(start_info(1, 0, MEMMAP, 5), b""), 0, StartInfoError::NoStartInfo),
            ("unreadable", memory(start_info(1, 0, MEMMAP, 5), b""), 0x50_0000, StartInfoError::Unreadable(0x50_0000)),
            ("bad magic", memory(bad_magic, b""), INFO, StartInfoError::BadMagic(MAGIC ^ 1)),
            ("version 0", memory(start_info(0, 0, MEMMAP, 5), b""), INFO, StartInfoError::NoMemoryMap),
            ("no entries", memory(start_info(1, 0, MEMMAP, 0), b""), INFO, StartInfoError::NoMemoryMap),
            ("null map", memory(start_info(1, 0, 0, 5), b""), INFO, StartInfoError::NoMemoryMap),
            ("too long", memory(start_info(1, 0, MEMMAP, 129), b""), INFO, StartInfoError::MemoryMapTooLong(129)),
            (
                "map beyond readable memory",
                memory(start_info(1, 0, MEMMAP, 6), b""),
                INFO,
                StartInfoError::Unreadable(MEMMAP + 5 * 24),
            ),
            ("no RAM", ram_none, INFO, StartInfoError::NoRam),
        ];
        for (what, m, addr, want) in cases {
            assert_eq!(m.parse(addr).err(), Some(want), "{what}");
        }
    }

    #[test]
    fn a_bad_command_line_is_reported_and_left_out() {
        let long = vec![b'a'; 5000];
        let mut exact = vec![b'b'; MAX_CMDLINE];
        exact.push(0);
        let mut over = vec![b'c'; MAX_CMDLINE + 1];
        over.push(0);
        let cases: [(&str, &[u8], Option<StartInfoError>, usize); 5] = [
            ("no terminator", &long, Some(StartInfoError::CmdlineUnterminated), 0),
            ("ends at unreadable memory", b"abc", Some(StartInfoError::Unreadable(CMDLINE + 3)), 0),
            ("not UTF-8", b"cpus=\xff\0", Some(StartInfoError::CmdlineNotUtf8), 0),
            ("exactly the longest", &exact, None, MAX_CMDLINE),
            ("one byte too long", &over, Some(StartInfoError::CmdlineUnterminated), 0),
        ];
        for (what, cmdline, error, len) in cases {
            let info = memory(start_info(1, CMDLINE, MEMMAP, 5), cmdline).parse(INFO).expect(what);
            assert_eq!(info.cmdline_error, error, "{what}");
            assert_eq!(info.cmdline().len(), len, "{what}");
            assert_eq!(info.memory_map().len(), 5, "{what}: the rest is still taken");
        }
    }

    #[test]
    fn usable_memory_leaves_out_the_first_page_the_kernel_and_what_is_not_ram() {
        let kernel = PhysRange::new(0x20_0000, 0x2a_1234);
        let mut out = [PhysRange::new(0, 0); 8];
        let n = usable_ranges(&qemu_map(), &[kernel], &mut out);
        assert_eq!(
            &out[..n],
            [
                PhysRange::new(0x1000, 0x9f000),
                PhysRange::new(0x10_0000, 0x20_0000),
                PhysRange::new(0x2a_2000, 0x1000_0000),
            ]
        );
        // Two reserved ranges in one entry, given out of order.
        let map = [MemEntry { addr: 0x10_0000, size: 0x100_0000, kind: 1 }];
        let reserved = [PhysRange::new(0x80_0000, 0x90_0000), PhysRange::new(0x20_0000, 0x30_0000)];
        let n = usable_ranges(&map, &reserved, &mut out);
        assert_eq!(
            &out[..n],
            [
                PhysRange::new(0x10_0000, 0x20_0000),
                PhysRange::new(0x30_0000, 0x80_0000),
                PhysRange::new(0x90_0000, 0x110_0000),
            ]
        );
        // Any number of holes: ten of one page each, given backwards.
        let reserved: Vec<PhysRange> =
            (0..10u64).rev().map(|i| PhysRange::new(0x20_0000 + i * 0x2000, 0x20_1000 + i * 0x2000)).collect();
        let mut many = [PhysRange::new(0, 0); 16];
        let n = usable_ranges(&map, &reserved, &mut many);
        assert_eq!(n, 11);
        assert_eq!(
            (many[0], many[1], many[10]),
            (
                PhysRange::new(0x10_0000, 0x20_0000),
                PhysRange::new(0x20_1000, 0x20_2000),
                PhysRange::new(0x21_3000, 0x110_0000)
            )
        );
    }
}
