"""``jupiterd iam-policy``: print the least-privilege IAM policy for a config.

Secrets play no part in the policy, so a secret given as ``{env: NAME}`` or
``{file: PATH}`` is not resolved here: the policy can be generated on a
machine that has none of them (a laptop, CI). Everything else is validated
exactly as ``check-config`` does (exit 78 on an invalid file).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from jupiterd.cli.common import EXIT_OK, UsageError, config_path


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "iam-policy",
        help="print the least-privilege IAM policy for the configuration",
        description="Print the IAM policy (JSON) that allows exactly the AWS calls jupiterd "
        "makes for this configuration, mutating ones limited to resources tagged "
        "Project=<project_tag>. Secrets need not be available.",
    )
    p.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS)
    p.add_argument(
        "--discover",
        action="store_true",
        help="print instead the read-only policy `jupiterd discover` needs (no config)",
    )
    p.add_argument(
        "--ha",
        metavar="TABLE",
        help="print instead the DynamoDB statements replicated deciders (lease, views, "
        "shared journal) need on TABLE (no config)",
    )
    p.add_argument(
        "--region", help="with --discover or --ha: the region to allow (default: $AWS_REGION)"
    )
    p.set_defaults(func=_cmd_iam_policy)


def _cmd_iam_policy(args: argparse.Namespace) -> int:
    if args.discover:
        return _discover_policy(args)
    if args.ha:
        return _ha_policy(args)
    from jupiterd.config import load_config
    from jupiterd.core.iam import MANAGED_POLICY_LIMIT, compact_size, policy_json

    cfg = load_config(config_path(getattr(args, "config", None)), secrets=False)
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


def _region(args: argparse.Namespace, flag: str) -> str:
    region = args.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region:
        raise UsageError(f"{flag}: no region: give --region, or set AWS_REGION")
    return str(region)


def _discover_policy(args: argparse.Namespace) -> int:
    from jupiterd.core.iam import discover_policy

    region = _region(args, "--discover")
    sys.stdout.write(json.dumps(discover_policy(region), indent=2) + "\n")
    return EXIT_OK


def _ha_policy(args: argparse.Namespace) -> int:
    from jupiterd.core.iam import ha_policy

    region = _region(args, "--ha")
    sys.stdout.write(json.dumps(ha_policy(region, args.ha), indent=2) + "\n")
    return EXIT_OK
