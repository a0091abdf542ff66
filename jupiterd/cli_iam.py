"""``jupiterd iam-policy``: print the least-privilege IAM policy for a config.

Secrets play no part in the policy, so a secret given as ``{env: NAME}`` or
``{file: PATH}`` is not resolved here: the policy can be generated on a
machine that has none of them (a laptop, CI). Everything else is validated
exactly as ``check-config`` does (exit 78 on an invalid file).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretStr

from .cli import EXIT_OK, config_path

_PLACEHOLDER = "not-needed-for-the-policy"


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "iam-policy",
        help="print the least-privilege IAM policy for the configuration",
        description="Print the IAM policy (JSON) that allows exactly the AWS calls jupiterd "
        "makes for this configuration, mutating ones limited to resources tagged "
        "Project=<project_tag>. Secrets need not be available.",
    )
    p.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_iam_policy)


def _is_secret(kind: str, key: str) -> bool:
    import probes

    try:
        field = probes.get_kind(kind).options.model_fields.get(key)
    except probes.OptionError:
        return False  # an unknown kind: validation reports it
    if field is None:
        return False
    ann = field.annotation
    return ann is SecretStr or SecretStr in getattr(ann, "__args__", ())


def _placeholder_secrets(doc: Any) -> Any:
    """The document with each secret reference replaced by a dummy value."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("services"), Mapping):
        return doc
    services: dict[Any, Any] = {}
    for name, svc in doc["services"].items():
        services[name] = svc
        if not isinstance(svc, Mapping) or not isinstance(svc.get("probe"), Mapping):
            continue
        probe: Mapping[str, Any] = svc["probe"]
        options, kind = probe.get("options"), probe.get("kind")
        if not isinstance(options, Mapping) or not isinstance(kind, str):
            continue
        opts = {
            k: _PLACEHOLDER
            if isinstance(v, Mapping) and set(v) in ({"env"}, {"file"}) and _is_secret(kind, k)
            else v
            for k, v in options.items()
        }
        services[name] = {**svc, "probe": {**probe, "options": opts}}
    return {**doc, "services": services}


def load_without_secrets(path: str) -> Any:
    from .config import load_config, parse_config

    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return load_config(path)  # raises the ConfigError check-config would
    return parse_config(_placeholder_secrets(doc), path)


def _cmd_iam_policy(args: argparse.Namespace) -> int:
    from .iam import MANAGED_POLICY_LIMIT, compact_size, policy_json

    cfg = load_without_secrets(config_path(getattr(args, "config", None)))
    text = policy_json(cfg)
    sys.stdout.write(text)
    size = compact_size(text)
    if size > MANAGED_POLICY_LIMIT:
        print(
            f"note: the policy is {size} characters without whitespace; a managed policy "
            f"holds {MANAGED_POLICY_LIMIT}: attach it as an inline role policy (10,240) "
            "or split it by service",
            file=sys.stderr,
        )
    return EXIT_OK
