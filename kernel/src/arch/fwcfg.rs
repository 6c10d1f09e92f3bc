//! Reading files from QEMU's fw_cfg device through its I/O ports.

use kernel::fwcfg::{self, ItemReader};
use x86_64::instructions::port::Port;

const SELECTOR_PORT: u16 = 0x510;
const DATA_PORT: u16 = 0x511;
/// A directory bigger than this is corrupt.
const MAX_DIR_ENTRIES: u32 = 4096;

struct PortReader;

impl ItemReader for PortReader {
    fn read(&mut self, buf: &mut [u8]) {
        let mut data = Port::<u8>::new(DATA_PORT);
        for b in buf {
            // SAFETY: reading the fw_cfg data port only advances the device's
            // read offset; without the device the read returns 0xff.
            *b = unsafe { data.read() };
        }
    }
}

fn select(key: u16) {
    // SAFETY: writing the fw_cfg selector port only chooses the item that
    // later data reads return; it touches no memory.
    unsafe { Port::<u16>::new(SELECTOR_PORT).write(key) };
}

/// Copies the fw_cfg file `name` into `buf` (truncated to its length) and
/// returns how many bytes were copied, or `None` without fw_cfg or the file.
pub fn read_file(name: &str, buf: &mut [u8]) -> Option<usize> {
    let mut signature = [0u8; 4];
    select(fwcfg::KEY_SIGNATURE);
    PortReader.read(&mut signature);
    if signature != fwcfg::SIGNATURE {
        return None;
    }
    select(fwcfg::KEY_FILE_DIR);
    let entry = fwcfg::find_file(&mut PortReader, name, MAX_DIR_ENTRIES)?;
    let n = (entry.size as usize).min(buf.len());
    select(entry.select);
    PortReader.read(&mut buf[..n]);
    Some(n)
}
