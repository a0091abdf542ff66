"""The container image, built and run: not only linted.

The image is built with podman from this tree the way CI can build it
offline (tests/image/make-base.sh makes the Dockerfile's PYTHON_IMAGE from
Debian packages; pip inside the build reaches the package index). `podman
run` cannot start containers on these machines, so the built file system is
mounted (`podman mount` of a created container) and its entrypoint is run
with chroot as the image's user, with the image's environment, in a network
namespace of its own: its HTTP port and probes stay on that namespace's
loopback.

Skipped, with the reason, where podman or debootstrap is missing or the
suite does not run as root.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAKE_BASE = ROOT / "tests" / "image" / "make-base.sh"
BASE_IMAGE = "localhost/jupiterd-base:bookworm"
STATE_DIR = "/var/lib/jupiterd"
IMAGE_UID = 10001

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("image")]


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "building and mounting the image needs root (podman, chroot, ip netns)"
    for tool in ("podman", "debootstrap", "chroot", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (.ci/run installs podman and debootstrap)"
    return None


def _run(*argv: str, timeout: float = 600, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)


def _podman(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return _run("podman", *argv, timeout=timeout)


def build(tag: str, dockerfile: Path = ROOT / "Dockerfile") -> subprocess.CompletedProcess[str]:
    """`podman build` of this tree as CI does it, against the local base."""
    return _podman(
        "build",
        "--isolation=chroot",
        "--network",
        "host",
        "--format",
        "docker",
        "--build-arg",
        f"PYTHON_IMAGE={BASE_IMAGE}",
        "-f",
        str(dockerfile),
        "-t",
        tag,
        str(ROOT),
    )


def inspect(tag: str) -> dict[str, Any]:
    proc = _podman("image", "inspect", tag)
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)[0]
    return doc


@dataclass
class Rootfs:
    """A created (never started) container's file system, mounted writable."""

    path: Path
    config: dict[str, Any]  # the image's Config: Env, User, Entrypoint, Cmd...

    def env(self, **extra: str) -> list[str]:
        env = dict(e.split("=", 1) for e in self.config["Env"])
        env.update(extra)
        return [f"{k}={v}" for k, v in env.items()]

    def argv(self, argv: list[str], netns: str | None = None) -> list[str]:
        """`argv` as the image's user with the image's environment only."""
        user = self.config["User"]
        cmd = ["chroot", f"--userspec={user}", str(self.path), "/usr/bin/env", "-i"]
        cmd += self.env()
        cmd += argv
        return ["ip", "netns", "exec", netns, *cmd] if netns else cmd

    def run(self, argv: list[str], netns: str | None = None) -> subprocess.CompletedProcess[str]:
        return _run(*self.argv(argv, netns), timeout=60)


@contextlib.contextmanager
def mounted(tag: str) -> Iterator[Rootfs]:
    name = f"jupiterd-test-{uuid.uuid4().hex[:8]}"
    created = _podman("create", "--name", name, tag)
    assert created.returncode == 0, created.stderr
    try:
        mnt = _podman("mount", name)
        assert mnt.returncode == 0, mnt.stderr
        yield Rootfs(Path(mnt.stdout.strip()), inspect(tag)["Config"])
    finally:
        _podman("umount", name)
        _podman("rm", "--force", name)


def writable_by(root: Path, uid: int, gid: int) -> list[str]:
    """Every path of the image that `uid:gid` may write to, apart from the
    kernel's mount points and the sticky world-writable temporary folders
    every Debian system has (/tmp, /var/tmp, /run/lock)."""
    skip = {"/proc", "/sys", "/dev"}
    sticky_ok = {"/tmp", "/var/tmp", "/run/lock"}

    def rel(path: str) -> str:
        r = os.path.relpath(path, root)
        return "/" if r == "." else "/" + r

    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if rel(os.path.join(dirpath, d)) not in skip]
        for path in [dirpath, *(os.path.join(dirpath, f) for f in filenames)]:
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                continue
            mode = st.st_mode
            can = (
                (st.st_uid == uid and mode & stat.S_IWUSR)
                or (st.st_gid == gid and mode & stat.S_IWGRP)
                or mode & stat.S_IWOTH
            )
            name = rel(path)
            if can and not (name in sticky_ok and mode & stat.S_ISVTX):
                found.append(name)
    return sorted(set(found))


@contextlib.contextmanager
def netns() -> Iterator[str]:
    name = f"jdimg{os.getpid()}{uuid.uuid4().hex[:4]}"
    added = _run("ip", "netns", "add", name)
    if added.returncode != 0:
        pytest.skip(f"ip netns is not possible here: {added.stderr.strip()}")
    try:
        _run("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        _run("ip", "netns", "del", name)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def base_image() -> str:
    why = _missing()
    if why:
        pytest.skip(why)
    if _podman("image", "exists", BASE_IMAGE).returncode != 0:
        made = _run("bash", str(MAKE_BASE), BASE_IMAGE, timeout=900)
        assert made.returncode == 0, made.stderr[-3000:]
    return BASE_IMAGE


@pytest.fixture(scope="module")
def image(base_image: str) -> Iterator[str]:
    tag = f"localhost/jupiterd:test-{uuid.uuid4().hex[:8]}"
    built = build(tag)
    assert built.returncode == 0, (built.stdout + built.stderr)[-4000:]
    yield tag
    _podman("rmi", "--force", tag)


@pytest.fixture
def rootfs(image: str) -> Iterator[Rootfs]:
    with mounted(image) as fs:
        yield fs


# --------------------------------------------------------------------------- the image's settings


def test_image_settings_and_size(image: str, capsys: pytest.CaptureFixture[str]) -> None:
    doc = inspect(image)
    cfg = doc["Config"]
    assert cfg["User"] == f"{IMAGE_UID}:{IMAGE_UID}"
    assert cfg["Entrypoint"] == ["jupiterd"]
    assert cfg["Cmd"] == ["run"]
    assert list(cfg["Volumes"]) == [STATE_DIR]
    env = dict(e.split("=", 1) for e in cfg["Env"])
    assert env["JUPITERD_CONFIG"] == "/etc/jupiterd/jupiterd.yaml"
    assert env["JUPITERD_HEALTHZ_URL"] == "http://127.0.0.1:9478/healthz"
    check = doc["Healthcheck"]
    assert check["Test"][0] == "CMD"
    assert "JUPITERD_HEALTHZ_URL" in check["Test"][-1]
    # Within its retries the check has to outlast a slow start.
    assert check["Timeout"] < check["Interval"]
    size_mb = doc["Size"] / 1e6
    with capsys.disabled():
        sys.stderr.write(f"\nimage size: {size_mb:.0f} MB ({image})\n")
    assert size_mb < 600, f"the image grew to {size_mb:.0f} MB"


def test_state_dir_is_the_only_place_the_user_can_write(rootfs: Rootfs) -> None:
    st = (rootfs.path / STATE_DIR.lstrip("/")).stat()
    assert (st.st_uid, st.st_gid) == (IMAGE_UID, IMAGE_UID)
    assert stat.S_IMODE(st.st_mode) == 0o750
    assert writable_by(rootfs.path, IMAGE_UID, IMAGE_UID) == [STATE_DIR]


# --------------------------------------------------------------------------- it runs


def test_version_and_shipped_examples(rootfs: Rootfs) -> None:
    from jupiterd import __version__ as version  # the one version source

    proc = rootfs.run([*rootfs.config["Entrypoint"], "--version"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"jupiterd {version}"
    # The full example names its probe secrets by environment variable.
    secrets = ["JUPITERD_TURN_SECRET=x", "JUPITERD_FRP_TOKEN=x", "JUPITERD_TB_PASSWORD=x"]
    for example in ("jupiter.example.yaml", "minimal.yaml"):
        path = f"/usr/share/doc/jupiterd/{example}"
        argv = ["/usr/bin/env", *secrets, *rootfs.config["Entrypoint"], "check-config", path]
        proc = rootfs.run(argv)
        assert proc.returncode == 0, (example, proc.stdout, proc.stderr)
        assert "OK" in proc.stdout


MONITOR_ONLY = """\
# Monitor-only, everything on the namespace's loopback: the daemon probes
# its own HTTP port.
aws: {enabled: false}
state_dir: /var/lib/jupiterd
log: {format: json}
services:
  self:
    probe: {kind: tcp, port: 9478}
    primary: {address: 127.0.0.1}
    backup: {address: 127.0.0.2}
"""


def _healthcheck(rootfs: Rootfs, ns: str, test: list[str]) -> int:
    assert test[0] == "CMD"
    return rootfs.run(test[1:], netns=ns).returncode


def test_run_and_healthcheck_as_the_image_user(image: str, rootfs: Rootfs) -> None:
    (rootfs.path / "etc/jupiterd/jupiterd.yaml").write_text(MONITOR_ONLY)
    check = inspect(image)["Healthcheck"]["Test"]
    proc_dir = rootfs.path / "proc"
    subprocess.run(["mount", "-t", "proc", "proc", str(proc_dir)], check=True)
    try:
        with netns() as ns:
            argv = rootfs.argv([*rootfs.config["Entrypoint"], *rootfs.config["Cmd"]], ns)
            daemon = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            try:
                healthy = 1
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and daemon.poll() is None:
                    healthy = _healthcheck(rootfs, ns, check)
                    if healthy == 0:
                        break
                    time.sleep(0.3)
                assert daemon.poll() is None, daemon.communicate()
                assert healthy == 0, "the HEALTHCHECK never passed while jupiterd ran"
                status = Path(f"/proc/{daemon.pid}/status").read_text()
                # ip netns exec -> chroot -> env -> python: the daemon is the last exec.
                uid_line = re.search(r"^Uid:\s+(\d+)", status, re.M)
                assert uid_line and int(uid_line.group(1)) == IMAGE_UID
                probe = rootfs.run(
                    [
                        "python",
                        "-c",
                        "import urllib.request as u; print(u.urlopen("
                        "'http://127.0.0.1:9478/status', timeout=4).read().decode())",
                    ],
                    netns=ns,
                )
                assert probe.returncode == 0, probe.stderr
                assert json.loads(probe.stdout)["services"]["self"]
            finally:
                daemon.send_signal(signal.SIGTERM)
                try:
                    _, err = daemon.communicate(timeout=20)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    _, err = daemon.communicate()
            assert daemon.returncode == 0, err[-2000:]
            assert _healthcheck(rootfs, ns, check) != 0, "healthy after SIGTERM"
    finally:
        subprocess.run(["umount", "-l", str(proc_dir)], check=False)


# ---------------------------------------------------------------- a broken Dockerfile is caught


def test_a_wrong_copy_path_fails_the_build(base_image: str, image: str, tmp_path: Path) -> None:
    text = (ROOT / "Dockerfile").read_text()
    broken = tmp_path / "Dockerfile"
    assert "COPY probes ./probes" in text
    broken.write_text(text.replace("COPY probes ./probes", "COPY probe ./probes"))
    proc = build(f"localhost/jupiterd:broken-{uuid.uuid4().hex[:8]}", broken)
    assert proc.returncode != 0
    assert 'COPY probe ./probes": ' in proc.stderr, proc.stderr[-2000:]
    assert "no such file or directory" in proc.stderr


def test_a_wrong_state_dir_owner_is_caught(base_image: str, image: str, tmp_path: Path) -> None:
    text = (ROOT / "Dockerfile").read_text()
    line = "chown jupiterd:jupiterd /var/lib/jupiterd"
    assert line in text
    broken = tmp_path / "Dockerfile"
    broken.write_text(text.replace(line, "chown root:root /var/lib/jupiterd"))
    tag = f"localhost/jupiterd:owner-{uuid.uuid4().hex[:8]}"
    proc = build(tag, broken)
    assert proc.returncode == 0, proc.stderr[-3000:]
    try:
        with mounted(tag) as fs:
            assert writable_by(fs.path, IMAGE_UID, IMAGE_UID) != [STATE_DIR]
    finally:
        _podman("rmi", "--force", tag)
