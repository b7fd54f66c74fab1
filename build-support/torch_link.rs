//! Gives every binary of this package (tests, examples) an rpath to torch's `lib/` folder, so they
//! run without LD_LIBRARY_PATH, and keeps libtorch_cuda linked (the linker's `--as-needed` would
//! drop it, and CUDA would then be invisible) when the torch build has it.
//! Shared by crates/divrl, crates/divrl-experiments and crates/divrl-torch-cli (`build = "../../build-support/torch_link.rs"`).
use std::path::PathBuf;
use std::process::Command;

fn torch_lib_dir() -> Result<PathBuf, String> {
    if let Ok(dir) = std::env::var("DIVRL_TORCH_LIB") {
        return Ok(PathBuf::from(dir));
    }
    if let Ok(dir) = std::env::var("LIBTORCH") {
        return Ok(PathBuf::from(dir).join("lib"));
    }
    // Same rule as torch-sys with LIBTORCH_USE_PYTORCH=1: the `python3` first on PATH; else the
    // project venv.
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let venv_py = manifest.join("../../.venv/bin/python");
    let mut tried = Vec::new();
    for py in [PathBuf::from("python3"), venv_py] {
        let out = Command::new(&py)
            .args([
                "-c",
                "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib')); print(torch.__version__)",
            ])
            .output();
        match out {
            Ok(o) if o.status.success() => {
                let text = String::from_utf8_lossy(&o.stdout).to_string();
                let mut lines = text.lines();
                let dir = lines.next().unwrap_or("").trim().to_string();
                let ver = lines.next().unwrap_or("").trim().to_string();
                if !ver.starts_with("2.11.0") {
                    return Err(format!(
                        "{} has torch {ver}, divrl needs torch==2.11.0 (run scripts/setup-torch.sh, then `source scripts/env.sh`)",
                        py.display()
                    ));
                }
                return Ok(PathBuf::from(dir));
            }
            _ => tried.push(py.display().to_string()),
        }
    }
    Err(format!(
        "no python with torch found (tried {}); run scripts/setup-torch.sh, then `source scripts/env.sh`",
        tried.join(", ")
    ))
}

fn main() {
    println!("cargo:rerun-if-env-changed=DIVRL_TORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=PATH");
    println!("cargo:rerun-if-changed=../../build-support/torch_link.rs");
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
