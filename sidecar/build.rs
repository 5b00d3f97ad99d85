//! Link settings of the `sidemount` binary.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let target = |key: &str| std::env::var(key).unwrap_or_default();
    // Packed relative relocations (DT_RELR): the binary is position-independent,
    // and its 17,000 relative relocations, 400 KiB of table as RELA entries, took
    // a fifth of the instructions of its start (`sidemount --version`: 653,000
    // instructions, 532,000 packed). Needs glibc 2.36 at run time (bookworm, the
    // images' base) and a linker that knows the option (binutils 2.38, lld 15).
    if target("CARGO_CFG_TARGET_OS") == "linux" && target("CARGO_CFG_TARGET_ENV") == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
