"""The command line (help with examples, delete NAME or -f) and the log formats (logfmt and
JSON with the same fields, RFC 3339 times, quoting, escaping, names of what changed)."""

from __future__ import annotations

import datetime
import json
import logging

import pytest

from gatelb.agent.runtime import JsonFormatter, TextFormatter, names_or_count, parse_time, rfc3339
from gatelb.cli.main import build_parser, main


@pytest.mark.parametrize("command", ["apply", "plan", "run", "status", "delete", "flush"])
def test_every_subcommand_help_has_examples(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args([command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and f"gatelb {command}" in out


def test_plan_help_documents_its_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["plan", "--help"])
    assert "3 something would" in capsys.readouterr().out


def test_delete_takes_names_or_a_file_not_both(capsys: pytest.CaptureFixture[str], tmp_path: object) -> None:
    assert build_parser().parse_args(["delete", "web", "api"]).names == ["web", "api"]
    assert main(["--state-dir", str(tmp_path), "delete"]) == 2
    assert main(["--state-dir", str(tmp_path), "delete", "web", "-f", "x.yaml"]) == 2
    assert "give L4LB names or -f FILE" in capsys.readouterr().err


def record(msg: str, level: int = logging.INFO, **fields: object) -> logging.LogRecord:
    r = logging.LogRecord("gatelb", level, __file__, 1, msg, None, None)
    r.fields = {"event": msg, **fields}
    r.created = 1796139005.782367
    return r


def test_logfmt_quotes_escapes_and_uses_rfc3339() -> None:
    line = TextFormatter().format(record("config-invalid", logging.WARNING, source="file /etc/x y.yaml",
                                         errors=['L4LB a: b', 'say "hi"'], n=3, ok=True, name="we\nb"))
    assert line == ('time=2026-12-01T15:30:05.782367Z level=warn msg=config-invalid event=config-invalid '
                    'source="file /etc/x y.yaml" errors="[\\"L4LB a: b\\",\\"say \\\\\\"hi\\\\\\"\\"]" n=3 ok=true '
                    'name="we\\nb"')
    assert "\n" not in line


def test_json_has_the_same_fields_and_time() -> None:
    r = record("sync", changed="web,api", changes=4)
    data = json.loads(JsonFormatter().format(r))
    text = TextFormatter().format(r)
    assert list(data) == [part.split("=", 1)[0] for part in text.split(" ")]
    assert data["time"] == "2026-12-01T15:30:05.782367Z" and data["level"] == "info"
    assert abs(parse_time(data["time"]) - r.created) < 1e-6
    assert datetime.datetime.fromisoformat(data["time"].replace("Z", "+00:00")).tzinfo is not None
    assert rfc3339(0) == "1970-01-01T00:00:00.000000Z" and parse_time(12.5) == 12.5


def test_what_changed_names_few_and_counts_many() -> None:
    assert names_or_count([]) == "nothing"
    assert names_or_count(["b", "a"]) == "a,b"
    assert names_or_count([f"lb{i}" for i in range(12)]) == "12 load balancers (lb0,lb1,lb10,lb11,lb2, ...)"
