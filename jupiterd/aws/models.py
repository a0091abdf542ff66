"""botocore's service models pruned to the operations jupiterd calls, and
their cache in ``state_dir`` (see ``jupiterd.aws.client``)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import botocore.exceptions
import botocore.loaders
import botocore.session
import structlog

log = structlog.get_logger("jupiterd.aws")

# The API operations jupiterd calls; tests check the code calls no other.
# botocore's models are pruned to these: EC2's full model alone would hold
# some 20 MB of the daemon's memory for the eight operations it uses.
OPERATIONS: dict[str, frozenset[str]] = {
    "ec2": frozenset(
        {
            "AssociateAddress",
            "DescribeAddresses",
            "DescribeInstanceStatus",  # the ec2_status witness (aws/witness.py)
            "DescribeInstances",
            "DescribeNetworkInterfaceAttribute",
            "DescribeRouteTables",
            "DescribeSecurityGroups",  # discover only
            "DescribeSubnets",
            "ModifyInstanceAttribute",
            "ReplaceRoute",
            "StartInstances",
            "StopInstances",
        }
    ),
    "cloudwatch": frozenset({"DescribeAlarms"}),  # the cloudwatch witness
    "dynamodb": frozenset(  # the lease (lease.py, ha_table.py), views.py, ha_journal.py
        {
            "BatchGetItem",
            "CreateTable",
            "DescribeTable",
            "DescribeTimeToLive",
            "GetItem",
            "Scan",
            "TransactWriteItems",
            "UpdateItem",
            "UpdateTimeToLive",
        }
    ),
    "elbv2": frozenset(
        {"DeregisterTargets", "DescribeTargetGroups", "DescribeTargetHealth", "RegisterTargets"}
    ),
    "route53": frozenset(
        {"ChangeResourceRecordSets", "GetChange", "ListHostedZones", "ListResourceRecordSets"}
    ),
    "sns": frozenset({"GetTopicAttributes", "ListTopics", "Publish"}),
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
                [sys.executable, "-m", "jupiterd.aws.models"],
                # The child imports this very copy of jupiterd, whatever the
                # working directory or another installed copy.
                cwd=Path(__file__).resolve().parents[2],
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


if __name__ == "__main__":  # the child process of pruned_models()
    json.dump(_prune_all(), sys.stdout)
