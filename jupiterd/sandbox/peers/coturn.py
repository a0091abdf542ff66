"""The real coturn ``turnserver`` on loopback, for tests and the sandbox.

``coturn()`` is a context manager that starts one ``turnserver`` process on
a free port (the same number for UDP and TCP), waits until it answers a STUN
Binding over UDP and accepts TCP, yields a ``Coturn`` with its address and
credentials, and kills its process group on exit, also when the test fails.

coturn accepts static long-term users (``--lt-cred-mech --user``) or the TURN
REST API (``--use-auth-secret --static-auth-secret``) but not both at once:
with a shared secret it derives every key from it and ignores static users
(``get_user_key`` in src/apps/relay/userdb.c), so pass either ``user`` or
``secret`` and start two instances when a test needs both.

Everything coturn opens is on loopback (or, inside a network namespace a test
creates, tests/peers/netns.py, on RFC 2544's 198.18.0.0/15): ``--listening-ip``
and ``--relay-ip`` are the given address, TLS, DTLS, the CLI and RFC 5780's second
port are off, the relay ports come from a range checked free below the
kernel's ephemeral range, and ``-n`` keeps it away from /etc/turnserver.conf.
Its SQLite database, pid file and log live in a temporary directory. coturn
runs as whoever starts it (root included): it drops privileges only when
given ``--proc-user``.

As a script (the sandbox runs it as a service process)::

    python -m jupiterd.sandbox.peers.coturn --host 127.0.0.2 --port 3478 [--user u:p] [--secret s]

prints ``ready <host>:<port>`` once coturn answers and runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: find the jupiterd package
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from jupiterd.sandbox.peers.process import die_with_parent

BINARY = "turnserver"
DEFAULT_REALM = "jupiter.test"
DEFAULT_USER = ("jupiter", "pilot-light")
RELAY_PORTS = 64
_PORT_FLOOR, _PORT_CEILING = 20000, 32000  # below Linux's ephemeral range (32768-60999)


@dataclass(frozen=True)
class Coturn:
    host: str
    port: int
    realm: str
    user: str | None
    password: str | None
    secret: str | None
    relay_ports: tuple[int, int]
    log_path: Path
    proc: subprocess.Popen[bytes] = field(repr=False, compare=False)

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def running(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def _free_on_both(host: str, port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def free_port_pair(host: str) -> int:
    """A port free for both TCP and UDP on ``host``."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if _free_on_both(host, port):
            return port
    raise RuntimeError(f"no port free for both TCP and UDP on {host}")


def free_relay_range(host: str, count: int = RELAY_PORTS) -> tuple[int, int]:
    """``count`` consecutive UDP ports free now, away from ephemeral ports."""
    rng = random.Random()
    for _ in range(200):
        start = rng.randrange(_PORT_FLOOR, _PORT_CEILING - count)
        socks: list[socket.socket] = []
        try:
            for p in range(start, start + count):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind((host, p))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return start, start + count - 1
    raise RuntimeError(f"no {count} consecutive free UDP ports on {host}")


def binding_answered(host: str, port: int, timeout: float) -> bool:
    """One bare STUN Binding request over UDP (RFC 5389 section 6), built by
    hand so readiness does not depend on the code under test."""
    txid = os.urandom(12)
    request = struct.pack("!HHI12s", 0x0001, 0, 0x2112A442, txid)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(request, (host, port))
            data = s.recv(2048)
        except OSError:
            return False
    return len(data) >= 20 and data[:2] == b"\x01\x01" and data[8:20] == txid


def _tcp_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


# RFC 2544's benchmarking range: only in network namespaces tests create
# (tests/peers/netns.py), never a real network.
_BENCH_NET = ipaddress.ip_network("198.18.0.0/15")


def _check_loopback(host: str) -> None:
    if ":" in host:
        raise ValueError(f"coturn must listen on an IPv4 loopback address, not {host}")
    ip = ipaddress.ip_address(host)
    if not (ip.is_loopback or ip in _BENCH_NET):
        raise ValueError(f"coturn must listen on an IPv4 loopback address, not {host}")


def command(
    binary: str,
    host: str,
    port: int,
    relay: tuple[int, int],
    workdir: Path,
    realm: str,
    user: tuple[str, str] | None,
    secret: str | None,
) -> list[str]:
    args = [
        binary,
        "-n",  # no configuration file: ignore /etc/turnserver.conf
        "--listening-ip", host,
        "--relay-ip", host,
        "--listening-port", str(port),
        "--min-port", str(relay[0]),
        "--max-port", str(relay[1]),
        "--no-tls",
        "--no-dtls",
        "--no-cli",
        "--no-rfc5780",
        "--relay-threads", "1",
        "--log-file", str(workdir / "turnserver.log"),
        "--simple-log",
        "--no-stdout-log",
        "--db", str(workdir / "turndb.sqlite"),
        "--pidfile", str(workdir / "turnserver.pid"),
        "--realm", realm,
        "--fingerprint",
        "--verbose",  # log each request and session end: tests read the log
    ]  # fmt: skip
    if secret is not None:
        args += ["--use-auth-secret", "--static-auth-secret", secret]
    elif user is not None:
        args += ["--lt-cred-mech", "--user", f"{user[0]}:{user[1]}"]
    else:
        args += ["--lt-cred-mech"]  # challenges every Allocate; nobody can pass
    return args


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill coturn (the process group it leads, if it leads one), politely first."""
    if proc.poll() is not None:
        return

    def send(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)

    send(signal.SIGTERM)
    try:
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        proc.wait(timeout=3)


def _wait_ready(proc: subprocess.Popen[bytes], host: str, port: int, limit: float) -> bool:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        if binding_answered(host, port, 0.1) and _tcp_accepts(host, port):
            return True
        time.sleep(0.02)
    return False


@contextlib.contextmanager
def coturn(
    host: str = "127.0.0.1",
    port: int | None = None,
    *,
    user: tuple[str, str] | None = DEFAULT_USER,
    secret: str | None = None,
    realm: str = DEFAULT_REALM,
    binary: str | None = None,
    ready_timeout: float = 10.0,
    new_session: bool = True,
    parent_death_signal: int | None = None,
) -> Iterator[Coturn]:
    """Run ``turnserver`` on ``host`` (loopback only); ``secret`` wins over ``user``.
    ``parent_death_signal``: the signal turnserver gets when this process dies
    (call from the main thread: see ``die_with_parent``)."""
    _check_loopback(host)
    exe = binary or shutil.which(BINARY)
    if exe is None:
        raise FileNotFoundError(f"{BINARY} is not installed (Debian package coturn)")
    preexec = None if parent_death_signal is None else die_with_parent(parent_death_signal)
    with tempfile.TemporaryDirectory(prefix="coturn-") as tmp:
        workdir = Path(tmp)
        log_path = workdir / "turnserver.log"
        for attempt in range(3):  # a port may be taken between the check and coturn's bind
            listen = port or free_port_pair(host)
            relay = free_relay_range(host)
            proc = subprocess.Popen(
                command(exe, host, listen, relay, workdir, realm, user, secret),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                # In script mode turnserver stays in the script's process
                # group, so killing that group (a simulated crash) kills it.
                start_new_session=new_session,
                preexec_fn=preexec,
            )
            try:
                if _wait_ready(proc, host, listen, ready_timeout):
                    break
                _stop(proc)
                if port is not None or attempt == 2:
                    tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
                    raise RuntimeError(f"turnserver did not come up on {host}:{listen}:\n{tail}")
            except BaseException:
                _stop(proc)
                raise
        static = secret is None and user is not None
        try:
            yield Coturn(
                host=host,
                port=listen,
                realm=realm,
                user=user[0] if static and user else None,
                password=user[1] if static and user else None,
                secret=secret,
                relay_ports=relay,
                log_path=log_path,
                proc=proc,
            )
        finally:
            _stop(proc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run coturn on loopback until SIGTERM.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--user", default=None, help="NAME:PASSWORD (long-term credentials)")
    parser.add_argument("--secret", default=None, help="TURN REST API shared secret")
    parser.add_argument("--realm", default=DEFAULT_REALM)
    args = parser.parse_args(argv)
    try:
        _check_loopback(args.host)
    except ValueError as exc:
        parser.error(str(exc))
    user: tuple[str, str] | None = None
    if args.user is not None:
        name, sep, password = args.user.partition(":")
        if not sep or not name:
            parser.error("--user expects NAME:PASSWORD")
        user = (name, password)
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with coturn(
        args.host,
        args.port,
        user=user,
        secret=args.secret,
        realm=args.realm,
        new_session=False,
        # Killed with this script, even by SIGKILL (the sandbox's kill of
        # its services): turnserver must not outlive it.
        parent_death_signal=signal.SIGKILL,
    ) as server:
        print(f"ready {server.host}:{server.port}", flush=True)
        while not stop:
            if not server.running():
                print("turnserver exited unexpectedly", file=sys.stderr)
                return 1
            time.sleep(0.1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
