//! Disk images from the kernel ELF.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bootloader::{BootConfig, DiskImageBuilder};
use bootloader_boot_config::LevelFilter;

/// How the kernel is booted: directly (PVH: QEMU loads the ELF, no disk
/// image), or from a disk image by SeaBIOS or OVMF.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Firmware {
    Pvh,
    Bios,
    Uefi,
}

impl Firmware {
    pub const fn name(self) -> &'static str {
        match self {
            Firmware::Pvh => "pvh",
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        }
    }

    /// Whether booting this way needs a disk image (the bootloader's).
    pub const fn needs_image(self) -> bool {
        !matches!(self, Firmware::Pvh)
    }

    /// What the kernel's banner says it was booted by.
    pub const fn banner(self) -> &'static str {
        match self {
            Firmware::Pvh => "booted by PVH",
            Firmware::Bios => "booted by bootloader 0.11 (BIOS)",
            Firmware::Uefi => "booted by bootloader 0.11 (UEFI)",
        }
    }
}

/// The bootloader's own settings: warnings only on the serial console (its
/// info lines are noise for users of this kernel) and no framebuffer text,
/// which costs boot time under emulation.
pub fn boot_config() -> BootConfig {
    let mut config = BootConfig::default();
    config.log_level = LevelFilter::Warn;
    config.frame_buffer_logging = false;
    config.serial_logging = true;
    config
}

/// Path of the image for `firmware` in `dir`.
pub fn image_path(dir: &Path, firmware: Firmware) -> PathBuf {
    dir.join(format!("mqnet-{}.img", firmware.name()))
}

/// Writes the disk image for `firmware` from `kernel` into `dir`, unless an
/// image newer than the kernel is already there. Returns its path.
pub fn build(kernel: &Path, dir: &Path, firmware: Firmware) -> Result<PathBuf, String> {
    if !firmware.needs_image() {
        return Err(format!("{} boots the kernel ELF itself: no disk image", firmware.name()));
    }
    let out = image_path(dir, firmware);
    let kernel_time = modified(kernel).map_err(|e| format!("kernel ELF {}: {e}", kernel.display()))?;
    if modified(&out).is_ok_and(|t| t >= kernel_time) {
        return Ok(out);
    }
    fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut builder = DiskImageBuilder::new(kernel.to_path_buf());
    builder.set_boot_config(&boot_config());
    let result = match firmware {
        Firmware::Bios => builder.create_bios_image(&out),
        Firmware::Uefi => builder.create_uefi_image(&out),
        Firmware::Pvh => unreachable!("checked above"),
    };
    result.map_err(|e| format!("creating the {} image {}: {e:#}", firmware.name(), out.display()))?;
    Ok(out)
}

fn modified(p: &Path) -> io::Result<SystemTime> {
    fs::metadata(p)?.modified()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_follow_the_firmware() {
        assert_eq!(image_path(Path::new("/t"), Firmware::Bios), Path::new("/t/mqnet-bios.img"));
        assert_eq!(image_path(Path::new("/t"), Firmware::Uefi), Path::new("/t/mqnet-uefi.img"));
    }

    #[test]
    fn bootloader_config_is_quiet_and_skips_the_framebuffer() {
        let c = boot_config();
        assert!(!c.frame_buffer_logging);
        assert!(c.serial_logging);
        assert!(matches!(c.log_level, LevelFilter::Warn));
    }

    #[test]
    fn a_missing_kernel_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("mqnet-image-test-{}", std::process::id()));
        let err = build(Path::new("/nonexistent/kernel"), &dir, Firmware::Bios).unwrap_err();
        assert!(err.starts_with("kernel ELF /nonexistent/kernel:"), "{err}");
    }
}
