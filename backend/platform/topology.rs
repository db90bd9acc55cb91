//! Which cores share a matrix unit. Arm SME units may be shared by a cluster of cores
//! (Apple M4: one per P-cluster); Intel AMX has one per core.

/// Cores per SME unit among the cores `cpus` the process may run on: one unit per cluster
/// (the kernel's `topology/cluster_id`), or the override `units` (SMEPILOT_MATRIX_UNITS).
pub fn sme_cores_per_unit(cpus: &[usize], units: Option<usize>) -> usize {
    let cores = cpus.len().max(1);
    let units = units.unwrap_or_else(|| clusters(cpus).unwrap_or(1)).clamp(1, cores);
    cores.div_ceil(units)
}

/// Distinct clusters among `cpus`, where the kernel reports them.
fn clusters(cpus: &[usize]) -> Option<usize> {
    let mut ids = Vec::new();
    for c in cpus {
        let path = format!("/sys/devices/system/cpu/cpu{c}/topology/cluster_id");
        let id: i64 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    (!ids.is_empty()).then_some(ids.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_override_sets_the_units() {
        assert_eq!(sme_cores_per_unit(&[0, 1, 2, 3], Some(1)), 4);
        assert_eq!(sme_cores_per_unit(&[0, 1, 2, 3], Some(2)), 2);
        assert_eq!(sme_cores_per_unit(&[0, 1, 2], Some(2)), 2);
        // More units than cores: one core each.
        assert_eq!(sme_cores_per_unit(&[0, 1], Some(8)), 1);
    }
}
