"""Configuration of replicated deciders (``ha:``) and of the AWS-side
witness a service may call as one more vote (``witness:``)."""

from __future__ import annotations

import re
import socket
from typing import Literal, Self

from pydantic import Field, field_validator, model_validator

from jupiterd.config.values import Model, PositiveSeconds

_REPLICA = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_TABLE = re.compile(r"[A-Za-z0-9_.-]{3,255}")


def default_replica_id() -> str:
    """The host's short name, cut to what a replica id allows."""
    name = socket.gethostname().split(".")[0]
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", name).lstrip("-_.")[:64]
    return name or "replica"


class HaConfig(Model):
    """Several jupiterd processes (replicas), one leader at a time, sharing
    one DynamoDB table: the leader lease, the plan journal and each
    replica's published view of every target. Without ``ha:`` jupiterd
    decides alone, as a single process."""

    table: str
    replica_id: str = Field(default_factory=default_replica_id)
    # How many replicas are deployed (for /status and the default quorum).
    replicas: int = Field(default=3, ge=1, le=15)
    # DOWN votes (fresh replicas' views, plus the witness's) a failover
    # needs. Default: a majority of `replicas`.
    quorum: int | None = Field(default=None, ge=1, le=16)
    lease_seconds: PositiveSeconds = 15.0
    # The leader stops acting this long before its lease can expire
    # elsewhere (monotonic clocks drifting, a pause between check and act).
    lease_margin: PositiveSeconds = 3.0
    # Each replica republishes its view at least this often (and at once on
    # every change of a target's state).
    publish_interval: PositiveSeconds = 2.0
    # A view not renewed for this long does not count.
    stale_after: PositiveSeconds = 6.0

    @field_validator("table")
    @classmethod
    def _table(cls, v: str) -> str:
        if not _TABLE.fullmatch(v):
            raise ValueError("must be 3-255 letters, digits, '_', '-' or '.' (a DynamoDB table)")
        return v

    @field_validator("replica_id")
    @classmethod
    def _replica(cls, v: str) -> str:
        if not _REPLICA.fullmatch(v):
            raise ValueError("must be 1-64 letters, digits, '_', '-' or '.'")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.lease_margin * 2 > self.lease_seconds:
            raise ValueError(
                f"lease_margin ({self.lease_margin:g}s) must be at most half of "
                f"lease_seconds ({self.lease_seconds:g}s)"
            )
        if self.publish_interval * 2 > self.stale_after:
            raise ValueError(
                f"stale_after ({self.stale_after:g}s) must be at least twice "
                f"publish_interval ({self.publish_interval:g}s)"
            )
        if self.quorum is not None and self.quorum > self.replicas + 1:
            raise ValueError(
                f"quorum {self.quorum} can never be reached by {self.replicas} "
                "replica(s) and a witness"
            )
        return self

    @property
    def needed(self) -> int:
        """The DOWN votes a failover needs."""
        return self.quorum if self.quorum is not None else self.replicas // 2 + 1


class WitnessConfig(Model):
    """What AWS itself says of the active instance, as one more vote:

    - ``elb``: the target health of the instance in the service's target
      groups (``target_group``: one ARN, default all of its attachments');
    - ``ec2_status``: the EC2 instance and system status checks;
    - ``cloudwatch``: the state of the CloudWatch alarm ``alarm`` (ALARM is
      a DOWN vote, OK an UP vote, INSUFFICIENT_DATA no vote).

    ``veto``: a witness that sees the active healthy holds the failover
    whatever the replicas say (the default); false: it only counts as a
    vote."""

    kind: Literal["elb", "ec2_status", "cloudwatch"]
    alarm: str | None = Field(default=None, min_length=1, max_length=255)
    target_group: str | None = Field(
        default=None, pattern=r"^arn:aws[a-z-]*:elasticloadbalancing:[a-z0-9-]+:\d{12}:"
    )
    veto: bool = True

    @model_validator(mode="after")
    def _alarm(self) -> Self:
        if self.kind == "cloudwatch" and self.alarm is None:
            raise ValueError("a cloudwatch witness needs `alarm`: the alarm's name")
        if self.kind != "cloudwatch" and self.alarm is not None:
            raise ValueError(f"`alarm` is for a cloudwatch witness, not {self.kind}")
        if self.kind != "elb" and self.target_group is not None:
            raise ValueError(f"`target_group` is for an elb witness, not {self.kind}")
        return self
