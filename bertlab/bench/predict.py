"""Benchmark: the peak memory of ``bertlab predict`` on one long document, streamed (windows encoded
and run a batch at a time, ``bertlab.predict.tag_sentences``) against the whole-document path it
replaced (every window, word logit and tagged word of the document held at once: ``word_logits``
over all sentences, then one decode). Both give the same entities; a row says whether they did.

The model is a 1-layer, 32-wide random BERT with MiniLM's vocabulary and MACCROBAT's 83 labels:
memory here grows with the text (windows, logits of 83 labels, tags), not with the encoder, whose
weights and one batch's activations are a constant on top. Each measurement is a subprocess that
loads the model, runs it once at every batch width (``warm_up``: torch's memory per input shape is
the same for any text), reads its peak resident memory (``VmHWM``), tags a document of the given
size (MACCROBAT's case reports, repeated: ``note``) and writes JSONL; the row is the peak over
that baseline. The streamed path also holds, until their last window runs, the word logits of
sentences longer than one window (their short last window runs with the short windows, their full
ones last): 18 of MACCROBAT's 4,541 sentences at 128 / 32; docs/evaluation.md gives the numbers
for a text where every fifth sentence is that long. Sizes: 1 and 4 MB of text (quick: 0.1 and 0.4 MB). CPU-only.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def note(n_chars: int) -> str:
    """About ``n_chars`` characters of real clinical text: MACCROBAT's 200 case reports (bundled,
    about 0.6 MB) one after the other, repeated as often as needed."""
    from bertlab.datasets import corpus_dir
    reports = "\n".join(p.read_text(encoding="utf-8") for p in sorted((corpus_dir("maccrobat") / "brat").glob("*.txt")))
    return (reports * (n_chars // len(reports) + 1))[:n_chars]


def save_model(folder: Path) -> Path:
    """The benchmark's random 1-layer model, saved as ``bertlab predict`` reads it."""
    import torch

    from bertlab.checkpoint import build_model, builtin_path, save_pretrained
    from bertlab.datasets import entity_types, label_list
    from bertlab.tokenization import Tokenizer
    torch.manual_seed(0)
    model = build_model("minilm", label_list(entity_types("maccrobat")), num_hidden_layers=1, hidden_size=32,
                        num_attention_heads=2, intermediate_size=64)
    with torch.no_grad():
        model.classifier.weight.mul_(50)  # many different labels, so entities of every length
    save_pretrained(model, Tokenizer.from_pretrained(builtin_path()), folder)
    return folder


def warm_up(model, max_length: int = 128, batch_size: int = 64) -> None:
    """A forward pass at every batch width up to ``max_length``: torch keeps memory per input shape
    (about 300 MiB for this model on a CPU, whatever the text), which would otherwise count as the
    text's; after it, the peak over the baseline is what tagging the text adds."""
    import torch
    with torch.no_grad():
        for width in range(2, max_length + 1):
            ids = torch.full((batch_size, width), 1000)
            model(ids, torch.ones_like(ids), torch.zeros_like(ids))


def worker(path: str, model_dir: str, text_file: str, out_file: str) -> dict:
    """One measurement in this process: ``{"baseline_mb", "peak_mb", "seconds"}``; ``path`` is
    ``streamed`` (``bertlab predict``'s own code) or ``whole`` (the whole-document path)."""
    from bertlab.bench.models import peak_rss_mb
    from bertlab.predict import entity_lines, load_model, main, split_words
    model, tokenizer = load_model(model_dir)
    warm_up(model)
    text = Path(text_file).read_text(encoding="utf-8")
    baseline, start = peak_rss_mb(), time.perf_counter()
    if path == "streamed":
        main(["--model", model_dir, "--input", text_file, "--output", out_file, "--max-length", "128",
              "--stride", "32"])
    else:
        from bertlab.inference import decode_words, word_logits
        sents = split_words(text)
        logits = word_logits(model, tokenizer, [w for w, _ in sents], 128, 32)
        tags, probabilities = decode_words("argmax", logits, model)
        ids = [[model.labels.index(x) for x in t] for t in tags]
        tagged = [{"words": w, "offsets": o, "tags": t, "scores": p[np.arange(len(t)), i]}
                  for (w, o), t, p, i in zip(sents, tags, probabilities, ids)]
        Path(out_file).write_text("".join(entity_lines(Path(text_file).name, text, tagged)), encoding="utf-8")
    return {"baseline_mb": baseline, "peak_mb": peak_rss_mb(), "seconds": time.perf_counter() - start}


def measure(path: str, model_dir: Path, text_file: Path, out_file: Path) -> dict:
    p = subprocess.run([sys.executable, "-m", "bertlab.bench.predict", path, str(model_dir), str(text_file),
                        str(out_file)], capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def run(quick: bool) -> list[dict]:
    """Peak memory over the loaded model, streamed vs whole document, at two text sizes."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = save_model(tmp / "model")
        for mb in ((0.1, 0.4) if quick else (1.0, 4.0)):
            text_file = tmp / "note.txt"
            text_file.write_text(note(int(mb * 1e6)), encoding="utf-8")
            got = {path: measure(path, model_dir, text_file, tmp / f"{path}.jsonl") for path in ("streamed", "whole")}
            ours, ref = (got[p]["peak_mb"] - got[p]["baseline_mb"] for p in ("streamed", "whole"))
            rows.append({"name": f"predict peak memory over the loaded model, {mb:g} MB of text", "unit": "MiB",
                         "bertlab": ours, "reference": ref, "ratio": ref / max(ours, 1.0)})
            rows.append({"name": f"predict time, {mb:g} MB of text", "unit": "s",
                         "bertlab": got["streamed"]["seconds"], "reference": got["whole"]["seconds"],
                         "ratio": got["whole"]["seconds"] / got["streamed"]["seconds"]})
            same = (tmp / "streamed.jsonl").read_bytes() == (tmp / "whole.jsonl").read_bytes()
            rows.append({"name": f"predict output identical to the whole-document path, {mb:g} MB", "unit": "fraction",
                         "bertlab": float(same), "reference": 1.0, "ratio": None})
    return rows


if __name__ == "__main__":
    if sys.argv[1:2] in (["streamed"], ["whole"]):
        print(json.dumps(worker(*sys.argv[1:5])))
    else:
        for row in run(quick="--quick" in sys.argv):
            print(row)
