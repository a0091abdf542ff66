"""Value types the schema shares: durations, host names, the strict base
model."""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from probes.options import quote

# --------------------------------------------------------------------------- value types

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# No timer or window of jupiterd is meant to be longer: a bigger number is a typo.
MAX_DURATION = 366 * 86400.0


def _finite_seconds(seconds: float) -> float:
    if not math.isfinite(seconds):
        raise ValueError("a duration must be a finite number of seconds")
    if seconds > MAX_DURATION:
        raise ValueError("a duration longer than a year is not accepted (a typo?)")
    return seconds


def parse_duration(value: Any) -> Any:
    """``2``, ``2.5``, ``"250ms"``, ``"2s"``, ``"10m"``, ``"1h30m"`` -> seconds.
    Infinite, NaN and longer-than-a-year values are refused."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '250ms', '2s', '10m'")
    if isinstance(value, int | float):
        try:
            return _finite_seconds(float(value))
        except OverflowError:  # an int too large for a float
            raise ValueError("a duration must be a finite number of seconds") from None
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        if re.fullmatch(r"\d+(\.\d+)?", text):
            return _finite_seconds(float(text))
        pos = 0
        total = 0.0
        for m in _DURATION_RE.finditer(text):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
            pos = m.end()
        if pos == len(text) and text:
            return _finite_seconds(total)
    raise ValueError(
        f"{quote(value)} is not a duration (use seconds, or e.g. '250ms', '2s', '10m', '1h')"
    )


Seconds = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
PositiveSeconds = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]


class Model(BaseModel):
    # allow_inf_nan=False: .inf, .nan, "inf" and "nan" are refused in every float.
    model_config = ConfigDict(
        extra="forbid", frozen=True, hide_input_in_errors=True, allow_inf_nan=False
    )


def is_loopback(host: str) -> bool:
    """``localhost``, all of 127.0.0.0/8 and ::1 (also bracketed or mapped)."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")
