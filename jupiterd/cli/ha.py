"""``jupiterd ha init``: create the DynamoDB table replicated deciders share.

The table has one string key ``pk``, on-demand capacity and TTL on the
``ttl`` attribute (for stale items). Running it again on an existing table
says so, makes sure of TTL, and exits 0. The region is ``--region``, else
the ``--config`` file's ``aws.region``, else ``AWS_REGION``; the endpoint
the ``--config`` file's ``aws.endpoint_url``, else botocore's chain
(``AWS_ENDPOINT_URL``...), as for every AWS command.

Exit codes: 0 created or already there, 1 AWS refused or could not be
reached, 2 usage, 78 an invalid ``--config`` file.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from jupiterd.cli.common import EXIT_FAIL, EXIT_OK


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "ha",
        help="replicated deciders: set up the shared DynamoDB table",
        description="Groundwork for running several jupiterd replicas with a leader lease.",
    )
    hsub = p.add_subparsers(dest="ha_command", metavar="ACTION", required=True)
    init = hsub.add_parser(
        "init",
        help="create the DynamoDB table (on-demand, TTL on stale items); idempotent",
        description="Create the DynamoDB table that holds the leader lease: one string key "
        "`pk`, on-demand capacity, TTL on the `ttl` attribute. An existing table is kept.",
    )
    init.add_argument("--table", required=True, metavar="NAME")
    init.add_argument("--region", help="default: the --config file's, else $AWS_REGION")
    init.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="an existing configuration whose aws: section (region, endpoint) to use",
    )
    init.set_defaults(func=_cmd_init)


def _cmd_init(args: argparse.Namespace) -> int:
    from jupiterd.aws.client import Aws, AwsError
    from jupiterd.aws.ha_table import create_table
    from jupiterd.cli.discover import _aws_config

    cfg = _aws_config(args)
    aws = Aws(cfg)
    try:
        created = asyncio.run(create_table(aws, args.table))
    except AwsError as exc:
        print(f"jupiterd ha init: {exc.sentence()}", file=sys.stderr)
        return EXIT_FAIL
    finally:
        aws.close()
    if created:
        print(f"created table {args.table} in {cfg.region} (on-demand, TTL on `ttl`)")
    else:
        print(f"table {args.table} exists in {cfg.region}: kept (TTL on `ttl` made sure of)")
    return EXIT_OK
