"""The Dockerfile: hadolint finds nothing, the build context holds what the
package build needs, and the image's settings agree with the code (config
path, state directory, port). Docker itself cannot run here; the
HEALTHCHECK command is run as-is against a loopback /healthz instead."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from jupiterd import cli
from jupiterd.config import Config, HttpConfig
from tests.conftest import need
from tests.peers import hostile

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


def _hadolint(path: Path, home: Path) -> subprocess.CompletedProcess[str]:
    # A private HOME: no user-level hadolint config may silence a rule.
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home)}
    return subprocess.run(
        [
            need("hadolint"),
            "--no-color",
            "--format",
            "json",
            "--failure-threshold",
            "style",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )


def test_hadolint_finds_nothing(tmp_path: Path) -> None:
    proc = _hadolint(DOCKERFILE, tmp_path)
    assert json.loads(proc.stdout or "[]") == [], proc.stdout
    assert proc.returncode == 0, proc.stderr


def test_hadolint_is_actually_checking(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\nCMD python -m http.server\n")
    proc = _hadolint(bad, tmp_path)
    codes = {f["code"] for f in json.loads(proc.stdout)}
    assert {"DL3006", "DL3013", "DL3042", "DL3025"} <= codes
    assert proc.returncode != 0


# --------------------------------------------------------------------------- reading it


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _final_stage() -> list[tuple[str, str]]:
    ins = _instructions()
    last = max(i for i, (word, _) in enumerate(ins) if word == "FROM")
    return ins[last:]


def _env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in stage:
        if word == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def test_pinned_slim_python_base() -> None:
    args = dict(a.split("=", 1) for w, a in _instructions() if w == "ARG" and "=" in a)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", args["PYTHON_IMAGE"])
    froms = [a for w, a in _instructions() if w == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]


def test_runs_as_a_non_root_user() -> None:
    users = [a for w, a in _final_stage() if w == "USER"]
    assert len(users) == 1
    uid, _, gid = users[0].partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit() and int(gid) > 0
    assert f"--uid {uid}" in " ".join(a for w, a in _final_stage() if w == "RUN")


def test_settings_agree_with_the_code() -> None:
    stage = _final_stage()
    env = _env(stage)
    assert env["JUPITERD_CONFIG"] == cli.DEFAULT_CONFIG
    port = HttpConfig().listen.rsplit(":", 1)[1]
    assert env["JUPITERD_HEALTHZ_URL"] == f"http://127.0.0.1:{port}/healthz"
    assert ("EXPOSE", port) in stage
    assert ("VOLUME", json.dumps([Config.model_fields["state_dir"].default])) in stage
    assert ("ENTRYPOINT", '["jupiterd"]') in stage
    assert ("CMD", '["run"]') in stage


def _healthcheck_argv() -> list[str]:
    checks = [a for w, a in _final_stage() if w == "HEALTHCHECK"]
    assert len(checks) == 1
    options, _, command = checks[0].partition("CMD ")
    for opt in ("--interval=", "--timeout=", "--start-period=", "--retries="):
        assert opt in options
    argv = json.loads(command)
    assert argv[:2] == ["python", "-c"]
    return [sys.executable, *argv[1:]]


class _Healthz(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        body = b"ok\n" if self.status == 200 else b"main loop has not run for 9.0s\n"
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def healthz() -> Iterator[tuple[str, type[_Healthz]]]:
    handler = type("H", (_Healthz,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/healthz", handler
    finally:
        server.shutdown()
        server.server_close()


def _run_check(url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "JUPITERD_HEALTHZ_URL": url}
    return subprocess.run(_healthcheck_argv(), capture_output=True, text=True, timeout=30, env=env)


def test_healthcheck_passes_on_200_and_fails_otherwise(
    healthz: tuple[str, type[_Healthz]],
) -> None:
    url, handler = healthz
    assert _run_check(url).returncode == 0
    handler.status = 503
    failed = _run_check(url)
    assert failed.returncode == 1
    assert "503" in failed.stderr
    closed = _run_check(f"http://127.0.0.1:{hostile.free_port()}/healthz")
    assert closed.returncode == 1


# --------------------------------------------------------------------------- the build context


def _ignored(rel: str, patterns: list[str]) -> bool:
    """.dockerignore semantics for the patterns used: the last match wins,
    and a pattern naming a directory covers everything below it."""
    result = False
    parts = rel.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pat in patterns:
        neg = pat.startswith("!")
        p = pat[1:] if neg else pat
        p = p.rstrip("/")
        forms = [p, p[3:]] if p.startswith("**/") else [p]
        if any(fnmatch.fnmatchcase(c, f) for c in candidates for f in forms):
            result = not neg
    return result


def _dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def test_build_context_holds_what_the_package_build_needs() -> None:
    patterns = _dockerignore()
    ins = _instructions()
    first, second = [i for i, (w, _) in enumerate(ins) if w == "FROM"]
    build = ins[first:second]
    copied = [
        src for w, a in build if w == "COPY" for src in a.split()[:-1] if not src.startswith("--")
    ]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    includes = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = sorted(
        p.name
        for p in ROOT.iterdir()
        if (p / "__init__.py").exists() and any(fnmatch.fnmatch(p.name, i) for i in includes)
    )
    assert packages == ["jupiterd", "probes"]
    needed = ["pyproject.toml", project["project"]["readme"], *packages]
    assert sorted(copied) == sorted(needed)
    for src in needed:
        assert (ROOT / src).exists()
        assert not _ignored(src, patterns), f"{src} is excluded by .dockerignore"
    for path in (ROOT / "jupiterd").rglob("*.py"):
        assert not _ignored(path.relative_to(ROOT).as_posix(), patterns)
    for other in (
        "tests/conftest.py",
        ".git/HEAD",
        "bench/probes.py",
        "jupiterd/__pycache__/x.pyc",
    ):
        assert _ignored(other, patterns), other


def test_runtime_stage_copies_existing_files() -> None:
    patterns = _dockerignore()
    for w, a in _final_stage():
        if w == "COPY" and "--from=" not in a:
            for src in a.split()[:-1]:
                assert (ROOT / src).is_file(), src
                assert not _ignored(src, patterns), src
