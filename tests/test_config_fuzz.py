"""Fuzzing the configuration loader: a seeded mutator over the shipped and the
test configurations. Every case ends in a ``Config`` or a one-sentence
``ConfigError`` naming the file, within bounded memory (tracemalloc peak) and
without hanging (a generous alarm, a hang detector, not a timing goal); a
few dozen go through a real ``check-config`` process (exit 0 or 78, no
traceback, under a memory rlimit)."""

from __future__ import annotations

import contextlib
import math
import random
import resource
import signal
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from jupiterd.config import Config, ConfigError, load_config

HERE = Path(__file__).parent
ROOT = HERE.parent
SEEDS = sorted((ROOT / "config").glob("*.yaml")) + sorted((HERE / "configs" / "bad").glob("*.yaml"))
SECRETS = {
    "JUPITERD_TURN_SECRET": "fuzz-turn-secret",
    "JUPITERD_FRP_TOKEN": "fuzz-frp-token",
    "JUPITERD_TB_PASSWORD": "fuzz-tb-password",
}

# A service the daemon could run, as the tests write them (loopback only).
LOOPBACK = yaml.safe_dump(
    {
        "aws": {"enabled": False},
        "http": {"listen": "127.0.0.1:9478"},
        "state_dir": "state",
        "log": {"format": "json"},
        "defaults": {"interval": 0.2, "fast_interval": 0.05, "timeout": 0.1, "jitter": 0},
        "guards": {"isolation": {"fraction": 0.5, "window": "10s"}},
        "services": {
            "signaling": {
                "probe": {"kind": "tcp", "port": 3000},
                "primary": {"address": "127.0.0.2"},
                "backup": {"address": "127.0.0.3"},
                "thresholds": {"cooldown": "10m", "jitter": 0.2},
            },
            "coturn": {
                "probe": {"kind": "turn", "options": {"secret": {"env": "JUPITERD_TURN_SECRET"}}},
                "primary": {"address": "127.0.0.2"},
            },
        },
    }
).encode()

# Values a careless edit or a hostile file puts where a scalar was.
VALUES = [
    ".inf",
    "-.inf",
    ".nan",
    ".NaN",
    "inf",
    "nan",
    "1e400",
    "-1e400",
    "9" * 400,
    "9" * 5000,
    "0x" + "f" * 300,
    "[]",
    "{}",
    "[a, b]",
    "{a: 1}",
    "null",
    "~",
    "true",
    "''",
    '"\\x00"',
    "{env: [JUPITERD_TURN_SECRET]}",
    "{env: NOT_SET_ANYWHERE_XYZ}",
    "{file: /nonexistent/secret}",
    "{file: /dev/zero}",
    "{file: [a]}",
    "*undefined",
    "!!python/object/apply:os.system [echo]",
    "!!timestamp nonsense",
    "!!bool maybe",
    "!!int nope",
    "!!float nope",
    "!!binary '%%%'",
    "!!set [1]",
    "2001-13-45",
    "2001-02-29 25:61:61",
    "!!omap [1, 2]",
    "&x [*x]",
    "'" + "A" * 5000 + "'",
    "250ms",
    "-1s",
    "1h30m",
    "1e308d",
]

BOMB = "\n".join(
    [
        "x0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]",
        *(f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)),
        "",
    ]
)


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")


def _scalar_swap(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    idx = [
        i for i, line in enumerate(lines) if b": " in line and not line.lstrip().startswith(b"#")
    ]
    if not idx:
        return data
    i = rng.choice(idx)
    head = lines[i].split(b": ", 1)[0]
    lines[i] = head + b": " + rng.choice(VALUES).encode()
    return b"\n".join(lines)


def _type_swap(rng: random.Random, data: bytes) -> bytes:
    """A block mapping's key given a scalar, a list or a flow mapping instead."""
    lines = _lines(data)
    idx = [i for i, line in enumerate(lines) if line.rstrip().endswith(b":")]
    if not idx:
        return _scalar_swap(rng, data)
    i = rng.choice(idx)
    lines[i] = lines[i].rstrip() + b" " + rng.choice([b"1", b"[1, 2]", b"{a: b}", b"x", b"[]"])
    return b"\n".join(lines)


def _flip(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if b:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    return bytes(b)


def _insert_bytes(rng: random.Random, data: bytes) -> bytes:
    junk = rng.choice([b"\xff", b"\xc3\x28", b"\x00", b"\xed\xa0\x80", b"\t", b"\x1b[31m", b"\r"])
    at = rng.randrange(len(data) + 1)
    return data[:at] + junk + data[at:]


def _truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data) + 1)]


def _delete_line(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    del lines[rng.randrange(len(lines))]
    return b"\n".join(lines)


def _duplicate_line(rng: random.Random, data: bytes) -> bytes:
    """Also duplicates keys: a key line repeated under its own parent."""
    lines = _lines(data)
    i = rng.randrange(len(lines))
    lines.insert(i, lines[i])
    return b"\n".join(lines)


def _swap_lines(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    lines[i], lines[j] = lines[j], lines[i]
    return b"\n".join(lines)


def _deep(rng: random.Random, data: bytes) -> bytes:
    n = rng.choice([50, 200, 1000, 5000, 20000])
    deep = rng.choice([b"[" * n + b"]" * n, b"{a: " * n + b"1" + b"}" * n, b"- " * n + b"x"])
    if rng.random() < 0.5:
        return deep + b"\n"
    lines = _lines(data)
    idx = [i for i, line in enumerate(lines) if b": " in line] or [0]
    i = rng.choice(idx)
    lines[i] = lines[i].split(b": ", 1)[0] + b": " + deep
    return b"\n".join(lines)


def _alias_bomb(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    idx = [i for i, line in enumerate(lines) if b": " in line and not line.startswith(b" ")]
    idx = idx or [0]
    level = rng.randint(3, 8)
    i = rng.choice(idx)
    body = _lines(data)
    if b": " in body[i]:
        body[i] = body[i].split(b": ", 1)[0] + b": *a" + str(level).encode()
    return BOMB.encode() + b"\n".join(body)


def _alias(rng: random.Random, data: bytes) -> bytes:
    """An ordinary anchor and alias (or merge key), sometimes a cycle."""
    snippet = rng.choice(
        [
            b"anchors: &base {interval: 2s, fall: 3}\n",
            b"x: &self [*self]\n",
            b"x: &m {a: 1}\ny: {<<: [*m, *m, *m]}\n",
        ]
    )
    return snippet + data


def _huge(rng: random.Random, data: bytes) -> bytes:
    what = rng.choice([b"a" * 2_000_000, b"#" + b"x" * 1_200_000 + b"\n", b"k: v\n" * 250_000])
    return data + b"\n" + what


MUTATORS: list[Callable[[random.Random, bytes], bytes]] = [
    _scalar_swap,
    _scalar_swap,
    _scalar_swap,
    _type_swap,
    _type_swap,
    _flip,
    _insert_bytes,
    _truncate,
    _delete_line,
    _duplicate_line,
    _duplicate_line,
    _swap_lines,
    _deep,
    _alias_bomb,
    _alias,
]


def cases(seed: int, n: int, *, huge: bool = True) -> Iterator[bytes]:
    rng = random.Random(seed)
    good = [p.read_bytes() for p in SEEDS if p.parent.name == "config"] + [LOOPBACK]
    bad = [p.read_bytes() for p in SEEDS if p.parent.name == "bad"]
    for i in range(n):
        # Mostly valid files (one mutation from valid reaches deepest).
        data = rng.choice(good if rng.random() < 0.75 else bad)
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            data = rng.choice(MUTATORS)(rng, data)
        if huge and i % 500 == 0:
            data = _huge(rng, data)
        yield data


class Hung(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise Hung


# Bounds a case must hold. Generous: a valid example peaks at about 3 MiB.
PEAK_BYTES = 64 * 1024 * 1024
HANG_SECONDS = 20


def check_one(path: Path, data: bytes, *, traced: bool = True) -> str:
    """Load ``data`` from ``path``: 'ok' or 'error', or an AssertionError
    saying what went wrong. ``traced``: measure the peak with tracemalloc."""
    path.write_bytes(data)
    if traced:
        tracemalloc.start()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(HANG_SECONDS)
    try:
        cfg = load_config(str(path))
    except ConfigError as exc:
        msg = str(exc)
        assert msg.startswith(f"{path}: "), msg[:300]
        assert "\n" not in msg, msg[:300]
        assert len(msg) < len(str(path)) + 400, f"{len(msg)} characters: {msg[:300]}"
        for secret in SECRETS.values():
            assert secret not in msg, msg
        result = "error"
    except Hung:
        raise AssertionError(f"no answer after {HANG_SECONDS} s") from None
    else:
        assert isinstance(cfg, Config)
        _assert_finite(cfg.model_dump(), "")
        for name in cfg.services:
            _assert_finite(cfg.thresholds(name).model_dump(), f"services.{name}.thresholds")
        result = "ok"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        peak = tracemalloc.get_traced_memory()[1] if traced else 0
        if traced:
            tracemalloc.stop()
    assert peak < PEAK_BYTES, f"peak {peak} bytes"
    return result


# tracemalloc slows allocation about tenfold: every case that could build
# something big (anchors, deep nesting, long input) and one in eight of the rest.
RISKY = (b"&", b"[[[[", b"{a: {a: ", b"- - - - ")


def traced(i: int, data: bytes) -> bool:
    return i % 8 == 0 or len(data) > 100_000 or any(m in data for m in RISKY)


@contextlib.contextmanager
def address_space_limit(extra: int) -> Iterator[None]:
    """Every case also runs under an address-space limit: whatever
    tracemalloc does not see (pydantic-core's own allocations) is bounded too."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            used = int(line.split()[1]) * 1024
    limit = used + extra
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _assert_finite(value: object, key: str) -> None:
    """A loaded configuration holds no infinite or NaN number anywhere."""
    if isinstance(value, float):
        assert math.isfinite(value), f"{key} is {value}"
    elif isinstance(value, dict):
        for k, v in value.items():
            _assert_finite(v, f"{key}.{k}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _assert_finite(v, f"{key}.{i}")


N_CASES = 2500


@pytest.mark.slow
def test_mutated_configs_load_or_fail_with_a_sentence(tmp_path, monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("NOT_SET_ANYWHERE_XYZ", raising=False)
    path = tmp_path / "fuzz.yaml"
    failures: list[str] = []
    results = {"ok": 0, "error": 0}
    with address_space_limit(768 * 1024 * 1024):
        for i, data in enumerate(cases(1111, N_CASES)):
            try:
                results[check_one(path, data, traced=traced(i, data))] += 1
            except (Exception, RecursionError, MemoryError) as exc:  # every escape is a finding
                failures.append(f"case {i}: {type(exc).__name__}: {str(exc)[:200]}")
    assert not failures, f"{len(failures)} of {N_CASES} cases failed:\n" + "\n".join(failures[:30])
    # The mutator reaches both ends: valid files and each kind of refusal.
    assert results["ok"] > 50 and results["error"] > 1000, results


def _limit_memory() -> None:
    limit = 1024 * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


@pytest.mark.slow
def test_mutated_configs_through_check_config(tmp_path):
    env = {**__import__("os").environ, **SECRETS}
    failures = []
    codes = set()
    for i, data in enumerate(cases(2222, 24, huge=False)):
        path = tmp_path / f"case{i}.yaml"
        path.write_bytes(data)
        r = subprocess.run(
            [sys.executable, "-m", "jupiterd", "check-config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            preexec_fn=_limit_memory,
        )
        codes.add(r.returncode)
        if r.returncode not in (0, 78) or "Traceback" in r.stderr:
            failures.append(f"case {i}: exit {r.returncode}: {r.stderr[-300:]}")
        elif r.returncode == 78 and r.stderr.count("\n") != 1:
            failures.append(f"case {i}: not one line: {r.stderr[:300]}")
    assert not failures, "\n".join(failures)
    assert codes == {0, 78}
