//! Building the kernel (for x86_64-unknown-none) and its disk images.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use boot::image::{self, Firmware};

pub const KERNEL_TARGET: &str = "x86_64-unknown-none";

/// The workspace root (this crate lives in `<root>/xtask`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is inside the workspace").to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

pub struct Built {
    pub kernel: PathBuf,
    pub images_dir: PathBuf,
}

impl Built {
    pub fn image(&self, firmware: Firmware) -> PathBuf {
        image::image_path(&self.images_dir, firmware)
    }
}

/// Builds the kernel ELF and the images for `firmwares`.
pub fn build(release: bool, firmwares: &[Firmware]) -> Result<Built, String> {
    let profile = if release { "release" } else { "debug" };
    eprintln!("building the kernel ({profile}, {KERNEL_TARGET})");
    let mut cmd = cargo();
    cmd.args(["build", "--package", "kernel", "--bin", "kernel", "--target", KERNEL_TARGET]);
    cmd.arg("--message-format=json-render-diagnostics");
    if release {
        cmd.arg("--release");
    }
    let mut child =
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().map_err(|e| format!("could not run cargo: {e}"))?;
    let mut kernel = None;
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line.map_err(|e| e.to_string())?;
        if let Some(exe) = kernel_executable(&line) {
            kernel = Some(exe);
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("building the kernel failed ({status})"));
    }
    let kernel = kernel.ok_or("cargo reported no kernel executable")?;
    let images_dir = kernel.parent().expect("the ELF is in a directory").join("images");
    for &fw in firmwares.iter().filter(|f| f.needs_image()) {
        let path = image::build(&kernel, &images_dir, fw)?;
        eprintln!("{} image: {}", fw.name(), path.display());
    }
    Ok(Built { kernel, images_dir })
}

/// The `executable` of the kernel's `compiler-artifact` message, if `line` is one.
fn kernel_executable(line: &str) -> Option<PathBuf> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v["reason"] != "compiler-artifact" || v["target"]["name"] != "kernel" {
        return None;
    }
    let kinds = v["target"]["kind"].as_array()?;
    if !kinds.iter().any(|k| k == "bin") {
        return None;
    }
    v["executable"].as_str().map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_kernel_executable_in_cargo_messages() {
        let bin = r#"{"reason":"compiler-artifact","target":{"name":"kernel","kind":["bin"]},"executable":"/t/x86_64-unknown-none/release/kernel"}"#;
        let lib = r#"{"reason":"compiler-artifact","target":{"name":"kernel","kind":["lib"]},"executable":null}"#;
        let other = r#"{"reason":"compiler-artifact","target":{"name":"log","kind":["lib"]},"executable":null}"#;
        assert_eq!(kernel_executable(bin), Some(PathBuf::from("/t/x86_64-unknown-none/release/kernel")));
        assert_eq!(kernel_executable(lib), None);
        assert_eq!(kernel_executable(other), None);
        assert_eq!(kernel_executable("not json"), None);
        assert_eq!(kernel_executable(r#"{"reason":"build-finished","success":true}"#), None);
    }
}
