"""The configuration's schema: one frozen pydantic model per section,
unknown keys rejected everywhere."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BeforeValidator,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

import probes
from jupiterd.config.cron import cron_trigger
from jupiterd.config.defaults import HEARTBEAT_KINDS, WATCH_BY_DEFAULT
from jupiterd.config.errors import ConfigError
from jupiterd.config.ha import HaConfig, WitnessConfig
from jupiterd.config.secrets import UNRESOLVED_SECRET, _resolve_secret
from jupiterd.config.standby import StandbyFields
from jupiterd.config.values import _HOST_NAME, Model, PositiveSeconds, Seconds, is_loopback
from probes.options import OptionError, ProbeOptions, parse_hostport, quote

# --------------------------------------------------------------------------- sections

_NAME = re.compile(r"[a-z][a-z0-9_-]{0,62}")


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
    # As the Route 53 API returns it (real ids start with Z, an emulator's
    # may not); the preflight checks that the zone exists.
    zone_id: str = Field(pattern=r"^(/hostedzone/)?[A-Za-z0-9]{1,32}$")
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


class ServiceConfig(StandbyFields):
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
    witness: WitnessConfig | None = None  # what AWS says of the active: one more vote
    # The pool this service is a member of; set only by `pools:` (the
    # backup is then the pool's shared standby).
    pool: str | None = None


class PoolMember(InstanceRef):
    """One active instance of a pool, and where its traffic enters."""

    attachments: Attachments = Attachments()


def _one_standby(value: Any) -> Any:
    if isinstance(value, list):
        if len(value) != 1:
            raise ValueError(
                f"{len(value)} standbys given: one standby per pool is what is supported"
            )
        return value[0]
    return value


class PoolConfig(StandbyFields):
    """Several active instances sharing one standby (N+1). Each member
    becomes an ordinary service named after it: its primary is the member,
    its backup the standby."""

    probe: ProbeConfig
    members: dict[str, PoolMember]
    standby: Annotated[InstanceRef, BeforeValidator(_one_standby)]
    thresholds: ThresholdOverrides = ThresholdOverrides()
    auto_failover: bool = True
    stop_old: bool = True
    sns_topic_arn: str | None = Field(default=None, pattern=_SNS_ARN)
    # How a member fails over: peer_then_standby (its route tables through
    # a surviving member at once, then the standby) or standby_only. The
    # default (None) is resolved when the pools expand (``pools.py``).
    plan: Literal["peer_then_standby", "standby_only"] | None = None
    witness: WitnessConfig | None = None


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
    # Without pools, at least one service (the loader checks).
    services: dict[str, ServiceConfig] = {}
    # Shared standbys: each member is expanded into `services` at load.
    pools: dict[str, PoolConfig] = {}
    # Replicated deciders sharing a DynamoDB table; None: one process decides.
    ha: HaConfig | None = None

    @field_validator("services")
    @classmethod
    def _names(cls, v: dict[str, ServiceConfig]) -> dict[str, ServiceConfig]:
        for name in v:
            if not _NAME.fullmatch(name):
                raise ValueError(
                    f"service name {quote(name)} must be lower-case letters, digits, '-' or '_'"
                )
        return v

    @field_validator("pools")
    @classmethod
    def _pool_names(cls, v: dict[str, PoolConfig]) -> dict[str, PoolConfig]:
        for name, pool in v.items():
            for what, n in [("pool", name), *(("member", m) for m in pool.members)]:
                if not _NAME.fullmatch(n):
                    raise ValueError(
                        f"{what} name {quote(n)} must be lower-case letters, digits, '-' or '_'"
                    )
        return v

    def pool_peers(self, service: str) -> tuple[str, ...]:
        """The other members of the service's pool (empty outside a pool)."""
        pool = self.services[service].pool
        if pool is None:
            return ()
        return tuple(n for n, s in self.services.items() if s.pool == pool and n != service)

    def pool_plan(self, service: str) -> str | None:
        """The failover plan of a pool member (None outside a pool)."""
        pool = self.services[service].pool
        return None if pool is None else self.pools[pool].plan or "standby_only"

    def pool_members(self, pool: str) -> tuple[str, ...]:
        return tuple(n for n, s in self.services.items() if s.pool == pool)

    def thresholds(self, service: str) -> Thresholds:
        """The defaults merged with the service's overrides."""
        over = self.services[service].thresholds.model_dump(exclude_none=True)
        if not over:
            return self.defaults
        return Thresholds.model_validate({**self.defaults.model_dump(), **over})

    def topic_for(self, service: str) -> str | None:
        return self.services[service].sns_topic_arn or self.sns_topic_arn
