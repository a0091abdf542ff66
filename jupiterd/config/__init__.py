"""The configuration: YAML in, typed frozen models out, or one clear error.

Defaults, then decode, then validate (blackbox_exporter's order). Unknown
keys are rejected everywhere. Every error names the file and the key path
(``services.coturn.probe.options.secret``) and never quotes a secret's value.
``load_config`` is pure apart from reading the file and resolving secrets
from the environment or secret files; ``check-config`` and SIGHUP reloads use
it before anything else changes.

The package, read in order: ``schema`` (the models, on ``values``), ``loader``
(``load_config``, ``parse_config``) on ``reader`` (the bounded YAML reader)
and ``secrets``; ``defaults`` (by probe kind) and ``cron`` (drill schedules).
It imports nothing from the rest of jupiterd.
"""

from __future__ import annotations

from jupiterd.config.cron import (
    _crontab_days,
    cron_trigger,
)
from jupiterd.config.defaults import (
    HEARTBEAT_KINDS,
    WATCH_BY_DEFAULT,
)
from jupiterd.config.errors import (
    ConfigError,
)
from jupiterd.config.loader import (
    load_config,
    parse_config,
)
from jupiterd.config.reader import (
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_SECRET_BYTES,
    MAX_TEXT,
    MAX_VALUES,
    FileTooLarge,
    read_bounded,
)
from jupiterd.config.schema import (
    Attachments,
    AwsConfig,
    Config,
    DrillConfig,
    GuardsConfig,
    HeartbeatConfig,
    HttpConfig,
    InstanceRef,
    IsolationGuard,
    LogConfig,
    PoolConfig,
    PoolMember,
    ProbeConfig,
    Route53Record,
    ServiceConfig,
    TargetGroupRef,
    ThresholdOverrides,
    Thresholds,
)
from jupiterd.config.secrets import (
    UNRESOLVED_SECRET,
    SecretSource,
)
from jupiterd.config.values import (
    MAX_DURATION,
    Model,
    PositiveSeconds,
    Seconds,
    is_loopback,
    parse_duration,
)

__all__ = [
    "HEARTBEAT_KINDS",
    "MAX_DEPTH",
    "MAX_DURATION",
    "MAX_FILE_BYTES",
    "MAX_SECRET_BYTES",
    "MAX_TEXT",
    "MAX_VALUES",
    "UNRESOLVED_SECRET",
    "WATCH_BY_DEFAULT",
    "Attachments",
    "AwsConfig",
    "Config",
    "ConfigError",
    "DrillConfig",
    "FileTooLarge",
    "GuardsConfig",
    "HeartbeatConfig",
    "HttpConfig",
    "InstanceRef",
    "IsolationGuard",
    "LogConfig",
    "Model",
    "PoolConfig",
    "PoolMember",
    "PositiveSeconds",
    "ProbeConfig",
    "Route53Record",
    "Seconds",
    "SecretSource",
    "ServiceConfig",
    "TargetGroupRef",
    "ThresholdOverrides",
    "Thresholds",
    "_crontab_days",
    "cron_trigger",
    "is_loopback",
    "load_config",
    "parse_config",
    "parse_duration",
    "read_bounded",
]
