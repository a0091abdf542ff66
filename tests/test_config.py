"""Configuration: one bad file per rule (the message asserted), the shipped
examples, secrets, defaults."""

from __future__ import annotations

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
