"""moto in server mode: a real AWS-shaped HTTP endpoint on loopback.

``moto_server()`` starts ``python -m moto.server`` on 127.0.0.1 and a free
port, waits until it answers, yields a ``MotoServer`` (its URL and the
environment a client needs: dummy credentials, region, no profile) and
kills it on exit. ``patch_env=True`` also puts those credentials into this
process's environment for the duration (boto3 reads them from there).
``start_moto()`` only starts it (quick, so on the thread that should own
the process: see ``die_with_parent``); ``wait_ready()`` and ``stop()`` follow.

As a script: ``python -m jupiterd.sandbox.peers.moto_server [--port N]`` prints
``ready 127.0.0.1:PORT`` and runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: find the jupiterd package
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from jupiterd.sandbox.peers.process import die_with_parent, free_port

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "ap-southeast-2",
}
# Variables that would send a client elsewhere than moto.
_UNSET = ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")


@dataclass
class MotoServer:
    url: str
    proc: subprocess.Popen[bytes]
    env: dict[str, str] = field(default_factory=dict)

    def wait_ready(self, timeout: float = 30.0) -> None:
        _wait_ready(self.url, self.proc, timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def reset(self) -> None:
        req = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()


def client_env(base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    for k in _UNSET:
        env.pop(k, None)
    env.update(CREDENTIALS)
    env["AWS_CONFIG_FILE"] = os.devnull
    env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    return env


@contextlib.contextmanager
def credentials_in_environment() -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(client_env(saved))
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=1) as r:
                r.read()
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.05)
    raise RuntimeError(f"moto server at {url} did not answer within {timeout:g}s")


def start_moto(host: str = "127.0.0.1", *, parent_death_signal: int | None = None) -> MotoServer:
    """Start moto on ``host`` and a free port without waiting for it;
    ``parent_death_signal``: the signal it gets when this process dies."""
    port = free_port(host=host)
    env = client_env()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=None if parent_death_signal is None else die_with_parent(parent_death_signal),
    )
    return MotoServer(f"http://{host}:{port}", proc, env)


@contextlib.contextmanager
def moto_server(
    host: str = "127.0.0.1", *, patch_env: bool = False, timeout: float = 30.0
) -> Iterator[MotoServer]:
    server = start_moto(host)
    try:
        server.wait_ready(timeout)
        if patch_env:
            with credentials_in_environment():
                yield server
        else:
            yield server
    finally:
        server.stop()


def main() -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    args = p.parse_args()
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with moto_server(args.host) as server:
        print(f"ready {server.url.removeprefix('http://')}", flush=True)
        while not stop:
            time.sleep(0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
