#!/usr/bin/env python3
"""llama-server under concurrent load, SMEPilot (SMEPILOT_BATCH_INVARIANT=1) against stock
(`--backend cpu`) under the same load, one after the other:

- `-np 4` (continuous batching, a cache stream per slot), 200 requests from a fixed seed,
  at most 32 in flight: prompts of 16 to 1,500 tokens (text from the corpus), 16 to 256
  generated tokens, through `/completion` and `/v1/chat/completions` (streaming and not)
  and `/v1/completions`;
- ten probe prompts at temperature 0, first alone on the idle server, then again among the
  load (spread over it, prompt cache off): their texts must be the same (batch
  invariance);
- the server's RSS after the 20th answer and at the end.

Passes when SMEPilot answers every request, the server is still up, every probe gives its
text alone, and its RSS grew from the 20th answer to the end by no more than stock's
growth plus 5 points. Prints failures, p50 / p99 latency and tokens/s for both.
"""
import argparse
import json
import random
import re
import statistics
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from llama_server import post, server_process

WORK = Path(__file__).resolve().parent.parent / "build/test-work"
N_REQUESTS, IN_FLIGHT, N_PROBES = 200, 32, 10
CHARS_PER_TOKEN = 4  # about, for English text and this tokenizer


def workload(corpus: str, seed: int = 7) -> list:
    rng = random.Random(seed)
    kinds = ["completion", "completion-stream", "chat", "chat-stream", "v1-completions"]
    reqs = []
    for i in range(N_REQUESTS):
        tokens = int(round(16 * (1500 / 16) ** rng.random()))  # 16 .. 1500, log-uniform
        start = rng.randrange(0, len(corpus) - tokens * CHARS_PER_TOKEN)
        reqs.append({"kind": kinds[i % len(kinds)], "prompt": corpus[start:start + tokens * CHARS_PER_TOKEN], "n": rng.randint(16, 256)})
    return reqs


def probes(corpus: str) -> list:
    return [corpus[2000 + 2500 * i: 2000 + 2500 * i + 200 + 150 * i] for i in range(N_PROBES)]


def sse(r):
    """The data objects of a server-sent event stream."""
    for line in r:
        line = line.decode().strip()
        if line.startswith("data: ") and line != "data: [DONE]":
            yield json.loads(line[6:])


def send(base: str, req: dict) -> dict:
    """Runs one request; returns its latency, generated tokens and text (raises on error)."""
    kind, n, prompt = req["kind"], req["n"], req["prompt"]
    common = {"temperature": req.get("temperature", 0.8), "seed": 1}
    if "cache_prompt" in req:
        common["cache_prompt"] = req["cache_prompt"]
    t0 = time.time()
    if kind in ("completion", "completion-stream"):
        body = {"prompt": prompt, "n_predict": n, "stream": kind.endswith("stream"), **common}
        url = base + "/completion"
    elif kind in ("chat", "chat-stream"):
        body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": n, "stream": kind.endswith("stream"), **common}
        url = base + "/v1/chat/completions"
    else:
        body = {"prompt": prompt, "max_tokens": n, **common}
        url = base + "/v1/completions"
    if not body.get("stream"):
        r = post(url, body, timeout=600)
        if kind == "completion":
            text, toks = r["content"], r["tokens_predicted"]
        elif kind == "chat":
            text, toks = r["choices"][0]["message"]["content"], r["usage"]["completion_tokens"]
        else:
            text, toks = r["choices"][0]["text"], r["usage"]["completion_tokens"]
        return {"latency": time.time() - t0, "tokens": toks, "text": text}
    hreq = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    text, toks, done = "", 0, False
    with urllib.request.urlopen(hreq, timeout=600) as r:
        for ev in sse(r):
            if kind == "completion-stream":
                text += ev.get("content", "")
                toks += 1 if ev.get("content") else 0
                if ev.get("stop"):
                    toks, done = ev.get("tokens_predicted", toks), True
            else:
                ch = ev["choices"][0] if ev.get("choices") else {}
                piece = (ch.get("delta") or {}).get("content") or ""
                text += piece
                toks += 1 if piece else 0
                done |= ch.get("finish_reason") is not None
    if not done:
        raise RuntimeError("the stream ended without a finish")
    return {"latency": time.time() - t0, "tokens": toks, "text": text}


def rss_kb(pid: int) -> int:
    """The process's resident set in KiB; 0 once it is gone."""
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run(binary: str, model: str, backend: str, corpus: str) -> dict:
    log = WORK / f"server-load-{backend}.log"
    out = {"backend": backend, "failures": 0, "errors": []}
    # SMEPilot in its batch-invariant form (the probes' check); stock has none.
    env = {"SMEPILOT_BATCH_INVARIANT": "1"} if backend == "smepilot" else {}
    with server_process(binary, model, log, ["-c", "8192", "-np", "4", "-fa", "on"], backend, env) as (base, proc):
        probe_reqs = [{"kind": "completion", "prompt": p, "n": 32, "temperature": 0, "cache_prompt": False} for p in probes(corpus)]
        try:
            alone = [send(base, r)["text"] for r in probe_reqs]
        except Exception as e:  # noqa: BLE001 - the idle server failed a probe
            raise RuntimeError(f"a probe failed on the idle server: {e}") from e
        reqs = workload(corpus)
        # The probes among the load: every 20th place.
        for i, pr in enumerate(probe_reqs):
            reqs.insert(10 + i * 21, dict(pr, probe=i))
        lock = threading.Lock()
        done, rss = [0], {}
        results = [None] * len(reqs)

        def one(i: int):
            try:
                results[i] = send(base, reqs[i])
            except Exception as e:  # noqa: BLE001 - every failure is counted and shown
                results[i] = {"error": f"{reqs[i]['kind']}: {e}"}
            with lock:
                done[0] += 1
                if done[0] == 20:
                    rss["at20"] = rss_kb(proc.pid)

        t0 = time.time()
        with ThreadPoolExecutor(IN_FLIGHT) as pool:
            list(pool.map(one, range(len(reqs))))
        wall = time.time() - t0
        out["alive"] = proc.poll() is None
        rss["end"] = rss_kb(proc.pid) if out["alive"] else 0
    ok = [r for r in results if "error" not in r]
    out["errors"] = [r["error"] for r in results if "error" in r]
    out["failures"] = len(out["errors"])
    lat = sorted(r["latency"] for r in ok)
    out["p50"] = statistics.median(lat) if lat else 0
    out["p99"] = lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else 0
    out["tok_s"] = sum(r["tokens"] for r in ok) / wall
    out["wall"] = wall
    out["rss20"], out["rss_end"] = rss.get("at20", 0), rss["end"]
    out["growth"] = 100.0 * (out["rss_end"] - out["rss20"]) / out["rss20"] if out["rss20"] else float("inf")
    under = [results[i]["text"] if "error" not in results[i] else None for i, r in enumerate(reqs) if "probe" in r]
    out["probes_same"] = sum(a == b for a, b in zip(alone, under))
    out["probe_diffs"] = [(i, alone[i][:60], (under[i] or "")[:60]) for i in range(N_PROBES) if alone[i] != under[i]]
    served = open(log).read()
    out["smepilot_nodes"] = re.search(r"[1-9]\d* nodes computed by SMEPilot", served) is not None
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--corpus", default="/usr/share/common-licenses/GPL-3")
    a = ap.parse_args()
    corpus = open(a.corpus).read()
    res = {}
    for backend in ("smepilot", "cpu"):
        print(f"[server-load] {backend}: {N_REQUESTS} requests and {N_PROBES} probes, at most {IN_FLIGHT} in flight ...", flush=True)
        try:
            res[backend] = run(a.bin, a.model, backend, corpus)
        except RuntimeError as e:
            print(f"{backend}: {e}")
            return 1
        r = res[backend]
        print(f"  failures {r['failures']}, server alive {r['alive']}, wall {r['wall']:.0f} s, p50 {r['p50']:.2f} s, p99 {r['p99']:.2f} s, "
              f"{r['tok_s']:.1f} generated tokens/s, RSS {r['rss20'] / 1024:.0f} MiB after the 20th answer -> {r['rss_end'] / 1024:.0f} MiB "
              f"({r['growth']:+.1f}%), probes with their text alone {r['probes_same']}/{N_PROBES}", flush=True)
        for e in r["errors"][:5]:
            print("  error:", e)
        for d in r["probe_diffs"][:3]:
            print("  probe %d alone %r, under load %r" % d)
    s, c = res["smepilot"], res["cpu"]
    print(f"| backend | failures | p50 s | p99 s | tokens/s | RSS growth | probes same |")
    for r in (s, c):
        print(f"| {r['backend']} | {r['failures']} | {r['p50']:.2f} | {r['p99']:.2f} | {r['tok_s']:.1f} | {r['growth']:+.1f}% | {r['probes_same']}/{N_PROBES} |")
    problems = []
    if not (s["rss20"] and s["rss_end"] and c["rss20"] and c["rss_end"]):
        problems.append("an RSS sample is missing (a server stopped?)")
    if s["failures"] or not s["alive"]:
        problems.append("SMEPilot's server failed requests or stopped")
    if not s["smepilot_nodes"]:
        problems.append("no graph nodes ran in SMEPilot")
    if s["growth"] > c["growth"] + 5.0:
        problems.append(f"RSS grew {s['growth']:.1f}%, more than stock's {c['growth']:.1f}% + 5 points")
    if s["probes_same"] != N_PROBES:
        problems.append("a probe's text changed under load")
    for p in problems:
        print("FAIL:", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
