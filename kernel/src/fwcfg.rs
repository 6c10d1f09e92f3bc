//! QEMU's firmware configuration device (fw_cfg): the parts that are pure
//! byte handling. The kernel reads it through I/O ports; tests read recorded
//! bytes.
//!
//! Items are selected by a 16-bit key; the file directory (key 0x19) is a
//! big-endian entry count followed by 64-byte entries
//! `{be32 size, be16 select, be16 reserved, name[56]}`.

/// Selector of the signature item (reads "QEMU").
pub const KEY_SIGNATURE: u16 = 0x0000;
/// Selector of the file directory.
pub const KEY_FILE_DIR: u16 = 0x0019;
pub const SIGNATURE: [u8; 4] = *b"QEMU";
pub const DIR_ENTRY_SIZE: usize = 64;
const NAME_LEN: usize = 56;

/// Sequential reads from the currently selected item.
pub trait ItemReader {
    fn read(&mut self, buf: &mut [u8]);
}

/// A named fw_cfg file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileEntry {
    pub size: u32,
    pub select: u16,
}

/// Decodes one 64-byte directory entry into (entry, name bytes).
pub fn parse_entry(raw: &[u8; DIR_ENTRY_SIZE]) -> (FileEntry, &[u8]) {
    let size = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let select = u16::from_be_bytes([raw[4], raw[5]]);
    let name = &raw[8..8 + NAME_LEN];
    let name_len = name.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
    (FileEntry { size, select }, &name[..name_len])
}

/// Scans the directory that `reader` is positioned at (the file directory
/// item just selected) for `name`. At most `max_entries` entries are read,
/// so a corrupt count cannot keep the kernel reading forever.
pub fn find_file(reader: &mut impl ItemReader, name: &str, max_entries: u32) -> Option<FileEntry> {
    let mut count = [0u8; 4];
    reader.read(&mut count);
    let count = u32::from_be_bytes(count).min(max_entries);
    let mut raw = [0u8; DIR_ENTRY_SIZE];
    for _ in 0..count {
        reader.read(&mut raw);
        let (entry, entry_name) = parse_entry(&raw);
        if entry_name == name.as_bytes() {
            return Some(entry);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Bytes(Vec<u8>, usize);
    impl ItemReader for Bytes {
        fn read(&mut self, buf: &mut [u8]) {
            for b in buf {
                // fw_cfg reads past the end of an item return 0.
                *b = self.0.get(self.1).copied().unwrap_or(0);
                self.1 += 1;
            }
        }
    }

    fn entry(size: u32, select: u16, name: &str) -> Vec<u8> {
        let mut e = Vec::new();
        e.extend(size.to_be_bytes());
        e.extend(select.to_be_bytes());
        e.extend([0, 0]);
        let mut n = [0u8; NAME_LEN];
        n[..name.len()].copy_from_slice(name.as_bytes());
        e.extend(n);
        e
    }

    fn directory(entries: &[(u32, u16, &str)], count: u32) -> Bytes {
        let mut d = count.to_be_bytes().to_vec();
        for &(size, select, name) in entries {
            d.extend(entry(size, select, name));
        }
        Bytes(d, 0)
    }

    #[test]
    fn finds_a_file_among_others() {
        let mut d = directory(
            &[(8, 0x20, "etc/boot-fail-wait"), (23, 0x21, "opt/mqnet/cmdline"), (4, 0x22, "opt/mqnet/cmdline2")],
            3,
        );
        assert_eq!(find_file(&mut d, "opt/mqnet/cmdline", 100), Some(FileEntry { size: 23, select: 0x21 }));
    }

    #[test]
    fn prefix_and_missing_names_do_not_match() {
        let mut d = directory(&[(4, 0x22, "opt/mqnet/cmdline2")], 1);
        assert_eq!(find_file(&mut d, "opt/mqnet/cmdline", 100), None);
        let mut empty = directory(&[], 0);
        assert_eq!(find_file(&mut empty, "opt/mqnet/cmdline", 100), None);
    }

    #[test]
    fn a_corrupt_count_reads_at_most_max_entries() {
        let mut d = directory(&[(1, 0x20, "a")], u32::MAX);
        assert_eq!(find_file(&mut d, "zzz", 10), None);
        assert_eq!(d.1, 4 + 10 * DIR_ENTRY_SIZE);
    }

    #[test]
    fn a_name_filling_all_56_bytes_is_handled() {
        let long = "x".repeat(NAME_LEN);
        let raw: [u8; DIR_ENTRY_SIZE] = entry(1, 2, &long).try_into().unwrap();
        assert_eq!(parse_entry(&raw).1, long.as_bytes());
    }
}
