"""The configuration: YAML in, typed frozen models out, or one clear error.

Defaults, then decode, then validate (blackbox_exporter's order). Unknown
keys are rejected everywhere. Every error names the file and the key path
(``services.coturn.probe.options.secret``) and never quotes a secret's value.
``load_config`` is pure apart from reading the file and resolving secrets
from the environment or secret files; ``check-config`` and SIGHUP reloads use
it before anything else changes.
"""

from __future__ import annotations

import errno
import ipaddress
import math
import os
import re
import stat
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

if TYPE_CHECKING:
    from apscheduler.triggers.cron import CronTrigger

import probes
from probes.options import OptionError, ProbeOptions, parse_hostport, quote

# --------------------------------------------------------------------------- errors


class ConfigError(Exception):
    """An invalid configuration. ``str()`` is the whole message for the user."""

    def __init__(self, path: str | None, key: str | None, message: str) -> None:
        # One line, bounded: a message never carries a whole value the file gave.
        if key is not None and len(key) > 200:
            key = key[:200] + "…"
        message = " ".join(message.split()) if "\n" in message else message
        if len(message) > 300:
            message = message[:300] + "…"
        self.path = path
        self.key = key
        self.message = message
        where = f"{path}: " if path else ""
        at = f"{key}: " if key else ""
        super().__init__(f"{where}{at}{message}")


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


class HttpConfig(Model):
    # /metrics, /status and /healthz. Loopback by default: exposing it beyond
    # the host (for a remote Prometheus) is a deliberate choice, and the
    # pause/resume API then needs a token or a firewall in front of it.
    listen: str = "127.0.0.1:9478"
    # DNS names a client may use in the Host header besides loopback names,
    # IP literals and the listen address (DNS rebinding is refused).
    allowed_hosts: list[str] = []
    # Bearer token POST /pause and /resume must carry; resolved like a
    # probe secret (string, {env:} or {file:}).
    token: SecretStr | None = None
    # A request's line, headers and body must arrive within this time of its
    # first byte (or of the connection's start); else the connection closes.
    read_timeout: PositiveSeconds = 5.0
    # An idle keep-alive connection, or one whose client stopped reading a
    # response, closes after this long.
    idle_timeout: PositiveSeconds = 30.0
    # Connections beyond either cap are answered 503 and closed at once.
    max_connections: int = Field(default=64, ge=1, le=4096)
    max_connections_per_client: int = Field(default=8, ge=1, le=4096)

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        try:
            parse_hostport(v, None)
        except OptionError as exc:
            raise ValueError(str(exc)) from None
        return v

    @field_validator("allowed_hosts")
    @classmethod
    def _allowed_hosts(cls, v: list[str]) -> list[str]:
        out = []
        for name in v:
            host = name.strip().rstrip(".").lower()
            if not _HOST_NAME.fullmatch(host):
                raise ValueError(f"'{name[:100]}' is not a DNS name (no scheme, port or path)")
            out.append(host)
        return out

    @field_validator("token", mode="before")
    @classmethod
    def _token(cls, v: Any, info: ValidationInfo) -> Any:
        resolve = bool((info.context or {}).get("http_token", True))
        try:
            value = _resolve_secret(v, "http.token", resolve)
        except ConfigError as exc:
            raise ValueError(exc.message) from None
        if value is None or value == UNRESOLVED_SECRET:
            return value
        if not isinstance(value, str) or not re.fullmatch(r"[\x21-\x7e]{16,4096}", value):
            raise ValueError(
                "the token must be 16 to 4096 printable ASCII characters without spaces"
            )
        return value

    @property
    def host(self) -> str:
        return parse_hostport(self.listen, None).host

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    def listener_settings(self) -> tuple[Any, ...]:
        """What only a restart applies (the rest is read per request)."""
        return (
            self.listen,
            self.read_timeout,
            self.idle_timeout,
            self.max_connections,
            self.max_connections_per_client,
        )


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
            raise ValueError(f"{quote(v)} is not a host name or IP address")
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
    """A cheap message on a kept link to a healthy target (jupiterd/runtime/heartbeat.py)."""

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
        if self.heartbeat is False or (self.heartbeat is None and self.kind not in HEARTBEAT_KINDS):
            return None
        return self.heartbeat if isinstance(self.heartbeat, HeartbeatConfig) else HeartbeatConfig()

    @property
    def watch_enabled(self) -> bool:
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
        try:
            cron_trigger(v)
        except ValueError as exc:
            why = quote(str(exc), 60)[1:-1]
            raise ValueError(f"{quote(v)} is not a crontab expression: {why}") from None
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
                    f"service name {quote(name)} must be lower-case letters, digits, '-' or '_'"
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


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")


def _resolve_secret(value: Any, key: str, resolve: bool = True) -> Any:
    """``{env: NAME}`` or ``{file: PATH}`` -> the secret's text.

    No message quotes what was given: an operator may have pasted the secret
    itself where the variable's name or the file's path belongs."""
    if not isinstance(value, Mapping):
        return value
    if set(value) == {"env"}:
        name = value["env"]
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
            raise ConfigError(
                None,
                f"{key}.env",
                "expected the name of an environment variable "
                "(letters, digits and '_'); the secret itself does not go here",
            )
        if not resolve:
            return UNRESOLVED_SECRET
        if name not in os.environ:
            raise ConfigError(None, f"{key}.env", "the environment variable named here is not set")
        return os.environ[name]
    if set(value) == {"file"}:
        path = value["file"]
        if not isinstance(path, str) or not path or "\0" in path:
            raise ConfigError(None, f"{key}.file", "expected the path of a file holding the secret")
        if not resolve:
            return UNRESOLVED_SECRET
        try:
            data = read_bounded(path, MAX_SECRET_BYTES)
        except FileTooLarge:
            raise ConfigError(
                None,
                f"{key}.file",
                f"the file named here is over {MAX_SECRET_BYTES // 1024} KiB: not a secret",
            ) from None
        except OSError as exc:
            why = exc.strerror or type(exc).__name__
            raise ConfigError(
                None, f"{key}.file", f"cannot read the file named here: {why}"
            ) from None
        try:
            return data.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ConfigError(
                None, f"{key}.file", "the file named here is not UTF-8 text"
            ) from None
    raise ConfigError(None, key, "a secret is a string, {env: NAME} or {file: PATH}")


def _heartbeat_kinds() -> frozenset[str]:
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
                raise ConfigError(None, f"services.{name}.thresholds", msg) from None
    except ConfigError as exc:
        raise ConfigError(path, exc.key, exc.message) from None
    return cfg.model_copy(update={"services": services})


# --------------------------------------------------------------------------- reading
# Bounds on what a file may make the loader do. Each is far above any real
# configuration (the full example: 10 KiB, depth 8, about 400 values).

MAX_FILE_BYTES = 1024 * 1024
MAX_SECRET_BYTES = 64 * 1024
MAX_DEPTH = 64  # nested mappings and lists, counted through aliases
MAX_VALUES = 50_000  # scalars, mappings and lists; an alias counts each time it is used
MAX_TEXT = 4 * 1024 * 1024  # characters of scalar text, aliases expanded likewise


class FileTooLarge(Exception):
    """More bytes than the reader's limit."""


def read_bounded(path: str, limit: int) -> bytes:
    """At most ``limit`` bytes of ``path`` (``FileTooLarge`` beyond, an
    ``OSError`` for a directory or an unreadable file). A FIFO or a device
    is read to its end or the limit, never slurped whole."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
        if not stat.S_ISREG(mode):
            os.set_blocking(fd, True)  # a pipe: wait for its writer
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 16, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise FileTooLarge
        return b"".join(chunks)
    finally:
        os.close(fd)


class _Refused(Exception):
    """A document the loader will not build, at a place in the file."""

    def __init__(self, message: str, mark: Any, note: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.mark = mark
        self.note = note


_MERGE_TAG = "tag:yaml.org,2002:merge"


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader with bounds, checked while the document is
    composed (before anything is built): nesting depth, the number of values
    and the amount of text with every alias expanded (a "billion laughs"
    stops at the limit instead of exhausting memory), no alias cycles, and
    no duplicate keys in a mapping (YAML says they are an error; PyYAML
    would keep the last). Anchors, aliases and merge keys work as usual."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._composed = 0
        # id(node) -> (values, height, characters) with aliases expanded.
        self._sizes: dict[int, tuple[int, int, int]] = {}

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        # Refused in the scanner already: it keeps a possible key per open
        # bracket and checks them all at every token (quadratic in depth).
        if self.flow_level >= MAX_DEPTH:
            raise _Refused(f"nested more than {MAX_DEPTH} levels deep", self.get_mark())
        super().fetch_flow_collection_start(TokenClass)

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None and id(target) not in self._sizes:
                raise _Refused(
                    "an alias refers to the mapping or list that contains it", event.start_mark
                )
            return super().compose_node(parent, index)
        if self._depth >= MAX_DEPTH:
            raise _Refused(f"nested more than {MAX_DEPTH} levels deep", event.start_mark)
        self._composed += 1
        if self._composed > MAX_VALUES:
            raise _Refused(f"more than {MAX_VALUES:,} values", event.start_mark)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._measure(node)
        return node

    def _measure(self, node: Any) -> None:
        if isinstance(node, yaml.ScalarNode):
            values, height, text = 1, 1, len(node.value)
        else:
            children = (
                [n for pair in node.value for n in pair]
                if isinstance(node, yaml.MappingNode)
                else node.value
            )
            sizes = [self._sizes[id(c)] for c in children]
            values = 1 + sum(v for v, _, _ in sizes)
            height = 1 + max((h for _, h, _ in sizes), default=0)
            text = sum(t for _, _, t in sizes)
        if values > MAX_VALUES or text > MAX_TEXT:
            raise _Refused(
                f"expands to more than {MAX_VALUES:,} values or {MAX_TEXT // 1048576} MiB "
                "of text (each use of an alias counts)",
                node.start_mark,
            )
        if height > MAX_DEPTH:
            raise _Refused(
                f"nested more than {MAX_DEPTH} levels deep (counting through aliases)",
                node.start_mark,
            )
        self._sizes[id(node)] = (values, height, text)

    def compose_mapping_node(self, anchor: Any) -> Any:
        node = super().compose_mapping_node(anchor)
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                raise _Refused(
                    "a key must be a plain value, not a mapping or list", key_node.start_mark
                )
            key = self.construct_object(key_node)
            first = seen.get(key)
            if first is not None:
                raise _Refused(
                    f"duplicate key {quote(key)}",
                    key_node.start_mark,
                    f" (first at line {first.line + 1})",
                )
            seen[key] = key_node.start_mark
        return node

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        # PyYAML's scalar constructors raise ValueError, KeyError and more
        # for values such as `!!int x`, `!!bool maybe` or `2001-13-45`.
        try:
            return super().construct_object(node, deep)
        except (yaml.YAMLError, _Refused):
            raise
        except Exception:
            kind = str(node.tag).rsplit(":", 1)[-1][:20]
            raise _Refused(f"not a valid {kind} value", node.start_mark) from None


def _where(mark: Any) -> str:
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def _parse_yaml(data: bytes, path: str) -> Any:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            path, None, f"not UTF-8 text (an invalid byte at line {line}, byte {exc.start})"
        ) from None
    loader: _BoundedLoader | None = None
    try:
        loader = _BoundedLoader(text)  # checks the characters already
        return loader.get_single_data()
    except _Refused as exc:
        raise ConfigError(path, None, f"{exc.message}{_where(exc.mark)}{exc.note}") from None
    except yaml.reader.ReaderError as exc:
        raise ConfigError(
            path,
            None,
            f"a character YAML does not allow (#x{exc.character:04x}) at character {exc.position}",
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        # PyYAML's problem may quote an anchor or tag from the file: cut short.
        problem = str(getattr(exc, "problem", None) or "invalid YAML")[:100]
        raise ConfigError(path, None, f"YAML syntax error{_where(mark)}: {problem}") from None
    except Exception as exc:  # a PyYAML defect must not escape as a traceback
        raise ConfigError(path, None, f"cannot be read as YAML ({type(exc).__name__})") from None
    finally:
        if loader is not None:
            loader.dispose()


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


# --------------------------------------------------------------------------- defaults by kind
# Kinds watched by an idle connection unless the service's probe says otherwise.
WATCH_BY_DEFAULT = frozenset({"tcp", "http", "socketio", "thingsboard"})
# Kinds with a heartbeat unless the service's probe says otherwise.
HEARTBEAT_KINDS = frozenset({"http", "thingsboard", "socketio", "frp", "stun", "turn", "icmp"})


# --------------------------------------------------------------------------- drill schedules
# crontab's weekday numbers (0 and 7 = Sunday), UTC.

_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _day(text: str) -> int:
    t = text.strip().lower()
    if t[:3] in _DAYS and not t.isdigit():
        return _DAYS.index(t[:3])
    n = int(t)
    if not 0 <= n <= 7:
        raise ValueError(f"day of week {text} is not 0-7")
    return n


def _crontab_days(field: str) -> str:
    """A crontab day-of-week field (0 or 7 = Sunday) as day names.
    APScheduler 3's ``from_crontab`` reads numbers with 0 = Monday (its
    issue 286), so ``1`` would fire on Tuesdays; names mean the same to both."""
    if field == "*":
        return "*"
    days: set[int] = set()
    for part in field.split(","):
        rng, _, step = part.partition("/")
        every = int(step) if step else 1
        if rng == "*":
            lo, hi = 0, 6
        elif "-" in rng:
            a, b = rng.split("-", 1)
            lo, hi = _day(a), _day(b)
            if hi < lo:
                raise ValueError(f"day-of-week range {rng} runs backwards")
        else:
            lo = _day(rng)
            hi = 6 if step else lo
        days.update(d % 7 for d in range(lo, hi + 1, every))
    return ",".join(_DAYS[d] for d in sorted(days))


def cron_trigger(expr: str) -> CronTrigger:
    """A crontab expression (five fields, UTC) with crontab's weekday numbers."""
    from datetime import UTC

    from apscheduler.triggers.cron import CronTrigger

    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"'{expr}' has {len(fields)} fields, a crontab line has 5")
    fields[4] = _crontab_days(fields[4])
    return CronTrigger.from_crontab(" ".join(fields), timezone=UTC)
