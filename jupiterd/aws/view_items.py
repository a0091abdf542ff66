"""A view item of the ha table as DynamoDB holds it (``jupiterd.aws.views``):
the verdicts it carries, their encoding, the checks of a peer's item, and
the sizes DynamoDB bills and limits items by."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jupiterd.core.quorum import ServiceVerdicts, TargetVerdict
from jupiterd.core.types import Role, Status

VIEW_PREFIX = "view#"
WHY_MAX = 500  # characters of `why` a reader keeps

_REPLICA = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SERVICE = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_STATUSES = frozenset(s.value for s in Status)
_ROLES = frozenset(r.value for r in Role)


# --------------------------------------------------------------------------- item size


def _number_bytes(n: str) -> int:
    digits = n.lstrip("+-").lower().split("e")[0].replace(".", "").strip("0")
    return (len(digits) + 1) // 2 + 1


def value_bytes(value: Mapping[str, Any]) -> int:
    """The size DynamoDB counts for one attribute value (its documented
    rules: UTF-8 strings, numbers about one byte per two significant digits
    plus one, three bytes and one per element for lists and maps)."""
    ((kind, v),) = value.items()
    if kind == "S":
        return len(v.encode())
    if kind == "N":
        return _number_bytes(v)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "L":
        return 3 + sum(1 + value_bytes(e) for e in v)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + value_bytes(e) for k, e in v.items())
    if kind == "B":
        return len(v)
    raise ValueError(f"no size rule for {kind}")


def item_bytes(item: Mapping[str, Mapping[str, Any]]) -> int:
    """An item's size as DynamoDB bills and limits it."""
    return sum(len(k.encode()) + value_bytes(v) for k, v in item.items())


def read_units(nbytes: int, *, consistent: bool = True) -> float:
    """On-demand read request units for ``nbytes`` read at once (one
    GetItem's item, or everything one Scan page read)."""
    units = float(max(1, math.ceil(nbytes / 4096)))
    return units if consistent else units / 2


def write_units(nbytes: int) -> float:
    """Write request units of one write of an item of ``nbytes``."""
    return float(max(1, math.ceil(nbytes / 1024)))


# --------------------------------------------------------------------------- encoding


def _time(t: float | None) -> dict[str, Any]:
    return {"NULL": True} if t is None else {"N": repr(float(t))}


def encode_services(services: Mapping[str, ServiceVerdicts]) -> dict[str, Any]:
    return {
        "M": {
            name: {
                "L": [
                    {"S": v.active},
                    {"S": v.primary.status},
                    _time(v.primary.since),
                    _time(v.primary.probed_at),
                    {"S": v.backup.status},
                    _time(v.backup.since),
                    _time(v.backup.probed_at),
                ]
            }
            for name, v in services.items()
        }
    }


def _s(value: Any, what: str) -> str:
    if not isinstance(value, dict) or set(value) != {"S"} or not isinstance(value["S"], str):
        raise ValueError(f"{what} is not a string")
    return value["S"]


def _n(value: Any, what: str) -> float:
    if not isinstance(value, dict) or set(value) != {"N"} or not isinstance(value["N"], str):
        raise ValueError(f"{what} is not a number")
    try:
        n = float(value["N"])
    except ValueError:
        raise ValueError(f"{what} is not a number") from None
    if not math.isfinite(n):
        raise ValueError(f"{what} is not finite")
    return n


def _opt_time(value: Any, what: str) -> float | None:
    if value == {"NULL": True}:
        return None
    return _n(value, what)


def _status(value: Any, what: str) -> str:
    s = _s(value, what)
    if s not in _STATUSES:
        raise ValueError(f"{what} is not a status")
    return s


def _verdicts(name: str, value: Any) -> ServiceVerdicts:
    if not isinstance(value, dict) or set(value) != {"L"} or not isinstance(value["L"], list):
        raise ValueError(f"service {name} is not a list")
    vals = value["L"]
    if len(vals) != 7:
        raise ValueError(f"service {name} has {len(vals)} values, not 7")
    active = _s(vals[0], f"{name}.active")
    if active not in _ROLES:
        raise ValueError(f"{name}.active is not a role")
    return ServiceVerdicts(
        active,
        TargetVerdict(
            _status(vals[1], f"{name}.primary"),
            _opt_time(vals[2], f"{name}.primary.since"),
            _opt_time(vals[3], f"{name}.primary.probed_at"),
        ),
        TargetVerdict(
            _status(vals[4], f"{name}.backup"),
            _opt_time(vals[5], f"{name}.backup.since"),
            _opt_time(vals[6], f"{name}.backup.probed_at"),
        ),
    )


@dataclass(frozen=True, slots=True)
class Published:
    """A view item as a peer wrote it, checked; freshness comes later."""

    replica: str
    seq: int
    published_at: float
    isolated: bool
    why: str
    services: Mapping[str, ServiceVerdicts]


def parse_view(item: Any) -> Published:
    """A view item, checked field by field (``ValueError`` says what is
    wrong). Unknown attributes are ignored; an overlong ``why`` is cut."""
    if not isinstance(item, dict):
        raise ValueError("not an item")
    pk = _s(item.get("pk"), "pk")
    replica = _s(item.get("replica"), "replica")
    if pk != VIEW_PREFIX + replica or not _REPLICA.fullmatch(replica):
        raise ValueError("replica does not match the key or is no replica id")
    seq_f = _n(item.get("seq"), "seq")
    if seq_f != int(seq_f) or not 0 < seq_f < 2**53:
        raise ValueError("seq is not a positive integer")
    isolated = item.get("isolated")
    if not isinstance(isolated, dict) or set(isolated) != {"BOOL"}:
        raise ValueError("isolated is not a boolean")
    why = _s(item["why"], "why") if "why" in item else ""
    services = item.get("services")
    if not isinstance(services, dict) or set(services) != {"M"}:
        raise ValueError("services is not a map")
    if not isinstance(services["M"], dict):
        raise ValueError("services is not a map")
    parsed: dict[str, ServiceVerdicts] = {}
    for name, value in services["M"].items():
        if not isinstance(name, str) or not _SERVICE.fullmatch(name):
            raise ValueError("a service name is not one")
        parsed[name] = _verdicts(name, value)
    return Published(
        replica=replica,
        seq=int(seq_f),
        published_at=_n(item.get("published_at"), "published_at"),
        isolated=bool(isolated["BOOL"]),
        why=why[:WHY_MAX],
        services=parsed,
    )
