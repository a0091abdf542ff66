"""Command lines for peers run as processes (``jupiterd.sandbox.peers.process.Peer``).

``python_peer("coturn.py", ...)`` finds the script among the test-only peers
here or among the stand-ins the sandbox ships (``jupiterd/sandbox/peers/``);
``node_peer("sio_server.js", ...)`` runs one of the Node peers.
"""

from __future__ import annotations

import sys
from pathlib import Path

from jupiterd.sandbox.peers.process import PEERS as SANDBOX_PEERS

ROOT = Path(__file__).resolve().parent.parent.parent
PEERS = Path(__file__).resolve().parent


def python_peer(script: str, *args: str) -> list[str]:
    path = PEERS / script
    if not path.exists():
        path = SANDBOX_PEERS / script
    return [sys.executable, str(path), *args]


def node_peer(script: str, *args: str) -> list[str]:
    return ["node", str(PEERS / "node" / script), *args]
