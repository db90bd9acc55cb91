#!/usr/bin/env python3
"""llama-server --backend smepilot as a drop-in: answers /completion and
/v1/chat/completions on loopback. Bounded in time; stops the server itself."""
import argparse
import re
import sys
from pathlib import Path

from llama_server import post, server

SERVER_LOG = Path(__file__).resolve().parent.parent / "build/test-work/server.log"


def endpoints(base: str) -> bool:
    r = post(base + "/completion", {"prompt": "The three primary colors are", "n_predict": 16, "temperature": 0})
    text = r.get("content", "")
    print("/completion ->", repr(text))
    if len(text.strip()) == 0 or r.get("tokens_predicted", 0) < 1:
        print("empty completion")
        return False

    r = post(base + "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "Name one planet of the solar system."}],
        "max_tokens": 16, "temperature": 0})
    msg = r["choices"][0]["message"]["content"]
    print("/v1/chat/completions ->", repr(msg))
    if len(msg.strip()) == 0:
        print("empty chat answer")
        return False
    return True


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--model", required=True)
    a = ap.parse_args()
    try:
        with server(a.bin, a.model, SERVER_LOG, ["-c", "1024", "-np", "1"]) as base:
            if not endpoints(base):
                return 1
    except RuntimeError as e:
        print(e)
        return 1
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
