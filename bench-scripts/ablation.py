#!/usr/bin/env python3
"""Planner ablation: pp16, pp512 and tg128 with SMEPILOT_MODE = vector, matrix, coop and
auto, on the given models, in one run (modes interleaved per repetition so the VM's drift
hits them alike).

For every (model, test) cell it prints the median t/s per mode, auto / best forced mode,
and whether coop beats both single-engine modes. Writes a markdown table (--out) too. The
order of the modes rotates with every repetition, so no mode always runs after the same one.
--env sets SMEPilot variables for every run (for example SMEPILOT_MATRIX_UNITS=1: one
matrix unit shared by the cores).

    ablation.py -m build/models/bench/llama-3.2-3b-bf16.gguf build/models/bench/llama-3.2-3b-q4_0.gguf
    ablation.py -m model.gguf -p 16,512 -n 128 -r 2 -t 2 --out ablation.md
    ablation.py -m model.gguf -n 0 -r 3 --env SMEPILOT_MATRIX_UNITS=1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODES = ["vector", "matrix", "coop", "auto"]


def run_bench(bench: Path, model: str, mode: str, prompts: str, gen: int, threads: int, extra: list[str], env_extra: dict[str, str]) -> dict[str, float]:
    env = dict(os.environ, **env_extra, SMEPILOT_MODE=mode)
    cmd = [str(bench), "--backend", "smepilot", "-m", model, "-p", prompts, "-n", str(gen), "-r", "1", "-t", str(threads), "-o", "json", *extra]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"ablation: {' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    res = {}
    for r in json.loads(out.stdout):
        test = f"pp{r['n_prompt']}" if r["n_gen"] == 0 else f"tg{r['n_gen']}"
        res[test] = float(r["avg_ts"])
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--models", nargs="+", required=True)
    ap.add_argument("-p", default="16,512", help="prompt sizes (llama-bench -p)")
    ap.add_argument("-n", type=int, default=128, help="generated tokens (llama-bench -n)")
    ap.add_argument("-r", type=int, default=1, help="repetitions, modes interleaved in each")
    ap.add_argument("-t", type=int, default=2, help="threads")
    ap.add_argument("--bin-dir", default=str(REPO / "build" / "bin"))
    ap.add_argument("--out", help="also write the markdown table here")
    ap.add_argument("--env", action="append", default=[], metavar="VAR=VALUE", help="set for every run (repeatable)")
    ap.add_argument("extra", nargs="*", help="more llama-bench arguments (after --)")
    a = ap.parse_args()
    bench = Path(a.bin_dir) / "llama-bench"
    env_extra = {}
    for kv in a.env:
        var, eq, val = kv.partition("=")
        if not eq or not var.startswith("SMEPILOT_") or var == "SMEPILOT_MODE":
            sys.exit(f"ablation: --env {kv!r}: expected SMEPILOT_VAR=VALUE (not SMEPILOT_MODE, which the ablation sets)")
        env_extra[var] = val
    results: dict[tuple[str, str, str], list[float]] = {}
    for rep in range(a.r):
        for model in a.models:
            for mode in MODES[rep % len(MODES):] + MODES[:rep % len(MODES)]:
                print(f"ablation: rep {rep + 1}/{a.r} {Path(model).name} SMEPILOT_MODE={mode}", file=sys.stderr, flush=True)
                for test, ts in run_bench(bench, model, mode, a.p, a.n, a.t, a.extra, env_extra).items():
                    results.setdefault((Path(model).name, test, mode), []).append(ts)
    cells = sorted({(m, t) for (m, t, _) in results}, key=lambda c: (c[0], c[1].startswith("tg"), len(c[1]), c[1]))
    lines = [
        f"| model | test | {' | '.join(MODES)} | auto / best forced | paired | coop beats both |",
        "| --- | --- |" + " ---: |" * len(MODES) + " ---: | ---: | --- |",
    ]
    for model, test in cells:
        ts = {mode: statistics.median(results[(model, test, mode)]) for mode in MODES}
        best_mode = max(("vector", "matrix", "coop"), key=lambda m: ts[m])
        best_forced = ts[best_mode]
        # Paired: auto against the best forced mode of the same repetition (the two ran
        # minutes apart, so the host's drift cancels), median over repetitions.
        pairs = [x / y for x, y in zip(results[(model, test, "auto")], results[(model, test, best_mode)])]
        coop_wins = ts["coop"] > max(ts["vector"], ts["matrix"])
        lines.append(
            f"| {model} | {test} | " + " | ".join(f"{ts[m]:.2f}" for m in MODES)
            + f" | {ts['auto'] / best_forced:.3f} | {statistics.median(pairs):.3f} | {'yes' if coop_wins else 'no'} |"
        )
    setting = " ".join(f"{k}={v}" for k, v in env_extra.items()) or "default settings"
    lines.append(
        f"\n{a.r} repetition(s), medians, {a.t} threads, {setting}. paired: median over repetitions of"
        " auto / the best forced mode's figure of the same repetition."
    )
    table = "\n".join(lines)
    print(table)
    if a.out:
        Path(a.out).write_text(table + "\n")
        # Every repetition's figure, in run order per mode, beside the table.
        raw = [{"model": m, "test": t, "mode": mode, "ts": v} for (m, t, mode), v in sorted(results.items())]
        Path(a.out).with_suffix(".raw.json").write_text(json.dumps(raw, indent=1) + "\n")


if __name__ == "__main__":
    main()
