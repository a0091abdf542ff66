"""The one door to AWS: boto3 clients from ``Config.aws`` and a call wrapper.

Every AWS call jupiterd makes goes through ``Aws.call`` (or ``paginate``):
it runs the blocking boto3 call on a small thread pool so the event loop
keeps probing, counts it in ``jupiterd_aws_api_calls{operation,result}``,
and turns botocore's errors into the exception types below, each naming the
IAM action and the resource, so a plan can stop safely with a sentence a
person can act on. Retries are botocore's: the standard mode retries
throttling and 5xx with backoff up to ``aws.max_attempts``; what still fails
after that is an ``AwsThrottled`` or ``AwsError``.

The endpoint is ``aws.endpoint_url`` if set, else botocore's own chain
(``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_EC2``...). Credentials come only
from the standard chain and never appear in logs or messages.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import botocore.loaders
import botocore.session
import structlog
from botocore.config import Config as BotoConfig

from jupiterd.config import AwsConfig
from jupiterd.telemetry.metrics import Metrics

log = structlog.get_logger("jupiterd.aws")

from jupiterd.aws.errors import (  # noqa: E402 - re-exported: the one door's vocabulary
    IAM_PREFIX,
    AwsAccessDenied,
    AwsError,
    AwsNotFound,
    AwsThrottled,
    AwsUnavailable,
    classify,
    iam_action,
)
from jupiterd.aws.models import (  # noqa: E402
    OPERATIONS,
    _PrunedLoader,
    models_cache_file,
    parse_models_cache,
    prune_model,
    pruned_models,
)

__all__ = [
    "IAM_PREFIX",
    "OPERATIONS",
    "Aws",
    "AwsAccessDenied",
    "AwsError",
    "AwsNotFound",
    "AwsThrottled",
    "AwsUnavailable",
    "classify",
    "iam_action",
    "models_cache_file",
    "parse_models_cache",
    "prune_model",
    "pruned_models",
]


def _session(region: str, cache_dir: Path | None = None) -> boto3.session.Session:
    core = botocore.session.get_session()
    paths = [p for p in (core.get_config_variable("data_path") or "").split(os.pathsep) if p]
    core.register_component(
        "data_loader", _PrunedLoader(cache_dir=cache_dir, extra_search_paths=paths)
    )
    return boto3.session.Session(botocore_session=core, region_name=region)


class Aws:
    """boto3 clients behind one wrapper. Clients are created lazily, once,
    in the worker threads (they are thread-safe once made; making them is
    not, hence the lock)."""

    def __init__(
        self,
        config: AwsConfig,
        metrics: Metrics | None = None,
        *,
        max_workers: int = 8,
        cache_dir: Path | None = None,
    ) -> None:
        """``cache_dir``: where the pruned AWS models are kept between runs
        (the state directory; best effort)."""
        self.config = config
        self.metrics = metrics
        self.cache_dir = cache_dir
        self._boto_config = BotoConfig(
            region_name=config.region,
            # total_max_attempts counts the first try; botocore's max_attempts
            # would count retries only.
            retries={"mode": "standard", "total_max_attempts": config.max_attempts},
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
            max_pool_connections=max_workers,
            user_agent_extra="jupiterd",
        )
        self._session: boto3.session.Session | None = None
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="jupiterd-aws")

    def client(self, service: str) -> Any:
        c = self._clients.get(service)
        if c is not None:
            return c
        with self._lock:
            c = self._clients.get(service)
            if c is None:
                if self._session is None:
                    self._session = _session(self.config.region, self.cache_dir)
                c = self._session.client(
                    service, endpoint_url=self.config.endpoint_url, config=self._boto_config
                )
                self._clients[service] = c
            return c

    async def warm(self, *services: str) -> None:
        """Create clients ahead of a plan so their cost is not in it."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._pool, self.client, s) for s in services))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for c in self._clients.values():
            c.close()
        self._clients.clear()

    async def call(
        self,
        service: str,
        operation: str,
        *,
        resource: str = "*",
        dry_run: bool = False,
        **params: Any,
    ) -> dict[str, Any]:
        """Call ``operation`` (the API's name, e.g. ``StartInstances``).

        ``dry_run`` (EC2 only) sends ``DryRun=True``: EC2 answers
        DryRunOperation when the caller is allowed, which is returned as ``{}``,
        and UnauthorizedOperation when not (``AwsAccessDenied``)."""
        if dry_run:
            params["DryRun"] = True

        def invoke() -> dict[str, Any]:
            method = getattr(self.client(service), botocore.xform_name(operation))
            return method(**params)  # type: ignore[no-any-return]

        return await self._run(service, operation, resource, invoke, dry_run=dry_run)

    async def paginate(
        self, service: str, operation: str, *, resource: str = "*", **params: Any
    ) -> dict[str, Any]:
        """All pages of a describe, merged."""

        def invoke() -> dict[str, Any]:
            paginator = self.client(service).get_paginator(botocore.xform_name(operation))
            return paginator.paginate(**params).build_full_result()  # type: ignore[no-any-return]

        return await self._run(service, operation, resource, invoke)

    async def _run(
        self,
        service: str,
        operation: str,
        resource: str,
        invoke: Callable[[], dict[str, Any]],
        *,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        action = iam_action(service, operation)
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        result = "ok"
        try:
            response = await loop.run_in_executor(self._pool, invoke)
        except Exception as exc:
            if (
                dry_run
                and isinstance(exc, botocore.exceptions.ClientError)
                and exc.response.get("Error", {}).get("Code") == "DryRunOperation"
            ):
                result = "dry_run"
                return {}
            err = classify(exc, action, resource)
            if err is None:
                result = "error"
                raise
            result = err.result
            raise err from None
        finally:
            if self.metrics is not None:
                self.metrics.aws_calls.labels(action, result).inc()
            log.debug(
                "aws_call",
                action=action,
                resource=resource,
                result=result,
                seconds=round(time.monotonic() - started, 4),
            )
        retries = response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
        if retries:
            log.info("aws_call_retried", action=action, resource=resource, retries=retries)
        return response
