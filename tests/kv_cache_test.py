#!/usr/bin/env python3
"""The KV cache in SMEPilot's packed layout through llama-server: a slot saved to a file,
erased, overwritten by another prompt and restored continues with the tokens it gives
without the round trip. Bounded in time; stops the server itself."""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

SERVER_LOG = Path(__file__).resolve().parent.parent / "build/test-work/kv-server.log"
PROMPT = "The GNU General Public License is a free, copyleft license for software and other kinds of works. The licenses for most software"
OTHER = "Once upon a time, in a land far away, there lived a dragon who"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict, timeout: float = 120) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def complete(base: str, prompt: str) -> dict:
    return post(base + "/completion", {"prompt": prompt, "n_predict": 24, "temperature": 0, "cache_prompt": True, "id_slot": 0})


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--model", required=True)
    a = ap.parse_args()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    slots = tempfile.mkdtemp(prefix="smepilot-slots-")
    SERVER_LOG.parent.mkdir(parents=True, exist_ok=True)
    log = open(SERVER_LOG, "w")
    srv = subprocess.Popen(
        [a.bin, "--backend", "smepilot", "-m", a.model, "--host", "127.0.0.1", "--port", str(port), "-c", "1024", "-np", "1",
         "-fa", "on", "--slot-save-path", slots, "-lv", "4"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "SMEPILOT_LOG": "info"})
    try:
        deadline = time.time() + 90
        while True:
            if srv.poll() is not None:
                print("server exited early with", srv.returncode)
                return 1
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                print("server not healthy within 90 s")
                return 1
            time.sleep(0.5)

        complete(base, PROMPT)
        # The reference: the same prompt again, its prefix read from the slot's cache.
        ref = complete(base, PROMPT)
        print("cached prompt    ->", repr(ref["content"]), "prompt tokens evaluated:", ref["timings"]["prompt_n"])
        saved = post(base + "/slots/0?action=save", {"filename": "slot0.bin"})
        print("saved", saved.get("n_saved"), "tokens,", saved.get("n_written"), "bytes")
        post(base + "/slots/0?action=erase", {})
        other = complete(base, OTHER)
        print("other prompt     ->", repr(other["content"]))
        restored = post(base + "/slots/0?action=restore", {"filename": "slot0.bin"})
        print("restored", restored.get("n_restored"), "tokens")
        got = complete(base, PROMPT)
        print("after restore    ->", repr(got["content"]), "prompt tokens evaluated:", got["timings"]["prompt_n"])
        if got["timings"]["prompt_n"] > 2:
            print("the restored cache was not used")
            return 1
        if got["content"] != ref["content"]:
            print("the restored slot continues differently")
            return 1
    finally:
        srv.terminate()
        try:
            srv.wait(timeout=20)
        except subprocess.TimeoutExpired:
            srv.kill()
        log.close()
    served = open(SERVER_LOG).read()
    if "SMEPILOT_KV" not in served:
        print("the KV cache was not in SMEPilot's buffer")
        return 1
    print("ok: the slot's packed KV cache round-trips through a file")
    return 0


if __name__ == "__main__":
    sys.exit(main())
