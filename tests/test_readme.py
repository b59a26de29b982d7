"""The README's quick start is code users paste first: it must run as written."""
import re

from conftest import REPO


def test_readme_quick_start_runs():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README.md has no ```python quick start block"
    scope: dict = {}
    exec(compile(blocks[0], "README.md quick start", "exec"), scope)
    # the quick start ends with a backward pass through the focal loss: gradients must exist
    assert scope["loss"].item() > 0
    assert scope["model"].classifier.weight.grad is not None


def test_readme_shows_the_two_commands_and_the_main_job():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    for command in ("make setup", "make test", "make experiment NAME=btl_focal"):
        assert command in text
