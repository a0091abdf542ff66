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
import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
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

# boto3 service name -> IAM service prefix
IAM_PREFIX = {
    "ec2": "ec2",
    "elbv2": "elasticloadbalancing",
    "route53": "route53",
    "sns": "sns",
    "sts": "sts",
}

_DENIED = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnauthorizedOperation",
        "AuthorizationError",
        "UnauthorizedAccess",
        "Forbidden",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "AuthFailure",
    }
)
_THROTTLED = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
        "SlowDown",
        "BandwidthLimitExceeded",
    }
)
_ENCODED = re.compile(r"\s*Encoded authorization failure message:.*", re.S)


# The API operations jupiterd calls; tests check the code calls no other.
# botocore's models are pruned to these: EC2's full model alone would hold
# some 20 MB of the daemon's memory for the eight operations it uses.
OPERATIONS: dict[str, frozenset[str]] = {
    "ec2": frozenset(
        {
            "AssociateAddress",
            "DescribeAddresses",
            "DescribeInstances",
            "DescribeRouteTables",
            "ModifyInstanceAttribute",
            "ReplaceRoute",
            "StartInstances",
            "StopInstances",
        }
    ),
    "elbv2": frozenset(
        {"DeregisterTargets", "DescribeTargetGroups", "DescribeTargetHealth", "RegisterTargets"}
    ),
    "route53": frozenset({"ChangeResourceRecordSets", "GetChange", "ListResourceRecordSets"}),
    "sns": frozenset({"GetTopicAttributes", "Publish"}),
}


def prune_model(model: dict[str, Any], operations: frozenset[str]) -> dict[str, Any]:
    """A service model with only ``operations``, the shapes they reach, and
    no documentation strings."""
    ops = {name: op for name, op in model["operations"].items() if name in operations}
    shapes = model["shapes"]
    todo = [
        ref["shape"]
        for op in ops.values()
        for ref in [op.get("input"), op.get("output"), *op.get("errors", ())]
        if ref
    ]
    keep: set[str] = set()
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep.add(name)
        shape = shapes[name]
        todo.extend(m["shape"] for m in shape.get("members", {}).values())
        todo.extend(shape[k]["shape"] for k in ("member", "key", "value") if k in shape)

    def bare(d: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in d.items() if k != "documentation"}
        if "members" in out:
            out["members"] = {n: bare(m) for n, m in out["members"].items()}
        return out

    return {
        **{k: v for k, v in model.items() if k not in ("operations", "shapes", "documentation")},
        "operations": {n: bare(op) for n, op in ops.items()},
        "shapes": {n: bare(shapes[n]) for n in keep},
    }


def _prune_all() -> dict[str, dict[str, Any]]:
    loader = botocore.session.get_session().get_component("data_loader")
    return {
        svc: prune_model(loader.load_service_model(svc, "service-2"), ops)
        for svc, ops in OPERATIONS.items()
    }


_pruned: dict[str, dict[str, Any]] | None = None
_pruned_lock = threading.Lock()


def models_cache_file(cache_dir: Path) -> Path:
    """Where the pruned models are kept between runs: named by botocore's
    version and OPERATIONS, so an upgrade or a new call makes a new file."""
    digest = hashlib.sha256(
        json.dumps({k: sorted(v) for k, v in sorted(OPERATIONS.items())}).encode()
    ).hexdigest()[:12]
    return cache_dir / f"aws-models-{CACHE_FORMAT}-{botocore.__version__}-{digest}.json"


CACHE_FORMAT = "v2"
CACHE_MAX_BYTES = 8 << 20  # the pruned models take some 90 kB


def _digest(models: Any) -> str:
    return hashlib.sha256(
        json.dumps(models, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def _walk_shapes(shape: Any, seen: set[str]) -> None:
    stack = [shape]
    while stack:
        sh = stack.pop()
        if sh is None or sh.name in seen:
            continue
        seen.add(sh.name)
        if sh.type_name == "structure":
            stack.extend(sh.members.values())
        elif sh.type_name == "list":
            stack.append(sh.member)
        elif sh.type_name == "map":
            stack.extend((sh.key, sh.value))


def parse_models_cache(data: bytes) -> dict[str, dict[str, Any]]:
    """The cache file: ``{"format", "sha256", "models"}``, the digest of the
    models matching, every service and operation jupiterd calls present,
    and botocore able to build each operation's every shape (a cache that
    passes cannot make a plan fail)."""
    from botocore.model import ServiceModel

    from jupiterd.state.statefile import Invalid, loads

    doc = loads(data)
    if not isinstance(doc, dict) or doc.get("format") != CACHE_FORMAT:
        raise Invalid("not a models cache of this version")
    models = doc.get("models")
    if not isinstance(models, dict) or set(models) != set(OPERATIONS):
        raise Invalid("the services are not the ones jupiterd calls")
    if doc.get("sha256") != _digest(models):
        raise Invalid("the content does not match its digest")
    try:
        for svc, model in models.items():
            if not isinstance(model, dict) or set(model.get("operations", ())) != OPERATIONS[svc]:
                raise Invalid(f"{svc}: the operations are not the ones jupiterd calls")
            sm = ServiceModel(model, svc)
            if not (sm.endpoint_prefix and sm.protocol and sm.signature_version):
                raise Invalid(f"{svc}: incomplete metadata")
            seen: set[str] = set()
            for op in OPERATIONS[svc]:
                om = sm.operation_model(op)
                _walk_shapes(om.input_shape, seen)
                _walk_shapes(om.output_shape, seen)
                for err in om.error_shapes:
                    _walk_shapes(err, seen)
    except Invalid:
        raise
    except Exception as exc:  # botocore's own complaint about the model
        raise Invalid(f"botocore cannot use it: {type(exc).__name__}: {exc}") from None
    return models


def _read_cache(path: Path) -> dict[str, dict[str, Any]] | None:
    """The cached models; a damaged cache is moved aside (and rebuilt)."""
    from jupiterd.state import statefile

    try:
        return statefile.read(path, statefile.MODELS_CACHE, parse_models_cache, CACHE_MAX_BYTES)
    except statefile.Damaged:
        return None


def _write_cache(path: Path, models: dict[str, dict[str, Any]]) -> None:
    """Best effort: a read-only state directory only costs the next start
    the pruning again."""
    from jupiterd.state import statefile

    doc = {"format": CACHE_FORMAT, "sha256": _digest(models), "models": models}
    try:
        statefile.write_atomic(path, json.dumps(doc).encode())
    except OSError as exc:
        log.debug("cannot keep the pruned AWS models", path=str(path), error=str(exc))
        return
    for old in path.parent.glob("aws-models-*.json"):
        if old != path:
            with contextlib.suppress(OSError):
                old.unlink()


def pruned_models(cache_dir: Path | None = None) -> dict[str, dict[str, Any]]:
    """The models of OPERATIONS' services, pruned. They are made in a child
    process: parsing a full model in this one would leave its memory behind
    (freed, but not given back to the system). That costs about half a
    second, so the result is kept in ``cache_dir`` (the state directory)
    and read from there at the next start."""
    global _pruned
    with _pruned_lock:
        if _pruned is not None:
            return _pruned
        path = models_cache_file(cache_dir) if cache_dir is not None else None
        if path is not None and (cached := _read_cache(path)) is not None:
            _pruned = cached
            return _pruned
        try:
            out = subprocess.run(
                [sys.executable, "-m", "jupiterd.aws"],
                capture_output=True,
                timeout=120,
                check=True,
            )
            _pruned = json.loads(out.stdout)
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            log.warning("pruning AWS models in this process", reason=str(exc))
            _pruned = _prune_all()
        if path is not None:
            _write_cache(path, _pruned)
        return _pruned


class _PrunedLoader(botocore.loaders.Loader):  # type: ignore[misc]
    """Serves the pruned models of ``OPERATIONS``' services."""

    def __init__(self, cache_dir: Path | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cache_dir = cache_dir

    def load_service_model(
        self, service_name: str, type_name: str, api_version: str | None = None
    ) -> Any:
        if type_name == "service-2" and service_name in OPERATIONS and api_version is None:
            return pruned_models(self.cache_dir)[service_name]
        return super().load_service_model(service_name, type_name, api_version)


def _session(region: str, cache_dir: Path | None = None) -> boto3.session.Session:
    core = botocore.session.get_session()
    paths = [p for p in (core.get_config_variable("data_path") or "").split(os.pathsep) if p]
    core.register_component(
        "data_loader", _PrunedLoader(cache_dir=cache_dir, extra_search_paths=paths)
    )
    return boto3.session.Session(botocore_session=core, region_name=region)


def iam_action(service: str, operation: str) -> str:
    return f"{IAM_PREFIX.get(service, service)}:{operation}"


class AwsError(Exception):
    """An AWS call failed; ``str()`` is the sentence for logs and outcomes."""

    result = "error"  # the metric's result label

    def __init__(self, action: str, resource: str, code: str, message: str) -> None:
        self.action = action
        self.resource = resource
        self.code = code
        self.message = message
        super().__init__(self.sentence())

    def sentence(self) -> str:
        msg = f": {self.message}" if self.message else ""
        return f"{self.action} on {self.resource} failed ({self.code}{msg})"


class AwsAccessDenied(AwsError):
    result = "denied"

    def sentence(self) -> str:
        return (
            f"AWS denied {self.action} on {self.resource} ({self.code}): "
            f"the IAM policy must allow {self.action} on {self.resource}"
        )


class AwsNotFound(AwsError):
    result = "not_found"

    def sentence(self) -> str:
        msg = f": {self.message}" if self.message else ""
        return f"{self.resource} does not exist ({self.code} from {self.action}{msg})"


class AwsThrottled(AwsError):
    result = "throttled"

    def sentence(self) -> str:
        return (
            f"{self.action} on {self.resource} was still throttled after every retry ({self.code})"
        )


class AwsUnavailable(AwsError):
    """No answer at all: endpoint unreachable, timeouts, no credentials."""

    result = "unreachable"

    def sentence(self) -> str:
        return f"{self.action} on {self.resource}: {self.message}"


def _short(message: str) -> str:
    message = _ENCODED.sub("", message).strip()
    return message if len(message) <= 300 else message[:297] + "..."


def classify(exc: BaseException, action: str, resource: str) -> AwsError | None:
    """botocore's exception -> ours; None for what is not an AWS failure."""
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code") or "Unknown")
        message = _short(str(err.get("Message") or ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _DENIED:
            return AwsAccessDenied(action, resource, code, message)
        if code in _THROTTLED:
            return AwsThrottled(action, resource, code, message)
        if (
            code.endswith("NotFound")
            or code.startswith("NoSuch")
            or code == "InvalidInstanceID.Malformed"
        ):
            return AwsNotFound(action, resource, code, message)
        if isinstance(status, int) and status >= 500:
            return AwsError(action, resource, code, f"AWS answered {status} after every retry")
        return AwsError(action, resource, code, message)
    if isinstance(
        exc, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError
    ):
        return AwsUnavailable(
            action,
            resource,
            "NoCredentials",
            "no AWS credentials found (instance profile, environment, or shared config)",
        )
    if isinstance(
        exc,
        botocore.exceptions.EndpointConnectionError
        | botocore.exceptions.ConnectTimeoutError
        | botocore.exceptions.ReadTimeoutError
        | botocore.exceptions.ConnectionClosedError,
    ):
        return AwsUnavailable(
            action, resource, type(exc).__name__, f"cannot reach the AWS endpoint ({exc})"
        )
    return None


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


if __name__ == "__main__":  # the child process of pruned_models()
    json.dump(_prune_all(), sys.stdout)
