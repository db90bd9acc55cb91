//! FMOPA single precision (FEAT_SME): one f32 per unit, accumulated in ZA.S,
//! on the 2VL x 2VL tile step of [`super`] (two activation panels by two weight
//! panels, four ZA.S tiles). SME1 loads one vector per instruction (16 loads per 16 outer
//! products); SME2 loads four (8 loads per 32).

use super::{float_group_asm, float_step_sme1, float_step_sme2, run_group_asm, GroupArgs};

/// One group in one streaming region, SME1 instructions.
///
/// # Safety
/// The thread may use SME at the SVL `args` was laid out for, and `args` satisfies
/// [`super::GroupOperands`]'s checks (every pointer valid for what the kernel reads and
/// writes).
#[inline(never)]
pub(crate) unsafe fn group_sme1(args: *const GroupArgs) {
    // SAFETY: the caller's contract; the asm leaves streaming mode and ZA off.
    unsafe { run_group_asm!(args, float_group_asm!(".arch_extension sme", "", float_step_sme1!("fmopa", "s"))) }
}

/// The same with SME2's four-vector loads.
///
/// # Safety
/// As [`group_sme1`], on a CPU with SME2.
#[inline(never)]
pub(crate) unsafe fn group_sme2(args: *const GroupArgs) {
    // SAFETY: the caller's contract; the asm leaves streaming mode and ZA off.
    unsafe { run_group_asm!(args, float_group_asm!(".arch_extension sme2", "ptrue pn8.b", float_step_sme2!("fmopa", "s"))) }
}
