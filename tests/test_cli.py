"""The command line as users meet it: --version, help texts that explain every option, a quiet
exit into a closed pipe, every config file the docs tell users to run exists and loads, and bench
never passes an impossible efficiency figure off as a measurement."""
import argparse
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import REPO

import bertlab
from bertlab.cli import main


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"bertlab {bertlab.__version__}\n"
    setup = (REPO / "setup.py").read_text(encoding="utf-8")
    assert f'version="{bertlab.__version__}"' in setup


def test_data_alone_prints_its_help(capsys):
    assert main(["data"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: bertlab data") and "list" in out and "stats" in out


@pytest.mark.parametrize("argv", [["-h"], ["data", "stats", "maccrobat"], ["predict", "-h"]],
                         ids=["usage", "data-stats", "argparse-help"])
def test_closed_pipe_is_a_quiet_exit(argv):
    """`bertlab -h | head -3`: stdout's reader is gone before bertlab writes; one quiet exit
    status 1, no BrokenPipeError traceback (Python's "Exception ignored" included)."""
    p = subprocess.Popen([sys.executable, "-m", "bertlab", *argv], cwd=REPO, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    p.stdout.close()  # the reader went away
    err = p.stderr.read().decode()
    # argparse swallows the error of its own help print, so there the status stays 0
    assert p.wait(timeout=120) == (0 if "-h" in argv[1:] else 1) and err == ""


def test_ctrl_c_is_one_line_with_status_130(monkeypatch, capsys):
    """Ctrl-C in any command (here predict, reading its input) is one line and the shell's status
    for SIGINT, not a KeyboardInterrupt traceback; --debug keeps the traceback."""
    def interrupted(argv):
        raise KeyboardInterrupt
    monkeypatch.setattr("bertlab.predict.main", interrupted)
    assert main(["predict", "--model", "m", "--input", "-"]) == 130
    assert capsys.readouterr().err == "bertlab predict: interrupted\n"
    with pytest.raises(KeyboardInterrupt):
        main(["predict", "--debug"])


def parser_of(func, monkeypatch) -> argparse.ArgumentParser:
    """The ArgumentParser a command's main builds, caught as it parses."""
    class Caught(Exception):
        pass

    def catch(self, args=None, namespace=None):
        raise Caught(self)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    with pytest.raises(Caught) as e:
        func([])
    return e.value.args[0]


def subparsers(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from subparsers(sub)


# the commands whose modules this checks; train, experiment, report and gradflow parse in their own modules
OWN_COMMANDS = ["data", "convert", "predict", "evaluate", "bench", "rescore"]


@pytest.mark.parametrize("command", OWN_COMMANDS)
def test_help_explains_every_option(command, monkeypatch):
    """Descriptions are plain sentences (no reST ``markup``, no repeated usage line) and every
    option has a help text; an option with a default states it."""
    import importlib

    from bertlab.cli import COMMANDS
    module, func, _ = COMMANDS[command]
    for parser in subparsers(parser_of(getattr(importlib.import_module(module), func), monkeypatch)):
        description = parser.description or ""
        assert description and "``" not in description and not description.startswith("bertlab"), parser.prog
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) or action.help == argparse.SUPPRESS:
                continue
            assert action.help, f"{parser.prog} {action.option_strings or action.dest}: no help"
            has_default = action.default not in (None, False, [], argparse.SUPPRESS) and action.option_strings
            assert not has_default or "default" in action.help, f"{parser.prog} {action.option_strings}: default not stated"


def test_file_options_are_named_output(monkeypatch):
    """A file a command writes is --output FILE (predict, evaluate, bench); old names still parse."""
    from bertlab.bench import main as bench_main
    from bertlab.evaluate import main as evaluate_main
    from bertlab.predict import main as predict_main
    for func in (predict_main, evaluate_main, bench_main):
        options = {o for a in parser_of(func, monkeypatch)._actions for o in a.option_strings}
        assert "--output" in options
    monkeypatch.undo()


# ---- config files named in the docs ---------------------------------------------------------

DOCS = ["README.md", "docs/training.md"]


def inline_configs(text: str) -> dict:
    """TOML blocks of a doc that name themselves in their first line (``# tiny.toml: ...``)."""
    out = {}
    for block in re.findall(r"```toml\n(.*?)```", text, flags=re.S):
        m = re.match(r"#\s*(\S+\.toml):", block)
        if m:
            out[m.group(1)] = block
    return out


def config_commands(text: str) -> list[tuple[str, list[str]]]:
    """(config file, --set overrides) of every `bertlab ...` command line naming a --config."""
    found = []
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        if not re.search(r"(^|\s|-m )bertlab\s", line) or "--config" not in line:
            continue
        words = shlex.split(line.replace("[", " ").replace("]", " "))
        config = words[words.index("--config") + 1]
        overrides = [words[i + 1] for i, w in enumerate(words[:-1]) if w == "--set" and "=" in words[i + 1]]
        found.append((config, overrides))
    return found


@pytest.mark.parametrize("doc", DOCS)
def test_every_config_a_doc_runs_exists_and_loads(doc):
    """Each `bertlab ... --config FILE` line of README.md and docs/training.md names a file of the
    repository (or a TOML block of the same page titled with that name) that
    bertlab.config.load_config reads with the line's --set overrides, as `bertlab train` would."""
    import tomllib

    from bertlab.config import load_config
    text = (REPO / doc).read_text(encoding="utf-8")
    commands = config_commands(text)
    assert commands, f"{doc} names no config file"
    inline = inline_configs(text)
    for config, overrides in commands:
        if config in inline:
            raw = tomllib.loads(inline[config])
        else:
            assert (REPO / config).is_file(), f"{doc}: `--config {config}` names no file of the repository"
            raw = tomllib.loads((REPO / config).read_text(encoding="utf-8"))
        raw.pop("gradflow", None)  # bertlab train hands this section to the gradient-flow recorder
        load_config(raw, overrides)


def test_config_commands_are_found():
    """The line parser above sees what a reader sees (so the test above cannot pass vacuously)."""
    text = ("    bertlab train --config experiments/a.toml --set train.epochs=1 --out runs/x   # note\n"
            "    torchrun --nproc_per_node=2 -m bertlab train --config b.toml\n"
            "    bertlab train --config c.toml [--set optim.lr=3e-5 ...]\n"
            "    bertlab experiment btl_focal\n")
    assert config_commands(text) == [("experiments/a.toml", ["train.epochs=1"]), ("b.toml", []),
                                     ("c.toml", ["optim.lr=3e-5"])]


def test_train_example_is_a_small_minilm_run():
    from bertlab.config import load_config
    cfg = load_config(REPO / "experiments" / "train_example.toml")
    assert (cfg.data.name, cfg.model.builtin, cfg.model.path, cfg.model.preset) == ("maccrobat", "minilm", "", "")
    assert 0 < cfg.data.max_documents <= 40 and cfg.train.epochs <= 5


def test_train_example_header_states_the_epochs_the_file_sets():
    """The header said 2 epochs while the file set 4 (issue #41, item 11)."""
    import re

    from bertlab.config import load_config
    path = REPO / "experiments" / "train_example.toml"
    header = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
    stated = re.findall(r"(\d+) epochs?\b", header)
    assert stated == [str(load_config(path).train.epochs)], stated


def test_experiments_md_describes_the_smoke_scale_the_studies_set():
    """experiments.md said smoke is "one epoch and two steps" while btl_focal's smoke sets 2 epochs."""
    import tomllib
    text = " ".join((REPO / "docs" / "experiments.md").read_text().split())
    epochs = set()
    for path in (REPO / "experiments").glob("*.toml"):
        smoke = tomllib.loads(path.read_text()).get("scale", {}).get("smoke", {})
        if "train.epochs" in smoke:
            epochs.add(smoke["train.epochs"])
    assert epochs == {1, 2}
    assert "one epoch and two optimisation steps, on" not in text
    assert "one or two short epochs" in text and "`btl_focal`, 2 epochs" in text


def test_evaluation_md_documents_predict_text_with_its_real_arguments():
    """`bertlab.predict.predict_text` had no documentation: its snippet in docs/evaluation.md calls
    functions that exist with keyword arguments they take."""
    import ast
    import inspect
    import re

    import bertlab.predict as predict
    text = (REPO / "docs" / "evaluation.md").read_text()
    block = re.search(r"From Python: `bertlab.predict.predict_text`.*?```python\n(.*?)```", text, re.S)
    assert block, "docs/evaluation.md: no Python example of predict_text"
    calls = [n for n in ast.walk(ast.parse(block.group(1))) if isinstance(n, ast.Call)]
    names = {n.func.id for n in calls}
    assert "predict_text" in names
    for call in calls:
        params = inspect.signature(getattr(predict, call.func.id)).parameters
        assert {k.arg for k in call.keywords} <= set(params), call.func.id


# ---- bench ------------------------------------------------------------------------------------

def test_bench_flags_efficiency_above_the_measured_peak(monkeypatch, tmp_path, capsys):
    """`bertlab bench --quick` once printed the reference at 172% of GEMM peak: above 100% of the
    peak measured in the same run is no measurement, and the output says so."""
    from bertlab.bench import flag_impossible, format_row
    from bertlab.bench import main as bench_main
    rows = [{"name": "minilm infer MFU", "unit": "% of GEMM peak", "bertlab": 45.0, "reference": 172.0, "ratio": 0.26},
            {"name": "minilm infer MFU ok", "unit": "% of GEMM peak", "bertlab": 45.0, "reference": 40.0, "ratio": 1.1},
            {"name": "tokens", "unit": "tokens/s", "bertlab": 500.0, "reference": 172.0, "ratio": 2.9}]
    monkeypatch.setattr("bertlab.bench.models.run", lambda quick: rows)
    assert bench_main(["--only", "models", "--output", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "| minilm infer MFU | % of GEMM peak | 45 | 172 (invalid) | 0.26x (invalid) |" in out
    assert "| minilm infer MFU ok | % of GEMM peak | 45 | 40 | 1.10x |" in out
    assert "| tokens | tokens/s | 500 | 172 | 2.90x |" in out
    assert out.count("warning: invalid measurement") == 1 and "172% of the measured GEMM peak is impossible" in out
    saved = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert list(saved[0]["invalid"]) == ["reference"] and "invalid" not in saved[1] and "invalid" not in saved[2]
    assert flag_impossible(rows[1]) == rows[1] and format_row(rows[2]) == "| tokens | tokens/s | 500 | 172 | 2.90x |"
    assert bench_main(["--only", "models", "--out", str(tmp_path / "old.json")]) == 0  # the old option name
    assert (tmp_path / "old.json").exists()
