"""Each replica's published view (``jupiterd.aws.views``) against moto's
DynamoDB in server mode on loopback. Each replica has its own
``FakeClock``: freshness must hold however far apart their wall clocks are."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from structlog.testing import capture_logs

from jupiterd.aws.client import Aws, AwsError
from jupiterd.aws.ha_table import create_table
from jupiterd.aws.views import (
    MAX_VIEW_BYTES,
    ServiceVerdicts,
    TargetVerdict,
    Views,
    ViewTooLarge,
    item_bytes,
    read_units,
    write_units,
)
from jupiterd.config import AwsConfig
from jupiterd.sandbox.peers.moto_server import MotoServer
from tests.clock import FakeClock
from tests.test_lease import moto  # noqa: F401 - the module's moto server fixture

REGION = "us-east-1"
TABLE = "jupiterd-ha"
STALE = 6.0


@pytest.fixture
def aws(moto: MotoServer) -> Iterator[Aws]:  # noqa: F811
    moto.reset()
    client = Aws(AwsConfig(region=REGION, endpoint_url=moto.url, max_attempts=1))
    asyncio.run(create_table(client, TABLE))
    yield client
    client.close()


@pytest.fixture
def ddb(moto: MotoServer) -> Any:  # noqa: F811
    """A plain client, to write what a broken or foreign peer would."""
    return boto3.session.Session(region_name=REGION).client("dynamodb", endpoint_url=moto.url)


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def _views(aws: Aws, replica: str, clock: FakeClock) -> Views:
    return Views(aws, TABLE, replica, clock, STALE)


def _services(now: float, *, down: str | None = None) -> dict[str, ServiceVerdicts]:
    out = {}
    for name in ("signaling", "coturn", "nat"):
        status = "down" if name == down else "up"
        out[name] = ServiceVerdicts(
            "primary",
            TargetVerdict(status, now - 30.0, now - 0.25),
            TargetVerdict("stopped", None, None),
        )
    return out


def _publish(v: Views, *, down: str | None = None, isolated: bool = False, why: str = "") -> None:
    _run(v.publish(_services(v.clock.time(), down=down), isolated=isolated, why=why))


def test_three_replicas_read_each_others_views(aws: Aws) -> None:
    clocks = {r: FakeClock(now=1_700_000_000.0) for r in ("az-a", "az-b", "az-c")}
    views = {r: _views(aws, r, c) for r, c in clocks.items()}
    _publish(views["az-a"])
    _publish(views["az-b"], down="coturn")
    _publish(views["az-c"], isolated=True, why="every target failed at once")
    for reader in views.values():
        got = _run(reader.read())
        assert set(got) == {"az-a", "az-b", "az-c"}
        assert all(v.fresh and v.seq == 1 and v.age == 0.0 for v in got.values())
    b = got["az-b"]
    assert b.services == _services(1_700_000_000.0, down="coturn")
    assert b.published_at == 1_700_000_000.0 and not b.isolated and b.why == ""
    c = got["az-c"]
    assert c.isolated and c.why == "every target failed at once"
    assert views["az-a"].seq == 1


def test_a_replica_that_stops_publishing_goes_stale(aws: Aws) -> None:
    ca, cb = FakeClock(now=5_000.0), FakeClock(now=5_000.0)
    a, b = _views(aws, "a", ca), _views(aws, "b", cb)
    _publish(a)
    _publish(b)
    assert _run(a.read())["b"].fresh
    # b falls silent; a goes on publishing and reading
    for _ in range(3):
        ca.now += 2.0
        ca.mono += 2.0
        _publish(a)
        got = _run(a.read())
        assert got["a"].fresh and got["b"].fresh
    assert got["b"].age == STALE
    ca.mono += 0.01
    got = _run(a.read())
    assert got["a"].fresh and not got["b"].fresh and got["b"].age == pytest.approx(STALE + 0.01)
    # b speaks again: fresh from the read that sees its seq move
    cb.now += 600.0
    _publish(b)
    got = _run(a.read())
    assert got["b"].fresh and got["b"].age == 0.0 and got["b"].seq == 2


def test_a_view_first_seen_is_judged_by_its_publish_time(aws: Aws) -> None:
    cb = FakeClock(now=10_000.0)
    _publish(_views(aws, "b", cb))
    # just started readers: one STALE after b's publish, one a moment more
    within = _run(_views(aws, "a", FakeClock(now=10_000.0 + STALE)).read())["b"]
    assert within.fresh and within.age == STALE
    old = _run(_views(aws, "a", FakeClock(now=10_000.0 + STALE + 0.5)).read())["b"]
    assert not old.fresh and old.age is None
    # an old view stays stale while its seq stays put, whatever the time
    ca = FakeClock(now=10_000.0 + STALE + 0.5)
    a = _views(aws, "a", ca)
    _run(a.read())
    ca.now = 10_000.0
    assert not _run(a.read())["b"].fresh


@pytest.mark.parametrize("offset", [3600.0, -3600.0], ids=["reader-ahead", "reader-behind"])
def test_a_reader_an_hour_off_judges_right_from_its_second_read(aws: Aws, offset: float) -> None:
    cb = FakeClock(now=20_000.0)
    ca = FakeClock(now=20_000.0 + offset)
    b, a = _views(aws, "b", cb), _views(aws, "a", ca)
    _publish(b)
    assert not _run(a.read())["b"].fresh  # first sight: the clocks disagree
    cb.now += 2.0
    ca.now += 2.0
    ca.mono += 2.0
    _publish(b)
    got = _run(a.read())["b"]
    assert got.fresh and got.age == 0.0
    ca.mono += STALE + 0.01
    assert not _run(a.read())["b"].fresh


def test_seq_never_goes_back_when_the_publisher_restarts(aws: Aws) -> None:
    clock = FakeClock(now=30_000.0)
    first = _views(aws, "b", clock)
    for _ in range(3):
        _publish(first)
    assert first.seq == 3
    ca = FakeClock(now=30_000.0)
    reader = _views(aws, "a", ca)
    assert _run(reader.read())["b"].seq == 3
    # b restarts: a new process, nothing in memory
    again = _views(aws, "b", clock)
    assert again.seq is None
    ca.mono += STALE - 1
    _publish(again)
    assert again.seq == 4
    ca.mono += 1.5  # past STALE since the first sight: only the change keeps it fresh
    got = _run(reader.read())["b"]
    assert got.seq == 4 and got.fresh and got.age == 0.0


def test_a_view_made_anew_is_a_first_sight(aws: Aws, ddb: Any) -> None:
    """DynamoDB's TTL removes a view silent for a day; its replica starts
    again from seq 1 and readers that knew seq 5 must not wait for 6."""
    cb, ca = FakeClock(now=40_000.0), FakeClock(now=40_000.0)
    b, a = _views(aws, "b", cb), _views(aws, "a", ca)
    for _ in range(5):
        _publish(b)
    assert _run(a.read())["b"].seq == 5
    ddb.delete_item(TableName=TABLE, Key={"pk": {"S": "view#b"}})
    cb.now += 1.0
    ca.now += 1.0
    ca.mono += STALE + 1  # b's last change is long past for a
    _publish(b)
    got = _run(a.read())["b"]
    assert got.seq == 1 and got.fresh and got.age == 0.0


def _good(replica: str, now: float) -> dict[str, Any]:
    t = {"N": repr(now)}
    return {
        "pk": {"S": f"view#{replica}"},
        "replica": {"S": replica},
        "seq": {"N": "7"},
        "published_at": t,
        "isolated": {"BOOL": False},
        "why": {"S": ""},
        "services": {
            "M": {
                "signaling": {
                    "L": [
                        {"S": "primary"},
                        {"S": "down"},
                        t,
                        t,
                        {"S": "unknown"},
                        {"NULL": True},
                        {"NULL": True},
                    ]
                }
            }
        },
        "ttl": {"N": str(int(now) + 86400)},
    }


def _signaling(item: dict[str, Any]) -> list[Any]:
    lst: list[Any] = item["services"]["M"]["signaling"]["L"]
    return lst


MALFORMED: dict[str, Any] = {
    "replica-not-the-key": lambda i: i.update(replica={"S": "other"}),
    "no-replica": lambda i: i.pop("replica"),
    "seq-a-string": lambda i: i.update(seq={"S": "7"}),
    "seq-fraction": lambda i: i.update(seq={"N": "7.5"}),
    "seq-zero": lambda i: i.update(seq={"N": "0"}),
    "seq-huge": lambda i: i.update(seq={"N": "1" + "0" * 30}),
    "no-published-at": lambda i: i.pop("published_at"),
    "isolated-a-string": lambda i: i.update(isolated={"S": "no"}),
    "why-a-number": lambda i: i.update(why={"N": "1"}),
    "services-a-list": lambda i: i.update(services={"L": []}),
    "service-name-invalid": lambda i: i["services"]["M"].update(
        {"Bad Name": i["services"]["M"]["signaling"]}
    ),
    "six-values": lambda i: _signaling(i).pop(),
    "status-unknown-word": lambda i: _signaling(i).__setitem__(1, {"S": "exploded"}),
    "active-not-a-role": lambda i: _signaling(i).__setitem__(0, {"S": "standby"}),
    "since-a-string": lambda i: _signaling(i).__setitem__(2, {"S": "12:00"}),
    "values-a-map": lambda i: i["services"]["M"].update(signaling={"M": {}}),
}


def test_malformed_views_of_peers_are_left_out_with_a_log_line(aws: Aws, ddb: Any) -> None:
    clock = FakeClock(now=50_000.0)
    for name, spoil in MALFORMED.items():
        item = _good(f"bad-{name}", 50_000.0)
        spoil(item)
        ddb.put_item(TableName=TABLE, Item=item)
    ddb.put_item(TableName=TABLE, Item=_good("peer", 50_000.0))
    ddb.put_item(TableName=TABLE, Item={"pk": {"S": "view#"}})
    ddb.put_item(TableName=TABLE, Item={"pk": {"S": "plan#x"}, "seq": {"S": "no view"}})
    a = _views(aws, "a", clock)
    _publish(a)
    with capture_logs() as logs:
        got = _run(a.read())
        again = _run(a.read())
    assert set(got) == set(again) == {"a", "peer"}
    peer = got["peer"]
    assert peer.seq == 7 and peer.fresh
    assert peer.services["signaling"].primary == TargetVerdict("down", 50_000.0, 50_000.0)
    assert peer.services["signaling"].backup == TargetVerdict("unknown", None, None)
    bad = [e for e in logs if e["event"] == "view_malformed"]
    # one line per bad item, not one per read
    assert len(bad) == len(MALFORMED) + 1
    assert {e["key"] for e in bad} == {f"view#bad-{name}" for name in MALFORMED} | {"view#"}


def test_an_overlong_why_is_cut(aws: Aws, ddb: Any) -> None:
    item = _good("peer", 60_000.0)
    item["why"] = {"S": "x" * 5000}
    ddb.put_item(TableName=TABLE, Item=item)
    got = _run(_views(aws, "a", FakeClock(now=60_000.0)).read())
    assert got["peer"].why == "x" * 500


def test_thousands_of_services_fit_and_more_is_refused(aws: Aws) -> None:
    clock = FakeClock(now=70_000.0)
    v = _views(aws, "a", clock)
    verdict = ServiceVerdicts(
        "backup",
        TargetVerdict("recovering", 69_000.123456, 69_999.75),
        TargetVerdict("suspect", 69_990.5, 69_999.875),
    )
    many = {f"service-{n:05d}-with-a-longer-name": verdict for n in range(3000)}
    _run(v.publish(many, isolated=False, why=""))
    assert 200_000 < v.last_publish_bytes <= MAX_VIEW_BYTES
    got = _run(v.read())["a"]
    assert got.services == many
    too_many = {f"{n:05d}".join(["s", "x" * 55]): verdict for n in range(5000)}
    with pytest.raises(ViewTooLarge) as err:
        _run(v.publish(too_many, isolated=False, why=""))
    assert isinstance(err.value, AwsError)
    assert "5000 services" in str(err.value) and str(MAX_VIEW_BYTES) in str(err.value)
    assert v.seq == 1
    assert len(_run(v.read())["a"].services) == 3000  # nothing was written


def test_unreachable_dynamodb_raises_aws_error(aws: Aws) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends
    down = Aws(
        AwsConfig(
            region=REGION,
            endpoint_url=f"http://127.0.0.1:{port}",
            max_attempts=1,
            connect_timeout=0.5,
            read_timeout=0.5,
        )
    )
    try:
        v = _views(down, "a", FakeClock())
        with pytest.raises(AwsError):
            _publish(v)
        with pytest.raises(AwsError):
            _run(v.read())
    finally:
        down.close()


def test_item_size_follows_dynamodbs_rules() -> None:
    # The examples of the DynamoDB developer guide's item-size rules.
    assert item_bytes({"a": {"S": "héllo"}}) == 1 + 6
    assert item_bytes({"n": {"N": "123"}}) == 1 + 3
    assert item_bytes({"n": {"N": "0.00012300"}}) == 1 + 3
    assert item_bytes({"b": {"BOOL": True}, "z": {"NULL": True}}) == 4
    assert item_bytes({"l": {"L": [{"S": "ab"}, {"N": "1"}]}}) == 1 + 3 + (1 + 2) + (1 + 2)
    assert item_bytes({"m": {"M": {"k": {"S": "v"}}}}) == 1 + 3 + 1 + 1 + 1
    assert read_units(4096) == 1 and read_units(4097) == 2 and read_units(10) == 1
    assert read_units(4097, consistent=False) == 1
    assert write_units(1024) == 1 and write_units(1025) == 2
