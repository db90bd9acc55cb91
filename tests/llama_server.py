"""Starting and stopping llama-server --backend smepilot on loopback for the tests."""
import json
import os
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict, timeout: float = 120) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


@contextmanager
def server(binary: str, model: str, log_path, extra: list):
    """Yields the base URL of a healthy server (SMEPILOT_LOG=info, -lv 4, output in
    log_path), or raises RuntimeError; stops the server on exit."""
    with server_process(binary, model, log_path, extra) as (base, _):
        yield base


@contextmanager
def server_process(binary: str, model: str, log_path, extra: list, backend: str = "smepilot", env: dict = None):
    """As `server`, on the given backend, with `env` added to the environment; yields the
    base URL and the process."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "w")
    srv = subprocess.Popen(
        [binary, "--backend", backend, "-m", model, "--host", "127.0.0.1", "--port", str(port), "-lv", "4", *extra],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "SMEPILOT_LOG": "info", **(env or {})})
    try:
        deadline = time.time() + 90
        while True:
            if srv.poll() is not None:
                raise RuntimeError(f"server exited early with {srv.returncode}")
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError("server not healthy within 90 s")
            time.sleep(0.5)
        yield base, srv
    finally:
        srv.terminate()
        try:
            srv.wait(timeout=20)
        except subprocess.TimeoutExpired:
            srv.kill()
        log.close()
