"""Defaults that depend on a probe's kind."""

from __future__ import annotations

# --------------------------------------------------------------------------- defaults by kind
# Kinds watched by an idle connection unless the service's probe says otherwise.
WATCH_BY_DEFAULT = frozenset({"tcp", "http", "socketio", "thingsboard"})
# Kinds with a heartbeat unless the service's probe says otherwise.
HEARTBEAT_KINDS = frozenset({"http", "thingsboard", "socketio", "frp", "stun", "turn", "icmp"})
