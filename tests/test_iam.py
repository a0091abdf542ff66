"""The IAM policy: generated from the plans, shipped for the example config,
lint-clean under parliament, and exactly the AWS calls the code makes.

The code scan below is the tripwire for new AWS calls: every literal
``aws.call("svc", "Op")``, ``aws.paginate(...)`` and ``_mutate(run, "svc",
"Op")`` in the daemon's modules must be allowed by the policy of the full
example configuration (which uses every attachment kind), and the policy
must allow nothing the code never calls.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import pytest

from jupiterd.aws.client import IAM_PREFIX, iam_action
from jupiterd.cli import main
from jupiterd.config import load_config
from jupiterd.core import iam
from jupiterd.core.plan import plan_permissions

parliament = pytest.importorskip("parliament")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "jupiter.example.yaml"
MINIMAL = ROOT / "config" / "minimal.yaml"
SHIPPED = ROOT / "config" / "iam-policy.json"
SECRETS = ("JUPITERD_TURN_SECRET", "JUPITERD_FRP_TOKEN", "JUPITERD_TB_PASSWORD")

# Modules that talk only to the local emulator (moto) and never run against
# AWS in production: seeding resources for the sandbox and the tests.
NOT_PRODUCTION = ("seed.py", "sandbox")
# `jupiterd discover` runs once, by a person, with a policy of its own
# (`iam-policy --discover`): its calls are not the daemon's.
DISCOVER = Path("aws") / "discover.py"
# The replicas' calls (lease, views, shared journal) are a policy of their
# own (`iam-policy --ha TABLE`), scoped to the table.
HA = (
    Path("aws") / "lease.py",
    Path("aws") / "ha_table.py",
    Path("aws") / "views.py",
    Path("aws") / "ha_journal.py",
    Path("aws") / "ha_reader.py",
)
# The AWS-side witness calls only what a configured `witness:` asks for: its
# calls are checked against a configuration with every kind (below).
WITNESS = Path("aws") / "witness.py"


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SECRETS:
        monkeypatch.setenv(name, "dummy-" + name.lower())


@pytest.fixture
def example(secrets: None) -> Any:
    return load_config(str(EXAMPLE))


def _statements(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(doc["Statement"])


def _as_list(v: Any) -> list[str]:
    return list(v) if isinstance(v, list) else [v]


def _actions(doc: dict[str, Any]) -> set[str]:
    return {a for s in _statements(doc) for a in _as_list(s["Action"])}


def _findings(text: str, community: bool) -> list[tuple[str, Any]]:
    policy = parliament.analyze_policy_string(text, include_community_auditors=community)
    return [(f.issue, f.detail) for f in policy.findings]


# --------------------------------------------------------------------------- the command


def test_shipped_policy_is_what_the_command_prints(
    example: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["iam-policy", "--config", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert out == SHIPPED.read_text(), (
        "config/iam-policy.json is stale: regenerate it with "
        "`jupiterd iam-policy --config config/jupiter.example.yaml > config/iam-policy.json`"
    )
    assert out == iam.policy_json(example)


def test_secrets_are_not_needed_to_print_the_policy(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in SECRETS:
        monkeypatch.delenv(name, raising=False)
    assert main(["iam-policy", "--config", str(EXAMPLE)]) == 0
    assert capsys.readouterr().out == SHIPPED.read_text()
    # ... while the daemon's own loading still insists on them.
    assert main(["check-config", str(EXAMPLE)]) == 78
    assert "secret.env: the environment variable named here is not set" in capsys.readouterr().err


def test_config_path_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("JUPITERD_CONFIG", str(MINIMAL))
    assert main(["iam-policy"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert "targetgroup/jupiter-signaling" in json.dumps(doc)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("services: {}\n", "at least one service is required"),
        ("services: [\n", "YAML syntax error"),
        (
            "services:\n  a:\n    probe: {kind: turn, options: {secret: {env: X}, bogus: 1}}\n",
            "unknown option 'bogus'",
        ),
        (
            "services:\n  a:\n    probe: {kind: http, options: {path: {env: X}}}\n",
            "services.a.probe.options.path",
        ),
    ],
)
def test_invalid_config_exits_78(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    assert main(["iam-policy", "--config", str(path)]) == 78
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err
    assert main(["iam-policy", "--config", str(tmp_path / "missing.yaml")]) == 78


def test_a_secret_reference_in_a_non_secret_option_is_still_rejected(tmp_path: Path) -> None:
    # Only secret options are spared resolution: `username` is a plain string.
    path = tmp_path / "c.yaml"
    path.write_text(
        "services:\n  tb:\n    probe:\n      kind: thingsboard\n"
        "      options: {username: {env: NOPE}, password: {env: NOPE}}\n"
    )
    from jupiterd.config import ConfigError

    with pytest.raises(ConfigError, match="username"):
        load_config(str(path), secrets=False)


# --------------------------------------------------------------------------- lint


@pytest.mark.parametrize("community", [False, True], ids=["core", "community"])
@pytest.mark.parametrize("config", [EXAMPLE, MINIMAL], ids=["example", "minimal"])
def test_parliament_finds_nothing(secrets: None, config: Path, community: bool) -> None:
    text = iam.policy_json(load_config(str(config)))
    assert _findings(text, community) == []


def test_parliament_is_actually_checking() -> None:
    # The same linter flags what this module avoids: Resource "*" on an
    # action that supports resource-level permissions, and a misspelt action.
    broad = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "ec2:StopInstances", "Resource": "*"},
            {"Effect": "Allow", "Action": "ec2:StopInstance", "Resource": "*"},
        ],
    }
    issues = {issue for issue, _ in _findings(json.dumps(broad), community=True)}
    assert "RESOURCE_STAR" in issues
    assert "UNKNOWN_ACTION" in issues


# --------------------------------------------------------------------------- shape


def _definition(action: str) -> dict[str, Any]:
    prefix, _, name = action.partition(":")
    for service in parliament.iam_definition:
        if service["prefix"] != prefix:
            continue
        for priv in service["privileges"]:
            if priv["privilege"] == name:
                return {"service": service, "privilege": priv}
    raise AssertionError(f"{action} is not in parliament's IAM definitions")


def _resource_types(action: str) -> list[tuple[str, str, list[str]]]:
    """(resource type, its ARN template, the condition keys it supports)."""
    d = _definition(action)
    by_name = {r["resource"]: r for r in d["service"]["resources"]}
    out = []
    for rt in d["privilege"]["resource_types"]:
        name = rt["resource_type"].rstrip("*")
        if name:
            out.append((name, by_name[name]["arn"], by_name[name]["condition_keys"]))
    return out


def _types_named(action: str, arn: str) -> list[tuple[str, list[str]]]:
    """The action's resource types whose ARN template ``arn`` fits."""
    out = []
    for name, template, keys in _resource_types(action):
        pattern = re.sub(r"\\\$\\\{[^}]*\\\}", "[^:]*", re.escape(template))
        if re.fullmatch(pattern, arn):
            out.append((name, keys))
    return out


def test_star_only_where_aws_supports_nothing_else(example: Any) -> None:
    for s in _statements(iam.policy(example)):
        if "*" in _as_list(s["Resource"]):
            for action in _as_list(s["Action"]):
                assert _resource_types(action) == [], f"{action} could name its resources"
            assert s["Condition"]["StringEquals"]["aws:RequestedRegion"] == "ap-southeast-2"
        else:
            assert all(":" in r for r in _as_list(s["Resource"]))


def test_mutating_actions_are_limited_to_tagged_resources(example: Any) -> None:
    doc = iam.policy(example)
    writes = 0
    for s in _statements(doc):
        for action in _as_list(s["Action"]):
            if _definition(action)["privilege"]["access_level"] != "Write":
                continue
            writes += 1
            types = []
            for arn in _as_list(s["Resource"]):
                named = _types_named(action, arn)
                assert named, f"{arn} is no resource type of {action}"
                types += named
            taggable = all("aws:ResourceTag/${TagKey}" in keys for _, keys in types)
            assert (action in iam.TAG_CONDITIONED) == taggable, action
            if taggable:
                cond = s["Condition"]["StringEquals"]
                assert cond["aws:ResourceTag/Project"] == "Jupiter", s["Sid"]
            else:
                # Route 53: no tag conditions exist; the record itself is the limit.
                assert action == "route53:ChangeResourceRecordSets"
                cond = s["Condition"]["ForAllValues:StringEquals"]
                assert cond == {
                    "route53:ChangeResourceRecordSetsActions": "UPSERT",
                    "route53:ChangeResourceRecordSetsNormalizedRecordNames": (
                        "turn.jupiter.example.com"
                    ),
                    "route53:ChangeResourceRecordSetsRecordTypes": "A",
                }
    assert writes >= 8


def test_every_statement_says_why(example: Any) -> None:
    sids = [s["Sid"] for s in _statements(iam.policy(example))]
    assert len(sids) == len(set(sids))
    for sid in sids:
        assert sid.isalnum() and len(sid) > 20, sid


def test_instances_are_exact_arns_or_tagged_by_service_and_role(secrets: None) -> None:
    exact = iam.policy(load_config(str(EXAMPLE)))
    start = next(s for s in _statements(exact) if "ec2:StartInstances" in _as_list(s["Action"]))
    assert set(_as_list(start["Action"])) == {"ec2:StartInstances", "ec2:StopInstances"}
    assert len(_as_list(start["Resource"])) == 10
    assert all("instance/i-0a1b2c3d4e5f6" in r for r in _as_list(start["Resource"]))

    # Without instance ids (minimal.yaml), instances are named by their tags.
    by_tag = iam.policy(load_config(str(MINIMAL)))
    starts = [s for s in _statements(by_tag) if "ec2:StartInstances" in _as_list(s["Action"])]
    roles = set()
    for s in starts:
        assert s["Resource"] == "arn:aws:ec2:ap-southeast-2:123456789012:instance/*"
        cond = s["Condition"]["StringEquals"]
        assert cond["aws:ResourceTag/Project"] == "Jupiter"
        assert cond["aws:ResourceTag/Service"] == "signaling"
        roles.add(cond["aws:ResourceTag/Role"])
    assert roles == {"primary", "backup"}


def test_project_tag_and_region_follow_the_config(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "aws: {region: eu-west-1}\nproject_tag: Saturn\nservices:\n"
        "  edge:\n    probe: {kind: tcp, port: 443}\n"
        "    primary: {instance_id: i-0123456789abcdef0}\n"
        "    backup: {instance_id: i-0123456789abcdef1}\n"
        "    attachments: {elastic_ip: eipalloc-0123456789abcdef0}\n"
    )
    doc = iam.policy(load_config(str(path), secrets=False))
    text = json.dumps(doc)
    assert "Jupiter" not in text and "ap-southeast-2" not in text
    assert '"aws:ResourceTag/Project": "Saturn"' in text
    assert "arn:aws:ec2:eu-west-1:*:elastic-ip/eipalloc-0123456789abcdef0" in text
    # No target groups, records, routes or topic: no statements for them.
    assert _actions(doc) == {
        "ec2:DescribeInstances",
        "ec2:DescribeAddresses",
        "ec2:DescribeRouteTables",
        "elasticloadbalancing:DescribeTargetGroups",
        "elasticloadbalancing:DescribeTargetHealth",
        "ec2:StartInstances",
        "ec2:StopInstances",
        "ec2:AssociateAddress",
    }
    assert _findings(json.dumps(doc, indent=2), community=True) == []


def test_stop_is_allowed_on_both_instances_even_without_stop_old(tmp_path: Path) -> None:
    # A rollback stops the standby it started, whatever stop_old says.
    path = tmp_path / "c.yaml"
    path.write_text(
        "services:\n  edge:\n    probe: {kind: tcp, port: 443}\n    stop_old: false\n"
        "    primary: {instance_id: i-0123456789abcdef0}\n"
        "    backup: {instance_id: i-0123456789abcdef1}\n"
    )
    doc = iam.policy(load_config(str(path), secrets=False))
    stop = next(s for s in _statements(doc) if "ec2:StopInstances" in _as_list(s["Action"]))
    assert len(_as_list(stop["Resource"])) == 2


def test_fallback_types_allow_changing_the_backup_only(tmp_path: Path) -> None:
    # A start refused for want of capacity changes the stopped backup's type.
    path = tmp_path / "c.yaml"
    body = (
        "services:\n  edge:\n    probe: {kind: tcp, port: 443}\n"
        "    primary: {instance_id: i-0123456789abcdef0}\n"
        "    backup: {instance_id: i-0123456789abcdef1}\n"
    )
    path.write_text(body)
    doc = iam.policy(load_config(str(path), secrets=False))
    assert "ec2:ModifyInstanceAttribute" not in _actions(doc)
    path.write_text(body + "    fallback_instance_types: [m5.large]\n")
    doc = iam.policy(load_config(str(path), secrets=False))
    [modify] = [
        s for s in _statements(doc) if "ec2:ModifyInstanceAttribute" in _as_list(s["Action"])
    ]
    assert modify["Resource"] == "arn:aws:ec2:ap-southeast-2:*:instance/i-0123456789abcdef1"
    assert modify["Condition"]["StringEquals"]["aws:ResourceTag/Project"] == "Jupiter"
    assert _findings(json.dumps(doc, indent=2), community=True) == []


def test_fits_a_managed_policy(example: Any) -> None:
    assert iam.compact_size(iam.policy_json(example)) <= iam.MANAGED_POLICY_LIMIT


# --------------------------------------------------------------------------- vs the code


def _production_modules() -> list[Path]:
    pkg = ROOT / "jupiterd"
    return [
        p
        for p in sorted(pkg.rglob("*.py"))
        if not any(part in NOT_PRODUCTION for part in p.relative_to(pkg).parts)
    ]


def _daemon_modules() -> list[Path]:
    return [
        p
        for p in _production_modules()
        if p.relative_to(ROOT / "jupiterd") not in (DISCOVER, *HA, WITNESS)
    ]


def _aws_calls(modules: list[Path] | None = None) -> tuple[set[str], list[str]]:
    """IAM actions of every literal AWS call, and where non-literal ones are."""
    actions: set[str] = set()
    dynamic: list[str] = []
    for path in _production_modules() if modules is None else modules:
        tree = ast.parse(path.read_text(), str(path))
        funcs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            name = node.func.attr
            if name not in ("call", "paginate", "_mutate"):
                continue
            args = [
                a.value if isinstance(a, ast.Constant) and isinstance(a.value, str) else None
                for a in node.args
            ]
            if name == "_mutate":
                args = args[1:]  # (run, service, operation, ...)
            if len(args) >= 2 and args[0] in IAM_PREFIX and args[1]:
                actions.add(iam_action(args[0], args[1]))
                continue
            inside = [
                f.name
                for f in funcs
                if f.lineno <= node.lineno <= (f.end_lineno or f.lineno) and node in ast.walk(f)
            ]
            dynamic.append(f"{path.name}:{inside[-1] if inside else '<module>'}")
    return actions, dynamic


def test_policy_allows_exactly_the_calls_the_code_makes(example: Any) -> None:
    called, dynamic = _aws_calls(_daemon_modules())
    # The only non-literal call sites are the wrapper itself and the
    # executor's one door for changes, whose callers are literal.
    assert set(dynamic) <= {
        "client.py:invoke",
        "client.py:paginate",
        "client.py:call",
        "changes.py:_mutate",
    }, dynamic
    allowed = _actions(iam.policy(example))
    assert called - allowed == set(), "AWS calls the policy does not allow"
    assert allowed - called == set(), "policy entries no code calls"


def test_only_the_aws_wrapper_uses_boto3() -> None:
    for path in _production_modules():
        if path.parent.name == "aws" and path.name in ("client.py", "errors.py", "models.py"):
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(n.split(".")[0] in ("boto3", "botocore") for n in names), (
                f"{path.name} imports boto3 directly: route AWS calls through aws.Aws so "
                "this test and the IAM policy see them"
            )


def test_every_declared_plan_permission_is_in_the_policy(example: Any) -> None:
    plans = iam.plans_for(example)
    doc = iam.policy(example)
    for perm in plan_permissions(plans):
        stmts = [s for s in _statements(doc) if perm.action in _as_list(s["Action"])]
        assert stmts, perm.action
        resources = {r for s in stmts for r in _as_list(s["Resource"])}
        assert set(perm.resources) <= resources, perm


def test_every_call_is_declared_by_the_plans(example: Any) -> None:
    # No workaround list in iam.py: a call the plans do not declare (with
    # its resources) is a bug in plan.py, found here.
    declared = {p.action for p in plan_permissions(iam.plans_for(example))}
    called, _ = _aws_calls(_daemon_modules())
    assert called - declared == set()


# --------------------------------------------------------------------------- discover


def test_discover_policy_allows_exactly_the_calls_discover_makes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    called, dynamic = _aws_calls([ROOT / "jupiterd" / DISCOVER])
    assert not dynamic and called, dynamic
    assert main(["iam-policy", "--discover", "--region", "eu-west-1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert _actions(doc) == called == iam.DISCOVER_ACTIONS
    # read-only, regional reads pinned to the region
    assert all(re.search(r":(Describe|List)", a) for a in called)
    for s in _statements(doc):
        if any(not a.startswith("route53:") for a in _as_list(s["Action"])):
            assert s["Condition"]["StringEquals"]["aws:RequestedRegion"] == "eu-west-1"
    # none of it widens the daemon's own policy
    daemon_only, _ = _aws_calls(_daemon_modules())
    assert {"route53:ListHostedZones", "sns:ListTopics"}.isdisjoint(daemon_only)


@pytest.mark.parametrize("community", [False, True], ids=["core", "community"])
def test_parliament_finds_nothing_in_the_discover_policy(community: bool) -> None:
    text = json.dumps(iam.discover_policy("ap-southeast-2"))
    assert _findings(text, community) == []


def test_discover_policy_needs_a_region(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    assert main(["iam-policy", "--discover"]) == 2
    assert "no region" in capsys.readouterr().err


# --------------------------------------------------------------------------- ha


def test_ha_policy_allows_exactly_the_calls_the_lease_makes_on_its_table(
    capsys: pytest.CaptureFixture[str],
) -> None:
    calls, dynamic = _aws_calls([ROOT / "jupiterd" / p for p in HA])
    assert not dynamic and calls, dynamic
    # a transaction needs the permissions of its parts, not its own
    called = {part for a in calls for part in iam.HA_TRANSACT.get(a, (a,))}
    assert main(["iam-policy", "--ha", "jupiterd-ha", "--region", "eu-west-1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert _actions(doc) == called == iam.HA_ACTIONS
    for s in _statements(doc):
        assert _as_list(s["Resource"]) == ["arn:aws:dynamodb:eu-west-1:*:table/jupiterd-ha"]
    daemon_only, _ = _aws_calls(_daemon_modules())
    assert not any(a.startswith("dynamodb:") for a in daemon_only)


def test_the_journal_transactions_need_only_the_parts_the_policy_allows() -> None:
    # TransactWriteItems is no IAM action: each item kind needs its own.
    parts = {
        "ConditionCheck": "dynamodb:ConditionCheckItem",
        "Put": "dynamodb:PutItem",
        "Update": "dynamodb:UpdateItem",
        "Delete": "dynamodb:DeleteItem",
    }
    tree = ast.parse((ROOT / "jupiterd" / "aws" / "ha_journal.py").read_text())
    kinds = {
        k.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Dict)
        for k in n.keys
        if isinstance(k, ast.Constant) and k.value in parts
    }
    assert {parts[k] for k in kinds} == set(iam.HA_TRANSACT["dynamodb:TransactWriteItems"])


@pytest.mark.parametrize("community", [False, True], ids=["core", "community"])
def test_parliament_finds_nothing_in_the_ha_policy(community: bool) -> None:
    text = json.dumps(iam.ha_policy("ap-southeast-2", "jupiterd-ha"))
    assert _findings(text, community) == []


# --------------------------------------------------------------------------- witness

EDGE_TG = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/edge/0123456789abcdef"
WITNESSES = """
aws: {region: eu-west-1}
services:
  web:
    probe: {kind: tcp, port: 443}
    primary: {instance_id: i-0123456789abcdef0}
    backup: {instance_id: i-0123456789abcdef1}
    witness: {kind: cloudwatch, alarm: web-5xx}
  nat:
    probe: {kind: tcp, port: 22}
    primary: {instance_id: i-0123456789abcdef2}
    backup: {instance_id: i-0123456789abcdef3}
    witness: {kind: ec2_status}
  edge:
    probe: {kind: tcp, port: 80}
    primary: {instance_id: i-0123456789abcdef4}
    backup: {instance_id: i-0123456789abcdef5}
    witness:
      kind: elb
      target_group: EDGE_TG
""".replace("EDGE_TG", EDGE_TG)
WITNESS_READS = {"ec2:DescribeInstanceStatus", "cloudwatch:DescribeAlarms"}


def _witness_config(tmp_path: Path, body: str = WITNESSES) -> Any:
    path = tmp_path / "c.yaml"
    path.write_text(body)
    return load_config(str(path), secrets=False)


def test_witness_reads_are_allowed_exactly_when_configured(tmp_path: Path) -> None:
    called, dynamic = _aws_calls([ROOT / "jupiterd" / WITNESS])
    assert not dynamic and called, dynamic
    assert called == WITNESS_READS | {"elasticloadbalancing:DescribeTargetHealth"}
    doc = iam.policy(_witness_config(tmp_path))
    assert called <= _actions(doc)
    alarms = [s for s in _statements(doc) if "cloudwatch:DescribeAlarms" in _as_list(s["Action"])]
    # no attachment names the account: any account, that alarm's name
    assert [s["Resource"] for s in alarms] == ["arn:aws:cloudwatch:eu-west-1:*:alarm:web-5xx"]
    status = next(
        s for s in _statements(doc) if "ec2:DescribeInstanceStatus" in _as_list(s["Action"])
    )
    assert status["Resource"] == "*"
    assert status["Condition"]["StringEquals"]["aws:RequestedRegion"] == "eu-west-1"
    # without a witness of that kind, not its read
    only_elb = WITNESSES.replace("witness: {kind: cloudwatch, alarm: web-5xx}", "").replace(
        "witness: {kind: ec2_status}", ""
    )
    assert WITNESS_READS.isdisjoint(_actions(iam.policy(_witness_config(tmp_path, only_elb))))


def test_the_example_policy_has_no_witness_reads(example: Any) -> None:
    assert WITNESS_READS.isdisjoint(_actions(iam.policy(example)))


@pytest.mark.parametrize("community", [False, True], ids=["core", "community"])
def test_parliament_finds_nothing_with_every_witness(tmp_path: Path, community: bool) -> None:
    text = iam.policy_json(_witness_config(tmp_path))
    assert _findings(text, community) == []
