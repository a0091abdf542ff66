"""The standbys' last readiness drills, in ``state_dir/readiness.json``:
what ``jupiterd status`` and a restarted daemon show (last verified time,
measured boot and app-healthy seconds) and what the alerts' gauges start
from. One JSON object, ``{"services": {name: drill}}``; each drill as
``WarmResult.to_dict`` gives it, validated when read (damage is moved aside
like any state file and reads as no record)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from jupiterd.state import statefile
from jupiterd.state.statefile import Damaged, Invalid

NAME = "readiness.json"
MAX_BYTES = 1 << 20
_NUMBERS = ("at", "seconds")
_OPTIONAL_NUMBERS = ("boot_seconds", "healthy_seconds", "verified_at", "verified_rto_seconds")


def _parse(data: bytes) -> dict[str, dict[str, Any]]:
    doc = statefile.loads(data)
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict):
        raise Invalid("not an object with 'services'")
    out: dict[str, dict[str, Any]] = {}
    for name, d in doc["services"].items():
        if not isinstance(d, dict):
            raise Invalid(f"the drill of {name!r} is not an object")
        for key in ("result", "detail"):
            statefile.text_field(d, key, 1 << 14)
        for key in _NUMBERS:
            statefile.number_field(d, key)
        for key in _OPTIONAL_NUMBERS:
            if d.get(key) is not None:
                statefile.number_field(d, key)
        out[str(name)] = d
    return out


def load(state_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The last drill per service (empty: none, or the file was damaged)."""
    try:
        found = statefile.read(Path(state_dir) / NAME, statefile.READINESS, _parse, MAX_BYTES)
    except Damaged:
        return {}
    return found or {}


def save(
    state_dir: str | os.PathLike[str], service: str, drill: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Record ``service``'s latest drill; ``verified_at`` (the last drill
    that passed) carries over from the previous record when this one did
    not pass. Returns every service's record as written. Raises OSError."""
    known = load(state_dir)
    previous = known.get(service, {})
    entry = {k: v for k, v in drill.items() if k != "steps"}
    if entry.get("result") == "passed":
        entry["verified_at"] = entry["at"]
        entry["verified_rto_seconds"] = entry.get("rto_budget_seconds")
    else:
        entry["verified_at"] = previous.get("verified_at")
        entry["verified_rto_seconds"] = previous.get("verified_rto_seconds")
    known[service] = entry
    Path(state_dir).mkdir(mode=0o750, parents=True, exist_ok=True)
    data = json.dumps({"services": known}, indent=1, sort_keys=True).encode()
    statefile.write_atomic(Path(state_dir) / NAME, data)
    return known
