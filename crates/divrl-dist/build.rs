//! Compiles csrc/comm.cpp against the headers of the torch wheel whose libraries tch links
//! (c10d ships inside libtorch_cpu), and gives this package's binaries an rpath to them.
include!("../../build-support/torch_dir.rs");

fn main() {
    println!("cargo:rerun-if-env-changed=DIVRL_TORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=PATH");
    println!("cargo:rerun-if-changed=../../build-support/torch_dir.rs");
    println!("cargo:rerun-if-changed=csrc/comm.cpp");
    let lib = torch_lib_dir().unwrap_or_else(|msg| panic!("divrl-dist: {msg}"));
    let include = lib.join("../include");
    cc::Build::new()
        .cpp(true)
        .file("csrc/comm.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-fPIC")
        // The torch wheel is built with the C++11 ABI (torch.compiled_with_cxx11_abi()).
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(false)
        .compile("divrl_comm");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}
