//! Links the bare-metal kernel with its own layout (linker.ld): a fixed
//! address in the top 2 GiB, and physical load addresses for direct (PVH)
//! boot. The host build of this package (the library's tests, the stub
//! binary) links as usual.

fn main() {
    println!("cargo:rerun-if-changed=linker.ld");
    if std::env::var("TARGET").as_deref() == Ok("x86_64-unknown-none") {
        let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
        println!("cargo:rustc-link-arg-bins=-T{dir}/linker.ld");
        // The target links a static PIE by default; a PVH loader applies no
        // relocations, so the kernel is linked at its one address.
        println!("cargo:rustc-link-arg-bins=--no-pie");
    }
}
