//! This executable, as it was when it started.
//!
//! The tests and benchmarks run this executable again for their host-side
//! loads (`tcp-load`, `raw-load`, `rr` inside a namespace). `cargo xtask
//! test` also runs `cargo test` on the workspace, which can relink
//! target/debug/xtask with other features mid-run: the running binary's
//! file is then deleted, and starting it again fails. [`pin`] makes a hard
//! link to it next to it (same filesystem, no copy), which keeps that
//! binary whatever cargo does; [`path`] names the link, [`unpin`] removes it.

use std::path::PathBuf;
use std::sync::Mutex;

static PINNED: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Links this executable as `.xtask-<pid>` beside it (once; silently skipped
/// where links cannot be made: [`path`] then names the executable itself).
pub fn pin() {
    let Ok(exe) = std::env::current_exe() else { return };
    let link = exe.with_file_name(format!(".xtask-{}", std::process::id()));
    let _ = std::fs::remove_file(&link);
    if std::fs::hard_link(&exe, &link).is_ok() {
        *PINNED.lock().unwrap_or_else(|e| e.into_inner()) = Some(link);
    }
}

/// Removes the link [`pin`] made.
pub fn unpin() {
    if let Some(link) = PINNED.lock().unwrap_or_else(|e| e.into_inner()).take() {
        let _ = std::fs::remove_file(link);
    }
}

/// This executable to start again: the pinned link, or the executable.
pub fn path() -> Result<PathBuf, String> {
    if let Some(p) = PINNED.lock().unwrap_or_else(|e| e.into_inner()).clone() {
        return Ok(p);
    }
    std::env::current_exe().map_err(|e| format!("cannot find the xtask executable: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_executable_survives_its_file_being_replaced() {
        // Not this test binary: a copy, so that replacing it harms nothing.
        let dir = std::env::temp_dir().join(format!("mqnet-selfexe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let exe = dir.join("tool");
        std::fs::write(&exe, b"old").unwrap();
        let link = dir.join(".tool-1");
        std::fs::hard_link(&exe, &link).unwrap();
        // What a linker does: a new file in place of the old one.
        std::fs::remove_file(&exe).unwrap();
        std::fs::write(&exe, b"new").unwrap();
        assert_eq!(std::fs::read(&link).unwrap(), b"old");
        std::fs::remove_dir_all(&dir).unwrap();
        // Without a pin, the path is the executable itself.
        assert_eq!(path().unwrap(), std::env::current_exe().unwrap());
    }
}
