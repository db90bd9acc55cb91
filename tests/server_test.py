#!/usr/bin/env python3
"""llama-server --backend smepilot as a drop-in: answers /completion and
/v1/chat/completions on loopback. Bounded in time; stops the server itself."""
import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

SERVER_LOG = Path(__file__).resolve().parent.parent / "build/test-work/server.log"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict, timeout: float = 120) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--model", required=True)
    a = ap.parse_args()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(SERVER_LOG, "w")
    srv = subprocess.Popen(
        [a.bin, "--backend", "smepilot", "-m", a.model, "--host", "127.0.0.1", "--port", str(port), "-c", "1024", "-np", "1", "-lv", "4"],
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

        r = post(base + "/completion", {"prompt": "The three primary colors are", "n_predict": 16, "temperature": 0})
        text = r.get("content", "")
        print("/completion ->", repr(text))
        if len(text.strip()) == 0 or r.get("tokens_predicted", 0) < 1:
            print("empty completion")
            return 1

        r = post(base + "/v1/chat/completions", {
            "messages": [{"role": "user", "content": "Name one planet of the solar system."}],
            "max_tokens": 16, "temperature": 0})
        msg = r["choices"][0]["message"]["content"]
        print("/v1/chat/completions ->", repr(msg))
        if len(msg.strip()) == 0:
            print("empty chat answer")
            return 1
    finally:
        srv.terminate()
        try:
            srv.wait(timeout=20)
        except subprocess.TimeoutExpired:
            srv.kill()
        log.close()
    served = open(SERVER_LOG).read()
    counts = [int(n) for n in re.findall(r"(\d+) nodes computed by SMEPilot", served)]
    print("SMEPilot node counts in the server log:", counts)
    if not any(counts):
        print("no graph nodes ran in SMEPilot")
        return 1
    print("ok: both endpoints answered with SMEPilot loaded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
