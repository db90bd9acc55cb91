//! The kernel registry: one [`KernelSet`] per tier this CPU runs, built once from the CPU's
//! features, and the one the process uses, chosen once from the validated [`Config`].
//!
//! A tier names a kernel for every family the engine dispatches on: the per-type table
//! (conversions and dots), the packed GEMV and the layout it reads, vector math, attention,
//! rope, and the optional matrix unit. Each architecture registers its tiers in
//! [`registered`]; nothing else in the engine checks CPU features or compares tier names.
//! Tests run every family on every tier in [`KernelSet::available`].

use std::sync::OnceLock;

use super::{attn, packed, quant, rope, vmath};
use crate::config::Config;
use crate::platform::CpuFeatures;

/// An instruction-set level the kernels are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// Portable Rust: the reference of every other tier, on every target.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C (AMD Zen 2/3, Intel since Haswell).
    Avx2,
    /// x86-64 AVX-512 F/BW/VL + VNNI (with AVX512-BF16 where present).
    Avx512,
    /// aarch64 Advanced SIMD with the dot-product instructions (with I8MM and BF16 where
    /// present).
    Neon,
}

impl Tier {
    /// Every tier, in ascending order.
    pub const ALL: [Tier; 4] = [Tier::Scalar, Tier::Avx2, Tier::Avx512, Tier::Neon];

    /// The tier's name in settings and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Tier::Scalar => "scalar",
            Tier::Avx2 => "avx2",
            Tier::Avx512 => "avx512",
            Tier::Neon => "neon",
        }
    }

    pub fn parse(name: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// The matrix unit a kernel set drives, when the CPU has one the process may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatrixUnit {
    /// Intel AMX (int8 and bf16 tiles), permitted for this process.
    Amx,
    /// Arm SME / SME2 (ZA tiles beside the cores, driven in streaming mode).
    Sme(SmeUnit),
    /// The scalar reference engine: the matrix and coop drivers on any CPU (tests only).
    #[cfg(test)]
    Reference,
}

/// What the process knows of the Arm SME units it drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmeUnit {
    /// The streaming vector length in bytes (16 to 256).
    pub svl_bytes: usize,
    /// SME2 (multi-vector instructions, LUTI4) beside SME.
    pub sme2: bool,
    /// Cores that share one unit (Apple M4: a P-cluster's cores share one).
    pub cores_per_unit: usize,
}

impl MatrixUnit {
    pub const fn name(self) -> &'static str {
        match self {
            MatrixUnit::Amx => "amx",
            MatrixUnit::Sme(u) if u.sme2 => "sme2",
            MatrixUnit::Sme(_) => "sme",
            #[cfg(test)]
            MatrixUnit::Reference => "reference",
        }
    }

    /// The output block one kernel call computes (activation rows x weight rows): the
    /// planner pads a product's shape to it.
    pub const fn block(self) -> (usize, usize) {
        match self {
            MatrixUnit::Amx => (32, 32),
            // Two by two ZA.S tiles of SVL/32 x SVL/32 each.
            MatrixUnit::Sme(u) => (u.svl_bytes / 2, u.svl_bytes / 2),
            #[cfg(test)]
            MatrixUnit::Reference => (16, 16),
        }
    }

    /// Cores that share one unit: AMX has one per core.
    pub const fn cores_per_unit(self) -> usize {
        match self {
            MatrixUnit::Amx => 1,
            MatrixUnit::Sme(u) => u.cores_per_unit,
            #[cfg(test)]
            MatrixUnit::Reference => 1,
        }
    }
}

/// Every kernel family of one tier.
#[derive(Clone, Copy)]
pub struct KernelSet {
    pub tier: Tier,
    /// The tier's full name, e.g. "avx512+bf16" when the BF16 dot uses `vdpbf16ps`.
    pub name: &'static str,
    /// Per-type conversions and dots (ggml-cpu's `type_traits_cpu`).
    pub quant: &'static quant::Table,
    /// Register-blocked dots beside the table's single ones, where the tier has them.
    pub dense: quant::DenseKernels,
    /// GEMV over packed weights and the packed row reader.
    pub packed: packed::Kernels,
    /// exp, the SiLU gate, softmax.
    pub vmath: vmath::Kernels,
    /// The blocked attention kernels and the f16 V accumulation.
    pub attn: attn::Kernels,
    /// Rope's pair rotation.
    pub rope: rope::Kernels,
    /// The matrix unit beside this tier's vector kernels (set on the process's set only,
    /// see [`active`]).
    pub matrix: Option<MatrixUnit>,
}

impl KernelSet {
    /// The kernels of `ty` in this set's table; `None` for a type not in the table.
    pub fn kernels(&self, ty: crate::dtype::DType) -> Option<&'static quant::TypeKernels> {
        quant::slot(ty).map(|i| &self.quant[i])
    }

    /// Every tier this CPU runs, scalar first, fastest last. Built once.
    pub fn available() -> &'static [KernelSet] {
        static SETS: OnceLock<Vec<KernelSet>> = OnceLock::new();
        SETS.get_or_init(|| registered(&CpuFeatures::detect()))
    }

    /// The set of `tier`, if this CPU runs it.
    pub fn get(tier: Tier) -> Option<&'static KernelSet> {
        KernelSet::available().iter().find(|s| s.tier == tier)
    }

    /// What runs, for the device description: the tier, the matrix unit, the cores, e.g.
    /// "avx512+bf16 kernels, AMX tiles (int8, bf16), 2 cores".
    pub fn describe(&self, f: &CpuFeatures) -> String {
        let sme;
        let unit = match self.matrix {
            Some(MatrixUnit::Amx) => "AMX tiles (int8, bf16)",
            Some(MatrixUnit::Sme(u)) => {
                let name = if u.sme2 { "SME2" } else { "SME" };
                sme = format!("{name} ZA tiles (SVL {} bits, {} cores per unit)", u.svl_bytes * 8, u.cores_per_unit);
                &sme
            }
            #[cfg(test)]
            Some(MatrixUnit::Reference) => "the reference matrix engine",
            None => "no matrix unit",
        };
        format!("{} kernels, {unit}, {} cores", self.name, f.cores)
    }

    /// The scalar reference set, present on every target.
    pub fn scalar() -> &'static KernelSet {
        &KernelSet::available()[0]
    }

    /// Each available tier with the scalar reference matrix engine, for tests of the matrix
    /// and coop drivers on any CPU.
    #[cfg(test)]
    pub fn with_reference_engine() -> &'static [KernelSet] {
        static SETS: OnceLock<Vec<KernelSet>> = OnceLock::new();
        SETS.get_or_init(|| KernelSet::available().iter().map(|s| KernelSet { matrix: Some(MatrixUnit::Reference), ..*s }).collect())
    }
}

/// The portable tier.
fn scalar_set() -> KernelSet {
    KernelSet {
        tier: Tier::Scalar,
        name: "scalar",
        quant: &quant::scalar::TABLE,
        dense: quant::DenseKernels::NONE,
        packed: packed::SCALAR,
        vmath: vmath::SCALAR,
        attn: attn::SCALAR,
        rope: rope::SCALAR,
        matrix: None,
    }
}

/// The tiers each architecture registers for the CPU `f`, ascending.
fn registered(f: &CpuFeatures) -> Vec<KernelSet> {
    #[allow(unused_mut)] // only x86-64 registers more tiers so far
    let mut sets = vec![scalar_set()];
    #[cfg(target_arch = "x86_64")]
    {
        if f.avx2_fma_f16c {
            if let (Some(table), Some(packed), Some(vmath), Some(attn), Some(rope)) =
                (quant::avx2::table(), packed::avx2_kernels(), vmath::avx2_kernels(), attn::avx2_kernels(), rope::fma_kernels())
            {
                sets.push(KernelSet {
                    tier: Tier::Avx2,
                    name: "avx2",
                    quant: table,
                    dense: quant::avx2::dense_kernels(),
                    packed,
                    vmath,
                    attn,
                    rope,
                    matrix: None,
                });
            }
        }
        if f.avx512_tier() {
            if let (Some((table, name)), Some(packed), Some(vmath), Some(attn), Some(rope)) =
                (quant::avx512::table(), packed::avx512_kernels(), vmath::avx512_kernels(), attn::avx512_kernels(), rope::fma_kernels())
            {
                sets.push(KernelSet {
                    tier: Tier::Avx512,
                    name,
                    quant: table,
                    dense: quant::avx512::dense_kernels(),
                    packed,
                    vmath,
                    attn,
                    rope,
                    matrix: None,
                });
            }
        }
    }
    #[cfg(target_arch = "aarch64")]
    if f.neon_tier() {
        if let (Some((table, name)), Some(packed), Some(vmath), Some(attn), Some(rope)) =
            (quant::neon::table(f), packed::neon_kernels(f), vmath::neon_kernels(), attn::neon_kernels(), rope::neon_kernels())
        {
            sets.push(KernelSet {
                tier: Tier::Neon,
                name,
                quant: table,
                dense: quant::neon::dense_kernels(f),
                packed,
                vmath,
                attn,
                rope,
                matrix: None,
            });
        }
    }
    let _ = f;
    sets
}

/// The matrix unit the process may drive: present, permitted by the OS, not disabled.
fn matrix_unit(f: &CpuFeatures, cfg: &Config) -> Option<MatrixUnit> {
    #[cfg(target_arch = "x86_64")]
    // The tile kernels' drains and stagers are AVX-512 (F, BW, VNNI) code.
    if f.amx_tile && f.amx_int8 && f.amx_bf16 && f.avx512f && f.avx512bw && f.avx512_vnni && !cfg.disable_amx {
        if crate::platform::os::request_amx_permission() {
            return Some(MatrixUnit::Amx);
        }
        crate::smelog!(Warn, "Linux refused AMX tile permission; using the vector path");
    }
    #[cfg(target_arch = "aarch64")]
    if f.sme && !cfg.disable_sme {
        return Some(MatrixUnit::Sme(SmeUnit {
            svl_bytes: f.svl_bytes,
            sme2: f.sme2,
            cores_per_unit: crate::platform::topology::sme_cores_per_unit(&crate::platform::os::allowed_cpus(), cfg.matrix_units),
        }));
    }
    let _ = (f, cfg);
    None
}

/// The set `cfg` selects: its `tier` if set (an error when this CPU lacks it), else the
/// fastest available; with the matrix unit the process may use.
pub fn select(cfg: &Config) -> Result<KernelSet, String> {
    let sets = KernelSet::available();
    let base = match cfg.tier {
        Some(t) => KernelSet::get(t).ok_or_else(|| {
            format!(
                "SMEPILOT_TIER={:?}: this CPU does not run that tier (it runs {})",
                t.name(),
                sets.iter().map(|s| s.tier.name()).collect::<Vec<_>>().join(", ")
            )
        })?,
        None => sets.last().expect("the scalar tier is always registered"),
    };
    Ok(KernelSet {
        matrix: matrix_unit(&CpuFeatures::detect(), cfg),
        ..*base
    })
}

/// The process's kernel set, chosen once from the configuration (the scalar set when the
/// configuration is invalid: the plugin then does not register, and nothing runs).
pub fn active() -> &'static KernelSet {
    static ACTIVE: OnceLock<KernelSet> = OnceLock::new();
    ACTIVE.get_or_init(|| match crate::config::get() {
        Ok(cfg) => select(cfg).unwrap_or_else(|e| {
            crate::smelog!(Error, "{e}");
            KernelSet { ..*KernelSet::scalar() }
        }),
        Err(_) => KernelSet { ..*KernelSet::scalar() },
    })
}

/// Tiers named by `SMEPILOT_EXPECT_TIERS` (comma-separated) that this CPU does not offer:
/// the tests fail on them, so a host that should run a tier cannot skip it silently.
pub fn missing_expected_tiers() -> Vec<String> {
    let Some(list) = std::env::var_os("SMEPILOT_EXPECT_TIERS") else { return Vec::new() };
    list.to_string_lossy()
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .filter(|n| Tier::parse(n).is_none_or(|t| KernelSet::get(t).is_none()))
        .map(str::to_string)
        .collect()
}

/// Records that a test ran the kernel `family` on each tier in `tiers`: a line per tier
/// appended to the file `SMEPILOT_TIER_LOG` names (the test log lists them), else stderr.
/// Fails the test when `SMEPILOT_EXPECT_TIERS` names a tier this CPU lacks, or one the
/// family's tiers do not include.
pub fn log_tiers_run<'a>(family: &str, tiers: impl IntoIterator<Item = &'a str>) {
    let tiers: Vec<&str> = tiers.into_iter().collect();
    let missing = missing_expected_tiers();
    assert!(missing.is_empty(), "SMEPILOT_EXPECT_TIERS: this CPU lacks {}", missing.join(", "));
    if let Some(list) = std::env::var_os("SMEPILOT_EXPECT_TIERS") {
        for want in list.to_string_lossy().split(',').map(str::trim).filter(|n| !n.is_empty() && *n != "scalar") {
            assert!(
                tiers.iter().any(|t| t.split([' ', '+']).next() == Some(want)),
                "SMEPILOT_EXPECT_TIERS: {family} did not run on {want} (ran {tiers:?})"
            );
        }
    }
    let text: String = tiers.iter().map(|t| format!("tier {t:<22} {family}\n")).collect();
    match std::env::var_os("SMEPILOT_TIER_LOG") {
        Some(path) => {
            use std::io::Write;
            let f = std::fs::OpenOptions::new().create(true).append(true).open(&path);
            if let Err(e) = f.and_then(|mut f| f.write_all(text.as_bytes())) {
                panic!("SMEPILOT_TIER_LOG={path:?}: {e}");
            }
        }
        None => eprint!("{text}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Config {
        Config::parse(|n| pairs.iter().find(|(k, _)| *k == n).map(|(_, v)| v.to_string())).unwrap()
    }

    #[test]
    fn available_tiers_follow_the_cpu_features() {
        let f = CpuFeatures::detect();
        let tiers: Vec<Tier> = KernelSet::available().iter().map(|s| s.tier).collect();
        assert_eq!(tiers[0], Tier::Scalar);
        assert!(tiers.windows(2).all(|w| w[0] < w[1]), "{tiers:?}");
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(tiers.contains(&Tier::Avx2), f.avx2_fma_f16c, "{f:?}");
            assert_eq!(tiers.contains(&Tier::Avx512), f.avx512_tier(), "{f:?}");
        }
        assert_eq!(tiers.contains(&Tier::Neon), f.neon_tier(), "{f:?}");
        let _ = f;
        // The process's registered sets carry no matrix unit; only the selected one may.
        assert!(KernelSet::available().iter().all(|s| s.matrix.is_none()));
        log_tiers_run("registry", KernelSet::available().iter().map(|s| s.name));
    }

    #[test]
    fn the_setting_selects_the_tier_and_a_missing_tier_is_refused() {
        let best = KernelSet::available().last().unwrap().tier;
        assert_eq!(select(&cfg(&[])).unwrap().tier, best);
        assert_eq!(select(&cfg(&[("SMEPILOT_FORCE_SCALAR", "1")])).unwrap().tier, Tier::Scalar);
        for t in Tier::ALL {
            let c = cfg(&[("SMEPILOT_TIER", t.name())]);
            match KernelSet::get(t) {
                Some(_) => assert_eq!(select(&c).unwrap().tier, t),
                None => {
                    let e = select(&c).err().expect("a tier this CPU lacks is refused");
                    assert!(e.contains("SMEPILOT_TIER") && e.contains(t.name()), "{e}");
                }
            }
        }
        // The matrix unit stays off when disabled.
        assert!(select(&cfg(&[("SMEPILOT_DISABLE_AMX", "1"), ("SMEPILOT_DISABLE_SME", "1")])).unwrap().matrix.is_none());
    }

    #[test]
    fn every_set_covers_every_type_of_the_table() {
        for s in KernelSet::available() {
            for (i, ty) in quant::TYPES.into_iter().enumerate() {
                let k = s.kernels(ty).unwrap();
                assert_eq!(k.ty, ty, "{}", s.name);
                assert_eq!(k.vec_dot_type, quant::scalar::TABLE[i].vec_dot_type, "{}", s.name);
                assert_eq!(k.from_f32.is_some(), quant::scalar::TABLE[i].from_f32.is_some(), "{}", s.name);
                assert_eq!(k.vec_dot.is_some(), quant::scalar::TABLE[i].vec_dot.is_some(), "{}", s.name);
            }
            for ty in [crate::dtype::DType::I8, crate::dtype::DType::I32] {
                assert!(s.kernels(ty).is_none());
            }
        }
    }
}
