"""Loading: a file or a parsed document in, a validated ``Config`` or one
``ConfigError`` out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

import probes
from jupiterd.config.defaults import HEARTBEAT_KINDS
from jupiterd.config.errors import ConfigError
from jupiterd.config.pools import expand_pools
from jupiterd.config.reader import MAX_FILE_BYTES, FileTooLarge, _parse_yaml, read_bounded
from jupiterd.config.schema import _SNS_ARN, _TG_ARN, Config, ServiceConfig
from jupiterd.config.secrets import _is_secret_field, _resolve_secret
from probes.options import OptionError, quote


def _heartbeat_kinds() -> frozenset[str]:
    return HEARTBEAT_KINDS


def _check_probe(name: str, svc: ServiceConfig, secrets: bool = True) -> ServiceConfig:
    """Validate the probe's options with its kind's model, secrets resolved."""
    kind = probes.get_kind(svc.probe.kind)
    base = f"pools.{svc.pool}.probe" if svc.pool else f"services.{name}.probe"
    if kind.target_style == "host" and svc.probe.port is not None:
        raise ConfigError(None, f"{base}.port", f"an {kind.name} probe has no port")
    if kind.target_style == "host" and svc.probe.watch:
        raise ConfigError(None, f"{base}.watch", f"an {kind.name} target has no port to watch")
    if svc.probe.heartbeat not in (None, False) and kind.name not in _heartbeat_kinds():
        raise ConfigError(
            None, f"{base}.heartbeat", f"a {kind.name} probe has no heartbeat (nothing to ask)"
        )
    if kind.target_style == "hostport" and svc.probe.port is None and kind.default_port is None:
        raise ConfigError(None, f"{base}.port", f"a {kind.name} probe needs a port")
    raw = dict(svc.probe.options) if isinstance(svc.probe.options, Mapping) else {}
    for key, value in raw.items():
        if _is_secret_field(kind.options, key):
            raw[key] = _resolve_secret(value, f"{base}.options.{key}", secrets)
    try:
        parsed = kind.parse_options(raw)
    except OptionError as exc:
        key = f"{base}.options.{exc.key}" if exc.key else f"{base}.options"
        msg = str(exc)
        if exc.key and msg.startswith(f"option '{exc.key}': "):
            msg = msg[len(f"option '{exc.key}': ") :]
        raise ConfigError(None, key, msg) from None
    probe = svc.probe.model_copy(update={"options": parsed})
    return svc.model_copy(update={"probe": probe})


# What each identifier pattern means, for error messages a person can act on.
_PATTERN_HELP = {
    _TG_ARN: "expected a target group ARN "
    "(arn:aws:elasticloadbalancing:REGION:ACCOUNT:targetgroup/NAME/ID)",
    _SNS_ARN: "expected an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME)",
    r"^i-[0-9a-f]{8,17}$": "expected an EC2 instance id (i-0123456789abcdef0)",
    r"^eipalloc-[0-9a-f]{8,17}$": "expected an Elastic IP allocation id (eipalloc-...)",
    r"^rtb-[0-9a-f]{8,17}$": "expected a route table id (rtb-...)",
    r"^(/hostedzone/)?[A-Za-z0-9]{1,32}$": (
        "expected a Route 53 hosted zone id (Z0123456789ABC, letters and digits)"
    ),
}


def _format_validation_error(exc: ValidationError) -> tuple[str, str]:
    errors = exc.errors(include_input=False, include_url=False)
    err = errors[0]
    # pydantic names union branches in the location ("dict[str,any]",
    # "ProbeOptions"); they mean nothing to the person editing the file.
    loc = [quote(str(p), 64)[1:-1] for p in err["loc"]]
    while len(loc) > 1 and ("[" in loc[-1] or loc[-1][:1].isupper()):
        loc.pop()
    key = ".".join(loc) or "(top level)"
    msg = err["msg"]
    ctx = err.get("ctx") or {}
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "required key is missing"
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    elif err["type"] == "string_pattern_mismatch":
        msg = _PATTERN_HELP.get(str(ctx.get("pattern")), msg)
    elif key == "services" and err["type"] == "too_short":
        msg = "at least one service is required"
    elif key.endswith(".options") and err["type"] in ("dict_type", "model_type"):
        msg = "must be a mapping of option names to values"
    return key, msg


def parse_config(
    doc: Any, path: str | None = None, *, secrets: bool = True, http_token: bool | None = None
) -> Config:
    """Validate an already-parsed YAML document. ``secrets=False`` leaves
    ``{env:}``/``{file:}`` secret references unread (placeholders); the API
    token follows ``secrets`` unless ``http_token`` says otherwise (pause
    and resume need it, not the probe secrets). Raises ``ConfigError`` and
    nothing else."""
    try:
        return _parse_config(doc, path, secrets, http_token)
    except ConfigError:
        raise
    except Exception as exc:  # a validator's defect must not escape as a traceback
        raise ConfigError(path, None, f"cannot be validated ({type(exc).__name__})") from None


def _parse_config(doc: Any, path: str | None, secrets: bool, http_token: bool | None) -> Config:
    if not isinstance(doc, Mapping):
        raise ConfigError(path, None, "the file must be a YAML mapping with a 'services' key")
    token = secrets if http_token is None else http_token
    try:
        cfg = Config.model_validate(doc, context={"http_token": token})
    except ValidationError as exc:
        key, msg = _format_validation_error(exc)
        raise ConfigError(path, key, msg) from None
    try:
        cfg = expand_pools(cfg, doc)
        services = {name: _check_probe(name, svc, secrets) for name, svc in cfg.services.items()}
        for i, drill in enumerate(cfg.drills):
            for s in drill.services:
                if s != "*" and s not in cfg.services:
                    raise ConfigError(None, f"drills.{i}.services", f"no service named {quote(s)}")
        for name in cfg.services:
            try:
                cfg.thresholds(name)
            except ValidationError as exc:
                _, msg = _format_validation_error(exc)
                pool = cfg.services[name].pool
                where = f"pools.{pool}" if pool else f"services.{name}"
                raise ConfigError(None, f"{where}.thresholds", msg) from None
    except ConfigError as exc:
        raise ConfigError(path, exc.key, exc.message) from None
    return cfg.model_copy(update={"services": services})


def load_config(path: str, *, secrets: bool = True, http_token: bool | None = None) -> Config:
    """The configuration in ``path``, or a ``ConfigError`` (and nothing
    else) with one sentence naming the file."""
    try:
        data = read_bounded(path, MAX_FILE_BYTES)
    except FileNotFoundError:
        raise ConfigError(path, None, "no such file (set --config or JUPITERD_CONFIG)") from None
    except FileTooLarge:
        raise ConfigError(
            path, None, f"larger than {MAX_FILE_BYTES // 1048576} MiB: not a configuration file"
        ) from None
    except OSError as exc:
        raise ConfigError(
            path, None, f"cannot read: {exc.strerror or type(exc).__name__}"
        ) from None
    except ValueError:  # a NUL in the path
        raise ConfigError(path, None, "cannot read: not a valid path") from None
    doc = _parse_yaml(data, path)
    if doc is None:
        raise ConfigError(
            path, None, "the file is empty (expected a mapping with a 'services' key)"
        )
    return parse_config(doc, path, secrets=secrets, http_token=http_token)
