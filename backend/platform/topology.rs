//! Which cores share a matrix unit. Arm SME units may be shared by a cluster of cores
//! (Apple M4: one per P-cluster); Intel AMX has one per core.
//!
//! Sources, first that answers: SMEPILOT_MATRIX_UNITS; SMIDR_EL1's affinity fields where
//! the kernel exposes the register in sysfs; one unit per cluster (`topology/cluster_id`);
//! else one unit for all.
//!
//! SMIDR_EL1 (Arm ARM DDI 0487; Linux's `arch/arm64/tools/sysreg`): AFFINITY bits [11:0],
//! SMPS bit 15, REVISION [23:16], IMPLEMENTER [31:24], and since DDI 0487 M.b SH [14:13],
//! AFFINITY2 [51:32], HIP [55:52], NSMC [59:56] (RES0 before). What AFFINITY promises is
//! only a grouping: processing elements with the same value share a streaming-mode compute
//! unit. Its values are implementation defined, nothing says how fast a unit is, and an
//! implementation that leaves the field at 0 tells nothing. So the field is trusted only
//! where every core reports a nonzero value, and its groups are counted as units (every
//! core the same value: one unit for all, as the field says). SH is not interpreted: its
//! encodings could not be checked here.

use std::path::Path;

/// How the cores the process runs on share SME units.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmeTopology {
    /// The CPUs of each unit (the order of first appearance in the CPU list).
    pub groups: Vec<Vec<usize>>,
    /// The most cores that share one unit.
    pub cores_per_unit: usize,
    pub source: UnitSource,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitSource {
    /// SMEPILOT_MATRIX_UNITS: the cores dealt out over that many units in order.
    Setting,
    /// SMIDR_EL1's affinity fields.
    Smidr,
    /// One unit per `topology/cluster_id`.
    Clusters,
    /// Nothing told: one unit shared by every core.
    Assumed,
}

impl SmeTopology {
    pub fn units(&self) -> usize {
        self.groups.len()
    }

    /// One CPU per unit (each group's first): where the threads that drive the units run,
    /// so that no two drivers share a unit.
    pub fn driver_cpus(&self) -> Vec<usize> {
        self.groups.iter().filter_map(|g| g.first().copied()).collect()
    }
}

/// Cores per SME unit among the cores `cpus` the process may run on (see [`sme_units`]).
pub fn sme_cores_per_unit(cpus: &[usize], units: Option<usize>) -> usize {
    sme_units(Path::new("/sys"), cpus, units).cores_per_unit
}

/// The SME units of `cpus`, from the sysfs tree at `sysfs` (`/sys`; tests give a temporary
/// copy), with `units` (SMEPILOT_MATRIX_UNITS) overriding what it says.
pub fn sme_units(sysfs: &Path, cpus: &[usize], units: Option<usize>) -> SmeTopology {
    let cpus: Vec<usize> = if cpus.is_empty() { vec![0] } else { cpus.to_vec() };
    if let Some(units) = units {
        let units = units.clamp(1, cpus.len());
        let per = cpus.len().div_ceil(units);
        let groups: Vec<Vec<usize>> = cpus.chunks(per).map(<[usize]>::to_vec).collect();
        return topology(groups, UnitSource::Setting);
    }
    let read = |c: usize, file: &str| std::fs::read_to_string(sysfs.join(format!("devices/system/cpu/cpu{c}/{file}"))).ok();
    let smidr: Option<Vec<u64>> = cpus.iter().map(|&c| read(c, "regs/identification/smidr_el1").and_then(|t| parse_hex(&t)).map(smidr_affinity)).collect();
    if let Some(aff) = smidr.filter(|a| smidr_separates(a)) {
        return topology(group_by(&cpus, &aff), UnitSource::Smidr);
    }
    let clusters: Option<Vec<u64>> = cpus.iter().map(|&c| read(c, "topology/cluster_id").and_then(|t| t.trim().parse::<i64>().ok()).map(|v| v as u64)).collect();
    match clusters {
        Some(ids) => topology(group_by(&cpus, &ids), UnitSource::Clusters),
        None => topology(vec![cpus], UnitSource::Assumed),
    }
}

fn topology(groups: Vec<Vec<usize>>, source: UnitSource) -> SmeTopology {
    let cores_per_unit = groups.iter().map(Vec::len).max().unwrap_or(1).max(1);
    SmeTopology { groups, cores_per_unit, source }
}

/// sysfs prints the register as `0x` and 16 hex digits.
fn parse_hex(text: &str) -> Option<u64> {
    let t = text.trim();
    u64::from_str_radix(t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")).unwrap_or(t), 16).ok()
}

/// SMIDR_EL1's AFFINITY2 [51:32] and AFFINITY [11:0], as one key.
pub fn smidr_affinity(smidr: u64) -> u64 {
    ((smidr >> 32) & 0xf_ffff) << 12 | (smidr & 0xfff)
}

/// Whether the affinity keys are worth trusting: every core reports one (0 may be a field
/// left unfilled).
fn smidr_separates(aff: &[u64]) -> bool {
    !aff.contains(&0)
}

/// `cpus` grouped by equal `keys`, groups in order of first appearance.
fn group_by(cpus: &[usize], keys: &[u64]) -> Vec<Vec<usize>> {
    let mut seen: Vec<(u64, Vec<usize>)> = Vec::new();
    for (&c, &k) in cpus.iter().zip(keys) {
        match seen.iter_mut().find(|(key, _)| *key == k) {
            Some((_, g)) => g.push(c),
            None => seen.push((k, vec![c])),
        }
    }
    seen.into_iter().map(|(_, g)| g).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake sysfs under a fresh temporary directory: per CPU, an optional SMIDR_EL1 value
    /// and an optional cluster id.
    fn fake_sysfs(name: &str, cpus: &[(usize, Option<u64>, Option<i64>)]) -> std::path::PathBuf {
        let root = std::env::temp_dir().join(format!("smepilot-topology-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for &(c, smidr, cluster) in cpus {
            let dir = root.join(format!("devices/system/cpu/cpu{c}"));
            std::fs::create_dir_all(dir.join("regs/identification")).unwrap();
            std::fs::create_dir_all(dir.join("topology")).unwrap();
            if let Some(v) = smidr {
                std::fs::write(dir.join("regs/identification/smidr_el1"), format!("0x{v:016x}\n")).unwrap();
            }
            if let Some(id) = cluster {
                std::fs::write(dir.join("topology/cluster_id"), format!("{id}\n")).unwrap();
            }
        }
        root
    }

    /// An SMIDR_EL1 value: implementer 0x61 (Apple), revision 1, SMPS set, and the affinity.
    fn smidr(affinity: u64) -> u64 {
        0x61 << 24 | 1 << 16 | 1 << 15 | affinity
    }

    #[test]
    fn the_override_sets_the_units() {
        let none = Path::new("/nonexistent-sysfs");
        let units = |cpus: &[usize], n| sme_units(none, cpus, Some(n));
        assert_eq!(units(&[0, 1, 2, 3], 1).cores_per_unit, 4);
        assert_eq!(units(&[0, 1, 2, 3], 2).groups, vec![vec![0, 1], vec![2, 3]]);
        assert_eq!(units(&[0, 1, 2], 2).cores_per_unit, 2);
        // More units than cores: one core each.
        let t = units(&[0, 1], 8);
        assert_eq!((t.units(), t.cores_per_unit, t.source), (2, 1, UnitSource::Setting));
        assert_eq!(sme_cores_per_unit(&[0, 1, 2, 3], Some(2)), 2);
    }

    #[test]
    fn smidr_affinity_groups_the_cores() {
        // Two units of 4 cores (an M4 Pro-like pair of P-clusters), cluster ids saying one
        // cluster: SMIDR wins.
        let cpus: Vec<_> = (0..8).map(|c| (c, Some(smidr(if c < 4 { 0x100 } else { 0x200 })), Some(0))).collect();
        let root = fake_sysfs("smidr", &cpus);
        let t = sme_units(&root, &(0..8).collect::<Vec<_>>(), None);
        assert_eq!(t.source, UnitSource::Smidr);
        assert_eq!(t.groups, vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7]]);
        assert_eq!((t.cores_per_unit, t.driver_cpus()), (4, vec![0, 4]));
        // The process restricted to some cores sees only their units.
        let t = sme_units(&root, &[2, 3, 5], None);
        assert_eq!((t.groups, t.cores_per_unit), (vec![vec![2, 3], vec![5]], 2));
        // The override still wins.
        assert_eq!(sme_units(&root, &(0..8).collect::<Vec<_>>(), Some(1)).cores_per_unit, 8);
        // AFFINITY2 (bits 51:32) separates units that AFFINITY alone does not.
        let cpus: Vec<_> = (0..4).map(|c| (c, Some(smidr(0x1) | ((c as u64 / 2 + 1) << 32)), None)).collect();
        let root2 = fake_sysfs("affinity2", &cpus);
        let t = sme_units(&root2, &[0, 1, 2, 3], None);
        assert_eq!((t.source, t.groups), (UnitSource::Smidr, vec![vec![0, 1], vec![2, 3]]));
        let _ = (std::fs::remove_dir_all(root), std::fs::remove_dir_all(root2));
    }

    #[test]
    fn uninformative_smidr_falls_back_to_clusters() {
        let cpus = [0usize, 1, 2, 3];
        // Affinity left at 0 on some or all cores tells nothing: clusters {0, 1} and {2, 3}.
        for (name, aff) in [("zeros", [0u64, 0, 0, 0]), ("partial", [0, 0x1, 0x1, 0x2])] {
            let files: Vec<_> = cpus.iter().map(|&c| (c, Some(smidr(aff[c])), Some(c as i64 / 2))).collect();
            let root = fake_sysfs(name, &files);
            let t = sme_units(&root, &cpus, None);
            assert_eq!((t.source, t.groups.clone()), (UnitSource::Clusters, vec![vec![0, 1], vec![2, 3]]), "{name}");
            let _ = std::fs::remove_dir_all(root);
        }
        // The same nonzero affinity everywhere: one unit for all, whatever the clusters.
        let files: Vec<_> = cpus.iter().map(|&c| (c, Some(smidr(0x5)), Some(c as i64 / 2))).collect();
        let root = fake_sysfs("same", &files);
        let t = sme_units(&root, &cpus, None);
        assert_eq!((t.source, t.groups), (UnitSource::Smidr, vec![vec![0, 1, 2, 3]]));
        let _ = std::fs::remove_dir_all(root);
        // No SMIDR file at all (older kernels): clusters; uneven clusters count their largest.
        let files: Vec<_> = (0..8).map(|c| (c, None, Some(if c == 0 { 0 } else if c < 4 { 1 } else { 2 }))).collect();
        let root = fake_sysfs("noregs", &files);
        let t = sme_units(&root, &(0..8).collect::<Vec<_>>(), None);
        assert_eq!((t.source, t.units(), t.cores_per_unit), (UnitSource::Clusters, 3, 4));
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn nothing_known_means_one_shared_unit() {
        let root = fake_sysfs("bare", &[(0, None, None), (1, None, None)]);
        let t = sme_units(&root, &[0, 1], None);
        assert_eq!((t.source, t.groups), (UnitSource::Assumed, vec![vec![0, 1]]));
        // A malformed register falls through to clusters, then to the assumption.
        std::fs::write(root.join("devices/system/cpu/cpu0/regs/identification/smidr_el1"), "garbage\n").unwrap();
        assert_eq!(sme_units(&root, &[0, 1], None).source, UnitSource::Assumed);
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn smidr_fields_are_read_from_their_bits() {
        assert_eq!(parse_hex("0x0000000061018123\n"), Some(0x61018123));
        // IMPLEMENTER, REVISION, SMPS and SH do not enter the key; AFFINITY and AFFINITY2 do.
        assert_eq!(smidr_affinity(0x61 << 24 | 0xff << 16 | 1 << 15 | 0b11 << 13 | 0xabc), 0xabc);
        assert_eq!(smidr_affinity(0x3 << 32 | 0x7), 0x3007);
        assert_eq!(smidr_affinity(0xf << 56 | 0xf << 52), 0, "NSMC and HIP are not affinity");
    }
}
