#!/usr/bin/env python3
"""A/B benchmark: stock ggml CPU backend vs SMEPilot in one llama-bench run.

Runs
    llama-bench --backend cpu,smepilot -m M1 -m M2 ... -p 512 -n 128 -r R -t T -o json
and renders a markdown table:

    | model | type | test | stock t/s | SMEPilot t/s | SMEPilot/stock |

If the llama-bench binary does not know `--backend` yet (unpatched llama.cpp), the
script runs it without the flag, labels every result `cpu` and leaves the SMEPilot
columns empty (useful to test the pipeline on a stock build).

Examples:
    ab.py --models build/models/bench/llama-3.2-3b-q4_0.gguf
    ab.py --gen llama-3.2-3b:q4_0 qwen3-4b:q8_0 -r 3 --out results.md
    ab.py --bin-dir /tmp/llama-dev/build/bin --models a.gguf b.gguf -p 64 -n 16 -- -fa 1
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

SCRIPT_DIR = Path(__file__).resolve().parent
REPO_DIR = SCRIPT_DIR.parent
DEFAULT_GEN = ["llama-3.2-3b:q4_0", "llama-3.2-3b:q8_0", "qwen3-4b:q4_k_m"]
SMEPILOT_LIB = "libggml-smepilot.so"


def die(msg: str, code: int = 2) -> None:
    print(f"ab: error: {msg}", file=sys.stderr)
    sys.exit(code)


def log(msg: str) -> None:
    print(f"ab: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# model generation (--gen)
# --------------------------------------------------------------------------------------

def gen_models(specs: list[str], gen_dir: Path, bin_dir: Path, threads: int | None) -> list[Path]:
    sys.path.insert(0, str(SCRIPT_DIR))
    out: list[Path] = []
    for spec in specs:
        parts = spec.split(":")
        if len(parts) not in (2, 3):
            die(f"--gen spec '{spec}' must be ARCH:TYPE or ARCH:TYPE:LAYERS")
        arch, wtype = parts[0], parts[1].lower()
        layers = parts[2] if len(parts) == 3 else None
        name = f"{arch}{'-' + layers + 'l' if layers else ''}-{wtype}.gguf"
        path = gen_dir / name
        out.append(path)
        if path.is_file():
            log(f"--gen: {path} exists")
            continue
        cmd = [sys.executable, str(SCRIPT_DIR / "gen_model.py"), "--arch", arch, "--type", wtype,
               "--out", str(path), "--bin-dir", str(bin_dir)]
        if layers:
            cmd += ["--layers", layers]
        if threads:
            cmd += ["--threads", str(threads)]
        log("--gen: " + " ".join(shlex.quote(c) for c in cmd))
        rc = subprocess.call(cmd)
        if rc != 0 or not path.is_file():
            die(f"gen_model.py failed for '{spec}' (exit {rc})")
    return out


# --------------------------------------------------------------------------------------
# running llama-bench
# --------------------------------------------------------------------------------------

def bench_help(bench: Path) -> str:
    try:
        p = subprocess.run([str(bench), "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, errors="replace", timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        die(f"cannot run {bench} --help: {e}")
    if p.returncode != 0:
        tail = "\n".join(p.stdout.strip().splitlines()[-10:])
        die(f"{bench} --help failed (exit {p.returncode}):\n{tail}")
    return p.stdout


def run_bench(cmd: list[str], env: dict) -> list[dict]:
    log("running: " + " ".join(shlex.quote(c) for c in cmd))
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True, errors="replace", env=env)
    if p.returncode != 0:
        die(f"llama-bench failed with exit code {p.returncode}", 1)
    txt = p.stdout.strip()
    # be tolerant of stray lines before the JSON array
    start = txt.find("[")
    if start < 0:
        die("llama-bench produced no JSON output", 1)
    try:
        data = json.loads(txt[start:])
    except json.JSONDecodeError as e:
        die(f"cannot parse llama-bench JSON: {e}", 1)
    if not isinstance(data, list):
        die("unexpected llama-bench JSON (not a list)", 1)
    return data


# --------------------------------------------------------------------------------------
# which llama.cpp
# --------------------------------------------------------------------------------------

def patch_hash() -> str:
    """The hash setup-llama.sh keys its cached tree by: sha256 of llama-patches/*.patch."""
    h = hashlib.sha256()
    for p in sorted((REPO_DIR / "llama-patches").glob("*.patch")):
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


def llama_source(bin_dir: Path | None, r0: dict) -> str | None:
    """What llama.cpp the binaries were built from, as far as it can be known.

    The pinned tree comes from a PyPI sdist without git metadata, so llama-bench reports
    build_commit "unknown" and build_number 0. The tree's path says what it is instead:
    setup-llama.sh builds <cache>/llama.cpp/<llama-cpp-python version>-<patch hash>/ and
    links build/llama.cpp to its src/.
    """
    commit = str(r0.get("build_commit") or "")
    if commit and commit != "unknown":
        return f"{commit} ({r0.get('build_number')})"
    if bin_dir is None:
        return None
    for link in (bin_dir.parent / "llama.cpp", bin_dir.parent.parent / "src"):
        if not link.exists():
            continue
        tree = link.resolve()
        m = re.fullmatch(r"(\d+\.\d+\.\d+)-([0-9a-f]{12})", tree.parent.name)
        if tree.name == "src" and m:
            version, tree_hash = m.groups()
            now = patch_hash()
            state = "as in llama-patches/" if tree_hash == now else \
                f"llama-patches/ is now {now}: rerun bench-scripts/setup.sh"
            return (f"vendor/llama.cpp of llama-cpp-python=={version} (PyPI sdist), "
                    f"patch hash {tree_hash} ({state}); tree `{tree}`")
    return None


# --------------------------------------------------------------------------------------
# table
# --------------------------------------------------------------------------------------

def test_name(r: dict) -> str:
    npp, ntg, nd = int(r.get("n_prompt", 0)), int(r.get("n_gen", 0)), int(r.get("n_depth", 0) or 0)
    if npp > 0 and ntg == 0:
        s = f"pp{npp}"
    elif ntg > 0 and npp == 0:
        s = f"tg{ntg}"
    else:
        s = f"pp{npp}+tg{ntg}"
    if nd:
        s += f" @ d{nd}"
    return s


def quant_type(r: dict) -> str:
    # model_type is "<arch> <size> <ftype name>", e.g. "qwen3moe 30B.A3B Q4_K - Medium"
    mt = str(r.get("model_type", ""))
    parts = mt.split(" ", 2)
    return parts[2] if len(parts) == 3 else mt


def backend_label(r: dict, fallback: str) -> str:
    b = str(r.get("backend") or "").strip().lower()
    if not b:  # no --backend (unpatched llama-bench, or patched one run without the flag)
        return fallback
    if "smepilot" in b:
        return "smepilot"
    if b.startswith("cpu"):
        return "cpu"
    return b


def fmt_ts(r: dict | None) -> str:
    if r is None:
        return "n/a"
    return f"{float(r['avg_ts']):.2f} ± {float(r['stddev_ts']):.2f}"


def build_table(results: list[dict], fallback_label: str) -> tuple[list[str], list[list[str]]]:
    rows: dict[tuple, dict] = {}
    order: list[tuple] = []
    for r in results:
        key = (r.get("model_filename", "?"), test_name(r))
        if key not in rows:
            rows[key] = {"_r": r}
            order.append(key)
        rows[key][backend_label(r, fallback_label)] = r
    header = ["model", "type", "test", "stock t/s", "SMEPilot t/s", "SMEPilot/stock"]
    out = []
    for key in order:
        e = rows[key]
        stock, sme = e.get("cpu"), e.get("smepilot")
        ratio = "n/a"
        if stock is not None and sme is not None and float(stock["avg_ts"]) > 0:
            ratio = f"{float(sme['avg_ts']) / float(stock['avg_ts']):.2f}x"
        out.append([Path(key[0]).name, quant_type(e["_r"]), key[1], fmt_ts(stock), fmt_ts(sme), ratio])
        others = sorted(k for k in e if k not in ("_r", "cpu", "smepilot"))
        for o in others:  # unexpected backend labels: show them instead of dropping them
            out.append([Path(key[0]).name, quant_type(e["_r"]), f"{key[1]} [{o}]", fmt_ts(e[o]), "n/a", "n/a"])
    return header, out


def markdown(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    right = {3, 4, 5}

    def line(cells):
        return "| " + " | ".join(c.rjust(widths[i]) if i in right else c.ljust(widths[i])
                                 for i, c in enumerate(cells)) + " |"
    sep = "| " + " | ".join(("-" * (w - 1) + ":") if i in right else "-" * w for i, w in enumerate(widths)) + " |"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


# --------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(
        description="A/B llama-bench: stock CPU backend vs SMEPilot, as a markdown table.",
        epilog="Arguments after '--' are passed to llama-bench unchanged (e.g. -- -fa 1 -ub 256).")
    ap.add_argument("--models", "-m", nargs="+", type=Path, default=[], action="extend",
                    help="GGUF model files (default: every *.gguf in <repo>/build/models/bench/)")
    ap.add_argument("--gen", nargs="*", metavar="ARCH:TYPE[:LAYERS]", default=None,
                    help="generate these models with gen_model.py into --gen-dir if missing and add them "
                         f"to the run (no value: {' '.join(DEFAULT_GEN)})")
    ap.add_argument("--gen-dir", type=Path, default=REPO_DIR / "build" / "models" / "bench")
    ap.add_argument("-p", "--n-prompt", default="512", help="prompt sizes, llama-bench syntax (default 512; 0 = skip)")
    ap.add_argument("-n", "--n-gen", default="128", help="generation sizes (default 128; 0 = skip)")
    ap.add_argument("-d", "--n-depth", default="0",
                    help="context depths the tests start from, llama-bench syntax (e.g. 0,4096,16384; default 0)")
    ap.add_argument("-r", "--repetitions", type=int, default=5, help="repetitions per test (default 5)")
    ap.add_argument("-t", "--threads", type=int, default=2, help="threads (default 2)")
    ap.add_argument("--backends", default="cpu,smepilot", help="value for llama-bench --backend (default cpu,smepilot)")
    ap.add_argument("--bin-dir", type=Path, default=REPO_DIR / "build" / "bin",
                    help="directory with llama-bench / llama-quantize / libggml-smepilot.so (default <repo>/build/bin)")
    ap.add_argument("--smepilot-lib", type=Path, default=None,
                    help=f"SMEPilot plugin, exported as SMEPILOT_LIB (default: $SMEPILOT_LIB, else <bin-dir>/{SMEPILOT_LIB})")
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown table to this file")
    ap.add_argument("--json-out", type=Path, default=None, help="save the raw llama-bench JSON here")
    ap.add_argument("--from-json", type=Path, default=None,
                    help="do not run anything: render the table from a saved llama-bench JSON file")
    ap.add_argument("bench_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args()
    extra = args.bench_args[1:] if args.bench_args[:1] == ["--"] else args.bench_args

    meta: list[str] = []
    fallback_label = "cpu"
    bin_dir: Path | None = None
    if args.from_json:
        try:
            results = json.loads(args.from_json.read_text())
        except (OSError, json.JSONDecodeError) as e:
            die(f"cannot read {args.from_json}: {e}")
        meta.append(f"source: `{args.from_json}`")
    else:
        bin_dir = args.bin_dir.resolve()
        bench = bin_dir / "llama-bench"
        if not bench.is_file() or not os.access(bench, os.X_OK):
            die(f"llama-bench not found in {bin_dir} (build it, or point --bin-dir at a build/bin directory)")

        models = [m.resolve() for m in args.models]
        if args.gen is not None:
            models += gen_models(args.gen or DEFAULT_GEN, args.gen_dir.resolve(), bin_dir, args.threads)
        if not models:
            models = sorted(args.gen_dir.resolve().glob("*.gguf"))
            if not models:
                die(f"no models given and none found in {args.gen_dir}; use --models FILE... or --gen")
        missing = [str(m) for m in models if not m.is_file()]
        if missing:
            die("model file(s) not found:\n  " + "\n  ".join(missing))
        # de-duplicate, keep order
        seen: set = set()
        models = [m for m in models if not (m in seen or seen.add(m))]
        # Stock maps the model file and reads the tensors it keeps mapped on first use: with
        # the file out of the page cache its first runs would time disk reads.
        for m in models:
            print(f"reading {m.name} into the page cache", file=sys.stderr, flush=True)
            with open(m, "rb") as f:
                while f.read(16 << 20):
                    pass

        help_txt = bench_help(bench)
        supports_backend = re.search(r"(^|[\s,])--backend([\s=<\[]|$)", help_txt, re.M) is not None
        env = dict(os.environ)
        cmd = [str(bench)]
        if supports_backend:
            wanted = [b.strip().lower() for b in args.backends.split(",") if b.strip()]
            if any("smepilot" in b for b in wanted):
                # the patched llama-bench loads $SMEPILOT_LIB, else libggml-smepilot.so next to itself
                if args.smepilot_lib is not None:
                    lib = args.smepilot_lib.resolve()
                elif env.get("SMEPILOT_LIB"):
                    lib = Path(env["SMEPILOT_LIB"]).resolve()
                else:
                    lib = bin_dir / SMEPILOT_LIB
                if not lib.is_file():
                    die(f"SMEPilot plugin not found: {lib} (build it, set SMEPILOT_LIB, or pass --smepilot-lib)")
                env["SMEPILOT_LIB"] = str(lib)
                meta.append(f"plugin: `{lib}`")
            cmd += ["--backend", args.backends]
        else:
            log("WARNING: this llama-bench has no --backend option (unpatched); running the stock "
                "backend only and labelling all results 'cpu'")
            meta.append("**llama-bench without `--backend` support: stock results only**")
        for m in models:
            cmd += ["-m", str(m)]
        cmd += ["-p", str(args.n_prompt), "-n", str(args.n_gen), "-r", str(args.repetitions),
                "-t", str(args.threads), "-o", "json"]
        if args.n_depth != "0":
            cmd += ["-d", str(args.n_depth)]
        if "--progress" in help_txt:
            cmd.append("--progress")
        cmd += extra
        results = run_bench(cmd, env)
        if args.json_out:
            args.json_out.parent.mkdir(parents=True, exist_ok=True)
            args.json_out.write_text(json.dumps(results, indent=2) + "\n")
        meta.append(f"command: `{' '.join(shlex.quote(c) for c in cmd)}`")

    if not results:
        die("llama-bench returned no results", 1)
    r0 = results[0]
    info = [f"date: {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}"]
    src = llama_source(bin_dir, r0)
    if src:
        info.append(f"llama.cpp: {src}")
    if r0.get("cpu_info"):
        info.append(f"cpu: {r0.get('cpu_info')}")
    info.append(f"threads: {r0.get('n_threads')}, reps: {len(r0.get('samples_ts', [])) or '?'}")
    header, rows = build_table(results, fallback_label)
    md = "\n".join(["## SMEPilot vs stock CPU (llama-bench)", "",
                    *[f"- {x}" for x in info + meta], "",
                    markdown(header, rows), "",
                    "t/s = tokens/second, mean ± stddev over repetitions; ratio > 1 means SMEPilot is faster.", ""])
    print(md)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(md)
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
