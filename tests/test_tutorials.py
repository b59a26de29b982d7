"""docs/tutorials/: the notebooks run from top to bottom without an error, are committed with their
outputs, check every exercise against bertlab, and strip into student copies.

The notebooks run in a Jupyter kernel of this very interpreter (nbclient + ipykernel, extra `docs`),
found through a kernel spec this test writes, so that neither a kernel registered elsewhere on the
machine nor the PATH decides which Python (and which bertlab) they import.
"""
import ast
import json
import os
import re
import subprocess
import sys
import time

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO

TUTORIALS = REPO / "docs" / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("[0-9][0-9]_*.ipynb"))
STRIP = TUTORIALS / "strip_solutions.py"
# a committed figure is a PNG at about 80 dpi; this bounds what one output may add to the repository
MAX_IMAGE_BYTES = 200_000


def cells(nb, tag):
    return [(i, c) for i, c in enumerate(nb.cells) if tag in c.metadata.get("tags", [])]


def names(source, ctx):
    """Names ``source`` stores (ctx ast.Store, plus functions, classes and imports) or loads."""
    tree = ast.parse(source)
    out = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ctx)}
    if ctx is ast.Store:
        out |= {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        out |= {(a.asname or a.name).split(".")[0] for n in ast.walk(tree)
                if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    return out


def python_source(cell):
    """A code cell's Python, IPython magics (%matplotlib inline) left out."""
    return "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))


def test_there_are_the_five_tutorials():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05"]


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """The environment of the notebooks' kernel: this interpreter, this checkout's bertlab."""
    spec_dir = tmp_path_factory.mktemp("jupyter")
    kernel = spec_dir / "kernels" / "python3"
    kernel.mkdir(parents=True)
    (kernel / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3", "language": "python"}))
    env = {
        "JUPYTER_PATH": str(spec_dir),            # searched before the user's and the system's kernels
        "IPYTHONDIR": str(spec_dir / "ipython"),  # no history database in the user's home
        "PYTHONPATH": os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
        # small tensors on shared cores: one thread is several times faster than two that wait for each other
        "OMP_NUM_THREADS": "1",
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_without_error(path, kernel_env):
    """Every cell, exercises and their checks included, in a fresh kernel; any error fails the test."""
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, kernel_name="python3", timeout=300, record_timing=False,
                   resources={"metadata": {"path": str(TUTORIALS)}}).execute()
    seconds = time.perf_counter() - start
    print(f"{path.name}: {seconds:.1f} s")
    checks = [c for _, c in cells(nb, "check")]
    printed = "".join(o.get("text", "") for c in checks for o in c.outputs if o.output_type == "stream")
    assert printed.count(": correct") >= len(checks), "every check cell reports its answers correct"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_executed_with_outputs(path):
    """The notebooks read on a code host without running: every code cell ran, in order, without an
    error, and the figures are there, small."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "run top to bottom, then commit"
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o.data["image/png"] for o in outputs if "image/png" in o.get("data", {})]
    if path.name[:2] != "05":  # the study notebook shows tables, not figures
        assert images, f"{path.name}: no figure in the committed outputs"
    for image in images:
        assert len(image) * 3 // 4 <= MAX_IMAGE_BYTES, f"{path.name}: a figure of {len(image) * 3 // 4} bytes"
    assert not any(c.metadata.get("execution") for c in code), "no timing metadata (record_timing=False)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_exercise_is_a_solution_then_its_check(path):
    nb = nbformat.read(path, as_version=4)
    solutions = cells(nb, "solution")
    assert len(solutions) >= 3, f"{path.name}: a few exercises"
    for i, cell in solutions:
        answers = {n for n in names(python_source(cell), ast.Store) if n.startswith("answer")}
        assert answers, f"{path.name} cell {i}: a solution assigns answer_..."
        following = nb.cells[i + 1]
        assert "check" in following.metadata.get("tags", []), f"{path.name} cell {i}: a check cell follows"
        assert answers <= names(python_source(following), ast.Load), f"{path.name} cell {i + 1}: checks {answers}"
        assert "check(" in following.source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_use_the_public_api(path):
    """No private names of bertlab (``_x``): what the notebooks teach is what users can call."""
    nb = nbformat.read(path, as_version=4)
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    for node in ast.walk(ast.parse(python_source(nbformat.v4.new_code_cell(source)))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bertlab"):
            assert not any(part.startswith("_") for part in node.module.split(".")), node.module
            assert not [a.name for a in node.names if a.name.startswith("_")], node.module
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            pytest.fail(f"{path.name}: private attribute .{node.attr}")
    assert "runs/" not in re.sub(r"`[^`]*`|#.*", "", source), "a notebook writes into a temporary folder"


def test_strip_solutions_writes_student_copies_that_still_parse(tmp_path):
    out = tmp_path / "student"
    done = subprocess.run([sys.executable, str(STRIP), "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for path in NOTEBOOKS:
        original = nbformat.read(path, as_version=4)
        student = nbformat.read(out / path.name, as_version=4)
        nbformat.validate(student)
        assert len(student.cells) == len(original.cells)
        for (i, before), (_, after) in zip(cells(original, "solution"), cells(student, "solution")):
            answers = sorted(n for n in names(before.source, ast.Store) if n.startswith("answer"))
            assert sorted(after.source.splitlines()) == [f"{n} = ...  # your turn" for n in answers]
            ast.parse(after.source)
            assert after.outputs == [] and after.execution_count is None
        for (_, after) in cells(student, "check"):
            assert after.outputs == []
        # every other cell, figures included, is the original
        for before, after in zip(original.cells, student.cells):
            if not {"solution", "check"} & set(before.metadata.get("tags", [])):
                assert before == after
        # without the solutions, only the check cells need an answer: no other cell reads a name that
        # only a solution cell defines
        defined_elsewhere = set().union(*(names(python_source(c), ast.Store) for c in student.cells
                                          if c.cell_type == "code"))
        only_in_solutions = set().union(*(names(python_source(c), ast.Store) for _, c in cells(original, "solution")))
        only_in_solutions -= defined_elsewhere
        for c in student.cells:
            if c.cell_type == "code" and "check" not in c.metadata.get("tags", []):
                assert not names(python_source(c), ast.Load) & only_in_solutions, c.source
    assert "exercise(s) stripped" in done.stdout


def test_strip_solutions_refuses_to_overwrite_the_originals():
    done = subprocess.run([sys.executable, str(STRIP), "--out", str(TUTORIALS)], capture_output=True, text=True)
    assert done.returncode == 2 and "overwrite" in done.stderr


def test_readme_and_docs_link_the_tutorials():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    index = (TUTORIALS / "README.md").read_text(encoding="utf-8")
    for path in NOTEBOOKS:
        assert f"docs/tutorials/{path.name}" in readme, f"README.md's documentation table links {path.name}"
        assert f"({path.name})" in index, f"docs/tutorials/README.md links {path.name}"
    assert "strip_solutions.py" in index and "make_loss_figures.py --out" in index


def test_make_loss_figures_draws_into_the_folder_it_is_given(tmp_path):
    """A student runs it without writing into docs/ (`--out DIR`)."""
    before = {p: p.stat().st_mtime_ns for p in (REPO / "docs" / "figures").glob("*.png")}
    env = {**os.environ, "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"}
    script = REPO / "docs" / "figures" / "make_loss_figures.py"
    done = subprocess.run([sys.executable, str(script), "--out", str(tmp_path)], capture_output=True, text=True,
                          env=env)
    assert done.returncode == 0, done.stderr
    assert {"focal_loss_vs_pt.png", "logit_adjusted_vs_pt.png", "ldam_vs_pt.png", "dice_vs_pt.png",
            "label_smoothing_vs_pt.png"} <= {p.name for p in tmp_path.glob("*.png")}
    assert before == {p: p.stat().st_mtime_ns for p in (REPO / "docs" / "figures").glob("*.png")}
