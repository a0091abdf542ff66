"""The AWS failover executor: ``AwsExecutor`` runs plans step by step on AWS.

``runner`` holds the executor (orchestration, journal, rollback, resume);
``steps`` one handler per step kind; ``changes`` the AWS client of the steps
(and its dry run); ``polling`` the waits."""

from jupiterd.aws.executor.changes import _refused
from jupiterd.aws.executor.context import Prober, StepFailed, default_prober
from jupiterd.aws.executor.runner import AwsExecutor
from jupiterd.aws.executor.stepper import StepHook

__all__ = [
    "AwsExecutor",
    "Prober",
    "StepFailed",
    "StepHook",
    "_refused",
    "default_prober",
]
