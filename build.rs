//! Generates the ggml bindings from the pinned llama.cpp tree (set up by
//! bench-scripts/setup-llama.sh) and links libggml-base from its build.

use std::env;
use std::path::PathBuf;

/// The ggml backend ABI this crate's vtables are written against.
const EXPECTED_BACKEND_API_VERSION: u32 = 2;

fn main() {
    let repo = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let src = env::var_os("SMEPILOT_LLAMA_SRC")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("build/llama.cpp"));
    let libdir = env::var_os("SMEPILOT_LLAMA_LIBDIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("build/llama.cpp-build/bin"));
    println!("cargo:rerun-if-env-changed=SMEPILOT_LLAMA_SRC");
    println!("cargo:rerun-if-env-changed=SMEPILOT_LLAMA_LIBDIR");

    let include = src.join("ggml/include");
    let impl_header = src.join("ggml/src/ggml-backend-impl.h");
    // ggml_log_internal, ggml's logging entry point (so llama_log_set sees our messages).
    let log_header = src.join("ggml/src/ggml-impl.h");
    if !impl_header.exists() {
        panic!(
            "pinned llama.cpp tree not found at {} (run bench-scripts/setup-llama.sh, or set SMEPILOT_LLAMA_SRC)",
            src.display()
        );
    }
    println!("cargo:rerun-if-changed={}", impl_header.display());
    println!("cargo:rerun-if-changed={}", log_header.display());
    println!(
        "cargo:rerun-if-changed={}",
        include.join("ggml.h").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        include.join("ggml-backend.h").display()
    );

    let impl_text = std::fs::read_to_string(&impl_header).unwrap();
    let version: u32 = impl_text
        .lines()
        .find_map(|l| l.trim().strip_prefix("#define GGML_BACKEND_API_VERSION"))
        .and_then(|v| v.trim().parse().ok())
        .expect("GGML_BACKEND_API_VERSION not found in ggml-backend-impl.h");
    if version != EXPECTED_BACKEND_API_VERSION {
        panic!(
            "ggml backend API version {version} in {}, SMEPilot's vtables are written for {EXPECTED_BACKEND_API_VERSION}",
            impl_header.display()
        );
    }

    let bindings = bindgen::Builder::default()
        .header(impl_header.to_str().unwrap())
        .header(log_header.to_str().unwrap())
        .clang_arg(format!("-I{}", include.display()))
        .allowlist_type("ggml_.*")
        .allowlist_function("ggml_.*")
        .allowlist_var("GGML_.*")
        // Enums ggml hands the plugin (a tensor's op, a buffer's usage, a status) are
        // newtypes: a value from another ggml version is then just an unknown value to
        // decline, where a Rust enum outside its variants would be undefined behaviour.
        .newtype_enum("ggml_op")
        .newtype_enum("ggml_unary_op")
        .newtype_enum("ggml_glu_op")
        .rustified_enum("ggml_backend_dev_type")
        .newtype_enum("ggml_backend_buffer_usage")
        .newtype_enum("ggml_status")
        .derive_default(true)
        .layout_tests(true)
        .generate()
        .expect("bindgen failed on the ggml headers");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    bindings
        .write_to_file(out.join("ggml_bindings.rs"))
        .unwrap();

    if !libdir.join("libggml-base.so").exists() {
        panic!(
            "libggml-base.so not found in {} (run bench-scripts/setup-llama.sh, or set SMEPILOT_LLAMA_LIBDIR)",
            libdir.display()
        );
    }
    // Through the stable build/ links, so a rebuilt cache tree (new patch hash) is
    // picked up: cargo reruns this script when the linked library changes.
    println!(
        "cargo:rerun-if-changed={}",
        libdir.join("libggml-base.so").display()
    );
    let libdir = std::path::absolute(&libdir).unwrap();
    println!("cargo:rustc-link-search=native={}", libdir.display());
    println!("cargo:rustc-link-lib=dylib=ggml-base");
    // The host process normally has libggml-base loaded already (the loader matches it by
    // soname); the rpath serves test binaries and stand-alone loads.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", libdir.display());
    // llama-bench unloads and reloads the plugin when it switches backends; keeping the
    // library mapped makes a reload return the same static registry.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
}
