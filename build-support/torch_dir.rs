// Where torch's `lib/` folder is: `DIVRL_TORCH_LIB`, `LIBTORCH/lib`, or the `python3` on PATH
// (else the project venv) with torch==2.11.0. Included by the build scripts in this folder and
// by crates/divrl-dist's.
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
