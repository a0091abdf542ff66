"""The decision machine with replicated deciders (``Policy.ha``): the
guards ``no_quorum``, ``lease_lost`` and ``not_leader`` hold a due
failover, in that order after the local guards, and clear when the
cluster changes; without ``ha`` the cluster is never consulted."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

from jupiterd.core.health import (
    ClusterChanged,
    Guard,
    Hold,
    HoldCleared,
    PauseChanged,
    StartFailover,
)
from jupiterd.core.quorum import Cluster, Tally, Vote, WitnessVote
from jupiterd.core.types import Role
from tests.test_machine import Run, policy

P, B = Role.PRIMARY, Role.BACKUP


def ha_policy():
    return replace(policy(), ha=True)


def votes(*downs: bool | None) -> tuple[Vote, ...]:
    names = ["az-a", "az-b", "az-c"]
    return tuple(
        Vote(names[i], d, {True: "down", False: "up", None: "stale"}[d])
        for i, d in enumerate(downs)
    )


def cluster(
    *downs: bool | None,
    leader: bool = True,
    lease: str = "leader",
    witness: WitnessVote | None = None,
    reachable: bool = True,
    role: Role = P,
    why: str = "",
) -> Cluster:
    t = Tally("sig", role, votes(*downs), witness, 2, 3)
    return Cluster(
        leader=leader,
        lease=lease,
        leader_id="az-a" if leader else "az-b",
        why=why,
        tallies=MappingProxyType({"sig": t}),
        reachable=reachable,
    )


def down_sig(r: Run) -> None:
    """sig's primary DOWN, the others freshly looked at (no isolation)."""
    r.obs("sig", P, "---")
    r.obs("turn", P, "+")
    r.obs("frp", P, "+")


def hold(r: Run):
    h = r.svc("sig").hold
    assert h is not None
    return h


def test_without_ha_the_cluster_is_never_consulted() -> None:
    r = Run()  # Policy.ha is False: a single process
    r.send(ClusterChanged(cluster(False, False, False, leader=False), r.t))
    down_sig(r)
    assert len(r.of(StartFailover)) == 1


def test_no_view_of_the_others_yet_holds_no_quorum() -> None:
    r = Run(pol=ha_policy())
    down_sig(r)
    assert not r.of(StartFailover)
    assert hold(r).guard is Guard.NO_QUORUM
    assert hold(r).reason.endswith("but the other replicas' views have not been read yet")


def test_one_of_three_holds_no_quorum_and_says_so_then_two_start_it() -> None:
    r = Run(pol=ha_policy())
    r.send(ClusterChanged(cluster(True, False, False), r.t))
    down_sig(r)
    assert not r.of(StartFailover)
    assert hold(r).guard is Guard.NO_QUORUM
    assert "1 of 3 replicas see the primary down (quorum 2): az-a; up: az-b, az-c" in hold(r).reason
    assert [a.guard for a in r.of(Hold)] == [Guard.NO_QUORUM]
    # A second replica sees it down: the leader starts the failover at once.
    acts = r.send(ClusterChanged(cluster(True, True, False), r.t))
    [start] = [a for a in acts if isinstance(a, StartFailover)]
    assert start.service == "sig" and start.to_role is B
    assert [a.guard for a in acts if isinstance(a, HoldCleared)] == [Guard.NO_QUORUM]


def test_stale_views_do_not_make_a_quorum() -> None:
    r = Run(pol=ha_policy())
    r.send(ClusterChanged(cluster(True, None, None), r.t))
    down_sig(r)
    assert hold(r).guard is Guard.NO_QUORUM
    assert "abstaining: az-b (stale), az-c (stale)" in hold(r).reason


def test_an_unreachable_table_holds_no_quorum_even_for_the_leader() -> None:
    r = Run(pol=ha_policy())
    c = cluster(True, True, True, reachable=False, why="GetItem on jupiterd-ha failed (timeout)")
    r.send(ClusterChanged(c, r.t))
    down_sig(r)
    assert not r.of(StartFailover)
    assert hold(r).guard is Guard.NO_QUORUM
    assert (
        "shared table does not answer (GetItem on jupiterd-ha failed (timeout))" in hold(r).reason
    )
    r.send(ClusterChanged(cluster(True, True, True), r.t))
    assert len(r.of(StartFailover)) == 1


def test_a_vetoing_witness_holds_no_quorum_with_every_replica_down() -> None:
    r = Run(pol=ha_policy())
    elb = WitnessVote("elb", False, "healthy in tg-sig", veto=True)
    r.send(ClusterChanged(cluster(True, True, True, witness=elb), r.t))
    down_sig(r)
    assert not r.of(StartFailover)
    assert hold(r).guard is Guard.NO_QUORUM
    assert hold(r).reason.endswith(
        "the ELB witness says healthy (healthy in tg-sig): its veto holds the failover"
    )
    r.send(ClusterChanged(cluster(True, True, True, witness=replace(elb, down=True)), r.t))
    assert len(r.of(StartFailover)) == 1


def test_votes_on_another_role_are_not_counted() -> None:
    r = Run(pol=ha_policy())
    r.send(ClusterChanged(cluster(True, True, True, role=B), r.t))
    down_sig(r)
    assert hold(r).guard is Guard.NO_QUORUM
    assert hold(r).reason.endswith("but the replicas' votes on it are not counted yet")


def test_a_follower_holds_not_leader_with_a_quorum() -> None:
    r = Run(pol=ha_policy())
    r.send(ClusterChanged(cluster(True, True, False, leader=False, lease="follower"), r.t))
    down_sig(r)
    assert not r.of(StartFailover)
    assert hold(r).guard is Guard.NOT_LEADER
    assert hold(r).reason.endswith(": the leader, az-b, acts, not this replica")
    # It takes the lease over (the leader died): it acts.
    r.send(ClusterChanged(cluster(True, True, False), r.t))
    assert len(r.of(StartFailover)) == 1


def test_a_lost_lease_holds_lease_lost_before_not_leader() -> None:
    r = Run(pol=ha_policy())
    why = "renewals failing since 12:00:00Z"
    r.send(ClusterChanged(cluster(True, True, True, leader=False, lease="lost", why=why), r.t))
    down_sig(r)
    assert not r.of(StartFailover)
    assert hold(r).guard is Guard.LEASE_LOST
    assert f"this replica lost its lease ({why})" in hold(r).reason
    # Renewed again: the hold clears and the failover starts.
    r.send(ClusterChanged(cluster(True, True, True), r.t))
    assert len(r.of(StartFailover)) == 1


def test_no_quorum_comes_before_the_lease_guards() -> None:
    r = Run(pol=ha_policy())
    r.send(ClusterChanged(cluster(True, False, False, leader=False, lease="lost"), r.t))
    down_sig(r)
    assert hold(r).guard is Guard.NO_QUORUM


def test_the_local_guards_come_first() -> None:
    r = Run(pol=ha_policy())
    r.send(ClusterChanged(cluster(True, False, False), r.t))
    r.send(PauseChanged(True, r.t, by="ops"))
    down_sig(r)
    assert hold(r).guard is Guard.PAUSED
    r.send(PauseChanged(False, r.t, by="ops"))
    assert hold(r).guard is Guard.NO_QUORUM


def test_isolation_comes_before_the_quorum() -> None:
    r = Run(pol=ha_policy())
    r.send(ClusterChanged(cluster(True, True, True), r.t))
    for n in ("sig", "turn", "frp"):
        r.obs(n, P, "---", dt=0.01)
    r.obs("sig", P, "-")
    assert r.svc("sig").hold is not None
    assert r.svc("sig").hold.guard is Guard.ISOLATION
    assert not r.of(StartFailover)


def test_a_cluster_change_leaves_services_that_are_up_alone() -> None:
    r = Run(pol=ha_policy())
    acts = r.send(ClusterChanged(cluster(True, True, True), r.t))
    assert acts == []
    assert r.state.cluster is not None and r.state.cluster.leader


def test_a_new_leader_finishing_old_plans_holds_not_leader_saying_so() -> None:
    r = Run(pol=ha_policy())
    why = "this replica just took the lease and first finishes the plans left unfinished"
    c = replace(cluster(True, True, False), leader=False, why=why)
    r.send(ClusterChanged(c, r.t))
    down_sig(r)
    assert hold(r).guard is Guard.NOT_LEADER
    assert hold(r).reason.endswith(f", but {why}")
    r.send(ClusterChanged(cluster(True, True, False), r.t))
    assert len(r.of(StartFailover)) == 1
