"""The sandbox's control interface with ``--replicas``: cut or heal one
replica's path to one service, SIGKILL / SIGSTOP / SIGCONT / restart a
replica, make DynamoDB unreachable and reachable again; and the banner
lines that say how."""

from __future__ import annotations

from typing import Any

from jupiterd.core.types import Role

from .layout import SandboxError
from .replicas import WITNESS_SERVICE


def add_routes(app: Any, stack: Any) -> None:
    from aiohttp import web

    replicas = stack.replicas

    async def cut(request: web.Request) -> web.Response:
        m = request.match_info
        role_name = request.query.get("role")
        try:
            role = Role(role_name) if role_name else None
            text = replicas.cut(m["replica"], m["service"], role, heal=m["action"] == "heal")
        except (SandboxError, ValueError) as exc:
            return web.Response(status=404, text=f"{exc}\n")
        return web.Response(text=text + "\n")

    async def replica(request: web.Request) -> web.Response:
        m = request.match_info
        try:
            text = await replicas.act(m["replica"], m["action"])
        except SandboxError as exc:
            return web.Response(status=404, text=f"{exc}\n")
        return web.Response(text=text + "\n")

    async def dynamodb(request: web.Request) -> web.Response:
        return web.Response(text=replicas.dynamodb(request.match_info["state"] == "down") + "\n")

    async def lease(request: web.Request) -> web.Response:
        return web.json_response(replicas.lease())

    app.router.add_post(r"/{action:cut|heal}/{replica}/{service}", cut)
    app.router.add_post(r"/replica/{replica}/{action:kill|stop|cont|restart}", replica)
    app.router.add_post(r"/dynamodb/{state:down|up}", dynamodb)
    app.router.add_get("/lease", lease)


def banner(stack: Any, ctl: str) -> list[str]:
    rs = stack.replicas
    first = next(iter(rs.replicas.values()))
    lines = [
        "",
        f"{rs.count} jupiterd replicas share the DynamoDB table (lease, views, journal):",
    ]
    for r in rs.replicas.values():
        lines.append(
            f"  {r.id}  pid {r.pid}  status {r.url}/status  log {r.log_path}  "
            f"config {r.config_path}"
        )
    lines += [
        f"  replica rK reaches the primaries at 127.0.(10+K).2, the backups at .3 "
        f"(e.g. {first.paths.address(Role.PRIMARY)})",
        f"  {WITNESS_SERVICE} has an ELB witness (moto: a running instance is healthy)",
        "",
        "Cut one replica off from one service (silence), and heal it:",
        f"  curl -X POST {ctl}/cut/r1/signaling      (?role=primary: one instance)",
        f"  curl -X POST {ctl}/cut/all/signaling     (every replica)",
        f"  curl -X POST {ctl}/heal/r1/signaling",
        "Kill, pause, resume or restart a replica; DynamoDB down and up; the lease:",
        f"  curl -X POST {ctl}/replica/r1/kill       (stop, cont, restart)",
        f"  curl -X POST {ctl}/dynamodb/down         (up)",
        f"  curl -s {ctl}/lease",
        "Break a service (kills its active instance's process), and heal it:",
        f"  curl -X POST {ctl}/break/signaling",
        f"  curl -X POST {ctl}/heal/signaling",
        "",
        "Ctrl-C stops everything.",
    ]
    return lines
