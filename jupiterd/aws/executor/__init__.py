"""The AWS failover executor: ``AwsExecutor`` runs plans step by step on AWS."""

from jupiterd.aws.executor.runner import (
    AwsExecutor,
    Prober,
    StepFailed,
    StepHook,
    _refused,
    check_invariant,
    default_prober,
)

__all__ = [
    "AwsExecutor",
    "Prober",
    "StepFailed",
    "StepHook",
    "_refused",
    "check_invariant",
    "default_prober",
]
