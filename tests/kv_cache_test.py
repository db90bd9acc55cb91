#!/usr/bin/env python3
"""The KV cache in SMEPilot's packed layout through llama-server: a slot saved to a file,
erased, overwritten by another prompt and restored continues with the tokens it gives
without the round trip. Bounded in time; stops the server itself."""
import argparse
import sys
import tempfile
from pathlib import Path

from llama_server import post, server

SERVER_LOG = Path(__file__).resolve().parent.parent / "build/test-work/kv-server.log"
PROMPT = "The GNU General Public License is a free, copyleft license for software and other kinds of works. The licenses for most software"
OTHER = "Once upon a time, in a land far away, there lived a dragon who"


def complete(base: str, prompt: str) -> dict:
    return post(base + "/completion", {"prompt": prompt, "n_predict": 24, "temperature": 0, "cache_prompt": True, "id_slot": 0})


def round_trip(base: str) -> bool:
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
        return False
    if got["content"] != ref["content"]:
        print("the restored slot continues differently")
        return False
    return True


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--model", required=True)
    a = ap.parse_args()
    slots = tempfile.mkdtemp(prefix="smepilot-slots-")
    try:
        with server(a.bin, a.model, SERVER_LOG, ["-c", "1024", "-np", "1", "-fa", "on", "--slot-save-path", slots]) as base:
            if not round_trip(base):
                return 1
    except RuntimeError as e:
        print(e)
        return 1
    served = open(SERVER_LOG).read()
    if "SMEPILOT_KV" not in served:
        print("the KV cache was not in SMEPilot's buffer")
        return 1
    print("ok: the slot's packed KV cache round-trips through a file")
    return 0


if __name__ == "__main__":
    sys.exit(main())
