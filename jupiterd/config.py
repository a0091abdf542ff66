"""The configuration: YAML in, typed frozen models out, or one clear error.

Defaults, then decode, then validate (blackbox_exporter's order). Unknown
keys are rejected everywhere. Every error names the file and the key path
(``services.coturn.probe.options.secret``) and never quotes a secret's value.
``load_config`` is pure apart from reading the file and resolving secrets
from the environment or secret files; ``check-config`` and SIGHUP reloads use
it before anything else changes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

import probes
from probes.options import OptionError, ProbeOptions, parse_hostport

# --------------------------------------------------------------------------- errors


class ConfigError(Exception):
    """An invalid configuration. ``str()`` is the whole message for the user."""

    def __init__(self, path: str | None, key: str | None, message: str) -> None:
        self.path = path
        self.key = key
        self.message = message
        where = f"{path}: " if path else ""
        at = f"{key}: " if key else ""
        super().__init__(f"{where}{at}{message}")


# --------------------------------------------------------------------------- value types

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> Any:
    """``2``, ``2.5``, ``"250ms"``, ``"2s"``, ``"10m"``, ``"1h30m"`` -> seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '250ms', '2s', '10m'")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        if re.fullmatch(r"\d+(\.\d+)?", text):
            return float(text)
        pos = 0
        total = 0.0
        for m in _DURATION_RE.finditer(text):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
            pos = m.end()
        if pos == len(text) and text:
            return total
    raise ValueError(
        f"'{value}' is not a duration (use seconds, or e.g. '250ms', '2s', '10m', '1h')"
    )


Seconds = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
PositiveSeconds = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


# --------------------------------------------------------------------------- sections


class AwsConfig(Model):
    # false: monitor only. Instances are taken from this file (primary
    # running, backup stopped), nothing calls AWS, and a due failover is
    # logged and reported but not carried out.
    enabled: bool = True
    region: str = "ap-southeast-2"
    # A custom endpoint (moto, a VPC endpoint). AWS_ENDPOINT_URL works too.
    endpoint_url: str | None = None
    # botocore's standard retry mode: throttling and 5xx retried with backoff.
    max_attempts: int = Field(default=8, ge=1, le=20)
    connect_timeout: PositiveSeconds = 3.0
    read_timeout: PositiveSeconds = 10.0


class HttpConfig(Model):
    # /metrics, /status and /healthz. Loopback by default: exposing it beyond
    # the host (for a remote Prometheus) is a deliberate choice, and the
    # pause/resume API then needs a firewall in front of it.
    listen: str = "127.0.0.1:9478"

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        try:
            parse_hostport(v, None)
        except OptionError as exc:
            raise ValueError(str(exc)) from None
        return v


class LogConfig(Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    # auto: readable lines on a terminal, JSON lines otherwise (journald).
    format: Literal["auto", "json", "console"] = "auto"


class Thresholds(Model):
    """How a target's health and a service's failover are decided."""

    interval: PositiveSeconds = 2.0  # between probes of a healthy (or settled-down) target
    fast_interval: PositiveSeconds = 0.25  # between probes while a target is changing state
    timeout: PositiveSeconds = 1.0  # one probe's budget
    jitter: float = Field(default=0.1, ge=0, le=0.5)  # +/- share of the interval, spreads load
    fall: int = Field(default=3, ge=1, le=100)  # consecutive failures to go DOWN
    rise: int = Field(default=2, ge=1, le=100)  # consecutive successes to go UP
    min_down: Seconds = 0.0  # and failing for at least this long
    failover_after: Seconds = 0.0  # the active instance DOWN this long starts a failover
    cooldown: Seconds = 600.0  # no automatic failover of a service this long after one
    max_failovers_per_hour: int = Field(default=2, ge=0, le=60)  # 0: never automatic
    start_timeout: PositiveSeconds = 300.0  # standby reaching `running`
    healthy_timeout: PositiveSeconds = 300.0  # standby passing `rise` probes after that
    drain_timeout: PositiveSeconds = 300.0  # old target deregistration in target groups
    target_healthy_timeout: PositiveSeconds = 300.0  # new target healthy in target groups

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.fast_interval > self.interval:
            raise ValueError(
                f"fast_interval ({self.fast_interval:g}s) must not exceed "
                f"interval ({self.interval:g}s)"
            )
        if self.timeout > self.interval:
            raise ValueError(
                f"timeout ({self.timeout:g}s) must not exceed interval ({self.interval:g}s): "
                "probes of one target never overlap"
            )
        return self


class ThresholdOverrides(Model):
    """Per-service overrides; unset keys come from `defaults`."""

    interval: PositiveSeconds | None = None
    fast_interval: PositiveSeconds | None = None
    timeout: PositiveSeconds | None = None
    jitter: float | None = Field(default=None, ge=0, le=0.5)
    fall: int | None = Field(default=None, ge=1, le=100)
    rise: int | None = Field(default=None, ge=1, le=100)
    min_down: Seconds | None = None
    failover_after: Seconds | None = None
    cooldown: Seconds | None = None
    max_failovers_per_hour: int | None = Field(default=None, ge=0, le=60)
    start_timeout: PositiveSeconds | None = None
    healthy_timeout: PositiveSeconds | None = None
    drain_timeout: PositiveSeconds | None = None
    target_healthy_timeout: PositiveSeconds | None = None


class IsolationGuard(Model):
    """Act on nothing when many services fail at once: the monitor's own
    network is then the likelier fault (Route 53's many checkers,
    orchestrator's holistic detection)."""

    enabled: bool = True
    # Hold when at least `min_services` services, and more than `fraction` of
    # all services, have their active instance failing within `window`.
    min_services: int = Field(default=2, ge=2)
    fraction: float = Field(default=0.5, gt=0, lt=1)
    window: PositiveSeconds = 10.0


class GuardsConfig(Model):
    isolation: IsolationGuard = IsolationGuard()
    # Start paused: watch and report, never act (also `jupiterd pause`).
    paused: bool = False
    # An instance carrying this tag (any value) pauses its service.
    maintenance_tag: str = "jupiterd:maintenance"


class InstanceRef(Model):
    """One EC2 instance of a service. Without `instance_id`, it is found by
    the tags Project=<project_tag>, Service=<service>, Role=<role>. Without
    `address`, its private IP is read from EC2 at start."""

    instance_id: str | None = Field(default=None, pattern=r"^i-[0-9a-f]{8,17}$")
    address: str | None = None

    @field_validator("address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v is not None and (not v or "/" in v or " " in v):
            raise ValueError(f"'{v}' is not a host name or IP address")
        return v


class Route53Record(Model):
    zone_id: str = Field(pattern=r"^(/hostedzone/)?Z[A-Z0-9]{1,32}$")
    name: str = Field(min_length=1)
    type: Literal["A", "AAAA"] = "A"
    # Which of the instance's addresses the record points at.
    address: Literal["private", "public"] = "private"
    # Kept as the record has it when omitted.
    ttl: int | None = Field(default=None, ge=0, le=172800)


_TG_ARN = (
    r"^arn:aws[a-z-]*:elasticloadbalancing:[a-z0-9-]+:\d{12}:targetgroup/[A-Za-z0-9-]+/[0-9a-f]+$"
)
_SNS_ARN = r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}$"


class TargetGroupRef(Model):
    arn: str = Field(pattern=_TG_ARN)
    port: int | None = Field(default=None, ge=1, le=65535)  # the target's port; TG default if unset


def _target_group(value: Any) -> Any:
    return {"arn": value} if isinstance(value, str) else value


class Attachments(Model):
    """Where the service's traffic enters; moved to the standby on failover."""

    target_groups: list[Annotated[TargetGroupRef, BeforeValidator(_target_group)]] = []
    elastic_ip: str | None = Field(default=None, pattern=r"^eipalloc-[0-9a-f]{8,17}$")
    route53: list[Route53Record] = []
    # The 0.0.0.0/0 route of each table points at the active NAT instance.
    route_tables: list[Annotated[str, Field(pattern=r"^rtb-[0-9a-f]{8,17}$")]] = []


class HeartbeatConfig(Model):
    """A cheap message on a kept link to a healthy target (jupiterd/heartbeat.py)."""

    interval: PositiveSeconds = 0.1  # between heartbeats
    # This many unanswered in a row (interval x multiplier of silence) start
    # the confirmation probes; never a DOWN by itself.
    multiplier: int = Field(default=3, ge=1, le=100)


class ProbeConfig(Model):
    kind: str
    # The port probed on each instance's address; the kind's default if unset.
    port: int | None = Field(default=None, ge=1, le=65535)
    # Validated by the kind's own options model after loading; secrets are
    # then held as SecretStr only.
    options: dict[str, Any] | ProbeOptions = {}

    # Hold an idle TCP connection to the healthy target and probe at once
    # when it closes (a crashed process): detection in milliseconds rather
    # than up to one interval. Default: on for tcp, http, socketio and
    # thingsboard; off for frp (frps serialises first reads), stun/turn, icmp.
    watch: bool | None = None
    # Heartbeat while the target is up: true/false or {interval, multiplier}.
    # Default: on for http, thingsboard, socketio, frp (with mux), stun and
    # turn (udp), icmp; none for tcp.
    heartbeat: HeartbeatConfig | bool | None = None

    @property
    def heartbeat_settings(self) -> HeartbeatConfig | None:
        """The heartbeat's settings, or None when this probe has none."""
        from .heartbeat import HEARTBEAT_KINDS

        if self.heartbeat is False or (self.heartbeat is None and self.kind not in HEARTBEAT_KINDS):
            return None
        return self.heartbeat if isinstance(self.heartbeat, HeartbeatConfig) else HeartbeatConfig()

    @property
    def watch_enabled(self) -> bool:
        from .watch import WATCH_BY_DEFAULT

        if self.watch is not None:
            return self.watch
        return self.kind in WATCH_BY_DEFAULT

    @property
    def parsed_options(self) -> ProbeOptions:
        if isinstance(self.options, ProbeOptions):
            return self.options
        return probes.get_kind(self.kind).parse_options(self.options)

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        try:
            probes.get_kind(v)
        except OptionError as exc:
            raise ValueError(str(exc)) from None
        return v

    def target_for(self, address: str) -> str:
        kind = probes.get_kind(self.kind)
        if kind.target_style == "host":
            return address
        port = self.port or kind.default_port
        host = f"[{address}]" if ":" in address else address
        return f"{host}:{port}"


class ServiceConfig(Model):
    probe: ProbeConfig
    primary: InstanceRef = InstanceRef()
    backup: InstanceRef = InstanceRef()
    attachments: Attachments = Attachments()
    thresholds: ThresholdOverrides = ThresholdOverrides()
    # false: detect, alert and report, but never fail over automatically.
    auto_failover: bool = True
    # After a failover, stop the old instance (fencing) or leave it running.
    stop_old: bool = True
    sns_topic_arn: str | None = Field(default=None, pattern=_SNS_ARN)


class DrillConfig(Model):
    """A scheduled dry-run failover: proves every day that failover would work."""

    schedule: str  # crontab, five fields, UTC
    services: list[str] = ["*"]

    @field_validator("schedule")
    @classmethod
    def _cron(cls, v: str) -> str:
        from .drills import cron_trigger  # crontab's weekday numbers (0 and 7 = Sunday)

        try:
            cron_trigger(v)
        except ValueError as exc:
            raise ValueError(f"'{v}' is not a crontab expression: {exc}") from None
        return v


class Config(Model):
    aws: AwsConfig = AwsConfig()
    http: HttpConfig = HttpConfig()
    log: LogConfig = LogConfig()
    # The journal of the plan in flight and the lock file live here.
    state_dir: str = "/var/lib/jupiterd"
    project_tag: str = "Jupiter"
    sns_topic_arn: str | None = Field(default=None, pattern=_SNS_ARN)
    defaults: Thresholds = Thresholds()
    guards: GuardsConfig = GuardsConfig()
    drills: list[DrillConfig] = []
    services: dict[str, ServiceConfig] = Field(min_length=1)

    @field_validator("services")
    @classmethod
    def _names(cls, v: dict[str, ServiceConfig]) -> dict[str, ServiceConfig]:
        for name in v:
            if not re.fullmatch(r"[a-z][a-z0-9_-]{0,62}", name):
                raise ValueError(
                    f"service name '{name}' must be lower-case letters, digits, '-' or '_'"
                )
        return v

    def thresholds(self, service: str) -> Thresholds:
        """The defaults merged with the service's overrides."""
        over = self.services[service].thresholds.model_dump(exclude_none=True)
        if not over:
            return self.defaults
        return Thresholds.model_validate({**self.defaults.model_dump(), **over})

    def topic_for(self, service: str) -> str | None:
        return self.services[service].sns_topic_arn or self.sns_topic_arn


# --------------------------------------------------------------------------- loading

SecretSource = Literal["env", "file"]


def _is_secret_field(opts: type[ProbeOptions], key: str) -> bool:
    field = opts.model_fields.get(key)
    if field is None:
        return False
    ann = field.annotation
    return ann is SecretStr or SecretStr in getattr(ann, "__args__", ())


# What a secret reference becomes when secrets are not needed (pause, resume,
# status, iam-policy): those commands must work where the secrets are absent.
UNRESOLVED_SECRET = "<secret not loaded>"


def _resolve_secret(value: Any, key: str, resolve: bool = True) -> Any:
    """``{env: NAME}`` or ``{file: PATH}`` -> the secret's text."""
    if not isinstance(value, Mapping):
        return value
    if not resolve and set(value) in ({"env"}, {"file"}):
        return UNRESOLVED_SECRET
    if set(value) == {"env"}:
        name = str(value["env"])
        if name not in os.environ:
            raise ConfigError(None, key, f"environment variable {name} is not set")
        return os.environ[name]
    if set(value) == {"file"}:
        path = Path(str(value["file"]))
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                None, key, f"cannot read secret file {path}: {exc.strerror}"
            ) from None
    raise ConfigError(None, key, "a secret is a string, {env: NAME} or {file: PATH}")


def _heartbeat_kinds() -> frozenset[str]:
    from .heartbeat import HEARTBEAT_KINDS

    return HEARTBEAT_KINDS


def _check_probe(name: str, svc: ServiceConfig, secrets: bool = True) -> ServiceConfig:
    """Validate the probe's options with its kind's model, secrets resolved."""
    kind = probes.get_kind(svc.probe.kind)
    base = f"services.{name}.probe"
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
    r"^(/hostedzone/)?Z[A-Z0-9]{1,32}$": "expected a Route 53 hosted zone id (Z...)",
}


def _format_validation_error(exc: ValidationError) -> tuple[str, str]:
    errors = exc.errors(include_input=False, include_url=False)
    err = errors[0]
    # pydantic names union branches in the location ("dict[str,any]",
    # "ProbeOptions"); they mean nothing to the person editing the file.
    loc = [str(p) for p in err["loc"]]
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


def parse_config(doc: Any, path: str | None = None, *, secrets: bool = True) -> Config:
    """Validate an already-parsed YAML document. ``secrets=False`` leaves
    ``{env:}``/``{file:}`` secret references unread (placeholders)."""
    if not isinstance(doc, Mapping):
        raise ConfigError(path, None, "the file must be a YAML mapping with a 'services' key")
    try:
        cfg = Config.model_validate(doc)
    except ValidationError as exc:
        key, msg = _format_validation_error(exc)
        raise ConfigError(path, key, msg) from None
    try:
        services = {name: _check_probe(name, svc, secrets) for name, svc in cfg.services.items()}
        for i, drill in enumerate(cfg.drills):
            for s in drill.services:
                if s != "*" and s not in cfg.services:
                    raise ConfigError(None, f"drills.{i}.services", f"no service named '{s}'")
        for name in cfg.services:
            try:
                cfg.thresholds(name)
            except ValidationError as exc:
                _, msg = _format_validation_error(exc)
                raise ConfigError(None, f"services.{name}.thresholds", msg) from None
    except ConfigError as exc:
        raise ConfigError(path, exc.key, exc.message) from None
    return cfg.model_copy(update={"services": services})


def load_config(path: str, *, secrets: bool = True) -> Config:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, None, "no such file (set --config or JUPITERD_CONFIG)") from None
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read: {exc.strerror}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(path, None, f"YAML syntax error{where}: {problem}") from None
    return parse_config(doc, path, secrets=secrets)
