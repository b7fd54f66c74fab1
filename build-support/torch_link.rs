//! Gives every binary of this package (tests, examples) an rpath to torch's `lib/` folder, so they
//! run without LD_LIBRARY_PATH, and keeps libtorch_cuda linked (the linker's `--as-needed` would
//! drop it, and CUDA would then be invisible) when the torch build has it.
//! Shared by crates/divrl, crates/divrl-experiments and crates/divrl-torch-cli (`build = "../../build-support/torch_link.rs"`).
include!("torch_dir.rs");

fn main() {
    println!("cargo:rerun-if-env-changed=DIVRL_TORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=PATH");
    println!("cargo:rerun-if-changed=../../build-support/torch_link.rs");
    println!("cargo:rerun-if-changed=../../build-support/torch_dir.rs");
    match torch_lib_dir() {
        Ok(dir) => {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
            if dir.join("libtorch_cuda.so").exists() {
                println!("cargo:rustc-link-search=native={}", dir.display());
                println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
                println!("cargo:rustc-link-arg=-ltorch_cuda");
                println!("cargo:rustc-link-arg=-Wl,--as-needed");
            }
        }
        Err(msg) => panic!("divrl: {msg}"),
    }
}
