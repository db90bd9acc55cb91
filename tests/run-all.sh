#!/usr/bin/env bash
# Runs every SMEPilot test: unit tests (kernels against scalar references), llama.cpp's
# test-backend-ops against the CPU backend, graph coverage (splits = 1) on real and
# shape-faithful models, KL-divergence against stock on real text, llama-cli and
# llama-server end to end, and the fallback paths. Sets the machine up first.
#
#   tests/run-all.sh            everything
#   tests/run-all.sh NAME...    only the named checks (see `check` calls below)
#
# The aarch64 section (the engine and test-backend-ops under QEMU, on several emulated Arm
# CPUs) runs when CI=true, SMEPILOT_ARM=1 or the aarch64 build (setup.sh --arm) exists;
# SMEPILOT_ARM=0 skips it.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bin="$repo/build/bin"
work="$repo/build/test-work"
logs="$repo/build/test-logs"
mkdir -p "$work" "$work/models" "$logs"
only=("$@")

arm=${SMEPILOT_ARM:-}
if [ -z "$arm" ]; then
    arm=0
    { [ "${CI:-}" = true ] || [ -d "$repo/build/aarch64/bin" ]; } && arm=1
fi
setup_args=(); [ "$arm" = 1 ] && setup_args=(--arm)
"$repo/bench-scripts/setup.sh" "${setup_args[@]}" || { echo "setup failed"; echo "0 passed, 1 failed"; exit 1; }
export SMEPILOT_LLAMA_SRC="$repo/build/llama.cpp" SMEPILOT_LLAMA_LIBDIR="$repo/build/llama.cpp-build/bin"
model=$("$repo/bench-scripts/fetch-model.sh")
corpus=/usr/share/common-licenses/GPL-3
plugin="$bin/libggml-smepilot.so"
# test-backend-ops cases run on each emulated Arm CPU, one run per line: "OP PATTERN",
# PATTERN a regex over the case's parameters (-p). Small shapes: QEMU is slow (a 16M-element
# ADD takes minutes).
arm_backend_ops="\
ADD type=f32,ne=\[[0-9]{1,4},[0-9]{1,2},1,1\],nr=\[1,1,1,1\]
MUL type=f32,ne=\[[0-9]{1,4},[0-9]{1,2},1,1\],nr=\[1,1,1,1\]
RMS_NORM type=f32,ne=\[64,5,4,3\],v=0,eps=0.000001
SOFT_MAX ne=\[16,16,1,1\],mask=[01],sinks=0,m_prec=f32,nr23=\[1,1\],scale=1.000000,max_bias=0.000000
ROPE type=f32,ne_a=\[(128,32|64,8),2,1\],n_dims=(128|64),mode=(0|2),n_ctx=512,fs=1.000000,ef=0.000000,af=1.000000,ff=0,v=0,inplace=0
ROPE type=f16,ne_a=\[128,32,2,1\],n_dims=128,mode=0,n_ctx=512,fs=1.000000,ef=0.000000,af=1.000000,ff=0,v=0,inplace=0
FLASH_ATTN_EXT hsk=64,hsv=64,nh=4,nr23=\[1,1\],kv=512,nb=(1|3),mask=1,sinks=0,max_bias=0.000000,logit_softcap=0.000000,prec=f32,type_K=f16,type_V=f16,permute=\[0,1,2,3\]
FLASH_ATTN_EXT hsk=64,hsv=64,nh=4,nr23=\[1,1\],kv=512,nb=(1|3),mask=1,sinks=0,max_bias=0.000000,logit_softcap=0.000000,prec=f32,type_K=q8_0,type_V=q8_0,permute=\[0,1,2,3\],kv_view=1,v_is_view_of_k=0
GET_ROWS type=(f32|f16|q4_0|q8_0),n=256,m=5,r=4,be1=1,be2=1,v=0
SET_ROWS type_src=f32,type_dst=(f32|f16),type_idx=i64,ne=\[[0-9]+,[0-9]+,1,1\]
CPY type_src=f32,type_dst=(f32|f16),ne_src=\[[0-9]+,[0-9]+,[0-9]+,[0-9]+\],permute_src=\[0,0,0,0\],permute_dst=\[0,0,0,0\]
SWIGLU type=f32
MUL_MAT type_a=(f32|f16|bf16|q8_0|q4_0|q4_1|q4_K|q5_K|q6_K),type_b=f32,m=16,n=(1|9),k=256,bs=\[1,1\],nr=\[1,1\],per=\[0,1,2,3\],k_v=0,o=1
MUL_MAT_ID type_a=(q4_0|q4_K),type_b=f32,n_mats=4,n_used=2,b=[01],m=512,n=(1|5),k=256
ARGSORT type=f32,ne=\[[0-9]{1,4},1,1,1\],order=[01]
SUM_ROWS type=f32,ne=\[10,5,4,3\]
CLAMP type=f32,ne=\[(10,5,4,3|7,1,5,3)\]
DIV type=f32,ne=\[(1|10),(1|5),[0-9],1\],nr=\[1,1,1,1\]"

passed=0; failed=0; skipped=0; failures=()
# A check returns SKIP when this machine cannot exercise it (its last line says why).
SKIP=77
check() {
    local name=$1; shift
    if [ ${#only[@]} -gt 0 ] && [[ ! " ${only[*]} " == *" $name "* ]]; then return; fi
    local t0=$SECONDS
    printf '%-28s ' "$name"
    "$@" >"$logs/$name.log" 2>&1
    local rc=$?
    if [ $rc -eq 0 ]; then
        passed=$((passed + 1)); printf 'ok    (%ds)\n' $((SECONDS - t0))
    elif [ $rc -eq $SKIP ]; then
        skipped=$((skipped + 1)); printf 'skip  (%s)\n' "$(tail -1 "$logs/$name.log")"
    else
        failed=$((failed + 1)); failures+=("$name"); printf 'FAIL  (%ds), log: build/test-logs/%s.log\n' $((SECONDS - t0)) "$name"
        tail -15 "$logs/$name.log" | sed 's/^/    | /'
    fi
}

# Shape-faithful models (random weights, real tensor shapes, 2 layers to keep time down).
shape_model() { # arch type
    local out="$work/models/$1-L2-$2.gguf"
    if [ ! -f "$out" ]; then
        mkdir -p "$work/models"
        python3 "$repo/bench-scripts/gen_model.py" --arch "$1" --layers 2 --type "$2" --out "$out" --bin-dir "$bin" >&2 || return 1
    fi
    echo "$out"
}
requant() { # type -> SmolLM2 requantized to type
    local out="$work/models/SmolLM2-135M-Instruct.$1.gguf"
    [ -f "$out" ] || "$bin/llama-quantize" --allow-requantize "$model" "$out" "$1" >&2 || return 1
    echo "$out"
}

# ---- unit tests ------------------------------------------------------------------
# The kernel tiers this CPU should run, from /proc/cpuinfo: the tests fail if the registry
# does not offer one of them (SMEPILOT_EXPECT_TIERS), and list every tier they ran.
expected_tiers() {
    local flags; flags=$(grep -m1 -E '^(flags|Features)' /proc/cpuinfo)
    local t=scalar
    [[ $flags =~ (^| )avx2( |$) && $flags =~ (^| )fma( |$) && $flags =~ (^| )f16c( |$) ]] && t+=,avx2
    [[ $flags =~ (^| )avx512f( |$) && $flags =~ (^| )avx512bw( |$) && $flags =~ (^| )avx512vl( |$) && $flags =~ (^| )avx512_vnni( |$) ]] && t+=,avx512
    echo "$t"
}
tiers_ran() { # log
    echo "kernel tiers the tests ran (family count per tier):"
    awk '{print $2}' "$1" | sort | uniq -c | sed 's/^/    /'
}
# The workspace: the engine's kernels, ops, planner and executor on every tier this CPU
# runs, and the plugin crate.
t_cargo() {
    local log="$work/tiers-x86_64.log"; rm -f "$log"
    cd "$repo" && SMEPILOT_TIER_LOG="$log" SMEPILOT_EXPECT_TIERS=$(expected_tiers) cargo test --release --workspace 2>&1 || return 1
    tiers_ran "$log"
}
# The engine on aarch64, under qemu-aarch64 (NEON, SVE2, SME2 emulated): it builds and
# tests without llama.cpp. x86-only code stays behind cfg, the portable tiers beside it.
# With the aarch64 section on, this only builds: the section runs the tests per profile.
t_aarch64() {
    "$repo/bench-scripts/setup-qemu.sh" >/dev/null || return 1
    if [ "$arm" = 1 ]; then
        cd "$repo" && cargo test --release -p smepilot-engine --target aarch64-unknown-linux-gnu --no-run 2>&1
        return
    fi
    local log="$work/tiers-aarch64.log"; rm -f "$log"
    cd "$repo" && SMEPILOT_TIER_LOG="$log" SMEPILOT_EXPECT_TIERS=scalar cargo test --release -p smepilot-engine --target aarch64-unknown-linux-gnu 2>&1 || return 1
    tiers_ran "$log"
}

# ---- test-backend-ops ------------------------------------------------------------
claimed_ops="GET_ROWS RMS_NORM MUL ADD ROPE MUL_MAT MUL_MAT_ID ARGSORT SUM_ROWS CLAMP DIV SOFT_MAX FLASH_ATTN_EXT SET_ROWS CPY CONT SWIGLU SILU SCALE"
mul_mat_types="f32 f16 bf16 q8_0 q4_0 q4_1 q4_K q5_K q6_K"
# 128-expert cases cost 20-60 s each, most of it the harness making 200 M random weights, so
# only those that test something the others miss run, in the default setting only:
# Qwen3-30B-A3B's gate/up (b broadcast, 1, 32 and 512 tokens) in Q4_0 and Q4_K, its down (b
# per slot, 512 tokens) in Q4_0, Q8_0, Q4_K and Q6_K (llama-patches/0005), and the fused
# MUL_MAT_ID + ADD + MUL at 4 tokens in Q4_0 and Q4_K. Not the other models' (Llama-4-
# Maverick's 8192 x 5120 Q8_0 experts, 4096 x 2048 Q4_K ones), not F32 / F16 experts at that
# size, not the fused cases at 1 and 512 tokens (the same products).
default_cases='^(?!.*n_mats=128,n_used=(128|4),)(?!type_a=(f32|f16),.*n_mats=128,)(?!.*n_mats=128,n_used=8,b=0,m=768,n=(1|512),)(?!type_a=(q8_0|q6_K),.*n_mats=128,n_used=8,b=1,)'
no_128_experts='^(?!.*n_mats=128,)'
backend_ops() { # OPS (empty: every op) PATTERN "MUL_MAT types to require" [extra env assignments...]
    local ops=$1 pattern=$2 types=$3; shift 3
    local select=(); [ -n "$ops" ] && select=(-o "${ops// /,}")
    # Two workers, each with its own SMEPilot and CPU backend: the harness's per-case work
    # is serial, so this is about 20% faster on two cores (and runs two backends at once).
    env "$@" GGML_BACKEND_PATH="$plugin" "$bin/test-backend-ops" test -b SMEPILOT -j 2 "${select[@]}" -p "$pattern" >"$work/backend-ops.raw" 2>&1
    local rc=$?
    sed 's/\x1b\[[0-9;]*m//g' "$work/backend-ops.raw" >"$work/backend-ops.out"  # drop colour codes
    grep -vE ': OK$|not supported' "$work/backend-ops.out" | tail -40
    [ $rc -eq 0 ] || { echo "test-backend-ops exited $rc"; return 1; }
    grep -q "Backend SMEPILOT" "$work/backend-ops.out" || { echo "SMEPILOT backend was not tested"; return 1; }
    if grep -E '^\s+[A-Z_]+\(.*\): FAIL' "$work/backend-ops.out"; then echo "failing cases above"; return 1; fi
    local missing=0
    for op in ${ops:-$claimed_ops}; do
        grep -qE "^\s+$op\(.*\): OK" "$work/backend-ops.out" || { echo "no passing case for $op"; missing=1; }
    done
    for ty in $types; do
        grep -qE "^\s+MUL_MAT\(type_a=$ty,type_b=f32.*\): OK" "$work/backend-ops.out" || { echo "no passing MUL_MAT case for $ty"; missing=1; }
    done
    echo "passing cases: $(grep -cE ': OK' "$work/backend-ops.out"), not supported: $(grep -c 'not supported' "$work/backend-ops.out")"
    return $missing
}
t_backend_ops() { backend_ops "" "$default_cases" "$mul_mat_types"; }
has_amx() { grep -m1 -E '^flags' /proc/cpuinfo | grep -qw amx_tile; }
# The matrix unit serves MUL_MAT and MUL_MAT_ID, so the vector-path rerun covers those.
t_backend_ops_noamx() {
    has_amx || { echo "no AMX on this CPU: backend-ops already ran the vector path"; return $SKIP; }
    backend_ops "MUL_MAT MUL_MAT_ID" "$no_128_experts" "$mul_mat_types" SMEPILOT_DISABLE_AMX=1
}
# The matrix and coop modes forced (vector is the no-AMX run's path), and matrix with one
# shared unit (one tile thread, the other only converting activations): every MUL_MAT and
# MUL_MAT_ID case passes in each.
t_backend_ops_modes() {
    local setting
    if ! has_amx; then
        # Without a unit every forced mode falls back to the vector path backend-ops ran:
        # check that it does on Q4_0 and Q4_K with fewer than 10 experts, not every case.
        for setting in SMEPILOT_MODE=matrix SMEPILOT_MODE=coop; do
            echo "== $setting (no matrix unit: the vector fallback)"
            backend_ops "MUL_MAT MUL_MAT_ID" '^(?!.*n_mats=[0-9]{2,},)type_a=q4_(0|K),' "q4_0 q4_K" $setting || return 1
        done
        return 0
    fi
    for setting in "SMEPILOT_MODE=matrix" "SMEPILOT_MODE=coop" "SMEPILOT_MODE=matrix SMEPILOT_MATRIX_UNITS=1"; do
        echo "== $setting"
        # shellcheck disable=SC2086  # one word per assignment
        backend_ops "MUL_MAT MUL_MAT_ID" "$no_128_experts" "$mul_mat_types" $setting || return 1
    done
}

# Prefill attention in pipelined pairs of threads (the matrix stages on one, softmax on the
# other), forced, in the batch-invariant arithmetic: the cases with 16 or more queries of
# f16 caches whose head sizes the streamed path takes (V heads of whole 16-channel blocks:
# K 64, 80, 96, 128, 192; the default run covers the parallel schedule in ggml's
# arithmetic); then the trace of a prefill shows the schedule and the two groups' times.
t_backend_ops_attn_pipelined() {
    backend_ops "FLASH_ATTN_EXT" 'hsk=(64|80|96|128|192),hsv=(64|80|96|128),.*nb=(16|32|64|67|75|512),.*type_K=f16' "" SMEPILOT_ATTN=pipelined SMEPILOT_BATCH_INVARIANT=1 || return 1
    # ggml's arithmetic pipelined too (its softmax thread keeps the running state): one
    # head size, one batch size.
    backend_ops "FLASH_ATTN_EXT" 'hsk=128,hsv=128,.*nb=75,.*prec=f32,type_K=f16,type_V=f16,permute=\[0,1,2,3\]' "" SMEPILOT_ATTN=pipelined || return 1
    SMEPILOT_TRACE=1 SMEPILOT_ATTN=pipelined "$bin/llama-bench" --backend smepilot -m "$model" -fa 1 -p 64 -n 0 -r 1 >"$work/trace-attn.out" 2>&1 || { tail -20 "$work/trace-attn.out"; return 1; }
    grep -m1 "trace: FLASH_ATTN_EXT.*attn=pipelined pair0: matrix=[0-9]*us softmax=[0-9]*us" "$work/trace-attn.out" || { grep -m3 "FLASH_ATTN_EXT" "$work/trace-attn.out"; echo "no pipelined attention in the trace"; return 1; }
}

# SET_ROWS and CPY writing a KV cache in SMEPilot's packed buffer (GGML_TEST_KV_BUFFER=1,
# llama-patches/0007: the written tensor allocated in the buffer type SMEPilot offers for a
# KV cache, two heads per row where the blocks allow), in the default setting, with the
# matrix unit disabled and in each forced mode. Cases whose destination type the packed
# cache does not take are skipped by the harness, and ones it cannot express are declined;
# the others must all pass, and the cache-shaped SET_ROWS cases (two heads per row, so the
# packed layout is not ggml's) must pass for every type the packed cache takes.
t_backend_ops_kv_buffer() {
    local setting ty
    for setting in SMEPILOT_MODE=auto SMEPILOT_DISABLE_AMX=1 SMEPILOT_MODE=vector SMEPILOT_MODE=matrix SMEPILOT_MODE=coop; do
        echo "== $setting"
        backend_ops "SET_ROWS CPY" '.' "" GGML_TEST_KV_BUFFER=1 $setting || return 1
        for ty in f32 f16 bf16 q8_0 q4_0 q4_1; do
            [ "$(grep -cE "^\s+SET_ROWS\(type_src=f32,type_dst=$ty,type_idx=i64,ne=\[(256,64|192,100),1,1\],.*: OK" "$work/backend-ops.out")" -eq 4 ] \
                || { echo "the cache-shaped SET_ROWS cases into a packed $ty cache did not all pass"; return 1; }
        done
    done
}

# ---- planner ---------------------------------------------------------------------
# Calibration prints every figure; the trace shows one line per op with predicted and
# measured times and a summary per graph; a forced mode shows in the trace.
t_planner() {
    "$bin/smepilot" calibrate >"$work/calib.out" 2>&1 || { cat "$work/calib.out"; return 1; }
    cat "$work/calib.out"
    grep -q "DRAM read, 1 thread" "$work/calib.out" && grep -q "kernel costs" "$work/calib.out" || { echo "calibration report incomplete"; return 1; }
    SMEPILOT_TRACE=1 SMEPILOT_MODE=coop "$bin/llama-bench" --backend smepilot -m "$model" -p 64 -n 2 -r 1 >"$work/trace.out" 2>&1 || { tail -20 "$work/trace.out"; return 1; }
    grep -m3 "trace: MUL_MAT" "$work/trace.out"
    grep -m1 "trace: graph of" "$work/trace.out"
    grep -q "flash attention, one core" "$work/calib.out" || { echo "no attention cost in the calibration report"; return 1; }
    if grep -q "matrix units: none" "$work/calib.out"; then
        # No matrix unit (say AMD Zen): forced coop has nothing to drive, so every product
        # runs on the vector units and none on a matrix unit.
        grep -qE "trace: MUL_MAT +m=64 .*mode=vector +pred= *[0-9.]+us est= *[0-9.]+us meas= *[0-9.]+us" "$work/trace.out" || { echo "no vector MUL_MAT line in the trace"; return 1; }
        if grep -qE "trace: MUL_MAT .*mode=(coop|matrix)" "$work/trace.out"; then echo "a product ran on a matrix unit this CPU lacks"; return 1; fi
    else
        grep -qE "trace: MUL_MAT +m=64 .*mode=coop +pred= *[0-9.]+us est= *[0-9.]+us meas= *[0-9.]+us" "$work/trace.out" || { echo "no coop MUL_MAT line in the trace"; return 1; }
    fi
    python3 "$repo/bench-scripts/trace_accuracy.py" "$work/trace.out" || return 1
    grep -qE "trace: graph of [0-9]+ ops.*engines: vector" "$work/trace.out" || { echo "no graph summary"; return 1; }
}
# `smepilot plan` prints a plan row per weight shape and batch and writes a roofline SVG:
# valid XML with the roofs and one point per row, rendered to PNG by rsvg-convert.
t_plan_chart() {
    "$bin/smepilot" plan -m "$model" --batch 1,16,512 --svg "$work/plan.svg" >"$work/plan.out" 2>&1 || { cat "$work/plan.out"; return 1; }
    head -12 "$work/plan.out"
    local rows; rows=$(grep -cE " (vector|matrix|coop) +(-|[0-9]+) +[0-9.]+$" "$work/plan.out")
    [ "$rows" -ge 3 ] || { echo "expected plan rows for 3 batch sizes, got $rows"; return 1; }
    python3 - "$work/plan.svg" "$rows" <<'PY' || return 1
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
ns = "{http://www.w3.org/2000/svg}"
roofs = [e for e in root.iter(ns + "line") if e.get("class") == "roof"]
ops = [e for e in root.iter(ns + "circle") if e.get("class") == "op"]
print(f"svg: {len(roofs)} roofs, {len(ops)} op points")
assert any(r.get("data-roof") == "dram" for r in roofs), "no DRAM roof"
assert len(roofs) >= 3 and len(ops) == int(sys.argv[2]), "roofs or points missing"
PY
    rsvg-convert -o "$work/plan.png" "$work/plan.svg" || { echo "rsvg-convert failed"; return 1; }
    file "$work/plan.png"
    [ "$(stat -c %s "$work/plan.png")" -gt 10000 ] || { echo "PNG suspiciously small"; return 1; }
}

# ---- graph coverage --------------------------------------------------------------
# llama-perplexity logs "graph: nodes = ..., splits = N" for the pp and tg graphs and
# (llama-patches/0003) the nodes per backend; SMEPILOT_LOG=info adds SMEPilot's count;
# the KV cache's buffer is logged at -lv 4.
one_split() { # model fa
    local out="$work/splits.out"
    SMEPILOT_LOG=info "$bin/llama-perplexity" --backend smepilot -m "$1" -f "$corpus" -c 128 --chunks 2 -b 128 -fa "$2" -lv 4 >"$out" 2>&1 || { tail -30 "$out"; return 1; }
    grep -E "graph.*splits = |nodes per backend|SMEPilot|Final estimate" "$out"
    grep -qE "splits = 1(, | / 1,)" "$out" || { echo "expected splits = 1 for $1 (fa $2)"; return 1; }
    # With flash attention the KV cache is in SMEPilot's packed buffer.
    [ "$2" != on ] || grep -qE "SMEPILOT_KV[0-9]+ KV buffer" "$out" || { echo "the KV cache of $1 is not in SMEPilot's buffer"; return 1; }
    grep -qE "per backend: SMEPILOT = [0-9]+$" "$out" || { echo "nodes outside SMEPilot for $1"; return 1; }
    grep -qE "[1-9][0-9]* nodes computed by SMEPilot" "$out" || { echo "no SMEPilot node count"; return 1; }
}
t_splits_smollm2() { one_split "$model" on && one_split "$model" off; }
t_splits_llama3b() { local m; m=$(shape_model llama-3.2-3b q4_0) && one_split "$m" on && one_split "$m" off; }
t_splits_qwen3_4b() { local m; m=$(shape_model qwen3-4b q4_0) && one_split "$m" on && one_split "$m" off; }
# Qwen3-30B-A3B (128 experts, 8 used): router, experts and their combination in SMEPilot.
t_splits_qwen3moe() { local m; m=$(shape_model qwen3-30b-a3b q4_0) && one_split "$m" on && one_split "$m" off; }

# ---- KL divergence against stock on real text ------------------------------------
# Base: stock (--backend cpu). Besides SMEPilot, a second *stock* configuration with
# other matmul kernels (--no-repack -ub 32), "stock-alt", is compared to the same base in
# the same run: how far stock differs from itself with another kernel choice (int8
# activation rounding flips amplify any change of accumulation order). Pass: mean KLD <=
# max(0.001, stock-alt's) and same top token >= min(99%, stock-alt's).
kld() { # model [extra env...]
    local m=$1; shift
    local base="$work/kld-base-$(basename "$m").bin"
    "$bin/llama-perplexity" --backend cpu -m "$m" -f "$corpus" -c 512 --kl-divergence-base "$base" >"$work/kld-base.out" 2>&1 || { tail -20 "$work/kld-base.out"; return 1; }
    "$bin/llama-perplexity" --backend cpu --no-repack -ub 32 -m "$m" --kl-divergence-base "$base" --kl-divergence >"$work/kld-floor.out" 2>&1 || { tail -20 "$work/kld-floor.out"; return 1; }
    env "$@" "$bin/llama-perplexity" --backend smepilot -m "$m" --kl-divergence-base "$base" --kl-divergence >"$work/kld.out" 2>&1 || { tail -20 "$work/kld.out"; return 1; }
    rm -f "$base"
    python3 - "$work/kld.out" "$work/kld-floor.out" <<'PY'
import re, sys
def stats(path):
    t = open(path).read()
    return (float(re.search(r"Mean\s+KLD:\s+(-?[0-9.]+)", t).group(1)),
            float(re.findall(r"Same top p:\s+([0-9.]+)", t)[-1]))
kld, top = stats(sys.argv[1])
fkld, ftop = stats(sys.argv[2])
kld_max, top_min = max(0.001, fkld), min(99.0, ftop)
ok = kld <= kld_max and top >= top_min
print(f"SMEPilot vs stock:   mean KLD {kld:.6f}, same top token {top:.3f}%")
print(f"stock-alt vs stock:  mean KLD {fkld:.6f}, same top token {ftop:.3f}%")
print(f"bound: KLD <= {kld_max:.6f}, same top >= {top_min:.3f}%:", "met" if ok else "NOT met")
sys.exit(0 if ok else 1)
PY
}
t_kld_q4_1() { kld "$model"; }
t_kld_bf16() { local m; m=$(requant BF16) && kld "$m"; }
t_kld_q8_0() { local m; m=$(requant Q8_0) && kld "$m"; }
# Quantized KV caches (packed in SMEPilot's buffer). A cache quantized from activations
# turns any change of the last bit upstream into a changed quantum, so two correct runs
# differ by the cache's own error: the bound is on that error instead. Against stock with
# an f16 cache, in one run: stock with the quantized cache, then SMEPilot with it. Pass:
# SMEPilot's mean KLD <= stock's + max(0.001, 2 standard errors), same top token >=
# stock's - 2 standard errors.
kld_kv() { # cache type
    local base="$work/kld-base-f16-cache.bin"
    "$bin/llama-perplexity" --backend cpu -m "$model" -fa on -f "$corpus" -c 512 --kl-divergence-base "$base" >"$work/kld-base.out" 2>&1 || { tail -20 "$work/kld-base.out"; return 1; }
    "$bin/llama-perplexity" --backend cpu -m "$model" -fa on -ctk "$1" -ctv "$1" --kl-divergence-base "$base" --kl-divergence >"$work/kld-stock-kv.out" 2>&1 || { tail -20 "$work/kld-stock-kv.out"; return 1; }
    "$bin/llama-perplexity" --backend smepilot -m "$model" -fa on -ctk "$1" -ctv "$1" -lv 4 --kl-divergence-base "$base" --kl-divergence >"$work/kld-kv.out" 2>&1 || { tail -20 "$work/kld-kv.out"; return 1; }
    rm -f "$base"
    grep -q "SMEPILOT_KV[0-9]* KV buffer" "$work/kld-kv.out" || { echo "the $1 cache was not in SMEPilot's buffer"; return 1; }
    python3 - "$work/kld-kv.out" "$work/kld-stock-kv.out" "$1" <<'PY'
import re, sys
def stats(path):
    t = open(path).read()
    k = re.search(r"Mean\s+KLD:\s+(-?[0-9.]+)\s+±\s+([0-9.]+)", t)
    p = re.findall(r"Same top p:\s+([0-9.]+)\s+±\s+([0-9.]+)", t)[-1]
    return float(k.group(1)), float(k.group(2)), float(p[0]), float(p[1])
kld, _, top, _ = stats(sys.argv[1])
skld, skld_se, stop, stop_se = stats(sys.argv[2])
kld_max, top_min = skld + max(0.001, 2 * skld_se), stop - 2 * stop_se
ok = kld <= kld_max and top >= top_min
print(f"{sys.argv[3]} cache against stock with f16, SMEPilot: mean KLD {kld:.6f}, same top token {top:.3f}%")
print(f"{sys.argv[3]} cache against stock with f16, stock:    mean KLD {skld:.6f} ± {skld_se:.6f}, same top token {stop:.3f} ± {stop_se:.3f}%")
print(f"bound: KLD <= {kld_max:.6f}, same top >= {top_min:.3f}%:", "met" if ok else "NOT met")
sys.exit(0 if ok else 1)
PY
}
t_kld_kv_q8_0() { kld_kv q8_0; }
t_kld_kv_q4_0() { kld_kv q4_0; }

# ---- end to end ------------------------------------------------------------------
t_cli() {
    local out
    # SMEPilot logs through ggml's logger: its info lines show at llama.cpp's -lv 4.
    out=$(SMEPILOT_LOG=info "$bin/llama-cli" --backend smepilot -m "$model" -p "The capital of France is" -n 24 -st --temp 0 --no-warmup -lv 4 </dev/null 2>"$work/cli.err") || { tail -20 "$work/cli.err"; return 1; }
    echo "$out"
    grep -E "SMEPILOT: |nodes computed by SMEPilot" "$work/cli.err"
    grep -qE "[1-9][0-9]* nodes computed by SMEPilot" "$work/cli.err" || { echo "no nodes ran in SMEPilot"; return 1; }
    [ "$(echo "$out" | tr -d '[:space:]' | wc -c)" -gt 30 ] || { echo "no text generated"; return 1; }
}
t_server() { python3 "$repo/tests/server_test.py" --bin "$bin/llama-server" --model "$model"; }
# llama-server under concurrent load (tests/server_load.py): 200 requests, at most 32 in
# flight, on SMEPilot (SMEPILOT_BATCH_INVARIANT=1, for the probes) and then on stock;
# failures, latency, tokens/s, RSS growth and the probes' texts.
t_server_load() { python3 "$repo/tests/server_load.py" --bin "$bin/llama-server" --model "$model"; }

# ---- x86-64 without AVX ---------------------------------------------------------
# The same libggml-smepilot.so on an x86-64 CPU without AVX (qemu-x86_64 -cpu Nehalem:
# SSE4.2): the registry finds no AVX2 and takes the scalar tier, no instruction of a later
# extension runs (QEMU raises an illegal instruction for one the CPU model lacks), and the
# emulated test-backend-ops subset passes against a CPU backend built for that CPU
# (setup-llama.sh --baseline).
t_backend_ops_nehalem() {
    local qemu tree; qemu=$("$repo/bench-scripts/setup-qemu.sh" --x86) || return 1
    tree=$("$repo/bench-scripts/setup-llama.sh" --baseline) || return 1
    SMEPILOT_LOG=info emulated_ops nehalem "$plugin" "$arm_backend_ops" "$qemu" -cpu Nehalem "$tree/build/bin/test-backend-ops" || return 1
    grep -m1 "SMEPILOT device: scalar kernels" "$work/emulated-ops-nehalem.out" || { grep -m1 "SMEPILOT device" "$work/emulated-ops-nehalem.out"; echo "not the scalar tier"; return 1; }
}

# ---- the KV cache in SMEPilot's packed layout ------------------------------------------
t_kv_slot_save() { python3 "$repo/tests/kv_cache_test.py" --bin "$bin/llama-server" --model "$model"; }
# Sequence state through llama.cpp's API with the cache in SMEPilot's packed buffer
# (tests/state_seq.cpp, built here against the pinned tree): saved with
# LLAMA_STATE_SEQ_FLAGS_ON_DEVICE (copies in the cache's own buffer type) and to host
# memory, overwritten, restored; copied to the other stream of a two-stream cache. Each
# continues with the reference's tokens.
t_kv_state_seq() {
    local tree; tree=$("$repo/bench-scripts/setup-llama.sh") || return 1
    clang++-19 -std=c++17 -O1 -Wall -I"$tree/src/include" -I"$tree/src/ggml/include" "$repo/tests/state_seq.cpp" \
        -L"$tree/build/bin" -lllama -lggml-base -lggml -Wl,-rpath,"$tree/build/bin" -o "$work/state_seq" || return 1
    "$work/state_seq" "$plugin" "$model" >"$work/state-seq.out" 2>"$work/state-seq.err"
    local rc=$?
    cat "$work/state-seq.out"
    [ $rc -eq 0 ] || { tail -20 "$work/state-seq.err"; return 1; }
    grep -q "SMEPILOT_KV[0-9]* KV buffer" "$work/state-seq.err" || { echo "the cache was not in SMEPilot's buffer"; return 1; }
    grep -q "allocated 'SMEPILOT_KV[0-9]*' buffer" "$work/state-seq.err" || { echo "the on-device copies were not in the cache's buffer type"; return 1; }
    grep -q "copying KV buffer: stream 0 to stream 1" "$work/state-seq.err" || { echo "no copy between streams"; return 1; }
}

# Batch invariance at temperature 0 (tests/batch_invariance.cpp): each probe prompt's
# logits, alone and then in the same batches as three other sequences (llama-server's
# continuous batching, a stream per sequence, pieces of 1 to 100 tokens, another ubatch
# size), must be bit-identical with SMEPilot (SMEPILOT_BATCH_INVARIANT=1) for the types
# whose every engine mode gives the same bits. SMEPilot's default (stock's prefill
# attention) and stock are printed beside it.
t_batch_invariance() {
    local tree; tree=$("$repo/bench-scripts/setup-llama.sh") || return 1
    clang++-19 -std=c++17 -O1 -Wall -I"$tree/src/include" -I"$tree/src/ggml/include" "$repo/tests/batch_invariance.cpp" \
        -L"$tree/build/bin" -lllama -lggml-base -lggml -Wl,-rpath,"$tree/build/bin" -o "$work/batch_invariance" || return 1
    local ty m bad=0
    for ty in Q4_0 Q4_1 Q8_0; do
        if [ "$ty" = Q4_1 ]; then m=$model; else m=$(requant "$ty") || return 1; fi
        echo "$ty, SMEPilot, SMEPILOT_BATCH_INVARIANT=1:"
        SMEPILOT_BATCH_INVARIANT=1 "$work/batch_invariance" "$plugin" "$m" /usr/share/common-licenses/GPL-3 2>"$work/bi-$ty.err" || { bad=1; tail -3 "$work/bi-$ty.err"; }
        grep -q "SMEPILOT_KV[0-9]* KV buffer" "$work/bi-$ty.err" || { echo "the cache was not in SMEPilot's buffer"; bad=1; }
        echo "$ty, SMEPilot by default (for comparison):"
        "$work/batch_invariance" "$plugin" "$m" /usr/share/common-licenses/GPL-3 2>/dev/null
        echo "$ty, stock (for comparison):"
        "$work/batch_invariance" - "$m" /usr/share/common-licenses/GPL-3 2>/dev/null
    done
    return $bad
}

# Generating past a 256-cell context shifts the cache (an in-place ROPE on the packed K):
# the text must equal the one with the cache in ggml's layout (SMEPILOT_KV=standard), which
# the packed layout changes no arithmetic of; how far it agrees with stock's is shown.
t_kv_context_shift() {
    local run
    for run in "smepilot packed" "smepilot standard" "cpu standard"; do
        set -- $run
        SMEPILOT_KV=$2 "$bin/llama-completion" --backend "$1" -m "$model" -c 256 -n 400 --context-shift --ignore-eos -fa on --temp 0 \
            -p "The GNU General Public License is" -no-cnv -lv 4 >"$work/shift-$1-$2.txt" 2>"$work/shift-$1-$2.err" </dev/null \
            || { tail -20 "$work/shift-$1-$2.err"; return 1; }
    done
    grep -q "SMEPILOT_KV64 KV buffer" "$work/shift-smepilot-packed.err" || { echo "the cache was not packed"; return 1; }
    local words; words=$(wc -w <"$work/shift-smepilot-packed.txt")
    [ "$words" -gt 250 ] || { echo "only $words words: the run stopped before shifting"; return 1; }
    python3 - "$work" <<'PY'
import sys
w = sys.argv[1]
a, b, c = (open(f"{w}/shift-{r}.txt").read() for r in ("smepilot-packed", "smepilot-standard", "cpu-standard"))
same = next((i for i, (x, y) in enumerate(zip(a, c)) if x != y), min(len(a), len(c)))
print(f"{len(a.split())} words; agrees with stock for {same} of {len(a)} characters")
sys.exit(0 if a == b else "the packed cache's text differs from ggml's layout's")
PY
}

# ---- fallback and bad input --------------------------------------------------------
# Declined ops go to the CPU backend through ggml's scheduler (more splits), and the
# result is still right: KL divergence against stock stays within the same bounds.
t_fallback_declined_ops() {
    SMEPILOT_DECLINE_OPS=SOFT_MAX,RMS_NORM "$bin/llama-perplexity" --backend smepilot -m "$model" -f "$corpus" -c 128 --chunks 1 -fa off -lv 4 >"$work/decline.out" 2>&1 || { tail -20 "$work/decline.out"; return 1; }
    grep -E "splits = |per backend" "$work/decline.out"
    grep -qE "per backend: .*CPU = [1-9]" "$work/decline.out" || { echo "declined ops did not run on CPU"; return 1; }
    kld "$model" SMEPILOT_DECLINE_OPS=SOFT_MAX,RMS_NORM
}
# A model whose weights are of a type SMEPilot does not claim (Q5_0): those products go to
# the CPU backend through the scheduler and the result stays within the KLD bound. Then
# truncated and corrupted model files: llama.cpp rejects them, and with SMEPilot loaded it
# must end the same way as stock (the same exit status).
t_fallback_unclaimed_type() {
    local m; m=$(requant Q5_0) || return 1
    "$bin/llama-perplexity" --backend smepilot -m "$m" -f "$corpus" -c 128 --chunks 1 -lv 4 >"$work/unclaimed.out" 2>&1 || { tail -20 "$work/unclaimed.out"; return 1; }
    grep -E "splits = |per backend" "$work/unclaimed.out" | head -3
    grep -qE "per backend: .*CPU = [1-9]" "$work/unclaimed.out" || { echo "the Q5_0 products did not run on CPU"; return 1; }
    kld "$m" || return 1
    local size cut f rc_s rc_c
    size=$(stat -c %s "$model")
    for cut in 1024 $((size / 2)) $((size - 4096)) header; do
        f="$work/corrupt-$cut.gguf"
        if [ "$cut" = header ]; then
            cp "$model" "$f" && printf '\xff\xff\xff\x7f' | dd of="$f" bs=1 seek=8 conv=notrunc status=none  # tensor count
        else
            head -c "$cut" "$model" >"$f"
        fi
        "$bin/llama-completion" --backend smepilot -m "$f" -p hi -n 4 -no-cnv </dev/null >"$work/corrupt.out" 2>&1; rc_s=$?
        "$bin/llama-completion" --backend cpu -m "$f" -p hi -n 4 -no-cnv </dev/null >/dev/null 2>&1; rc_c=$?
        rm -f "$f"
        echo "model file cut at $cut: SMEPilot exit $rc_s, stock exit $rc_c"
        if [ $rc_s -ne $rc_c ]; then
            tail -5 "$work/corrupt.out"; echo "SMEPilot did not end as stock does"; return 1
        fi
    done
}
t_bad_settings() {
    if SMEPILOT_LOG=loud "$bin/llama-cli" --backend smepilot -m "$model" -p hi -n 1 -st </dev/null >"$work/bad.out" 2>&1; then
        echo "a bad SMEPILOT_LOG was accepted"; return 1
    fi
    grep -q 'SMEPILOT_LOG="loud"' "$work/bad.out" || { cat "$work/bad.out" | tail; echo "message does not name the setting"; return 1; }
    if "$bin/llama-cli" --backend bogus -m "$model" -p hi -n 1 -st </dev/null >"$work/bad.out" 2>&1; then
        echo "--backend bogus was accepted"; return 1
    fi
    grep -q "smepilot" "$work/bad.out" || { echo "message does not list the known backends"; return 1; }
    if SMEPILOT_MODE=fast "$bin/llama-cli" --backend smepilot -m "$model" -p hi -n 1 -st </dev/null >"$work/bad.out" 2>&1; then
        echo "a bad SMEPILOT_MODE was accepted"; return 1
    fi
    grep -q 'SMEPILOT_MODE="fast"' "$work/bad.out" || { tail "$work/bad.out"; echo "message does not name SMEPILOT_MODE"; return 1; }
    if SMEPILOT_MATRIX_UNITS=0 "$bin/smepilot" plan -m "$model" >"$work/bad.out" 2>&1; then
        echo "SMEPILOT_MATRIX_UNITS=0 was accepted"; return 1
    fi
    grep -q 'SMEPILOT_MATRIX_UNITS="0"' "$work/bad.out" || { tail "$work/bad.out"; echo "message does not name SMEPILOT_MATRIX_UNITS"; return 1; }
    echo "bad settings rejected with clear messages"
}

# ---- aarch64 under QEMU --------------------------------------------------------------
# The cross-built tools and plugin in build/aarch64/bin (setup-arm.sh), run by
# bench-scripts/qemu.sh as one of its CPU profiles: m4 (SME2, SVL 512, no SVE), sme1 (SME
# without SME2, QEMU 10), sve128 (SME2 at SVL 128), neon (no SVE or SME).
arm_bin="$repo/build/aarch64/bin"
# The engine's tests on one profile (cargo's runner is qemu.sh, which reads SMEPILOT_QEMU_CPU).
arm_engine() { # profile expected-tiers [test args]
    local log="$work/tiers-aarch64-$1.log"; rm -f "$log"
    cd "$repo" && SMEPILOT_QEMU_CPU=$1 SMEPILOT_TIER_LOG="$log" SMEPILOT_EXPECT_TIERS=$2 cargo test --release -p smepilot-engine --target aarch64-unknown-linux-gnu -- "${@:3}" 2>&1 || return 1
    tiers_ran "$log"
}
t_arm_engine_m4() { arm_engine m4 scalar,neon; }
# Without SME; the attention schedules (the same NEON tier, the slowest test under QEMU)
# run in the m4 profile.
t_arm_engine_neon() { arm_engine neon scalar,neon --skip ops::tests::prefill_attention_schedules_give_the_same_bits; }
# test-backend-ops under an emulator, one line of a case list at a time: no failing case,
# at least one passing per line.
emulated_ops() { # label plugin case-list command...
    local label=$1 plugin_so=$2 list=$3; shift 3
    local op pattern n rc t0 bad=0 raw="$work/emulated-ops-$label.raw" out="$work/emulated-ops-$label.out"
    while read -r op pattern; do
        [ -n "$op" ] || continue
        t0=$SECONDS
        GGML_BACKEND_PATH="$plugin_so" "$@" test -b SMEPILOT -o "$op" ${pattern:+-p "$pattern"} </dev/null >"$raw" 2>&1
        rc=$?
        sed 's/\x1b\[[0-9;]*m//g' "$raw" >"$out"
        n=$(grep -cE "^\s+$op\(.*\): OK" "$out")
        printf '%-16s %3d passing, %3d not supported (%ds)\n' "$op" "$n" "$(grep -c 'not supported' "$out")" $((SECONDS - t0))
        if [ $rc -ne 0 ] || ! grep -q "Backend SMEPILOT" "$out" || grep -qE '^\s+[A-Z_]+\(.*\): FAIL' "$out" || [ "$n" -eq 0 ]; then
            grep -vE ': OK$|not supported' "$out" | tail -20
            echo "$op on $label: exit $rc, $n passing (pattern: ${pattern:-none})"; bad=1
        fi
    done <<<"$list"
    return $bad
}
# Each line of arm_backend_ops on one profile.
arm_ops() { # profile [case list, default arm_backend_ops]
    emulated_ops "$1" "$arm_bin/libggml-smepilot.so" "${2:-$arm_backend_ops}" "$repo/bench-scripts/qemu.sh" --cpu "$1" "$arm_bin/test-backend-ops"
}
# MUL_MAT at shapes that fit no tile (llama-patches/0004) in every mode, on SME at SVL 512
# (the planner's own choice, then each mode forced).
arm_mul_mat_odd="MUL_MAT m=67"
t_arm_mul_mat_modes() {
    local m bad=0
    for m in auto matrix coop vector; do
        echo "SMEPILOT_MODE=$m"
        SMEPILOT_MODE=$m arm_ops m4 "$arm_mul_mat_odd" || bad=1
    done
    echo "SMEPILOT_MODE=matrix SMEPILOT_SME_INT8=0 (the f16 kernel for Q4_0, Q4_1, Q8_0)"
    SMEPILOT_MODE=matrix SMEPILOT_SME_INT8=0 arm_ops m4 "$arm_mul_mat_odd" || bad=1
    SMEPILOT_MODE=auto arm_ops neon "$arm_mul_mat_odd" || bad=1
    return $bad
}
t_arm_ops_m4() { arm_ops m4; }
t_arm_ops_sme1() { arm_ops sme1; }
t_arm_ops_sve128() { arm_ops sve128; }
t_arm_ops_neon() { arm_ops neon; }

check cargo-test            t_cargo
check aarch64-build         t_aarch64
check backend-ops           t_backend_ops
check backend-ops-no-amx    t_backend_ops_noamx
check backend-ops-modes     t_backend_ops_modes
check backend-ops-attn-pipelined t_backend_ops_attn_pipelined
check backend-ops-kv-buffer t_backend_ops_kv_buffer
check backend-ops-nehalem   t_backend_ops_nehalem
check planner               t_planner
check plan-chart            t_plan_chart
check splits-smollm2        t_splits_smollm2
check splits-llama-3.2-3b   t_splits_llama3b
check splits-qwen3-4b       t_splits_qwen3_4b
check splits-qwen3-30b-a3b  t_splits_qwen3moe
check kld-smollm2-q4_1      t_kld_q4_1
check kld-smollm2-bf16      t_kld_bf16
check kld-smollm2-q8_0      t_kld_q8_0
check kld-kv-q8_0           t_kld_kv_q8_0
check kld-kv-q4_0           t_kld_kv_q4_0
check llama-cli             t_cli
check llama-server          t_server
check server-load           t_server_load
check kv-slot-save-restore  t_kv_slot_save
check kv-context-shift      t_kv_context_shift
check kv-state-seq          t_kv_state_seq
check batch-invariance      t_batch_invariance
check fallback-declined-ops t_fallback_declined_ops
check fallback-unclaimed-type t_fallback_unclaimed_type
check bad-settings          t_bad_settings
if [ "$arm" = 1 ]; then
    check aarch64-engine-m4     t_arm_engine_m4
    check aarch64-engine-neon   t_arm_engine_neon
    check aarch64-ops-m4        t_arm_ops_m4
    check aarch64-ops-sme1      t_arm_ops_sme1
    check aarch64-ops-sve128    t_arm_ops_sve128
    check aarch64-ops-neon      t_arm_ops_neon
    check aarch64-mul-mat-modes t_arm_mul_mat_modes
fi

echo
[ ${#failures[@]} -gt 0 ] && echo "failed: ${failures[*]}"
echo "$passed passed, $failed failed$([ "$skipped" -gt 0 ] && echo ", $skipped skipped")"
[ "$failed" -eq 0 ]
