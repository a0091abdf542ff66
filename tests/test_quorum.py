"""The quorum of replicated deciders (``jupiterd.core.quorum``): who votes,
who abstains and why, the witness's vote and veto, and the sentence a hold
shows. Pure: views in, a tally out."""

from __future__ import annotations

from types import MappingProxyType

from hypothesis import given
from hypothesis import strategies as st

from jupiterd.core.quorum import (
    ReplicaView,
    ServiceVerdicts,
    TargetVerdict,
    WitnessVote,
    tally,
    vote,
)
from jupiterd.core.types import Role

P, B = Role.PRIMARY, Role.BACKUP
NOW = 1_700_000_000.0


def view(
    replica: str,
    status: str = "up",
    *,
    active: str = "primary",
    fresh: bool = True,
    isolated: bool = False,
    why: str = "",
    age: float | None = 1.0,
    service: str = "sig",
) -> ReplicaView:
    t = TargetVerdict(status, NOW - 30, NOW - 0.4)
    other = TargetVerdict("stopped", NOW - 900, None)
    sv = (
        ServiceVerdicts(active, t, other)
        if active == "primary"
        else ServiceVerdicts(active, other, t)
    )
    return ReplicaView(
        replica=replica,
        seq=7,
        published_at=NOW - 1,
        isolated=isolated,
        why=why,
        services=MappingProxyType({service: sv}),
        fresh=fresh,
        age=age,
    )


def views(*vs: ReplicaView) -> dict[str, ReplicaView]:
    return {v.replica: v for v in vs}


ELB_UP = WitnessVote("elb", False, "healthy in tg-sig", veto=True)
ELB_DOWN = WitnessVote("elb", True, "unhealthy in tg-sig (Target.Timeout)", veto=True)


def test_the_issue_s_sentence_one_of_three_with_a_healthy_witness() -> None:
    vs = views(view("az-a", "down"), view("az-b"), view("az-c"))
    t = tally("sig", P, vs, vs["az-a"], ELB_UP, 2, now=NOW)
    assert t.down_votes == 1 and t.up_votes == 3
    assert not t.reached and t.vetoed and t.split
    assert t.sentence() == (
        "1 of 3 replicas see the primary down (quorum 2): az-a; up: az-b, az-c; "
        "the ELB witness says healthy (healthy in tg-sig): its veto holds the failover"
    )


def test_two_of_three_reach_the_quorum() -> None:
    vs = views(view("az-a", "down"), view("az-b", "down"), view("az-c"))
    t = tally("sig", P, vs, vs["az-b"], None, 2, now=NOW)
    assert t.reached and t.down_votes == 2
    # own view first, then the others by id
    assert [v.replica for v in t.votes] == ["az-b", "az-a", "az-c"]
    assert t.sentence() == "2 of 3 replicas see the primary down (quorum 2): az-b, az-a; up: az-c"


def test_a_down_vote_says_since_when_and_how_fresh() -> None:
    v = vote(view("az-a", "down"), "sig", P, NOW)
    assert v.down is True
    assert v.detail.startswith("down since ") and v.detail.endswith(", probed 0.4s ago")


def test_stale_isolated_other_active_unknown_and_missing_abstain() -> None:
    cases = [
        (view("a", "down", fresh=False, age=9.0), "stale (last seen 9.0s ago)"),
        (view("a", "down", fresh=False, age=None), "stale (never seen)"),
        (
            view("a", "down", isolated=True, why="sees every target down"),
            "isolated: sees every target down",
        ),
        (view("a", "down", active="backup"), "believes the backup is active"),
        (view("a", "suspect"), "suspect, probed 0.4s ago"),
        (view("a", "unknown"), "unknown, probed 0.4s ago"),
        (view("a", "down", service="turn"), "does not watch sig"),
    ]
    for v, detail in cases:
        got = vote(v, "sig", P, NOW)
        assert (got.down, got.detail) == (None, detail)


def test_stale_or_isolated_down_views_do_not_reach_a_quorum() -> None:
    vs = views(
        view("az-a", "down"),
        view("az-b", "down", fresh=False, age=12.0),
        view("az-c", "down", isolated=True, why="monitor degraded"),
    )
    t = tally("sig", P, vs, vs["az-a"], None, 2, now=NOW)
    assert t.down_votes == 1 and not t.reached
    assert "az-b (stale (last seen 12s ago))" in t.sentence()
    assert "az-c (isolated: monitor degraded)" in t.sentence()


def test_a_replica_believing_another_active_does_not_vote_on_this_one() -> None:
    vs = views(view("az-a", "down"), view("az-b", "down", active="backup"))
    t = tally("sig", P, vs, vs["az-a"], None, 2)
    assert t.down_votes == 1 and not t.reached


def test_the_own_view_replaces_its_published_copy() -> None:
    published = view("az-a", "up")
    current = view("az-a", "down")
    t = tally("sig", P, views(published, view("az-b", "down")), current, None, 2)
    assert [v.replica for v in t.votes] == ["az-a", "az-b"]
    assert t.reached


def test_the_witness_is_one_more_vote() -> None:
    vs = views(view("solo", "down"))
    t = tally("sig", P, vs, vs["solo"], ELB_DOWN, 2, expected=1)
    assert t.down_votes == 2 and t.reached
    assert t.sentence() == (
        "1 of 1 replicas see the primary down (quorum 2): solo; the ELB witness says "
        "failing (unhealthy in tg-sig (Target.Timeout)): 2 down votes in all"
    )


def test_a_witness_without_veto_only_counts_as_an_up_vote() -> None:
    vs = views(view("a", "down"), view("b", "down"), view("c", "down"))
    advisory = WitnessVote("cloudwatch", False, "alarm sig-5xx is OK", veto=False)
    t = tally("sig", P, vs, vs["a"], advisory, 2)
    assert t.reached and not t.vetoed and t.up_votes == 1
    vetoing = WitnessVote("cloudwatch", False, "alarm sig-5xx is OK", veto=True)
    t = tally("sig", P, vs, vs["a"], vetoing, 2)
    assert not t.reached and t.vetoed
    assert "the CloudWatch alarm witness says healthy" in t.sentence()


def test_a_witness_without_a_verdict_neither_votes_nor_vetoes() -> None:
    vs = views(view("a", "down"), view("b", "down"))
    w = WitnessVote("ec2_status", None, "DescribeInstanceStatus failed (Throttling)", veto=True)
    t = tally("sig", P, vs, vs["a"], w, 2)
    assert t.reached and not t.vetoed and t.down_votes == 2
    assert "says nothing (DescribeInstanceStatus failed (Throttling))" in t.sentence()


def test_replicas_never_heard_from_are_counted_in_the_sentence() -> None:
    vs = views(view("a", "down"))
    t = tally("sig", P, vs, vs["a"], None, 2, expected=3)
    assert t.replicas == 3
    assert t.sentence() == "1 of 3 replicas see the primary down (quorum 2): a; 2 never heard from"


def test_the_backup_as_active_is_voted_on_its_own_verdict() -> None:
    vs = views(view("a", "down", active="backup"), view("b", "down", active="backup"))
    t = tally("sig", B, vs, None, None, 2)
    assert t.reached and "see the backup down" in t.sentence()


STATUSES = st.sampled_from(["up", "down", "suspect", "unknown", "stopped", "recovering"])
REPLICA = st.builds(
    lambda i, s, fresh, iso, active: view(f"r{i}", s, fresh=fresh, isolated=iso, active=active),
    st.integers(0, 6),
    STATUSES,
    st.booleans(),
    st.booleans(),
    st.sampled_from(["primary", "backup"]),
)
WITNESS = st.one_of(
    st.none(),
    st.builds(
        WitnessVote,
        st.sampled_from(["elb", "ec2_status", "cloudwatch"]),
        st.sampled_from([True, False, None]),
        st.just("x"),
        st.booleans(),
    ),
)


@given(st.lists(REPLICA, max_size=6), WITNESS, st.integers(1, 7))
def test_only_fresh_agreeing_down_views_and_the_witness_make_down_votes(
    vs: list[ReplicaView], w: WitnessVote | None, needed: int
) -> None:
    by_id = views(*vs)
    t = tally("sig", P, by_id, None, w, needed)
    counted = sum(
        1
        for v in by_id.values()
        if v.fresh
        and not v.isolated
        and v.services["sig"].active == "primary"
        and v.services["sig"].primary.status == "down"
    )
    assert t.down_votes == counted + (1 if w is not None and w.down is True else 0)
    assert len(t.votes) == len(by_id)
    assert t.reached == (
        t.down_votes >= needed and not (w is not None and w.veto and w.down is False)
    )
    for v in t.votes:
        assert v.detail  # every vote, abstention included, says why
    assert t.sentence().startswith(
        f"{t.down_votes - (1 if w is not None and w.down is True else 0)} of "
    )
