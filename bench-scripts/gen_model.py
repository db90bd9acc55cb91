#!/usr/bin/env python3
"""Generate shape-faithful GGUF models with random weights for benchmarking.

The files carry the real hyper-parameters, tensor names and tensor shapes of
the named Hugging Face models (as llama.cpp's convert_hf_to_gguf.py writes
them), a synthetic but valid byte-level BPE tokenizer of the right size, and
random weights with a sensible scale (matrices ~ N(0, 0.02^2), norms ~ 1.0),
so llama.cpp loads them, activations stay finite and generation works.

F32 / F16 / BF16 are written directly from Python (streamed, tensor by tensor
and chunk by chunk, so RAM use stays bounded).  Every other type is produced by
writing an F16 intermediate next to the output and running `llama-quantize`
on it; the intermediate is deleted afterwards.

Examples:
    gen_model.py --arch llama-3.2-3b --type q4_0 --out build/models/llama-3.2-3b-q4_0.gguf
    gen_model.py --arch qwen3-30b-a3b --layers 2 --type f16 --out /tmp/moe-2l-f16.gguf
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path

SCRIPT_DIR = Path(__file__).resolve().parent
REPO_DIR = SCRIPT_DIR.parent

# --------------------------------------------------------------------------------------
# gguf-py: always use the copy that ships with the pinned llama.cpp tree
# --------------------------------------------------------------------------------------

LLAMA_CPP_CANDIDATES = [
    os.environ.get("LLAMA_CPP_DIR", ""),
    # set up by bench-scripts/setup-llama.sh: a link to the pinned, patched tree
    str(Path(__file__).resolve().parent.parent / "build/llama.cpp"),
]


def _import_gguf():
    gguf_py = os.environ.get("GGUF_PY", "")
    cands = [gguf_py] if gguf_py else []
    cands += [str(Path(c) / "gguf-py") for c in LLAMA_CPP_CANDIDATES if c]
    for c in cands:
        if c and (Path(c) / "gguf" / "__init__.py").is_file():
            sys.path.insert(0, c)
            break
    try:
        import numpy  # noqa: F401
    except ImportError:
        sys.exit("error: numpy is required (pip install numpy)")
    try:
        import gguf  # noqa: F401
    except ImportError:
        sys.exit("error: cannot import gguf-py; set GGUF_PY=<llama.cpp>/gguf-py or LLAMA_CPP_DIR=<llama.cpp>")
    return gguf


gguf = _import_gguf()
import numpy as np  # noqa: E402

# --------------------------------------------------------------------------------------
# model definitions (values from the HF config.json of each model)
# --------------------------------------------------------------------------------------

ARCHS: dict[str, dict] = {
    # meta-llama/Llama-3.2-3B(-Instruct)
    "llama-3.2-3b": dict(
        gguf_arch="llama", name="Llama 3.2 3B (synthetic)",
        n_embd=3072, n_layer=28, n_head=24, n_head_kv=8, head_dim=128, n_ff=8192,
        n_vocab=128256, n_ctx=131072, rope_theta=500000.0, rms_eps=1e-5,
        tied=True, qk_norm=False,
        rope_llama3=dict(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                         original_max_position_embeddings=8192),
        vocab="llama3",
    ),
    # Qwen/Qwen3-4B
    "qwen3-4b": dict(
        gguf_arch="qwen3", name="Qwen3 4B (synthetic)",
        n_embd=2560, n_layer=36, n_head=32, n_head_kv=8, head_dim=128, n_ff=9728,
        n_vocab=151936, n_ctx=40960, rope_theta=1000000.0, rms_eps=1e-6,
        tied=True, qk_norm=True, vocab="qwen3",
    ),
    # Qwen/Qwen3-30B-A3B
    "qwen3-30b-a3b": dict(
        gguf_arch="qwen3moe", name="Qwen3 30B A3B (synthetic)",
        n_embd=2048, n_layer=48, n_head=32, n_head_kv=4, head_dim=128, n_ff=6144,
        n_expert=128, n_expert_used=8, n_ff_exp=768,
        n_vocab=151936, n_ctx=40960, rope_theta=1000000.0, rms_eps=1e-6,
        tied=False, qk_norm=True, vocab="qwen3",
    ),
}

# --type -> (llama-quantize type name, extra llama-quantize args)
# q4_k / q5_k / q6_k are *homogeneous* ("--pure") files: every quantizable matrix,
# including token_embd/output, uses that one block format (useful to isolate a kernel).
# q4_k_m and the legacy types use llama-quantize's standard recipes (what you download).
QUANT_TYPES: dict[str, tuple[str, list[str]]] = {
    "q8_0": ("Q8_0", []),
    "q4_0": ("Q4_0", []),
    "q4_1": ("Q4_1", []),
    "q4_k_m": ("Q4_K_M", []),
    "q4_k": ("Q4_K_M", ["--pure"]),
    "q5_k": ("Q5_K_M", ["--pure"]),
    "q6_k": ("Q6_K", ["--pure"]),
}
DIRECT_TYPES = ("f32", "f16", "bf16")
ALL_TYPES = list(DIRECT_TYPES) + list(QUANT_TYPES)

WEIGHT_STD = 0.02
NORM_STD = 0.02       # norms ~ 1 + N(0, NORM_STD^2)
CHUNK_ELEMS = 1 << 24  # values per RNG chunk

# --------------------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------------------

TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED = 1, 3, 4, 5


def bytes_to_unicode() -> list[str]:
    """GPT-2 byte-level BPE alphabet: byte value -> printable unicode char."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]


def regular_tokens(n: int) -> tuple[list[str], list[str]]:
    """n byte-level BPE tokens + a consistent merge list.

    ids 0..255 are the 256 single bytes; then 2-byte tokens (65536 of them, merge "a b"),
    then 3-byte tokens (merge "ab c") until n tokens exist.  Every token is reachable
    through the merges, strings are unique, and tokenization of any text works."""
    byte_chars = bytes_to_unicode()
    # put printable ASCII first so that common text merges early (cosmetic only)
    order = sorted(range(256), key=lambda b: (not (32 <= b < 127), b))
    chars = [byte_chars[b] for b in order]
    tokens = list(chars)
    merges: list[str] = []
    if n <= len(tokens):
        return tokens[:n], merges
    pairs = []
    for a in chars:
        for b in chars:
            pairs.append((a, b))
    for a, b in pairs:
        if len(tokens) >= n:
            return tokens, merges
        tokens.append(a + b)
        merges.append(f"{a} {b}")
    for a, b in pairs:
        for c in chars:
            if len(tokens) >= n:
                return tokens, merges
            tokens.append(a + b + c)
            merges.append(f"{a + b} {c}")
    raise ValueError(f"vocab of {n} regular tokens is too large for the synthetic tokenizer")


LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def build_vocab(kind: str, n_vocab: int) -> dict:
    if kind == "llama3":
        # Llama 3: 128000 BPE tokens, then 256 special tokens (128000..128255)
        n_regular = 128000
        named = {
            128000: "<|begin_of_text|>", 128001: "<|end_of_text|>",
            128002: "<|reserved_special_token_0|>", 128003: "<|reserved_special_token_1|>",
            128004: "<|finetune_right_pad_id|>", 128005: "<|reserved_special_token_2|>",
            128006: "<|start_header_id|>", 128007: "<|end_header_id|>",
            128008: "<|eom_id|>", 128009: "<|eot_id|>", 128010: "<|python_tag|>",
        }
        specials = []
        r = 3
        for i in range(n_regular, n_vocab):
            if i in named:
                specials.append((named[i], TOKEN_CONTROL))
            else:
                specials.append((f"<|reserved_special_token_{r}|>", TOKEN_CONTROL))
                r += 1
        return dict(pre="llama-bpe", n_regular=n_regular, specials=specials,
                    bos=128000, eos=128009, pad=None, add_bos=True,
                    chat_template=LLAMA3_CHAT_TEMPLATE)
    if kind == "qwen3":
        # Qwen2/3: 151643 BPE tokens, 26 added tokens, then padding up to vocab_size
        n_regular = 151643
        added = [
            ("<|endoftext|>", TOKEN_CONTROL), ("<|im_start|>", TOKEN_CONTROL), ("<|im_end|>", TOKEN_CONTROL),
            ("<|object_ref_start|>", TOKEN_CONTROL), ("<|object_ref_end|>", TOKEN_CONTROL),
            ("<|box_start|>", TOKEN_CONTROL), ("<|box_end|>", TOKEN_CONTROL),
            ("<|quad_start|>", TOKEN_CONTROL), ("<|quad_end|>", TOKEN_CONTROL),
            ("<|vision_start|>", TOKEN_CONTROL), ("<|vision_end|>", TOKEN_CONTROL),
            ("<|vision_pad|>", TOKEN_CONTROL), ("<|image_pad|>", TOKEN_CONTROL), ("<|video_pad|>", TOKEN_CONTROL),
            ("<tool_call>", TOKEN_USER_DEFINED), ("</tool_call>", TOKEN_USER_DEFINED),
            ("<|fim_prefix|>", TOKEN_CONTROL), ("<|fim_middle|>", TOKEN_CONTROL),
            ("<|fim_suffix|>", TOKEN_CONTROL), ("<|fim_pad|>", TOKEN_CONTROL),
            ("<|repo_name|>", TOKEN_CONTROL), ("<|file_sep|>", TOKEN_CONTROL),
            ("<tool_response>", TOKEN_USER_DEFINED), ("</tool_response>", TOKEN_USER_DEFINED),
            ("<think>", TOKEN_USER_DEFINED), ("</think>", TOKEN_USER_DEFINED),
        ]
        specials = list(added)
        for i in range(n_regular + len(added), n_vocab):
            specials.append((f"[PAD{i}]", TOKEN_UNUSED))  # as convert_hf_to_gguf pads
        return dict(pre="qwen2", n_regular=n_regular, specials=specials,
                    bos=151643, eos=151645, pad=151643, add_bos=False,
                    chat_template=CHATML_TEMPLATE)
    raise ValueError(kind)


def write_vocab(w, cfg: dict) -> None:
    v = build_vocab(cfg["vocab"], cfg["n_vocab"])
    toks, merges = regular_tokens(v["n_regular"])
    types = [TOKEN_NORMAL] * len(toks)
    for text, ty in v["specials"]:
        toks.append(text)
        types.append(ty)
    assert len(toks) == cfg["n_vocab"], (len(toks), cfg["n_vocab"])
    assert len(set(toks)) == len(toks), "duplicate token strings"
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(v["pre"])
    w.add_token_list(toks)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(v["bos"])
    w.add_eos_token_id(v["eos"])
    if v["pad"] is not None:
        w.add_pad_token_id(v["pad"])
    w.add_add_bos_token(v["add_bos"])
    w.add_chat_template(v["chat_template"])


# --------------------------------------------------------------------------------------
# tensors
# --------------------------------------------------------------------------------------

def llama3_rope_factors(cfg: dict) -> np.ndarray:
    """Same computation as LlamaModel.generate_extra_tensors in convert_hf_to_gguf."""
    rp = cfg["rope_llama3"]
    base, dim = cfg["rope_theta"], cfg["head_dim"]
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor, lo, hi = rp["factor"], rp["low_freq_factor"], rp["high_freq_factor"]
    old = rp["original_max_position_embeddings"]
    lo_wl, hi_wl = old / lo, old / hi
    out = []
    for f in freqs:
        wl = 2 * math.pi / f
        if wl < hi_wl:
            out.append(1.0)
        elif wl > lo_wl:
            out.append(factor)
        else:
            s = (old / wl - lo) / (hi - lo)
            out.append(1.0 / ((1 - s) / factor + s))
    return np.array(out, dtype=np.float32)


class TSpec:
    """One tensor: GGUF name, numpy shape (reverse of ggml ne), kind and storage type."""

    def __init__(self, name: str, shape: tuple[int, ...], kind: str, force_f32: bool = False):
        self.name, self.shape, self.kind, self.force_f32 = name, shape, kind, force_f32

    @property
    def n(self) -> int:
        return int(np.prod(self.shape))


def tensor_specs(cfg: dict) -> list[TSpec]:
    E, V, hd = cfg["n_embd"], cfg["n_vocab"], cfg["head_dim"]
    nq, nkv = cfg["n_head"] * hd, cfg["n_head_kv"] * hd
    T = gguf.TENSOR_NAMES
    MT = gguf.MODEL_TENSOR
    specs: list[TSpec] = []
    if "rope_llama3" in cfg:
        specs.append(TSpec(T[MT.ROPE_FREQS] + ".weight", (hd // 2,), "rope", True))
    specs.append(TSpec(T[MT.TOKEN_EMBD] + ".weight", (V, E), "w"))
    for i in range(cfg["n_layer"]):
        def nm(t):
            return T[t].format(bid=i) + ".weight"
        specs.append(TSpec(nm(MT.ATTN_NORM), (E,), "norm", True))
        specs.append(TSpec(nm(MT.ATTN_Q), (nq, E), "w"))
        specs.append(TSpec(nm(MT.ATTN_K), (nkv, E), "w"))
        specs.append(TSpec(nm(MT.ATTN_V), (nkv, E), "w"))
        if cfg["qk_norm"]:
            specs.append(TSpec(nm(MT.ATTN_Q_NORM), (hd,), "norm", True))
            specs.append(TSpec(nm(MT.ATTN_K_NORM), (hd,), "norm", True))
        specs.append(TSpec(nm(MT.ATTN_OUT), (E, nq), "w"))
        specs.append(TSpec(nm(MT.FFN_NORM), (E,), "norm", True))
        if cfg.get("n_expert"):
            X, F = cfg["n_expert"], cfg["n_ff_exp"]
            specs.append(TSpec(nm(MT.FFN_GATE_INP), (X, E), "w", True))  # router stays F32
            specs.append(TSpec(nm(MT.FFN_GATE_EXP), (X, F, E), "w"))
            specs.append(TSpec(nm(MT.FFN_UP_EXP), (X, F, E), "w"))
            specs.append(TSpec(nm(MT.FFN_DOWN_EXP), (X, E, F), "w"))
        else:
            F = cfg["n_ff"]
            specs.append(TSpec(nm(MT.FFN_GATE), (F, E), "w"))
            specs.append(TSpec(nm(MT.FFN_UP), (F, E), "w"))
            specs.append(TSpec(nm(MT.FFN_DOWN), (E, F), "w"))
    specs.append(TSpec(T[MT.OUTPUT_NORM] + ".weight", (E,), "norm", True))
    if not cfg["tied"]:
        specs.append(TSpec(T[MT.OUTPUT] + ".weight", (V, E), "w"))
    return specs


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    u = x.view(np.uint32)
    return ((u + (0x7FFF + ((u >> 16) & 1))) >> 16).astype(np.uint16)


_TABLES: dict = {}


def value_table(seed: int, kind: str, store: str) -> np.ndarray:
    """65536 samples of the target distribution, already in the storage format.

    Weights are drawn as table[uniform_u16]: each value is marginally N(0, 0.02^2)
    (or 1 + N(0, 0.02^2) for norms) but ~4x cheaper than numpy's normal sampler."""
    key = (seed, kind, store)
    if key not in _TABLES:
        rng = np.random.default_rng([seed, 0x7AB1E, 1 if kind == "norm" else 0])
        x = rng.standard_normal(65536, dtype=np.float32)
        if kind == "norm":
            x = x * np.float32(NORM_STD) + np.float32(1.0)
        else:
            x = x * np.float32(WEIGHT_STD)
        if store == "f16":
            x = x.astype(np.float16)
        elif store == "bf16":
            x = f32_to_bf16_bits(x)
        _TABLES[key] = x
    return _TABLES[key]


def gen_chunk(seed: int, tseed: int, cidx: int, n: int, kind: str, store: str) -> np.ndarray:
    rng = np.random.Generator(np.random.SFC64([seed, tseed, cidx]))
    idx = rng.integers(0, 65536, n, dtype=np.uint16)
    return np.take(value_table(seed, kind, store), idx)


def human(n: float) -> str:
    for u in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or u == "TiB":
            return f"{n:.1f} {u}" if u != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def write_gguf(cfg: dict, out: Path, wtype: str, seed: int) -> None:
    """Stream a GGUF with F32/F16/BF16 matrices to `out`."""
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "bf16": gguf.LlamaFileType.MOSTLY_BF16}[wtype]
    w = gguf.GGUFWriter(str(out), cfg["gguf_arch"])

    # ---- metadata, mirroring convert_hf_to_gguf.py ----
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(cfg["name"])
    w.add_block_count(cfg["n_layer"])
    w.add_context_length(cfg["n_ctx"])
    w.add_embedding_length(cfg["n_embd"])
    w.add_feed_forward_length(cfg["n_ff"])
    w.add_head_count(cfg["n_head"])
    w.add_head_count_kv(cfg["n_head_kv"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_eps"])
    if cfg.get("n_expert"):
        w.add_expert_count(cfg["n_expert"])
        w.add_expert_used_count(cfg["n_expert_used"])
    w.add_key_length(cfg["head_dim"])
    w.add_value_length(cfg["head_dim"])
    w.add_file_type(ftype)
    if cfg["gguf_arch"] == "llama":
        w.add_vocab_size(cfg["n_vocab"])
        w.add_rope_dimension_count(cfg["head_dim"])
    if cfg.get("n_expert"):
        w.add_expert_feed_forward_length(cfg["n_ff_exp"])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    write_vocab(w, cfg)

    # ---- tensor infos ----
    specs = tensor_specs(cfg)
    total = 0
    for s in specs:
        if s.force_f32 or wtype == "f32":
            dt, raw, nb = np.float32, None, 4
        elif wtype == "f16":
            dt, raw, nb = np.float16, None, 2
        else:
            dt, raw, nb = np.uint16, gguf.GGMLQuantizationType.BF16, 2
        s.store = "f32" if dt is np.float32 else wtype
        w.add_tensor_info(s.name, s.shape, np.dtype(dt), s.n * nb, raw_dtype=raw)
        total += s.n * nb
    n_params = sum(s.n for s in specs)
    print(f"[gen] {out.name}: {len(specs)} tensors, {n_params / 1e9:.3f} B params, "
          f"{human(total)} of {wtype.upper()} tensor data", flush=True)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    fout = w.fout[0]
    align = w.data_alignment

    def pad(nbytes: int) -> None:
        p = (-nbytes) % align
        if p:
            fout.write(b"\0" * p)

    pad(fout.tell())
    done = 0
    t0 = last = time.time()
    for tidx, s in enumerate(specs):
        if s.kind == "rope":
            data = llama3_rope_factors(cfg)
            assert data.shape == s.shape
            data.tofile(fout)
            nbytes = data.nbytes
        else:
            # per-tensor stream derived from the tensor name: identical across --layers/--type
            tseed = zlib.crc32(s.name.encode())
            nbytes = 0
            for c in range((s.n + CHUNK_ELEMS - 1) // CHUNK_ELEMS):
                arr = gen_chunk(seed, tseed, c, min(CHUNK_ELEMS, s.n - c * CHUNK_ELEMS), s.kind, s.store)
                arr.tofile(fout)
                nbytes += arr.nbytes
        pad(nbytes)
        done += nbytes
        now = time.time()
        if now - last > 2 or tidx == len(specs) - 1:
            last = now
            el = now - t0
            print(f"[gen]   {100 * done / total:5.1f}%  {human(done)}/{human(total)}  "
                  f"{human(done / max(el, 1e-9))}/s  ({s.name})", flush=True)
    w.close()


def find_bin(bin_dir: Path, name: str) -> Path:
    p = bin_dir / name
    if not p.is_file() or not os.access(p, os.X_OK):
        sys.exit(f"error: {name} not found in {bin_dir} (use --bin-dir)")
    return p


def main() -> int:
    ap = argparse.ArgumentParser(
        description="Generate a shape-faithful random-weight GGUF (llama.cpp loadable).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="types: f32/f16/bf16 are written directly; others = F16 + llama-quantize.\n"
               "q4_k/q5_k/q6_k are homogeneous (--pure) files; q4_k_m/q4_0/q4_1/q8_0 use\n"
               "llama-quantize's standard recipe (e.g. output/tied-embd in Q6_K).")
    ap.add_argument("--arch", required=True, choices=list(ARCHS))
    ap.add_argument("--type", default="f16", choices=ALL_TYPES, dest="wtype")
    ap.add_argument("--layers", type=int, default=None, help="override n_layer (default: the real depth)")
    ap.add_argument("--out", type=Path, default=None,
                    help="output file (default: <repo>/build/models/<arch>[-<N>l]-<type>.gguf)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--bin-dir", type=Path, default=REPO_DIR / "build" / "bin",
                    help="directory with llama-quantize (default: <repo>/build/bin)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="threads for llama-quantize (default: all cores)")
    ap.add_argument("--force", action="store_true", help="overwrite an existing output file")
    ap.add_argument("--keep-intermediate", action="store_true", help="keep the F16 file used for quantization")
    ap.add_argument("--tmp-dir", type=Path, default=None,
                    help="where to put the F16 intermediate (default: next to --out)")
    args = ap.parse_args()

    cfg = dict(ARCHS[args.arch])
    if args.layers is not None:
        if args.layers < 1:
            ap.error("--layers must be >= 1")
        cfg["n_layer"] = args.layers
    out = args.out
    if out is None:
        suffix = f"-{args.layers}l" if args.layers is not None else ""
        out = REPO_DIR / "build" / "models" / f"{args.arch}{suffix}-{args.wtype}.gguf"
    out = out.resolve()
    if out.exists() and not args.force:
        print(f"[gen] {out} exists, skipping (use --force to regenerate)")
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)

    # rough disk-space check: (intermediate) float file + quantized output
    n_params = sum(s.n for s in tensor_specs(cfg))
    bytes_per = {"f32": 4.0, "f16": 2.0, "bf16": 2.0}
    if args.wtype in DIRECT_TYPES:
        checks = [(out.parent, n_params * bytes_per[args.wtype])]
    else:
        # F16 intermediate + quantized output (<= ~1.1 bytes/param incl. q8_0)
        checks = [(args.tmp_dir or out.parent, n_params * 2.0), (out.parent, n_params * 1.1)]
    print(f"[gen] {args.arch}: n_layer={cfg['n_layer']}, {n_params / 1e9:.2f} B params, type {args.wtype}", flush=True)
    need_by_dev: dict = {}
    for d, nb in checks:
        d = Path(d)
        d.mkdir(parents=True, exist_ok=True)
        dev = d.stat().st_dev
        need_by_dev[dev] = (d, need_by_dev.get(dev, (d, 0))[1] + nb)
    for d, nb in need_by_dev.values():
        free = shutil.disk_usage(d).free
        if nb > free:
            sys.exit(f"error: not enough disk space in {d}: need ~{human(nb)}, have {human(free)} "
                     f"(use --layers, or --tmp-dir on another disk for the F16 intermediate)")

    t_start = time.time()
    if args.wtype in DIRECT_TYPES:
        tmp = out.with_name(out.name + ".partial")
        try:
            write_gguf(cfg, tmp, args.wtype, args.seed)
            os.replace(tmp, out)
        finally:
            if tmp.exists():
                tmp.unlink()
    else:
        qname, qargs = QUANT_TYPES[args.wtype]
        quantize = find_bin(args.bin_dir, "llama-quantize")
        inter = (args.tmp_dir.resolve() if args.tmp_dir else out.parent) / (out.stem + ".f16-intermediate.gguf")
        inter.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".partial")
        try:
            t0 = time.time()
            write_gguf(cfg, inter, "f16", args.seed)
            print(f"[gen] F16 intermediate written in {time.time() - t0:.1f}s", flush=True)
            cmd = [str(quantize), *qargs, str(inter), str(tmp), qname, str(args.threads)]
            print("[gen] " + " ".join(cmd), flush=True)
            t0 = time.time()
            # llama-quantize is chatty: show only progress-ish lines
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
            tail: list[str] = []
            n_done = 0
            assert proc.stdout is not None
            for line in proc.stdout:
                tail = (tail + [line])[-40:]
                if line.lstrip().startswith("[") and "/" in line.split("]")[0]:
                    n_done += 1
                    if n_done % 25 == 0:
                        print(f"[quantize] {line.split(' - ')[0].strip()}", flush=True)
                elif "model size" in line or "quant size" in line:
                    print(f"[quantize] {line.strip()}", flush=True)
            rc = proc.wait()
            if rc != 0:
                sys.stderr.write("".join(tail))
                sys.exit(f"error: llama-quantize failed with exit code {rc}")
            os.replace(tmp, out)
            print(f"[gen] quantized to {qname}{' (pure)' if '--pure' in qargs else ''} in {time.time() - t0:.1f}s",
                  flush=True)
        finally:
            for p in (tmp,) + (() if args.keep_intermediate else (inter,)):
                if p.exists():
                    p.unlink()
    print(f"[gen] done: {out} ({human(out.stat().st_size)}, {out.stat().st_size / 1e9:.2f} GB) "
          f"in {time.time() - t_start:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
