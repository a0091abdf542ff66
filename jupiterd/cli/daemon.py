"""Commands that run the daemon or talk to it: probe, check-config, run,
pause, resume, state-files."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from jupiterd.cli.common import DEFAULT_CONFIG, EXIT_FAIL, EXIT_OK, UsageError, config_path


def _cmd_probe(args: argparse.Namespace) -> int:
    import probes

    raw: dict[str, str] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set expects KEY=VALUE, got '{item}'")
        raw[key.strip()] = value
    if not args.timeout > 0:
        raise UsageError("--timeout must be a positive number of seconds")
    try:
        kind = probes.get_kind(args.kind)
        options = kind.parse_options(raw)
        kind.check_target(args.target)
    except probes.OptionError as exc:
        raise UsageError(f"{args.kind}: {exc}") from None
    result = asyncio.run(kind.probe(args.target, options, args.timeout))
    if args.json:
        print(json.dumps(result.to_dict(), sort_keys=True))
    else:
        print(result.summary())
    return EXIT_OK if result.ok else EXIT_FAIL


def _add_probe(sub: Any) -> None:
    import probes

    kinds = ", ".join(probes.KINDS)
    p = sub.add_parser(
        "probe",
        help="probe one target once and print the result",
        description=f"Probe one target once. Kinds: {kinds}. Exit 0 if healthy, 1 if not.",
    )
    p.add_argument("kind", metavar="KIND", help=f"one of: {kinds}")
    p.add_argument(
        "target", metavar="TARGET", help="host:port, or a URL for http/socketio/thingsboard"
    )
    p.add_argument("--timeout", type=float, default=5.0, metavar="S", help="seconds (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a probe option (repeatable)",
    )
    p.set_defaults(func=_cmd_probe)


def _load(path: str, secrets: bool = True) -> Any:
    from jupiterd.config import load_config

    return load_config(path, secrets=secrets)


def _cmd_check_config(args: argparse.Namespace) -> int:
    path = config_path(args.file or args.config)
    cfg = _load(path)
    names = ", ".join(cfg.services)
    print(
        f"{path}: OK: {len(cfg.services)} service(s) ({names}); "
        f"http {cfg.http.listen}; {len(cfg.drills)} drill schedule(s)"
    )
    if not cfg.http.loopback:
        from jupiterd.runtime.api import exposed_note

        print(f"note: {exposed_note(cfg.http)}", file=sys.stderr)
    return EXIT_OK


def _default_executor(config: Any, dry_run: bool, metrics: Any) -> Any:
    if not config.aws.enabled:
        from jupiterd.core.execution import OfflineExecutor

        return OfflineExecutor()
    if config.ha is not None:
        from jupiterd.runtime.ha_build import HaExecutor

        return HaExecutor(config, dry_run=dry_run, metrics=metrics)
    from jupiterd.aws.executor import AwsExecutor

    return AwsExecutor(config, dry_run=dry_run, metrics=metrics)


def _default_inventory(config: Any, metrics: Any, executor: Any = None) -> Any:
    if not config.aws.enabled:
        from jupiterd.core.inventory import StaticInventory

        return StaticInventory(config)
    from jupiterd.aws.inventory import AwsInventory

    # One set of AWS clients for the daemon: the executor's.
    return AwsInventory(config, getattr(executor, "aws", None), metrics=metrics)


def _drill_executor(config: Any, metrics: Any) -> Any:
    from jupiterd.aws.executor import AwsExecutor

    return AwsExecutor(config, dry_run=True, metrics=metrics)


def cmd_run(args: argparse.Namespace) -> int:
    from jupiterd.runtime.lifecycle import serve

    path = config_path(args.config)
    cfg = _load(path)
    return asyncio.run(
        serve(
            path,
            dry_run=args.dry_run,
            config=cfg,
            make_executor=_default_executor,
            make_inventory=_default_inventory,
            make_drill_executor=_drill_executor if cfg.aws.enabled else None,
        )
    )


def _api_post(args: argparse.Namespace, path: str) -> int:
    import urllib.error
    import urllib.request

    from jupiterd.config import load_config
    from jupiterd.runtime.api import API_HEADER

    # Only http (the listener and its token) is needed, not the probe secrets.
    cfg = load_config(config_path(args.config), secrets=False, http_token=True)
    listen = cfg.http.listen
    url = f"http://{listen}{path}"
    by = args.by or os.environ.get("SUDO_USER") or os.environ.get("USER") or "cli"
    headers = {"Content-Type": "application/json", API_HEADER: "1"}
    if cfg.http.token is not None:
        headers["Authorization"] = f"Bearer {cfg.http.token.get_secret_value()}"
    req = urllib.request.Request(
        url, data=json.dumps({"by": by}).encode(), method="POST", headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            print(resp.read().decode().strip())
    except urllib.error.HTTPError as exc:
        # The daemon answered but did not do all it was asked (e.g. the pause
        # flag could not be saved, or the request was refused): its sentence.
        body = exc.read(4096).decode("utf-8", "replace").strip()[:500]
        print(f"jupiterd: the daemon at {url} answered {exc.code}: {body}", file=sys.stderr)
        return EXIT_FAIL
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"jupiterd: cannot reach the daemon at {url}: {reason}", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK


def _add_daemon(sub: Any) -> None:
    p = sub.add_parser("run", help="run the daemon (the default command)")
    p.add_argument(
        "--config", metavar="FILE", help=f"default: $JUPITERD_CONFIG or {DEFAULT_CONFIG}"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="decide and log plans, but change nothing on AWS"
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check-config", help="validate a configuration file and exit")
    p.add_argument("file", nargs="?", metavar="FILE")
    p.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_check_config)

    for name, path, text in (
        ("pause", "/pause", "stop all automatic action (survives restarts)"),
        ("resume", "/resume", "allow automatic action again"),
    ):
        p = sub.add_parser(name, help=f"ask the running daemon to {text}")
        p.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS)
        p.add_argument("--by", metavar="WHO", help="recorded with the pause (default: $USER)")
        p.set_defaults(func=lambda a, _p=path: _api_post(a, _p))


def _cmd_state_files(args: argparse.Namespace) -> int:
    from jupiterd.state import statefile
    from jupiterd.state.journal import held_services

    cfg = _load(config_path(args.config), secrets=False)  # only state_dir is needed
    if args.action == "ack":
        done = statefile.acknowledge(cfg.state_dir)
        for p in done:
            print(f"acknowledged {p} (kept as {p.name}{statefile.ACKED})")
        if not done:
            print(f"{cfg.state_dir}: no damaged state file to acknowledge")
        return EXIT_OK
    found = statefile.summary(cfg.state_dir)
    for f in found:
        print(f"{f['file']}: damaged, moved aside to {f['moved_to']}")
    for name, why in held_services(cfg.state_dir, cfg.services).items():
        print(f"{name}: held: {why}")
    if not found:
        print(f"{cfg.state_dir}: no damaged state file")
    return EXIT_FAIL if found else EXIT_OK


def _add_state_files(sub: Any) -> None:
    p = sub.add_parser(
        "state-files",
        help="list damaged state files moved aside; 'ack' acknowledges them",
        description="List the state files jupiterd found damaged and moved aside, and the "
        "services a damaged journal holds (exit 1 if any). 'ack' acknowledges them all: "
        "each is kept, renamed to ...acked, and the holds and the alert clear. Check where "
        "the traffic is first (jupiterd status).",
    )
    p.add_argument("action", nargs="?", choices=["list", "ack"], default="list")
    p.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_state_files)


def add_commands(sub: Any) -> None:
    _add_probe(sub)
    _add_daemon(sub)
    _add_state_files(sub)
