"""Replicated deciders at run time (``ha:``): the lease, the views, the
witness, and the ``ClusterChanged`` events the decision machine reads.

Every replica probes every target and runs the same machine; what it
publishes and reads through the shared DynamoDB table decides whether it
may act. ``HaRunner`` (started by the supervisor when ``config.ha`` is set):

- drives the leader lease (``jupiterd.aws.lease.Lease``): acquire while
  not held, renew every third of the lease; "lost" when this replica led
  and its renewals stopped taking before another holder was seen;
- publishes this replica's view of every target at once on every target
  transition, else every ``publish_interval``;
- reads every replica's view every ``publish_interval``, and every 0.25 s
  while a service it sees down is held ``no_quorum`` (the quorum may be
  reached any moment: the decision waits on this read, not on the next
  publish), and asks the witness about services whose active it sees down;
- dispatches ``ClusterChanged`` when the lease, the leader, the table's
  reachability or a vote changed;
- on becoming leader, first finishes (or rolls back) the plans a previous
  leader left unfinished (``executor.resume_pending``), acting on nothing
  new meanwhile; on stop, releases the lease.

A DynamoDB failure is never an exception out of here: the table counts as
unreachable, every failover is held ``no_quorum``, probing goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from jupiterd.aws.client import AwsError
from jupiterd.aws.lease import Lease
from jupiterd.config.ha import HaConfig
from jupiterd.core.health import ClusterChanged, Guard, Transition
from jupiterd.core.quorum import (
    Cluster,
    ReplicaView,
    ServiceVerdicts,
    Tally,
    WitnessVote,
    tally,
)
from jupiterd.core.types import Status
from jupiterd.runtime import ha_view
from jupiterd.runtime.plans import PlanEvent
from jupiterd.telemetry import logs

if TYPE_CHECKING:
    from jupiterd.runtime.supervisor import Supervisor

FAST_READ_SECONDS = 0.25  # while a service this replica sees down is held no_quorum
WITNESS_CACHE_SECONDS = 1.0  # one witness call per service per second at most


class Views(Protocol):
    """The replicas' published views in the table (``aws.views.Views``)."""

    async def publish(
        self, services: Mapping[str, ServiceVerdicts], *, isolated: bool, why: str
    ) -> None: ...  # raises AwsError

    async def read(self) -> Mapping[str, ReplicaView]: ...  # every replica's; raises AwsError


class WitnessVerdict(Protocol):
    @property
    def kind(self) -> str: ...
    @property
    def down(self) -> bool | None: ...
    @property
    def detail(self) -> str: ...
    @property
    def veto(self) -> bool: ...


class Witness(Protocol):
    """What AWS says of an instance (``aws.witness.Witness``); never raises."""

    async def verdict(self, service: str, instance_id: str | None) -> WitnessVerdict | None: ...


@dataclass(frozen=True, slots=True)
class HaParts:
    """What a replica needs of the table and of AWS, built by the caller."""

    lease: Lease
    views: Views
    witness: Witness | None = None


class HaRunner:
    def __init__(self, sup: Supervisor, cfg: HaConfig, parts: HaParts) -> None:
        self.sup = sup
        self.cfg = cfg
        self.lease = parts.lease
        self.views = parts.views
        self.witness = parts.witness
        self.log = logs.get("jupiterd.ha")
        self.cluster: Cluster | None = None  # as last dispatched
        self.leader_id: str | None = None
        self.lease_state = "unknown"
        self.lease_error: str | None = None
        self.lease_expires_at: float | None = None
        self.reachable = True
        self.error: str | None = None  # why the table does not answer
        self.isolated = ""  # why this replica's view counts for nothing
        self.seen: dict[str, ReplicaView] = {}  # every replica's view, as last read
        self._seen_at: dict[str, float] = {}  # monotonic: when each view last changed
        self.witness_votes: dict[str, WitnessVote] = {}
        self._witness_at: dict[str, float] = {}
        self.resuming = False  # finishing a previous leader's plans first
        self._resume_due = False  # a plan of ours stopped when its journal failed
        self._followed_at = -1e9  # monotonic: when a peer's view last made us re-read AWS
        self._led = False  # was leader and has seen no other holder since
        self._known = False  # the lease item was read at least once
        self._key: tuple[Any, ...] | None = None
        self._dirty = asyncio.Event()  # publish now
        self._wake = asyncio.Event()  # read now
        self._seq = 0

    # ------------------------------------------------------------------ start/stop

    def start(self) -> None:
        self.sup.observers.append(self._observe)
        self.sup.spawn(self._lease_loop(), "ha-lease")
        self.sup.spawn(self._publish_loop(), "ha-publish")
        self.sup.spawn(self._read_loop(), "ha-read")
        self.log.info(
            "replicated deciders on",
            replica=self.cfg.replica_id,
            table=self.cfg.table,
            quorum=self.cfg.needed,
            replicas=self.cfg.replicas,
        )

    async def stop(self) -> None:
        """Release the lease (the loops are the supervisor's tasks, already
        cancelled): another replica takes over at once, not after expiry."""
        if self._observe in self.sup.observers:
            self.sup.observers.remove(self._observe)
        if self.lease.token is not None:
            await self.lease.release()
        self.sup.metrics.ha_leader.set(0)

    def _observe(self, item: object) -> None:
        if isinstance(item, Transition):
            self._dirty.set()  # publish at once: a vote may have changed
            if item.new is Status.DOWN:
                self._wake.set()  # and look at the others' votes and the witness now
        elif isinstance(item, PlanEvent) and item.outcome.detail.startswith("the plan stopped"):
            self._resume_due = True  # its journal failed mid-plan: finish it once it answers

    # ------------------------------------------------------------------ the lease

    async def _lease_loop(self) -> None:
        while True:
            await self._lease_once()
            await self.sup.clock.sleep(self.lease.duration / 3)

    async def _lease_once(self) -> None:
        lease, me = self.lease, self.cfg.replica_id
        if lease.token is None:
            await lease.acquire()
        elif not await lease.renew() and lease.token is not None:
            self.sup.metrics.ha_dynamodb_errors.inc()  # unanswered: still held, for now
            self.lease_error = "its renewals get no answer from the table"
        if lease.is_leader():
            self.lease_error = None
            self.leader_id = me
            self.lease_expires_at = self.sup.clock.time() + lease.duration
            if self._resume_due and not self.resuming and not self.sup.plans.busy():
                self._resume_due = False
                self.resuming = True
                self.sup.spawn(self._resume(), "ha-resume")
        else:
            try:
                rec = await lease.read()
            except AwsError as exc:
                self.sup.metrics.ha_dynamodb_errors.inc()
                self.lease_error = exc.sentence()
            else:
                self._known = True
                if rec is None or rec.owner != me:
                    self._led = False  # another holds it (or nobody): a follower
                    self.leader_id = rec.owner if rec is not None else None
                    self.lease_expires_at = rec.expires_at if rec and rec.owner else None
        self._update()

    def _lease_word(self) -> str:
        if self.lease.is_leader():
            if not self._led:
                self._led = True
                self.log.info("leader", replica=self.cfg.replica_id, token=self.lease.token)
                if not self.sup.executor.dry_run:
                    self.resuming = True
                    self.sup.spawn(self._resume(), "ha-resume")
            return "leader"
        if self._led:
            return "lost"
        return "follower" if self._known else "unknown"

    async def _resume(self) -> None:
        """Finish the plans an earlier leader left unfinished before acting."""
        try:
            for o in await self.sup.executor.resume_pending():
                self.sup.resumed(o)
        except Exception:  # an executor bug must not leave this replica stuck
            self.log.exception("resuming unfinished plans failed")
        finally:
            self.resuming = False
            self._update()

    # ------------------------------------------------------------------ views

    async def _publish_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), self.cfg.publish_interval)
            self._dirty.clear()
            await self._publish()

    async def _publish(self) -> None:
        self.isolated = ha_view.isolation(self.sup.state)
        try:
            await self.views.publish(
                ha_view.verdicts(self.sup), isolated=bool(self.isolated), why=self.isolated
            )
        except Exception as exc:  # AwsError, or a defect: neither stops the loop
            self._table_error(exc)
            return
        self._seq += 1
        self.sup.metrics.ha_views_published.inc()

    async def _read_loop(self) -> None:
        while True:
            await self._read_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._read_interval())
            self._wake.clear()

    def _read_interval(self) -> float:
        """``publish_interval``; 0.25 s while a service this replica sees
        failing is not yet decided (held no_quorum, or on its way down)."""
        wait = self.cfg.publish_interval
        if self.lease.is_leader():
            wait = min(wait, self.lease.margin / 2)  # notice the lease running out in time
        for s in self.sup.state.services.values():
            held = s.hold is not None and s.hold.guard is Guard.NO_QUORUM
            if held or (s.hold is None and s.target(s.active).status.failing):
                return min(wait, FAST_READ_SECONDS)
        return wait

    async def _read_once(self) -> None:
        try:
            views = await self.views.read()
        except Exception as exc:
            self._table_error(exc)
        else:
            if not self.reachable:
                self.log.info("the replicas' table answers again", table=self.cfg.table)
            self.reachable, self.error = True, None
            now = self.sup.clock.monotonic()
            for r, v in views.items():
                if v.age is not None:
                    self._seen_at[r] = now - v.age
            self.seen = dict(views)
            self._follow_peers(views)
        await self._ask_witness()
        self._update()

    def _follow_peers(self, views: Mapping[str, ReplicaView]) -> None:
        """A peer that moved a service: re-read AWS now (``ha_view.moved``)."""
        now = self.sup.clock.monotonic()
        if now - self._followed_at >= 2.0 and ha_view.moved(self.sup, self.cfg.replica_id, views):
            self._followed_at = now
            self.sup.spawn(self.sup.refresh_inventory(), "ha-follow")

    def _table_error(self, exc: Exception) -> None:
        self.sup.metrics.ha_dynamodb_errors.inc()
        why = exc.sentence() if isinstance(exc, AwsError) else f"internal error: {exc!r}"
        if not isinstance(exc, AwsError):
            self.log.error("replicas' table access failed", error=why)
        if self.reachable:
            self.log.warning("the replicas' table does not answer: no replica acts", error=why)
        self.reachable, self.error = False, why

    def age_of(self, replica: str) -> float | None:
        if replica == self.cfg.replica_id:
            return 0.0
        at = self._seen_at.get(replica)
        return None if at is None else max(0.0, self.sup.clock.monotonic() - at)

    # ------------------------------------------------------------------ the witness

    def _failing(self) -> list[str]:
        """Services whose active target this replica sees failing."""
        return [n for n, s in self.sup.state.services.items() if s.target(s.active).status.failing]

    async def _ask_witness(self) -> None:
        """Ask the witness about every service this replica sees failing, at
        most once a second each; forget its verdicts once it is not."""
        if self.witness is None:
            return
        failing = self._failing()
        for name in [n for n in self._witness_at if n not in failing]:
            self._witness_at.pop(name)
            self.witness_votes.pop(name, None)
        now = self.sup.clock.monotonic()
        due = [n for n in failing if now - self._witness_at.get(n, -1e9) >= WITNESS_CACHE_SECONDS]
        if not due:
            return
        services, targets = self.sup.state.services, self.sup.targets

        async def one(name: str) -> None:
            assert self.witness is not None
            t = targets.get((name, services[name].active))
            w = await self.witness.verdict(name, t.instance_id if t is not None else None)
            self._witness_at[name] = self.sup.clock.monotonic()
            if w is None:
                self.witness_votes.pop(name, None)
            else:
                self.witness_votes[name] = WitnessVote(w.kind, w.down, w.detail, w.veto)

        await asyncio.gather(*(one(n) for n in due), return_exceptions=True)

    def _witness_pending(self, name: str) -> bool:
        """A witness exists and has not answered about this outage yet: the
        votes are not counted without it (a veto must not come too late)."""
        return self.witness is not None and name not in self._witness_at

    # ------------------------------------------------------------------ the cluster

    def _update(self) -> None:
        """Count the votes; dispatch ``ClusterChanged`` when anything that
        decides changed; export the metrics."""
        sup, cfg = self.sup, self.cfg
        word = self._lease_word()
        self.lease_state = word
        self.isolated = ha_view.isolation(sup.state)
        own = ReplicaView(
            replica=cfg.replica_id,
            seq=self._seq,
            published_at=sup.clock.time(),
            isolated=bool(self.isolated),
            why=self.isolated,
            services=MappingProxyType(ha_view.verdicts(sup)),
            fresh=True,
            age=0.0,
        )
        others = self.seen if self.reachable else {}
        tallies: dict[str, Tally] = {
            name: tally(
                name,
                s.active,
                others,
                own,
                self.witness_votes.get(name),
                cfg.needed,
                expected=cfg.replicas,
            )
            for name, s in sup.state.services.items()
            if not self._witness_pending(name)
        }
        why = ""
        if not self.reachable:
            why = self.error or "no answer"
        elif word == "lost":
            why = self.lease_error or "its renewals stopped taking"
        elif self.resuming:
            why = (
                "this replica just took the lease and first finishes the plans "
                "the previous leader left unfinished"
            )
        cluster = Cluster(
            leader=word == "leader" and not self.resuming,
            lease=word,
            leader_id=self.leader_id,
            why=why,
            tallies=MappingProxyType(tallies),
            reachable=self.reachable,
        )
        key = (
            cluster.leader,
            word,
            self.leader_id,
            self.reachable,
            why,
            tuple(
                (n, t.role, tuple((v.replica, v.down) for v in t.votes), t.witness)
                for n, t in tallies.items()
            ),
        )
        self.cluster = cluster
        self._export(cluster)
        if key != self._key:
            self._key = key
            sup.dispatch(ClusterChanged(cluster, sup.now()))

    def _export(self, c: Cluster) -> None:
        m = self.sup.metrics
        m.ha_leader.set(1 if c.lease == "leader" else 0)
        if self.lease_expires_at is not None:
            m.ha_lease_expiry.set(self.lease_expires_at)
        for r in {*self.seen, self.cfg.replica_id}:
            age = self.age_of(r)
            if age is not None:
                m.ha_replica_last_report.labels(r).set(age)
        for name, t in c.tallies.items():
            counts = {"down": 0, "up": 0, "abstain": 0}
            for v in t.votes:
                counts[{True: "down", False: "up", None: "abstain"}[v.down]] += 1
            for word, n in counts.items():
                m.ha_votes.labels(name, word).set(n)

    def status(self) -> dict[str, Any]:
        return ha_view.status_json(self)

    def votes_json(self, service: str) -> dict[str, Any] | None:
        c = self.cluster
        return ha_view.tally_json(c.tallies.get(service) if c is not None else None)
