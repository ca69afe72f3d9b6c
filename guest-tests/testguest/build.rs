//! Link arguments for the freestanding binaries: no C runtime, no libc, a
//! static non-PIE executable; the test guest also gets its link script.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=testguest.ld");
    println!("cargo:rustc-link-arg-bin=tern-testguest=-T{dir}/testguest.ld");
    for bin in ["tern-testguest", "tern-live-init"] {
        for arg in [
            "-nostartfiles",
            "-nostdlib",
            "-static",
            "-no-pie",
            "-Wl,--build-id=none",
            "-Wl,-z,max-page-size=4096",
        ] {
            println!("cargo:rustc-link-arg-bin={bin}={arg}");
        }
    }
}
