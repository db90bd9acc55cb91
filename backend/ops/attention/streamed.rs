//! Prefill attention on the vector units, reading the cache in place (f16 K and V in
//! either layout, SMEPilot's packed one or llama.cpp's cells): no per-call copy of the cache.
//!
//! Work is cut into tasks: `qpt` query blocks of the `g` query heads that share one K/V head
//! (a task's units: a 16-query block of one head each). A task walks the keys in 64-key
//! tiles; each tile of K (transposed per 16-key block) and V is converted to f32 once, into
//! a buffer that stays in cache, and read by every unit of the task. Per tile and unit run
//! three stages:
//! * scores: Q K^T (a matrix stage);
//! * softmax: scale, cap, mask and the softmax step (vector work);
//! * P V: the tile's weighted values into the unit's rows (a matrix stage).
//!
//! Two forms of the arithmetic:
//! * ggml-cpu's tiled flash attention, in its exact operation order (default: the CPU
//!   backend's bits): scores one chain over the channels, a running maximum per tile, the
//!   output rescaled and the tile's P V added to it (`block`);
//! * the per-row path's (SMEPILOT_BATCH_INVARIANT=1, `state`): scores in the per-row
//!   kernels' lane order, per tile its own maximum, sum and P V, folded into the row's
//!   state; a query row then gets the same bits on either path, whatever the batch.
//!
//! Two schedules (`SMEPILOT_ATTN`):
//! * parallel: every thread takes tasks from the node's queue and runs all three stages;
//! * pipelined: threads in pairs, one running a task's matrix stages, the other its softmax:
//!   while one thread scores tile t + 1 and adds P V of tile t - 1, its partner runs the
//!   softmax of tile t. Two slots of scores and tiles between them, handed over through
//!   counters; an odd thread left runs the parallel schedule. Same stages, same bits.

use super::block::{self, Params, QBlock, KV_TILE};
use super::{alibi_slope, round64, state, Node};
use crate::dtype::DType;
use crate::kernels::attn::BLOCK;
use crate::threadpool::ThreadCtx;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

/// Scratch a task's units may hold (Q, output, folded state and scores per unit), so that
/// they and the current tile stay in L2.
const UNITS_BYTES: usize = 256 << 10;

/// Counters of a pair's area: the task handed to the softmax thread, tasks handed so far,
/// tiles scored so far (the matrix thread's line); tiles through softmax so far, the
/// softmax thread's busy µs (the softmax thread's line, so the two do not write one line).
const TASK: usize = 0;
const TASKS_HANDED: usize = 1;
const SCORED: usize = 2;
const SOFTMAXED: usize = 16;
const SOFTMAX_US: usize = 17;
const COUNTERS: usize = 32;
/// The task id that tells the softmax thread the node is done.
const DONE: u32 = u32::MAX;

/// Byte offsets of one area's arrays: per unit Q (16 x dk), output
/// (16 x dv), folded maximum and sum (16 each); a tile's weighted values for one unit
/// (16 x dv); per slot the units' scores (16 x 64), tile maxima and sums (16 each), their
/// live flags, and the tile's K (transposed) and V in f32. Each array takes whole cache
/// lines, so `bytes` is a multiple of 64.
#[derive(Clone, Copy)]
struct Areas {
    q: usize,
    o: usize,
    m: usize,
    l: usize,
    ot: usize,
    s: [usize; 2],
    mt: [usize; 2],
    lt: [usize; 2],
    live: [usize; 2],
    kt: [usize; 2],
    vt: [usize; 2],
    bytes: usize,
}

impl Areas {
    fn new(nu: usize, dk: usize, dv: usize, slots: usize, from: usize) -> Areas {
        let mut at = from;
        let mut take = |bytes: usize| {
            let a = at;
            at += round64(bytes);
            a
        };
        let (q, o, m, l) = (take(nu * BLOCK * dk * 4), take(nu * BLOCK * dv * 4), take(nu * BLOCK * 4), take(nu * BLOCK * 4));
        let ot = take(BLOCK * dv * 4);
        let mut a = Areas { q, o, m, l, ot, s: [0; 2], mt: [0; 2], lt: [0; 2], live: [0; 2], kt: [0; 2], vt: [0; 2], bytes: 0 };
        for sl in 0..slots {
            a.s[sl] = take(nu * BLOCK * KV_TILE * 4);
            a.mt[sl] = take(nu * BLOCK * 4);
            a.lt[sl] = take(nu * BLOCK * 4);
            a.live[sl] = take(nu * 4);
            a.kt[sl] = take(KV_TILE * dk * 4);
            a.vt[sl] = take(KV_TILE * dv * 4);
        }
        a.bytes = at - from;
        a
    }
}

/// The node's tasks and scratch: (pipelined) one area per pair, then an area for each
/// thread running the parallel schedule.
pub struct Layout {
    /// The per-row path's arithmetic (`state`, SMEPILOT_BATCH_INVARIANT=1) rather than
    /// ggml-cpu's tiled one.
    invariant: bool,
    g: usize,
    qpt: usize,
    n_qb: usize,
    n_qc: usize,
    n_tiles: usize,
    tasks: usize,
    pairs: usize,
    solo: Areas,
    pair: Areas,
    pub bytes: usize,
}

impl Layout {
    pub fn new(node: &Node, nth: usize, pipelined: bool, invariant: bool) -> Layout {
        let (q, k, v) = (node.src(0), node.src(1), node.src(2));
        let (dk, dv, n_q, n_kv) = (q.ne[0], v.ne[0], q.ne[1], k.ne[1]);
        let g = super::gqa_group(node);
        let n_qb = n_q.div_ceil(BLOCK);
        let unit_bytes = (BLOCK * dk + BLOCK * dv + 4 * BLOCK + BLOCK * KV_TILE) * 4;
        let mut qpt = (UNITS_BYTES / (g * unit_bytes)).clamp(1, n_qb);
        let groups = q.ne[2] / g * q.ne[3];
        // Enough tasks to keep every thread busy to the end.
        while qpt > 1 && groups * n_qb.div_ceil(qpt) < 4 * nth {
            qpt = qpt.div_ceil(2);
        }
        let n_qc = n_qb.div_ceil(qpt);
        let nu = g * qpt;
        let pairs = if pipelined { nth / 2 } else { 0 };
        let solo = Areas::new(nu, dk, dv, 1, 0);
        let pair = Areas::new(nu, dk, dv, 2, COUNTERS * 4);
        let bytes = (COUNTERS * 4 + pair.bytes) * pairs + solo.bytes * (nth - 2 * pairs);
        Layout { invariant, g, qpt, n_qb, n_qc, n_tiles: n_kv.div_ceil(KV_TILE), tasks: groups * n_qc, pairs, solo, pair, bytes }
    }

    fn pair_base(&self, p: usize) -> usize {
        (COUNTERS * 4 + self.pair.bytes) * p
    }

    /// The area of thread `ith`, one of those that run the parallel schedule.
    fn solo_base(&self, ith: usize) -> usize {
        self.pair_base(self.pairs) + self.solo.bytes * (ith - 2 * self.pairs)
    }
}

/// A task: query blocks `qc * qpt ..` of heads `hg * g ..` of sequence `iq3`; `nu` units.
#[derive(Clone, Copy)]
struct Task {
    iq3: usize,
    hg: usize,
    qc: usize,
    nu: usize,
}

/// What every stage of the node reads.
struct Job<'a> {
    node: &'a Node,
    ctx: &'a ThreadCtx<'a>,
    lay: &'a Layout,
    p: Params<'a>,
}

/// One area of the scratch (a thread's or a pair's) and its arrays.
struct Region<'a> {
    ctx: &'a ThreadCtx<'a>,
    base: usize,
    a: Areas,
    dk: usize,
    dv: usize,
}

// Each accessor hands out a fresh slice of one array of the area. The stages hold slices of
// different arrays (or different slots) at once, never two of the same bytes. In a pair,
// Q, the outputs and `ot` are the matrix thread's; the running state (m, l) is the softmax
// thread's during a task in ggml's form (the matrix thread's in `finish`, after the last
// tile's hand-over), the matrix thread's in the invariant form (it folds); a slot belongs
// to whoever it was last handed to.
impl Region<'_> {
    fn q(&self, u: usize) -> &mut [f32] {
        self.ctx.shared_mut(self.base + self.a.q + u * BLOCK * self.dk * 4, BLOCK * self.dk)
    }
    fn o(&self, u: usize) -> &mut [f32] {
        self.ctx.shared_mut(self.base + self.a.o + u * BLOCK * self.dv * 4, BLOCK * self.dv)
    }
    fn m(&self, u: usize) -> &mut [f32] {
        self.ctx.shared_mut(self.base + self.a.m + u * BLOCK * 4, BLOCK)
    }
    fn l(&self, u: usize) -> &mut [f32] {
        self.ctx.shared_mut(self.base + self.a.l + u * BLOCK * 4, BLOCK)
    }
    fn ot(&self) -> &mut [f32] {
        self.ctx.shared_mut(self.base + self.a.ot, BLOCK * self.dv)
    }
    fn s(&self, sl: usize, u: usize) -> &mut [f32] {
        self.ctx.shared_mut(self.base + self.a.s[sl] + u * BLOCK * KV_TILE * 4, BLOCK * KV_TILE)
    }
    fn mt(&self, sl: usize, u: usize) -> &mut [f32] {
        self.ctx.shared_mut(self.base + self.a.mt[sl] + u * BLOCK * 4, BLOCK)
    }
    fn lt(&self, sl: usize, u: usize) -> &mut [f32] {
        self.ctx.shared_mut(self.base + self.a.lt[sl] + u * BLOCK * 4, BLOCK)
    }
    fn live(&self, sl: usize, nu: usize) -> &mut [u32] {
        self.ctx.shared_mut(self.base + self.a.live[sl], nu)
    }
    fn kt(&self, sl: usize) -> &mut [f32] {
        self.ctx.shared_mut(self.base + self.a.kt[sl], KV_TILE * self.dk)
    }
    fn vt(&self, sl: usize) -> &mut [f32] {
        self.ctx.shared_mut(self.base + self.a.vt[sl], KV_TILE * self.dv)
    }
}

impl Job<'_> {
    fn task(&self, i: usize) -> Task {
        let lay = self.lay;
        let groups = self.node.src(0).ne[2] / lay.g;
        let (qc, hg, iq3) = (i % lay.n_qc, (i / lay.n_qc) % groups, i / (lay.n_qc * groups));
        Task { iq3, hg, qc, nu: lay.g * lay.qpt.min(lay.n_qb - qc * lay.qpt) }
    }

    fn unit(&self, task: &Task, u: usize) -> QBlock {
        let n_q = self.node.src(0).ne[1];
        let i0 = (task.qc * self.lay.qpt + u / self.lay.g) * BLOCK;
        QBlock { iq2: task.hg * self.lay.g + u % self.lay.g, iq3: task.iq3, i0, rows: (n_q - i0).min(BLOCK) }
    }

    /// Matrix side of a task's start: Q of every unit, outputs zero; in the invariant form
    /// also each row's state before its first tile (the sink).
    fn begin_matrix(&self, r: &Region, task: &Task) {
        let q = self.node.src(0);
        let dk = q.ne[0];
        for u in 0..task.nu {
            let qb = self.unit(task, u);
            let (qu, o) = (r.q(u), r.o(u));
            qu.fill(0.0); // padding rows: scored, never used
            o.fill(0.0);
            for i in 0..qb.rows {
                // Q rows hold dk f32 (supports).
                qu[i * dk..(i + 1) * dk].copy_from_slice(&q.row::<f32>(qb.i0 + i, qb.iq2, qb.iq3)[..dk]);
            }
            // The running state is this thread's in the invariant form only (see Region).
            if self.lay.invariant {
                let (m, l) = (r.m(u), r.l(u));
                for i in 0..qb.rows {
                    (m[i], l[i]) = state::start(state::sink(&self.p, qb.iq2), &mut o[i * self.dv()..(i + 1) * self.dv()]);
                }
            }
        }
    }

    /// Softmax side of a task's start (ggml's form, whose softmax keeps the running state):
    /// no maximum, nothing summed.
    fn begin_softmax(&self, r: &Region, task: &Task) {
        if self.lay.invariant {
            return;
        }
        for u in 0..task.nu {
            r.m(u).fill(f32::NEG_INFINITY);
            r.l(u).fill(0.0);
        }
    }

    fn dv(&self) -> usize {
        self.node.src(2).ne[0]
    }

    /// Tile t into slot `sl`: which units the mask leaves it to, the tile's K and V in f32,
    /// and those units' raw scores.
    fn scores(&self, r: &Region, task: &Task, t: usize, sl: usize) {
        let (q, k, v) = (self.node.src(0), self.node.src(1), self.node.src(2));
        let (dk, dv, n_kv) = (q.ne[0], v.ne[0], k.ne[1]);
        let live = r.live(sl, task.nu);
        for (u, flag) in live.iter_mut().enumerate() {
            let qb = self.unit(task, u);
            *flag = !block::hidden(&qb.mask_rows(self.node), qb.rows, t, n_kv) as u32;
        }
        if live.iter().all(|&f| f == 0) {
            return;
        }
        // The task's heads share one K and one V head (gqa_group).
        let qb = self.unit(task, 0);
        let n_head = q.ne[2];
        let (ik2, ik3) = (qb.iq2 / (n_head / k.ne[2]), qb.iq3 / (q.ne[3] / k.ne[3]));
        let (iv2, iv3) = (qb.iq2 / (n_head / v.ne[2]), qb.iq3 / (q.ne[3] / v.ne[3]));
        let (k0, nk) = (t * KV_TILE, (n_kv - t * KV_TILE).min(KV_TILE));
        let (kt, vt) = (r.kt(sl), r.vt(sl));
        let ks = self.ctx.kernels;
        let key_blocks = nk.div_ceil(BLOCK);
        for kb in 0..key_blocks {
            // f16 K rows of dk channels (the blocked precondition), nb[1] apart.
            let n = (nk - kb * BLOCK).min(BLOCK);
            let rows = k.bytes_at::<u8>(k.row_offset(k0 + kb * BLOCK, ik2, ik3), (n - 1) * k.nb[1] + 2 * dk);
            (ks.attn.keys_block)(rows, k.nb[1], n, dk, &mut kt[kb * BLOCK * dk..(kb + 1) * BLOCK * dk]);
        }
        let v_f32 = ks.kernels(v.ty).expect("a V type (supports)").to_f32;
        for j in 0..nk {
            // V rows hold dv elements of whole blocks (supports).
            v_f32(&v.row::<u8>(k0 + j, iv2, iv3)[..v.ty.row_bytes(dv)], &mut vt[j * dv..(j + 1) * dv]);
        }
        let mut blk = [[0f32; BLOCK]; BLOCK];
        let scores_block = if self.lay.invariant { ks.attn.scores_block_lanes } else { ks.attn.scores_block };
        for u in (0..task.nu).filter(|&u| live[u] != 0) {
            let (qu, s) = (r.q(u), r.s(sl, u));
            // Places past the view are left as they are: finish_scores masks them.
            for bt in 0..key_blocks {
                scores_block(qu, dk, &kt[bt * BLOCK * dk..(bt + 1) * BLOCK * dk], &mut blk);
                for (i, srow) in blk.iter().enumerate() {
                    s[i * KV_TILE + bt * BLOCK..][..BLOCK].copy_from_slice(srow);
                }
            }
        }
    }

    /// Tile t's softmax in slot `sl`, for the units it reaches: each row's logits, weights,
    /// maximum and sum.
    fn softmax(&self, r: &Region, task: &Task, t: usize, sl: usize) {
        let (n_kv, n_head) = (self.node.src(1).ne[1], self.node.src(0).ne[2]);
        let (k0, nk) = (t * KV_TILE, (n_kv - t * KV_TILE).min(KV_TILE));
        let live = r.live(sl, task.nu);
        if !self.lay.invariant {
            for u in (0..task.nu).filter(|&u| live[u] != 0) {
                let qb = self.unit(task, u);
                block::softmax_tile(self.ctx, self.node, &self.p, &qb, &qb.mask_rows(self.node), t, r.s(sl, u), r.m(u), r.l(u), r.mt(sl, u));
            }
            return;
        }
        let to_f32 = self.ctx.kernels.kernels(DType::F16).expect("f16 kernels").to_f32;
        for u in (0..task.nu).filter(|&u| live[u] != 0) {
            let qb = self.unit(task, u);
            let slope = alibi_slope(self.p.max_bias, n_head, qb.iq2);
            let (s, mt, lt) = (r.s(sl, u), r.mt(sl, u), r.lt(sl, u));
            let mut mf = [0f32; KV_TILE];
            for i in 0..qb.rows {
                let row = &mut s[i * KV_TILE..(i + 1) * KV_TILE];
                let m = qb.mask_bytes(self.node, i);
                if let Some(m) = m {
                    to_f32(&m[2 * k0..2 * (k0 + nk)], &mut mf[..nk]);
                }
                state::finish_scores(row, nk, &self.p, slope, m.map(|_| &mf[..nk]));
                (mt[i], lt[i]) = state::weights(row, &self.ctx.kernels.vmath);
            }
        }
    }

    /// Tile t's P V in slot `sl`, folded into the rows of the units it reaches.
    fn pv(&self, r: &Region, task: &Task, t: usize, sl: usize) {
        let (n_kv, dv) = (self.node.src(1).ne[1], self.dv());
        let nk = (n_kv - t * KV_TILE).min(KV_TILE);
        let (live, vt, ot) = (r.live(sl, task.nu), r.vt(sl), r.ot());
        for u in (0..task.nu).filter(|&u| live[u] != 0) {
            if !self.lay.invariant {
                // ggml's form: the output rescaled to this tile, then its P V added.
                let o = r.o(u);
                block::rescale(o, dv, r.mt(sl, u));
                (self.ctx.kernels.attn.pv_block)(r.s(sl, u), KV_TILE, nk, vt, dv, o);
                continue;
            }
            ot.fill(0.0);
            (self.ctx.kernels.attn.pv_block)(r.s(sl, u), KV_TILE, nk, vt, dv, ot);
            let (o, m, l, mt, lt) = (r.o(u), r.m(u), r.l(u), r.mt(sl, u), r.lt(sl, u));
            for i in 0..self.unit(task, u).rows {
                state::fold(&mut m[i], &mut l[i], &mut o[i * dv..(i + 1) * dv], mt[i], lt[i], &ot[i * dv..(i + 1) * dv]);
            }
        }
    }

    fn finish(&self, r: &Region, task: &Task) {
        let dv = self.dv();
        for u in 0..task.nu {
            let qb = self.unit(task, u);
            if !self.lay.invariant {
                block::finish(self.node, &self.p, &qb, r.m(u), r.l(u), r.o(u));
                continue;
            }
            let (o, l) = (r.o(u), r.l(u));
            for i in 0..qb.rows {
                // Output is [dv, n_head, n_q, ne3]: row (iq2, i0 + i, iq3), this unit's alone.
                state::finish(l[i], &o[i * dv..(i + 1) * dv], self.node.dst.row_mut::<f32>(qb.iq2, qb.i0 + i, qb.iq3));
            }
        }
    }

    /// The parallel schedule: tasks from the queue, all stages on this thread. Returns the
    /// ns spent in the matrix stages and in softmax.
    fn run_parallel(&self, r: &Region) -> (u64, u64) {
        let (mut mat, mut soft) = (0u64, 0u64);
        loop {
            let i = self.ctx.next_chunk();
            if i >= self.lay.tasks {
                return (mat, soft);
            }
            let task = self.task(i);
            let t0 = Instant::now();
            self.begin_matrix(r, &task);
            self.begin_softmax(r, &task);
            mat += t0.elapsed().as_nanos() as u64;
            for t in 0..self.lay.n_tiles {
                let t0 = Instant::now();
                self.scores(r, &task, t, 0);
                let t1 = Instant::now();
                self.softmax(r, &task, t, 0);
                let t2 = Instant::now();
                self.pv(r, &task, t, 0);
                mat += (t1 - t0 + t2.elapsed()).as_nanos() as u64;
                soft += (t2 - t1).as_nanos() as u64;
            }
            let t0 = Instant::now();
            self.finish(r, &task);
            mat += t0.elapsed().as_nanos() as u64;
        }
    }

    /// The matrix thread of a pair: takes the tasks and hands each to its partner; scores
    /// tile t + 1 while the partner runs tile t's softmax, then adds tile t's P V. Returns
    /// its busy ns.
    fn run_matrix(&self, r: &Region, c: &[AtomicU32]) -> u64 {
        let n_tiles = self.lay.n_tiles as u32;
        let (mut handed, mut base, mut busy) = (0u32, 0u32, 0u64);
        loop {
            let i = self.ctx.next_chunk();
            let id = if i >= self.lay.tasks { DONE } else { i as u32 };
            c[TASK].store(id, Ordering::Relaxed);
            handed += 1;
            c[TASKS_HANDED].store(handed, Ordering::Release);
            if id == DONE {
                return busy;
            }
            let task = self.task(i);
            let t0 = Instant::now();
            self.begin_matrix(r, &task);
            busy += t0.elapsed().as_nanos() as u64;
            for t in 0..n_tiles {
                let t0 = Instant::now();
                self.scores(r, &task, t as usize, t as usize % 2);
                busy += t0.elapsed().as_nanos() as u64;
                c[SCORED].store(base + t + 1, Ordering::Release);
                if t > 0 {
                    self.ctx.wait_until(&c[SOFTMAXED], base + t);
                    let t0 = Instant::now();
                    self.pv(r, &task, t as usize - 1, (t as usize - 1) % 2);
                    busy += t0.elapsed().as_nanos() as u64;
                }
            }
            self.ctx.wait_until(&c[SOFTMAXED], base + n_tiles);
            let t0 = Instant::now();
            self.pv(r, &task, n_tiles as usize - 1, (n_tiles as usize - 1) % 2);
            self.finish(r, &task);
            busy += t0.elapsed().as_nanos() as u64;
            base += n_tiles;
        }
    }

    /// The softmax thread of a pair: each task its partner hands over, each tile once
    /// scored. Its busy µs go to the pair's counters with each task's last tile.
    fn run_softmax(&self, r: &Region, c: &[AtomicU32]) {
        let n_tiles = self.lay.n_tiles as u32;
        let (mut handed, mut base, mut busy) = (0u32, 0u32, 0u64);
        loop {
            handed += 1;
            self.ctx.wait_until(&c[TASKS_HANDED], handed);
            let id = c[TASK].load(Ordering::Relaxed);
            if id == DONE {
                return;
            }
            let task = self.task(id as usize);
            self.begin_softmax(r, &task);
            for t in 0..n_tiles {
                self.ctx.wait_until(&c[SCORED], base + t + 1);
                let t0 = Instant::now();
                self.softmax(r, &task, t as usize, t as usize % 2);
                busy += t0.elapsed().as_nanos() as u64;
                if t + 1 == n_tiles {
                    c[SOFTMAX_US].store((busy / 1000).min(u32::MAX as u64) as u32, Ordering::Relaxed);
                }
                c[SOFTMAXED].store(base + t + 1, Ordering::Release);
            }
            base += n_tiles;
        }
    }
}

/// What the node reports for the trace: the schedule in the top two bits (1 parallel, 2
/// pipelined), then thread 0's (pair 0's) µs in the matrix stages (with a task's start and
/// finish) and in softmax, 31 bits each.
fn report(pipelined: bool, matrix_us: u64, softmax_us: u64) -> u64 {
    let cap = |x: u64| x.min((1 << 31) - 1);
    ((1 + pipelined as u64) << 62) | (cap(matrix_us) << 31) | cap(softmax_us)
}

/// The trace's reading of [`report`]: the schedule and the two figures (nothing for a
/// node that took another path).
pub fn trace_note(report: u64) -> String {
    let (matrix_us, softmax_us) = ((report >> 31) & 0x7FFF_FFFF, report & 0x7FFF_FFFF);
    match report >> 62 {
        1 => format!(" attn=parallel thread0: matrix={matrix_us}us softmax={softmax_us}us"),
        2 => format!(" attn=pipelined pair0: matrix={matrix_us}us softmax={softmax_us}us"),
        _ => String::new(),
    }
}

/// Runs the node (see the module comment).
pub fn run(node: &Node, ctx: &ThreadCtx, lay: &Layout, p: Params) {
    let (dk, dv) = (node.src(0).ne[0], node.src(2).ne[0]);
    let job = Job { node, ctx, lay, p };
    let ith = ctx.ith;
    if lay.pairs == 0 {
        let r = Region { ctx, base: lay.solo_base(ith), a: lay.solo, dk, dv };
        let (mat, soft) = job.run_parallel(&r);
        if ith == 0 {
            ctx.report(report(false, mat / 1000, soft / 1000));
        }
        return;
    }
    // Thread 2p runs pair p's matrix stages, thread 2p + 1 its softmax.
    let (pair, matrix_side) = (ith / 2, ith.is_multiple_of(2));
    let counters = |p: usize| ctx.shared_counters(lay.pair_base(p), COUNTERS);
    if pair < lay.pairs && matrix_side {
        counters(pair).iter().for_each(|c| c.store(0, Ordering::Relaxed));
    }
    // Every pair's counters are zero before either thread of it starts.
    ctx.barrier();
    if pair >= lay.pairs {
        let r = Region { ctx, base: lay.solo_base(ith), a: lay.solo, dk, dv };
        job.run_parallel(&r);
        return;
    }
    let r = Region { ctx, base: lay.pair_base(pair), a: lay.pair, dk, dv };
    let c = counters(pair);
    if matrix_side {
        let busy = job.run_matrix(&r, c);
        if ith == 0 {
            // The partner stored its time before its last tile's release, which this
            // thread acquired before finishing that tile.
            ctx.report(report(true, busy / 1000, c[SOFTMAX_US].load(Ordering::Relaxed) as u64));
        }
    } else {
        job.run_softmax(&r, c);
    }
}
