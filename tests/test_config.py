"""Configuration: one bad file per rule (the message asserted), the shipped
examples, secrets, defaults."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from jupiterd.config import ConfigError, load_config, parse_duration

HERE = Path(__file__).parent
BAD = sorted((HERE / "configs" / "bad").glob("*.yaml"))
ROOT = HERE.parent


def expected(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: '"
    return first[len("# expect: ") :]


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_config_is_rejected_with_a_message_naming_the_key(path):
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    msg = str(err.value)
    assert msg.startswith(f"{path}: "), msg
    assert expected(path) in msg, msg
    assert "Traceback" not in msg


def test_there_is_a_bad_file_per_rule():
    assert len(BAD) >= 30


@pytest.mark.parametrize("path", BAD[:3], ids=[p.stem for p in BAD[:3]])
def test_check_config_exits_78_with_one_line(path):
    r = subprocess.run(
        [sys.executable, "-m", "jupiterd", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 78
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert expected(path) in r.stderr


@pytest.mark.parametrize("name", ["jupiter.example.yaml", "minimal.yaml"])
def test_shipped_examples_are_valid(name, monkeypatch):
    monkeypatch.setenv("JUPITERD_TURN_SECRET", "s3cret-turn")
    monkeypatch.setenv("JUPITERD_FRP_TOKEN", "s3cret-frp")
    monkeypatch.setenv("JUPITERD_TB_PASSWORD", "s3cret-tb")
    cfg = load_config(str(ROOT / "config" / name))
    assert cfg.services


def test_full_example_describes_the_jupiter_stack(monkeypatch):
    monkeypatch.setenv("JUPITERD_TURN_SECRET", "s3cret-turn")
    monkeypatch.setenv("JUPITERD_FRP_TOKEN", "s3cret-frp")
    monkeypatch.setenv("JUPITERD_TB_PASSWORD", "s3cret-tb")
    cfg = load_config(str(ROOT / "config" / "jupiter.example.yaml"))
    assert set(cfg.services) == {"signaling", "coturn", "frp", "thingsboard", "nat"}
    assert cfg.aws.region == "ap-southeast-2"
    kinds = {n: s.probe.kind for n, s in cfg.services.items()}
    assert kinds == {
        "signaling": "socketio",
        "coturn": "turn",
        "frp": "frp",
        "thingsboard": "thingsboard",
        "nat": "icmp",
    }
    assert cfg.services["frp"].attachments.elastic_ip
    assert cfg.services["nat"].attachments.route_tables
    assert cfg.services["signaling"].attachments.target_groups
    assert cfg.services["coturn"].attachments.target_groups
    assert cfg.sns_topic_arn.endswith(":jupiter-failover-notifications")
    # Secrets are resolved and held as SecretStr only: never in a repr.
    secret = cfg.services["coturn"].probe.parsed_options.secret  # type: ignore[attr-defined]
    assert isinstance(secret, SecretStr) and secret.get_secret_value() == "s3cret-turn"
    assert "s3cret" not in repr(cfg)


def test_every_key_of_the_full_example_is_commented():
    text = (ROOT / "config" / "jupiter.example.yaml").read_text().splitlines()
    uncommented = []
    for i, line in enumerate(text):
        stripped = line.strip()
        if (
            not stripped
            or stripped.startswith("#")
            or (stripped.startswith("- ") and ":" not in stripped)
        ):
            continue
        if ":" in stripped and "#" not in stripped:
            prev = text[i - 1].strip() if i else ""
            if not prev.startswith("#"):
                uncommented.append(f"line {i + 1}: {stripped}")
    assert not uncommented, "keys without a comment:\n" + "\n".join(uncommented)


def test_secret_from_file_and_defaults(tmp_path):
    secret = tmp_path / "turn.secret"
    secret.write_text("from-a-file\n")
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(
        "services:\n  coturn:\n    probe:\n      kind: turn\n"
        f"      options: {{secret: {{file: {secret}}}}}\n"
        "    thresholds: {fall: 5, interval: 3s}\n"
    )
    cfg = load_config(str(cfg_path))
    opts = cfg.services["coturn"].probe.parsed_options
    assert opts.secret.get_secret_value() == "from-a-file"  # type: ignore[attr-defined]
    th = cfg.thresholds("coturn")
    assert (th.fall, th.interval, th.rise, th.fast_interval) == (5, 3.0, 2, 0.25)
    assert cfg.http.listen == "127.0.0.1:9478"
    assert cfg.services["coturn"].probe.target_for("10.0.1.5") == "10.0.1.5:3478"
    assert cfg.services["coturn"].probe.target_for("fd00::5") == "[fd00::5]:3478"


def test_secret_value_never_in_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("TB_PW", "hunter2-secret")
    p = tmp_path / "c.yaml"
    p.write_text(
        "services:\n  tb:\n    probe:\n      kind: thingsboard\n"
        "      options: {password: {env: TB_PW}, bogus: 1}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(str(p))
    assert "hunter2" not in str(err.value)
    assert "services.tb.probe.options.bogus: unknown option" in str(err.value)


@pytest.mark.parametrize(
    "text,seconds",
    [
        (2, 2.0),
        (0.5, 0.5),
        ("250ms", 0.25),
        ("2s", 2.0),
        ("10m", 600.0),
        ("1h30m", 5400.0),
        ("1.5", 1.5),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "2x", "s", "1h 30", True, None, "-1s"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


# --------------------------------------------------------------------------- hostile files

GOOD = "services:\n  a: {probe: {kind: tcp, port: 1}}\n"


def _refused(path: Path) -> str:
    """The one-sentence ConfigError ``load_config`` gives for ``path``."""
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg, msg
    return msg


def test_a_file_that_is_not_utf8_is_refused_naming_the_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_bytes(GOOD.encode() + b"# caf\xe9 in Latin-1\n")
    assert "not UTF-8 text (an invalid byte at line 3" in _refused(p)


def test_a_directory_an_empty_file_and_a_pipe_without_writer_are_refused(tmp_path):
    assert "cannot read: Is a directory" in _refused(tmp_path)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert "the file is empty" in _refused(empty)
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    assert "the file is empty" in _refused(fifo)  # read to its end, not waited on


def test_a_file_over_one_mib_is_refused_unread(tmp_path):
    p = tmp_path / "big.yaml"
    p.write_text(GOOD + "#" * (1024 * 1024) + "\n")
    assert "larger than 1 MiB: not a configuration file" in _refused(p)


def test_deep_nesting_is_refused_before_python_recursion(tmp_path):
    """An explicit bound, not a caught RecursionError (which would say
    "cannot be read as YAML (RecursionError)")."""
    for text in (
        "x: " + "[" * 5000 + "]" * 5000,
        "x: " + "{a: " * 5000 + "1" + "}" * 5000,
        "x:\n" + "".join("  " * i + "- \n" for i in range(1, 300)),
        "x:\n" + "- " * 5000 + "1",
    ):
        p = tmp_path / "deep.yaml"
        p.write_text(GOOD + text + "\n")
        assert "nested more than 64 levels deep at line " in _refused(p)


def test_alias_nesting_counts_through_aliases(tmp_path):
    """Each anchor 40 deep, each alias adding 40 more: only the expanded
    depth is over the bound."""
    lines = ["a0: &a0 " + "[" * 40 + "]" * 40]
    lines += [f"a{i}: &a{i} " + "[" * 39 + f"*a{i - 1}" + "]" * 39 for i in range(1, 4)]
    p = tmp_path / "c.yaml"
    p.write_text("\n".join(lines) + "\n" + GOOD)
    assert "nested more than 64 levels deep (counting through aliases) at line 2" in _refused(p)


def test_a_billion_laughs_is_refused_quickly_and_never_echoed(tmp_path):
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    p = tmp_path / "c.yaml"
    # In a field whose error would quote its value: the duration.
    p.write_text("\n".join(lines) + "\ndefaults: {interval: *a9}\n" + GOOD)
    msg = _refused(p)
    assert "expands to more than 50,000 values" in msg and "lol" not in msg
    # Big but under the bound: the duration's error quotes no list.
    p.write_text("\n".join(lines[:4]) + "\ndefaults: {interval: *a3}\n" + GOOD)
    msg = _refused(p)
    assert msg.endswith(
        "defaults.interval: a list is not a duration (use seconds, "
        "or e.g. '250ms', '2s', '10m', '1h')"
    ), msg


def test_a_long_text_repeated_by_aliases_is_refused(tmp_path):
    lines = ["t: &t '" + "x" * 60000 + "'", "l: &l [" + ", ".join(["*t"] * 100) + "]"]
    p = tmp_path / "c.yaml"
    p.write_text("\n".join(lines) + "\n" + GOOD)
    assert "4 MiB of text" in _refused(p)


def test_anchors_aliases_and_merge_keys_still_work(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(
        "x-tcp: &tcp {probe: {kind: tcp, port: 1}, thresholds: &th {fall: 4, rise: 3}}\n"
        "services:\n"
        "  a: *tcp\n"
        "  b: {<<: *tcp, thresholds: {<<: *th, fall: 5}}\n"
    )
    with pytest.raises(ConfigError, match="x-tcp: unknown key"):
        load_config(str(p))  # the anchor's own key is still an unknown key
    p.write_text(p.read_text().replace("x-tcp: &tcp", "services: &tcp", 1))
    with pytest.raises(ConfigError, match="duplicate key 'services' at line 2"):
        load_config(str(p))
    p.write_text(
        "defaults: &d {fall: 4, rise: 3}\n"
        "services:\n"
        "  a: &a {probe: {kind: tcp, port: 1}, thresholds: *d}\n"
        "  b: {<<: *a, thresholds: {<<: *d, fall: 5}}\n"
    )
    cfg = load_config(str(p))
    assert (cfg.thresholds("a").fall, cfg.thresholds("a").rise) == (4, 3)
    assert (cfg.thresholds("b").fall, cfg.thresholds("b").rise) == (5, 3)


@pytest.mark.parametrize(
    "doc,key",
    [
        ("services: {a: {probe: {kind: tcp, port: 1}}, a: {probe: {kind: tcp, port: 2}}}", "'a'"),
        ("services:\n  a: {probe: {kind: tcp, port: 1}}\nservices: {}", "'services'"),
        ("services: {a: {probe: {kind: tcp, port: 1, port: 2}}}", "'port'"),
        (
            "services: {a: {probe: {kind: tcp, port: 1}}}\nlog: {level: info, level: debug}",
            "'level'",
        ),
        ("services: {a: {probe: {kind: tcp, port: 1}}}\n1: a\n0x1: b", "1"),
    ],
)
def test_duplicate_keys_are_an_error_naming_the_key(tmp_path, doc, key):
    p = tmp_path / "c.yaml"
    p.write_text(doc + "\n")
    assert f"duplicate key {key} at line" in _refused(p)


def _short_id(value: object) -> str:
    text = str(value)
    return text if len(text) < 50 else text[:40] + "..."


@pytest.mark.parametrize(
    "doc,key",
    [
        ("defaults: {interval: .inf}", "defaults.interval"),
        ("defaults: {cooldown: .inf}", "defaults.cooldown"),
        ("defaults: {min_down: .nan}", "defaults.min_down"),
        (
            "defaults: {cooldown: '9999999999999999999999999999999999999999999999999999d'}",
            "defaults.cooldown",
        ),
        ("defaults: {failover_after: 1e400}", "defaults.failover_after"),
        (f"defaults: {{failover_after: {'9' * 400}}}", "defaults.failover_after"),
        ("defaults: {jitter: .nan}", "defaults.jitter"),
        ("defaults: {jitter: nan}", "defaults.jitter"),
        ("guards: {isolation: {fraction: .nan}}", "guards.isolation.fraction"),
        ("guards: {isolation: {window: .inf}}", "guards.isolation.window"),
        ("aws: {read_timeout: .inf}", "aws.read_timeout"),
        (
            "services: {a: {probe: {kind: tcp, port: 1}, thresholds: {cooldown: .inf}}}",
            "services.a.thresholds.cooldown",
        ),
        (
            "services: {a: {probe: {kind: turn, options: {rto: .nan}}}}",
            "services.a.probe.options.rto",
        ),
    ],
    ids=_short_id,
)
def test_non_finite_numbers_are_refused_naming_the_key(tmp_path, doc, key):
    p = tmp_path / "c.yaml"
    p.write_text(doc + "\n" + ("" if "services" in doc else GOOD))
    msg = _refused(p)
    assert f": {key}: " in msg and ("finite" in msg or "duration" in msg), msg


@pytest.mark.parametrize(
    "value", [float("inf"), float("nan"), "inf", "nan", 10**400, "9" * 400], ids=_short_id
)
def test_parse_duration_refuses_non_finite(value):
    with pytest.raises(ValueError, match=r"finite|not a duration"):
        parse_duration(value)


def test_values_quoted_in_errors_are_cut_short(tmp_path):
    long = "x" * 5000
    for doc in (
        f"services: {{a: {{probe: {{kind: {long}}}}}}}",
        f"services: {{A{long}: {{probe: {{kind: tcp, port: 1}}}}}}",
        f"defaults: {{interval: {long}}}\n{GOOD}",
        f"http: {{listen: '{long}'}}\n{GOOD}",
        f"drills: [{{schedule: '{long}'}}]\n{GOOD}",
        f"services: {{a: {{probe: {{kind: tcp, port: 1, options: {{{long}: 1}}}}}}}}",
        f"services: {{a: {{probe: {{kind: tcp, port: 1}}, primary: {{address: '/{long}'}}}}}}",
    ):
        p = tmp_path / "c.yaml"
        p.write_text(doc + "\n")
        msg = _refused(p)
        assert len(msg) < len(str(p)) + 400 and "x" * 100 not in msg, msg


# Where a secret, an env name or a file path is expected, an operator may
# have pasted the secret itself: no message may quote what was given.
MARKER = "pasted-SECRET-7f3a9c"


@pytest.mark.parametrize(
    "value",
    [
        f"{{env: [{MARKER}]}}",
        f"{{env: {{{MARKER}: 1}}}}",
        f"{{env: '{MARKER}'}}",  # not a variable name (dashes)
        "{env: PASTED_SECRET_7F3A9C}",  # a valid name, not set
        f"{{file: [{MARKER}]}}",
        "{file: /nonexistent/PASTED_SECRET_7F3A9C}",
        "{file: DIRECTORY}",
        "{file: BIG}",
        "{file: LATIN1}",
        f"{{env: X, other: {MARKER}}}",
        f"{{{MARKER}: x}}",
        f"[{MARKER}]",
    ],
)
@pytest.mark.parametrize("field", ["turn.secret", "thingsboard.password", "socketio.auth"])
def test_no_message_quotes_a_value_given_for_a_secret(tmp_path, monkeypatch, value, field):
    monkeypatch.delenv("PASTED_SECRET_7F3A9C", raising=False)
    directory = tmp_path / MARKER
    directory.mkdir()
    big = tmp_path / f"big-{MARKER}"
    big.write_text(MARKER * 10000)
    latin1 = tmp_path / f"latin1-{MARKER}"
    latin1.write_bytes(MARKER.encode() + b"\xe9\n")
    value = (
        value.replace("DIRECTORY", str(directory))
        .replace("BIG", str(big))
        .replace("LATIN1", str(latin1))
    )
    kind, option = field.split(".")
    extra = ", username: u" if kind == "thingsboard" else ""
    p = tmp_path / "c.yaml"
    p.write_text(
        f"services:\n  a: {{probe: {{kind: {kind}, port: 1, "
        f"options: {{{option}: {value}{extra}}}}}}}\n"
    )
    msg = _refused(p)
    assert f"services.a.probe.options.{option}" in msg, msg
    assert MARKER not in msg.removeprefix(f"{p}: ") and "7F3A9C" not in msg, msg


def test_secret_file_that_is_a_pipe_or_device_is_read_bounded(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(
        "services:\n  a: {probe: {kind: turn, port: 1, options: {secret: {file: /dev/zero}}}}\n"
    )
    assert "options.secret.file: the file named here is over 64 KiB" in _refused(p)


COMMANDS = [
    ["check-config", "FILE"],
    ["--config", "FILE"],
    ["run", "--config", "FILE"],
    ["pause", "--config", "FILE"],
    ["resume", "--config", "FILE"],
    ["status", "--config", "FILE"],
    ["failover", "a", "--config", "FILE"],
    ["failback", "a", "--config", "FILE"],
    ["failover-all", "--config", "FILE"],
    ["failback-all", "--config", "FILE"],
    ["iam-policy", "--config", "FILE"],
]


@pytest.mark.slow
def test_every_command_that_loads_the_config_exits_78_with_one_line(tmp_path):
    files = {
        "not UTF-8 text": GOOD.encode() + b"# caf\xe9\n",
        "nested more than 64 levels deep": GOOD.encode() + b"x: " + b"[" * 20000,
        "expands to more than 50,000 values": (
            "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
            + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10))
            + GOOD
        ).encode(),
    }
    paths = {}
    for i, (sentence, data) in enumerate(files.items()):
        paths[sentence] = tmp_path / f"bad{i}.yaml"
        paths[sentence].write_bytes(data)
    for n, command in enumerate(COMMANDS):
        sentence = list(files)[n % len(files)]
        argv = [str(paths[sentence]) if a == "FILE" else a for a in command]
        r = subprocess.run(
            [sys.executable, "-m", "jupiterd", *argv],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 78, (command, r.stderr[-500:])
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, (command, r.stderr)
        assert sentence in r.stderr and str(paths[sentence]) in r.stderr, (command, r.stderr)


@pytest.mark.parametrize(
    ("zone_id", "ok"),
    [
        ("Z0123456789JUPITER", True),
        ("/hostedzone/Z0123456789JUPITER", True),
        ("/hostedzone/A1B2C3D4E5F6G7", True),  # an emulator's id: not starting with Z
        ("c0ffee42", True),
        ("example.com", False),
        ("Z" * 33, False),
        ("/hostedzone/", False),
    ],
)
def test_a_hosted_zone_id_is_what_route53_returns(tmp_path, zone_id, ok):
    path = tmp_path / "c.yaml"
    path.write_text(
        "services:\n  a:\n    probe: {kind: tcp, port: 1}\n    attachments:\n"
        f"      route53: [{{zone_id: '{zone_id}', name: a.example.com}}]\n"
    )
    if ok:
        assert load_config(str(path)).services["a"].attachments.route53[0].zone_id == zone_id
    else:
        with pytest.raises(ConfigError, match="expected a Route 53 hosted zone id"):
            load_config(str(path))
