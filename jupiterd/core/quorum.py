"""The quorum of replicated deciders: whose view counts, and what it says.

Pure (no I/O, no clock): every replica publishes, per service, which role
it believes active and its verdict on each target; ``tally`` turns every
replica's view, this replica's own and the AWS-side witness into one
``Tally`` per service, which the decision machine reads from ``Cluster``.

A replica votes DOWN only when its view is fresh, not isolated, believes
the same role active as the tally's, and sees that role down; UP when its
view is fresh (and not isolated, and agrees on the active role) and sees it
up; any other replica abstains, with the reason. The witness is one more
vote when it has a verdict; a vetoing witness that sees the active healthy
holds the failover whatever the replicas say.

``TargetVerdict``, ``ServiceVerdicts`` and ``ReplicaView`` are what a view
is made of (the table's reader and writer share them)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from jupiterd.core.types import Role

# --------------------------------------------------------------------------- views


@dataclass(frozen=True, slots=True)
class TargetVerdict:
    status: str  # a Status value: "up" | "down" | "suspect" | "unknown" | "stopped" ...
    since: float | None  # wall time the status was entered
    probed_at: float | None  # wall time of the last probe


@dataclass(frozen=True, slots=True)
class ServiceVerdicts:
    active: str  # "primary" | "backup", as this replica believes
    primary: TargetVerdict
    backup: TargetVerdict

    def target(self, role: Role) -> TargetVerdict:
        return self.primary if role is Role.PRIMARY else self.backup


@dataclass(frozen=True, slots=True)
class ReplicaView:
    replica: str
    seq: int  # +1 on every publish of that replica
    published_at: float  # the publisher's wall time (for people)
    isolated: bool  # sees every target down / monitor degraded: votes nothing
    why: str  # why isolated ("" otherwise)
    services: Mapping[str, ServiceVerdicts]
    fresh: bool  # computed by the reader
    age: float | None  # seconds since the reader saw it change (None: unknown)


class _Verdict(Protocol):
    @property
    def status(self) -> str: ...
    @property
    def since(self) -> float | None: ...
    @property
    def probed_at(self) -> float | None: ...


class _Verdicts(Protocol):
    @property
    def active(self) -> str: ...
    @property
    def primary(self) -> _Verdict: ...
    @property
    def backup(self) -> _Verdict: ...


class View(Protocol):
    """What ``tally`` reads of a replica's view (``ReplicaView`` or alike)."""

    @property
    def replica(self) -> str: ...
    @property
    def isolated(self) -> bool: ...
    @property
    def why(self) -> str: ...
    @property
    def fresh(self) -> bool: ...
    @property
    def age(self) -> float | None: ...
    @property
    def services(self) -> Mapping[str, _Verdicts]: ...


# --------------------------------------------------------------------------- votes


@dataclass(frozen=True, slots=True)
class Vote:
    replica: str
    down: bool | None  # None: abstains (stale, isolated, not probed, another active)
    detail: str  # "down since 12:00:01, probed 0.4s ago" / "stale (last seen 9s ago)"


@dataclass(frozen=True, slots=True)
class WitnessVote:
    """What AWS itself says of the active instance (the witness's verdict)."""

    kind: str  # "elb" | "ec2_status" | "cloudwatch"
    down: bool | None  # True: AWS sees it failing; False: healthy; None: no verdict
    detail: str
    veto: bool

    @property
    def name(self) -> str:
        return _WITNESS_NAMES.get(self.kind, self.kind)


_WITNESS_NAMES = {
    "elb": "the ELB witness",
    "ec2_status": "the EC2 status-check witness",
    "cloudwatch": "the CloudWatch alarm witness",
}


@dataclass(frozen=True, slots=True)
class Tally:
    service: str
    role: Role  # the active role voted on
    votes: tuple[Vote, ...]
    witness: WitnessVote | None
    needed: int
    expected: int = 0  # replicas deployed (ha.replicas): those never heard of count too

    @property
    def replicas(self) -> int:
        return max(self.expected, len(self.votes))

    @property
    def down_votes(self) -> int:
        """Replicas' DOWN votes, plus the witness's."""
        n = sum(1 for v in self.votes if v.down is True)
        return n + (1 if self.witness is not None and self.witness.down is True else 0)

    @property
    def up_votes(self) -> int:
        n = sum(1 for v in self.votes if v.down is False)
        return n + (1 if self.witness is not None and self.witness.down is False else 0)

    @property
    def vetoed(self) -> bool:
        return self.witness is not None and self.witness.veto and self.witness.down is False

    @property
    def reached(self) -> bool:
        return self.down_votes >= self.needed and not self.vetoed

    @property
    def split(self) -> bool:
        """Fresh replicas disagree: some see the active down, some up."""
        return any(v.down is True for v in self.votes) and any(v.down is False for v in self.votes)

    def sentence(self) -> str:
        """E.g. "1 of 3 replicas see the primary down (quorum 2): az-a; up:
        az-b, az-c; the ELB witness says healthy (veto)"."""
        down = [v.replica for v in self.votes if v.down is True]
        up = [v.replica for v in self.votes if v.down is False]
        out = f"{len(down)} of {self.replicas} replicas see the {self.role} down"
        out += f" (quorum {self.needed})"
        if down:
            out += ": " + ", ".join(down)
        if up:
            out += "; up: " + ", ".join(up)
        absent = [f"{v.replica} ({v.detail})" for v in self.votes if v.down is None]
        if absent:
            out += "; abstaining: " + ", ".join(absent)
        heard = len(self.votes)
        if heard < self.expected:
            out += f"; {self.expected - heard} never heard from"
        w = self.witness
        if w is not None:
            said = {True: "failing", False: "healthy", None: "nothing"}[w.down]
            out += f"; {w.name} says {said}"
            if w.detail:
                out += f" ({w.detail})"
            if w.down is True:
                out += f": {self.down_votes} down votes in all"
            elif self.vetoed:
                out += ": its veto holds the failover"
        return out


def vote(replica: View, service: str, role: Role, now: float | None = None) -> Vote:
    """One replica's vote on ``service``'s ``role`` being down."""
    name = replica.replica
    if not replica.fresh:
        seen = f"last seen {_secs(replica.age)} ago" if replica.age is not None else "never seen"
        return Vote(name, None, f"stale ({seen})")
    if replica.isolated:
        return Vote(name, None, f"isolated: {replica.why}" if replica.why else "isolated")
    verdicts = replica.services.get(service)
    if verdicts is None:
        return Vote(name, None, f"does not watch {service}")
    if verdicts.active != role.value:
        return Vote(name, None, f"believes the {verdicts.active} is active")
    t = verdicts.primary if role is Role.PRIMARY else verdicts.backup
    probed = ""
    if t.probed_at is not None and now is not None:
        probed = f", probed {_secs(max(0.0, now - t.probed_at))} ago"
    if t.status == "down":
        since = f" since {_clock(t.since)}" if t.since is not None else ""
        return Vote(name, True, f"down{since}{probed}")
    if t.status == "up":
        return Vote(name, False, f"up{probed}")
    return Vote(name, None, f"{t.status}{probed}")


def tally(
    service: str,
    role: Role,
    views: Mapping[str, View] | Iterable[View],
    own: View | None,
    witness: WitnessVote | None,
    needed: int,
    *,
    now: float | None = None,
    expected: int = 0,
) -> Tally:
    """Every replica's vote on ``service``'s active ``role`` (own view
    first, then the others by id; own replaces its published copy), and the
    witness's. ``now``: the reader's wall time, for the "probed ... ago"
    wording only."""
    others = views.values() if isinstance(views, Mapping) else views
    seen: list[View] = [own] if own is not None else []
    skip = own.replica if own is not None else None
    seen += sorted((v for v in others if v.replica != skip), key=lambda v: v.replica)
    votes = tuple(vote(v, service, role, now) for v in seen)
    return Tally(service, role, votes, witness, needed, expected)


# --------------------------------------------------------------------------- the cluster


@dataclass(frozen=True, slots=True)
class Cluster:
    """What this replica knows of the others, as the machine reads it."""

    leader: bool
    lease: str  # "leader" | "follower" | "lost" (was leader, renewal failed) | "unknown"
    leader_id: str | None
    why: str  # sentence for holds (the lease's or the table's trouble)
    tallies: Mapping[str, Tally] = field(default_factory=lambda: MappingProxyType({}))
    reachable: bool = True  # DynamoDB answered the last read


# --------------------------------------------------------------------------- wording


def _secs(s: float | None) -> str:
    if s is None:
        return "?"
    return f"{s:.1f}s" if s < 10 else f"{s:.0f}s"


def _clock(wall: float) -> str:
    return time.strftime("%H:%M:%SZ", time.gmtime(wall))
