"""`jupiterd sandbox` from an installed package, away from any checkout.

The checkout is copied (so nothing is built inside it), built as a wheel
and installed into a virtual environment under the test's directory. The
environment sees the interpreter's own site-packages for the dependencies
(moto, python-socketio, aiohttp...) and builds with its setuptools, so
neither the build nor the install needs a package index;
jupiterd itself comes from the environment. The sandbox then runs every
drill from a directory outside the checkout, with nothing on PYTHONPATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("sandbox")]

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("signaling", "coturn", "frp", "thingsboard")


def _install(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for pkg in ("jupiterd", "probes"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}

    def run(*cmd: str | Path) -> None:
        r = subprocess.run(
            [str(c) for c in cmd],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stdout + r.stderr

    dist = tmp_path / "dist"
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--no-deps",
        "--no-index",
        "--no-build-isolation",  # this interpreter's setuptools and wheel (test extras)
        "--wheel-dir",
        dist,
        src,
    )
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--system-site-packages", venv)
    (wheel,) = dist.glob("jupiterd-*.whl")
    pip = (venv / "bin" / "python", "-m", "pip")
    run(*pip, "install", "--quiet", "--no-deps", "--no-index", wheel)
    shutil.rmtree(src)  # the installed copy is all there is
    return venv, env


@pytest.mark.timeout(420)  # a wheel build, then every drill (nat-both included)
def test_an_installed_package_runs_every_drill_outside_the_checkout(tmp_path):
    venv, env = _install(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.util, jupiterd.sandbox.peers as p; "
            "print(p.__file__); print(importlib.util.find_spec('tests'))",
        ],
        env=env,
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.returncode == 0, where.stderr
    peers_file, tests_spec = where.stdout.split()
    assert Path(peers_file).is_relative_to(venv), peers_file  # the installed copy
    assert tests_spec == "None"  # the test suite's peers are out of reach
    certs = Path(peers_file).parent / "certs"
    assert (certs / "frps-standin.crt").is_file() and (certs / "frps-standin.key").is_file()

    r = subprocess.run(
        [str(venv / "bin" / "jupiterd"), "sandbox", "--drill", "all"],
        env=env,
        cwd=elsewhere,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    summary = r.stdout[r.stdout.index("== summary") :]
    for service in SERVICES:
        assert f"drill {service}: PASSED" in r.stdout, summary
    assert "sandbox stopped: every process it started has exited" in r.stdout
