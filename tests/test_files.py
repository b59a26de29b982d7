"""Atomic writes keep the permissions a plain write would give: new files and folders follow the
umask (lab-mates on a shared disk can read results and models), replaced files keep their mode,
and the temp file's private 0o600 / the temp folder's 0o700 never leak into what is written."""
import os
import stat

import numpy as np
import pytest
import torch

from bertlab.files import current_umask, write_bytes, write_json, write_jsonl, write_text


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(params=[0o022, 0o002, 0o077], ids=["umask022", "umask002", "umask077"])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def test_current_umask_reads_without_changing(umask):
    assert current_umask() == umask
    assert current_umask() == umask


def test_new_files_follow_the_umask(umask, tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what open(..., "w") gives: the reference
    assert mode(plain) == 0o666 & ~umask
    for name, write in (("a.bin", lambda p: write_bytes(p, b"x")), ("b.txt", lambda p: write_text(p, "x")),
                        ("c.json", lambda p: write_json(p, {"a": 1})), ("d.jsonl", lambda p: write_jsonl(p, [{}]))):
        write(tmp_path / name)
        assert mode(tmp_path / name) == mode(plain), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.txt", "c.json", "d.jsonl", "plain.txt"]


def test_replaced_file_keeps_its_mode(tmp_path):
    f = tmp_path / "results.jsonl"
    f.write_text("old\n")
    os.chmod(f, 0o640)
    write_text(f, "new\n")
    assert f.read_text() == "new\n" and mode(f) == 0o640


def test_saved_model_folder_and_knn_follow_the_umask(umask, tmp_path, minilm_path):
    """save_pretrained (a mkdtemp folder swapped in; safetensors writes 0o600) and knn.npz."""
    from bertlab.checkpoint import build_model, load_pretrained, save_pretrained
    from bertlab.knn import KNNClassifier
    from bertlab.tokenization import Tokenizer
    model = build_model("minilm", ["O", "B-X", "I-X"], num_hidden_layers=1, hidden_size=16,
                        num_attention_heads=2, intermediate_size=32)
    best = save_pretrained(model, Tokenizer.from_pretrained(minilm_path), tmp_path / "run" / "best")
    save_pretrained(model, Tokenizer.from_pretrained(minilm_path), best)  # the swap over an old folder
    KNNClassifier(k=1).fit(np.eye(3, dtype=np.float32), [0, 1, 2]).save(best / "knn.npz")
    files = sorted(p.name for p in best.iterdir())
    assert {"model.safetensors", "config.json", "tokenizer.json", "vocab.txt", "knn.npz"} <= set(files)
    assert mode(best) == 0o777 & ~umask
    assert {f: mode(best / f) for f in files} == {f: 0o666 & ~umask for f in files}
    assert not [p for p in best.parent.iterdir() if p.name.startswith(".")]  # no temp folder left
    loaded, _ = load_pretrained(best)
    torch.testing.assert_close(loaded.state_dict(), model.state_dict())


def test_write_folder_replaces_a_link_not_what_it_points_to(tmp_path):
    """A destination that is a symbolic link (to a folder, or dangling) becomes the new folder; the
    folder it pointed to keeps its files (write_folder used to resolve the link and replace that)."""
    from bertlab.files import write_folder
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.tex").write_text("keep me")
    out = tmp_path / "run"
    out.mkdir()
    (out / "best").symlink_to(victim, target_is_directory=True)
    (out / "gone").symlink_to(tmp_path / "nowhere")
    for name in ("best", "gone"):
        written = write_folder(out / name, lambda tmp: (tmp / "model.bin").write_bytes(b"w"))
        assert written == out / name and not written.is_symlink()
        assert [p.name for p in written.iterdir()] == ["model.bin"]
    assert [p.name for p in victim.iterdir()] == ["thesis.tex"] and (victim / "thesis.tex").read_text() == "keep me"
    assert not (tmp_path / "nowhere").exists()
    assert sorted(p.name for p in out.iterdir()) == ["best", "gone"]  # no temp folder left


def test_a_failed_write_names_the_file_and_leaves_the_old_one(tmp_path):
    """ENOSPC from write() or fsync() carries no file name; the error names the target."""
    import errno

    from bertlab.files import write_with
    f = tmp_path / "results.jsonl"
    f.write_text("old\n")

    def full(handle):
        handle.write(b"new")
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OSError) as e:
        write_with(f, full)
    assert (e.value.errno, e.value.filename, e.value.strerror) == (errno.ENOSPC, str(f), "No space left on device")
    assert f.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["results.jsonl"]


def test_a_file_system_without_locks_is_used_unlocked(tmp_path, monkeypatch):
    """Where flock answers ENOLCK (some network and FUSE file systems) a run goes on unlocked, as
    before the lock existed, and leaves no .lock file."""
    import errno
    import fcntl

    from bertlab.files import folder_lock

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(fcntl, "flock", no_locks)
    with folder_lock(tmp_path / "run") as held:
        assert held is None
        (tmp_path / "run" / "metrics.json").write_text("{}")
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["metrics.json"]
