//! Cross-check against the real ggml CPU backend of a llama.cpp build, loaded at run time.
//!
//! Ignored by default; run with
//! `SMEPILOT_GGML_LIBDIR=<dir with libggml-base.so and libggml-cpu.so> cargo test --lib
//! kernels::quant -- --ignored`. Without the variable the test reports a skip and passes.
//! The ggml build must target this host (ggml-cpu's q8 quantizers differ per architecture).
//!
//! Checks, for every tier: `from_f32` bytes equal ggml-cpu's `from_float`, `to_f32` bits
//! equal ggml's `to_float`, and `vec_dot` within 1e-5 of the magnitude of ggml's `vec_dot`.

use super::*;
use std::ffi::{c_void, CStr, CString};

type FromFloat = unsafe extern "C" fn(*const f32, *mut c_void, i64);
type ToFloat = unsafe extern "C" fn(*const c_void, *mut f32, i64);
type VecDot =
    unsafe extern "C" fn(i32, *mut f32, usize, *const c_void, usize, *const c_void, usize, i32);

/// `struct ggml_type_traits_cpu` (ggml-cpu.h).
#[repr(C)]
struct TraitsCpu {
    from_float: Option<FromFloat>,
    vec_dot: Option<VecDot>,
    vec_dot_type: u32,
    nrows: i64,
}

/// `struct ggml_type_traits` (ggml.h).
#[repr(C)]
struct Traits {
    type_name: *const std::ffi::c_char,
    blck_size: i64,
    blck_size_interleave: i64,
    type_size: usize,
    is_quantized: bool,
    to_float: Option<ToFloat>,
    from_float_ref: Option<FromFloat>,
}

struct Ggml {
    traits_cpu: unsafe extern "C" fn(u32) -> *const TraitsCpu,
    traits: unsafe extern "C" fn(u32) -> *const Traits,
}

fn dlopen(path: &str) -> *mut c_void {
    let c = CString::new(path).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path; dlopen has no other precondition.
    let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if h.is_null() {
        // SAFETY: dlerror returns NULL or a valid C string owned by libc.
        let err = unsafe { libc::dlerror() };
        let msg = if err.is_null() {
            String::new()
        } else {
            unsafe { CStr::from_ptr(err) }
                .to_string_lossy()
                .into_owned()
        };
        panic!("dlopen {path}: {msg}");
    }
    h
}

fn dlsym(h: *mut c_void, name: &str) -> *mut c_void {
    let c = CString::new(name).unwrap();
    // SAFETY: `h` is a live handle from dlopen and `c` a valid C string.
    let p = unsafe { libc::dlsym(h, c.as_ptr()) };
    assert!(!p.is_null(), "symbol {name} not found");
    p
}

fn load(dir: &str) -> Ggml {
    let base = dlopen(&format!("{dir}/libggml-base.so"));
    let cpu = dlopen(&format!("{dir}/libggml-cpu.so"));
    // SAFETY (all three): the symbols are the C functions declared in ggml-cpu.h / ggml.h with
    // exactly these signatures; the handles stay open for the rest of the process.
    unsafe {
        let init: unsafe extern "C" fn() = std::mem::transmute(dlsym(cpu, "ggml_cpu_init"));
        init();
        Ggml {
            traits_cpu: std::mem::transmute::<
                *mut c_void,
                unsafe extern "C" fn(u32) -> *const TraitsCpu,
            >(dlsym(cpu, "ggml_get_type_traits_cpu")),
            traits: std::mem::transmute::<*mut c_void, unsafe extern "C" fn(u32) -> *const Traits>(
                dlsym(base, "ggml_get_type_traits"),
            ),
        }
    }
}

#[test]
#[ignore = "needs SMEPILOT_GGML_LIBDIR (a llama.cpp build's bin dir)"]
fn matches_ggml_cpu_backend() {
    let Some(dir) = std::env::var_os("SMEPILOT_GGML_LIBDIR") else {
        return eprintln!("skipped: SMEPILOT_GGML_LIBDIR not set");
    };
    let g = load(dir.to_str().unwrap());
    let mut r = rng(77);
    let mut tiers = fast_tiers();
    tiers.push(("scalar", &scalar::TABLE));
    let mut checked = 0;
    for ty in TYPES {
        // SAFETY: ggml returns pointers to its static trait tables for every valid type id.
        let (tc, tb) = unsafe { (&*(g.traits_cpu)(ty as u32), &*(g.traits)(ty as u32)) };
        for n in lengths(ty).into_iter().filter(|&n| n >= 32) {
            for rep in 0..4 {
                let mut x = rand_f32(&mut r, n);
                if rep == 0 && n >= 256 {
                    // Exact rounding ties for the q8 quantizers (amax = 127 -> scale 1).
                    for (j, v) in x[..256].iter_mut().enumerate() {
                        *v = if j == 0 { 127.0 } else { (j % 16) as f32 - 7.5 };
                    }
                }
                // from_f32 against ggml-cpu's from_float.
                let row = match (tc.from_float, sk(ty).from_f32) {
                    (Some(ff), Some(_)) => {
                        let mut want = vec![0u8; ty.row_bytes(n)];
                        // SAFETY: `x` holds n f32 and `want` row_bytes(n) bytes, what ggml writes.
                        unsafe { ff(x.as_ptr(), want.as_mut_ptr().cast(), n as i64) };
                        for (name, t) in &tiers {
                            let mut got = vec![0u8; ty.row_bytes(n)];
                            (entry(t, ty).from_f32.unwrap())(&x, &mut got);
                            assert!(
                                got == want,
                                "{name} {} n={n}: from_f32 differs from ggml",
                                ty.name()
                            );
                            checked += 1;
                        }
                        want
                    }
                    _ => rand_row(&mut r, ty, n),
                };
                // to_f32 against ggml's to_float.
                if let Some(tf) = tb.to_float {
                    let mut want = vec![0f32; n];
                    // SAFETY: `row` holds row_bytes(n) bytes, `want` n f32.
                    unsafe { tf(row.as_ptr().cast(), want.as_mut_ptr(), n as i64) };
                    for (name, t) in &tiers {
                        let mut got = vec![0f32; n];
                        (entry(t, ty).to_f32)(&row, &mut got);
                        assert!(
                            got.iter().zip(&want).all(|(a, b)| same_f32(*a, *b)),
                            "{name} {} n={n}: to_f32 differs from ggml",
                            ty.name()
                        );
                        checked += 1;
                    }
                }
                // vec_dot against ggml's vec_dot, on activations quantized by ggml.
                if let (Some(vd), Some(_)) = (tc.vec_dot, sk(ty).vec_dot) {
                    let vdt = sk(ty).vec_dot_type;
                    assert_eq!(tc.vec_dot_type, vdt as u32, "{} vec_dot_type", ty.name());
                    // SAFETY: as above, a static trait table.
                    let qa = unsafe { &*(g.traits_cpu)(vdt as u32) }.from_float.unwrap();
                    let xa = rand_f32(&mut r, n);
                    let mut a = vec![0u8; vdt.row_bytes(n)];
                    // SAFETY: `xa` holds n f32, `a` row_bytes(n) bytes.
                    unsafe { qa(xa.as_ptr(), a.as_mut_ptr().cast(), n as i64) };
                    let mut want = 0f32;
                    // SAFETY: n elements of each row are readable; one result is written.
                    unsafe {
                        vd(
                            n as i32,
                            &mut want,
                            0,
                            row.as_ptr().cast(),
                            0,
                            a.as_ptr().cast(),
                            0,
                            1,
                        )
                    };
                    let (mag, _) = magnitude_and_dot(ty, vdt, n, &row, &a);
                    for (name, t) in &tiers {
                        let got = (entry(t, ty).vec_dot.unwrap())(n, &row, &a);
                        let err = (got as f64 - want as f64).abs();
                        assert!(
                            err <= 1e-5 * mag + 1e-30,
                            "{name} {} n={n}: {got} vs ggml {want} (mag {mag})",
                            ty.name()
                        );
                        checked += 1;
                    }
                }
            }
        }
    }
    eprintln!("ggml cross-check: {checked} comparisons");
}
