//! A static kernel benchmark of the SME engine for the instruction counter (timing under
//! emulation means nothing; executed instructions do): one MUL_MAT in matrix mode on one
//! thread, M x K activations by a slice of N weight rows, weights from their packed copy
//! where the type has one (as in the plugin).
//!
//! ```sh
//! RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
//!   cargo build --release -p smepilot-engine --example sme_kernel_count --target aarch64-unknown-linux-gnu
//! qemu-aarch64 -cpu max,sme-default-vector-length=64 -L /usr/aarch64-linux-gnu \
//!   -d in_asm,exec,nochain -dfilter LO+SIZE -D run.log BIN q4_0 f16 512 3072 128
//! qemu-icount.py run.log BIN 'smepilot_engine::kernels::sme' ...
//! ```
//!
//! Arguments: weight type (q4_0, q4_1, q8_0, q4_k, q6_k, bf16, f16, f32), kernel (f16 or
//! int8), M, K, N, and `sme1` to run the SME1 instructions on an SME2 CPU.

#[cfg(not(target_arch = "aarch64"))]
fn main() {
    eprintln!("sme_kernel_count: an aarch64 benchmark");
}

#[cfg(target_arch = "aarch64")]
fn main() {
    use smepilot_engine::calibrate::{random_weights, tensor};
    use smepilot_engine::dtype::DType;
    use smepilot_engine::exec::Executor;
    use smepilot_engine::kernels::packed::{self, Layout, PackedRef};
    use smepilot_engine::kernels::registry::{self, MatrixUnit};
    use smepilot_engine::ops::{Node, Op};
    use smepilot_engine::plan::{Mode, Plan};
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, d: &str| args.get(i).cloned().unwrap_or_else(|| d.to_string());
    let ty = match arg(1, "q4_0").as_str() {
        "q4_0" => DType::Q4_0,
        "q4_1" => DType::Q4_1,
        "q8_0" => DType::Q8_0,
        "q4_k" => DType::Q4_K,
        "q6_k" => DType::Q6_K,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        "f32" => DType::F32,
        t => panic!("unknown weight type {t}"),
    };
    let int8 = arg(2, "f16") == "int8";
    let num = |i: usize, d: &str| arg(i, d).parse::<usize>().expect("a number");
    let (m, k, n) = (num(3, "512"), num(4, "3072"), num(5, "128"));
    let Some(MatrixUnit::Sme(mut unit)) = registry::active().matrix else { panic!("no SME unit in the process's kernel set") };
    unit.sme2 &= arg(6, "") != "sme1";
    let ks: &'static _ = Box::leak(Box::new(smepilot_engine::kernels::KernelSet { matrix: Some(MatrixUnit::Sme(unit)), ..*registry::active() }));
    smepilot_engine::kernels::sme::int8_choice::set(Some(int8));

    let mut w = random_weights(ty, n, k, 1);
    let layout = Layout::for_weights(ty, k, n);
    let mut packed_copy = vec![0u8; w.len()];
    if let Some(l) = layout {
        packed::pack(l, ty, &w, &mut packed_copy, n, k);
    }
    let mut x: Vec<f32> = (0..m * k).map(|i| ((i * 7919 % 2001) as f32 / 1000.0) - 1.0).collect();
    let mut d = vec![0f32; m * n];
    let mut weights = tensor(ty, [k, n, 1, 1], w.as_mut_ptr());
    weights.packed = layout.map(|l| PackedRef { layout: l, data: packed_copy.as_ptr(), len: packed_copy.len() });
    let node = Node {
        op: Op::MulMat,
        dst: tensor(DType::F32, [n, m, 1, 1], d.as_mut_ptr() as *mut u8),
        src: [
            Some(weights),
            Some(tensor(DType::F32, [k, m, 1, 1], x.as_mut_ptr() as *mut u8)),
            None,
            None,
            None,
        ],
    };
    let mut exec = Executor::with_kernels(1, ks);
    exec.compute_with_plans(std::slice::from_ref(&node), &[Plan::forced(Mode::Matrix, 1)]).expect("graph failed");
    let sum: f64 = d.iter().map(|&v| v as f64).sum();
    println!("{ty:?} {} M={m} K={k} N={n} SVL={} sme2={}: checksum {sum:.6}", if int8 { "int8" } else { "f16" }, unit.svl_bytes * 8, unit.sme2);
}
