"""``jupiterd discover``: write a configuration from what the AWS account holds.

It reads the instances tagged ``Project=<project>`` and what points at
them (see ``jupiterd.aws.discover``), decides services, pools and probes
(``jupiterd.core.discover``) and writes the commented YAML to stdout or
``-o FILE``. Everything it could not decide, and every secret still to
provide, is listed on stderr and as ``TODO`` comments in the file.

The region is ``--region``, else the ``--config`` file's ``aws.region``,
else ``AWS_REGION`` / ``AWS_DEFAULT_REGION``. The endpoint is the
``--config`` file's ``aws.endpoint_url``, else botocore's chain
(``AWS_ENDPOINT_URL``...), as for every AWS command.

Exit codes: 0 a configuration was written (notes may remain, listed), 1
nothing usable was found (no tagged instance, or no service or pool could
be made of them) or AWS could not be read, 2 usage, 78 an invalid
``--config`` file.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from jupiterd.cli.common import EXIT_FAIL, EXIT_OK, UsageError


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "discover",
        help="write a configuration from the instances tagged in the AWS account",
        description="Read the instances tagged Project=PROJECT (with Service and Role tags), "
        "the target groups, Elastic IPs, Route 53 records and route tables that point at "
        "them and the SNS topic, and write a commented jupiterd configuration. What could "
        "not be decided is listed on stderr and marked TODO in the file.",
    )
    p.add_argument("--project", required=True, help="the value of the Project tag")
    p.add_argument("--region", help="default: the --config file's, else $AWS_REGION")
    p.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
    p.add_argument("--force", action="store_true", help="overwrite an existing FILE")
    p.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="an existing configuration whose aws: section (region, endpoint) to use",
    )
    p.set_defaults(func=_cmd_discover)


def _aws_config(args: argparse.Namespace) -> Any:
    from jupiterd.config import AwsConfig, load_config

    path = getattr(args, "config", None)
    base = load_config(path, secrets=False).aws if path else None
    region = (
        args.region
        or (base.region if base is not None else None)
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
    )
    if not region:
        raise UsageError("no region: give --region, or set AWS_REGION")
    if base is None:
        return AwsConfig(region=region)
    return base.model_copy(update={"region": region})


def _cmd_discover(args: argparse.Namespace) -> int:
    from jupiterd.aws.client import Aws, AwsError
    from jupiterd.aws.discover import read_account
    from jupiterd.core.discover import decide
    from jupiterd.core.discover_yaml import render

    if args.output and Path(args.output).exists() and not args.force:
        raise UsageError(f"{args.output} exists: give --force to overwrite it")
    cfg = _aws_config(args)
    from jupiterd.telemetry import logs

    logs.configure("warning", "console", stream=sys.stderr)  # stdout may be the config
    aws = Aws(cfg)
    try:
        facts = asyncio.run(read_account(aws, args.project, cfg.region))
    except AwsError as exc:
        print(f"jupiterd discover: cannot read AWS: {exc}", file=sys.stderr)
        return EXIT_FAIL
    finally:
        aws.close()
    if not facts.instances:
        print(
            f"jupiterd discover: no EC2 instance in {cfg.region} is tagged "
            f"Project={args.project} (pending, running or stopped): nothing to discover",
            file=sys.stderr,
        )
        return EXIT_FAIL
    if cfg.endpoint_url is None and os.environ.get("AWS_ENDPOINT_URL"):
        facts = _with_endpoint(facts, os.environ["AWS_ENDPOINT_URL"])
    found = decide(facts)
    for n in found.notes:
        print(f"jupiterd discover: {n.where}: {n.text}", file=sys.stderr)
    if not found.usable:
        print(
            f"jupiterd discover: nothing usable: {len(facts.instances)} instance(s) tagged "
            f"Project={args.project}, but no service or pool could be made of them (see above)",
            file=sys.stderr,
        )
        return EXIT_FAIL
    command = f"jupiterd discover --project {args.project} --region {cfg.region}"
    text = render(found, command)
    if args.output:
        _write(Path(args.output), text)
    else:
        sys.stdout.write(text)
    names = [s.name for s in found.services] + [p.name for p in found.pools]
    print(
        f"jupiterd discover: {len(found.services)} service(s), {len(found.pools)} pool(s) "
        f"({', '.join(names)}); {len(found.notes)} note(s) to review"
        + (f"; written to {args.output}" if args.output else ""),
        file=sys.stderr,
    )
    return EXIT_OK


def _with_endpoint(facts: Any, url: str) -> Any:
    from dataclasses import replace

    return replace(facts, endpoint_url=url)


def _write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent or Path("."), prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
