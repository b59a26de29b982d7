"""bertlab.errors: one error path for every command (one line, exit status 2, BERTLAB_DEBUG=1 for the
traceback everywhere)."""
from __future__ import annotations

import errno

import pytest

from bertlab import cli
from bertlab.config import ConfigError
from bertlab.errors import EXIT_ERROR, BertlabError, fail, is_expected, one_line


def test_user_errors_are_their_message_and_bugs_keep_their_type():
    assert one_line(ConfigError("run.toml: [optim] lr = -1: expected > 0")) == "run.toml: [optim] lr = -1: expected > 0"
    assert one_line(TypeError("unsupported operand")) == "TypeError: unsupported operand"
    assert one_line(ValueError("line 3: two columns\nexpected")) == "ValueError: line 3: two columns; expected"
    assert one_line(ValueError("line 3: bad"), also=(ValueError,)) == "line 3: bad"
    assert is_expected(BertlabError("x")) and not is_expected(KeyError("x"))
    assert is_expected(KeyError("x"), also=(KeyError,))


def test_a_full_disk_under_a_wrapper_names_the_file():
    # torch reports a full disk as a RuntimeError raised during the OSError
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "run/checkpoint.pt")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
    except RuntimeError as e:
        assert is_expected(e)
        assert one_line(e) == "run/checkpoint.pt: No space left on device"


def test_a_user_error_raised_from_an_oserror_keeps_its_own_message():
    try:
        try:
            open("/nonexistent/report.json")
        except OSError as e:
            raise BertlabError("cannot read the pilot's report /nonexistent/report.json") from e
    except BertlabError as e:
        assert one_line(e) == "cannot read the pilot's report /nonexistent/report.json"


@pytest.mark.parametrize("debug", ["", "1"])
def test_fail_is_one_line_and_the_traceback_on_request(debug, monkeypatch, capsys):
    monkeypatch.setenv("BERTLAB_DEBUG", debug)
    try:
        raise KeyError("boom")
    except KeyError as e:
        assert fail("report", e) == EXIT_ERROR
    err = capsys.readouterr().err
    if debug:
        assert "Traceback (most recent call last)" in err and err.rstrip().endswith("bertlab report: KeyError: 'boom'")
    else:
        assert err == "bertlab report: KeyError: 'boom' (BERTLAB_DEBUG=1 for the traceback)\n"


# every command that does work goes through fail(): a bug deep inside is one line, status 2, and
# BERTLAB_DEBUG=1 shows where it happened
COMMAND_INTERNALS = {
    "train": ("bertlab.train.cli", "load_config", ["--config", "CONFIG"]),
    "experiment": ("bertlab.study.cli", "load_study", ["nope", "--list"]),
    "report": ("bertlab.report.cli", "build_report", ["RUNS"]),
    "plan": ("bertlab.study.spec", "load_study", ["nope", "--pilot", "RUNS"]),
}


@pytest.mark.parametrize("command", sorted(COMMAND_INTERNALS))
@pytest.mark.parametrize("debug", ["", "1"])
def test_every_command_reports_a_bug_in_one_line(command, debug, tmp_path, monkeypatch, capsys):
    import importlib
    module, name, argv = COMMAND_INTERNALS[command]

    def bug(*args, **kwargs):
        raise ZeroDivisionError("planted bug")

    monkeypatch.setattr(importlib.import_module(module), name, bug)
    monkeypatch.setenv("BERTLAB_DEBUG", debug)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "CONFIG").write_text("[train]\nepochs = 1\n")
    (tmp_path / "RUNS").mkdir()
    (tmp_path / "RUNS" / "report.json").write_text("{}")
    status = cli.run([command] + argv)
    err = capsys.readouterr().err
    assert status == EXIT_ERROR, err
    last = err.rstrip().splitlines()[-1]
    assert last.startswith(f"bertlab {command}: ZeroDivisionError: planted bug"), err
    assert ("Traceback (most recent call last)" in err) == bool(debug), err
