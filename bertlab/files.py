"""Atomic file writes: nothing bertlab writes is ever left half-written.

Each writer puts the bytes in a temp file in the target's folder, fsyncs it, then ``os.replace``s
it over the target, so a reader (or a run killed mid-write) sees the old file or the new one,
never a mix. ``write_with`` is the one file writer (``write_bytes``/``write_text``/``write_json``
build on it), ``write_folder`` the one folder writer (model folders). A target that is a symbolic
link is replaced as a link: what it points to is never written or deleted.

``folder_lock`` keeps two processes from writing one folder at once (two trainings into one
``--out``): a lock the kernel drops when its process ends, however it ends.

Permissions are those a plain ``open(path, "w")`` would give: a new file gets ``0o666`` minus the
umask (``-rw-r--r--`` under the usual 022, so lab-mates on a shared disk can read results and
models), a replaced file keeps its mode. ``tempfile.mkstemp``/``mkdtemp`` create ``0o600``/``0o700``
on purpose (a temp file is private); that mode must not leak into the file or folder it becomes.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shlex
import socket
import stat
import sys
import tempfile
import time
from pathlib import Path

from bertlab.errors import BertlabError


def current_umask() -> int:
    """The process umask, read without changing it where Linux exposes it (``/proc/self/status``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it (briefly)
    os.umask(mask)
    return mask


def default_mode(directory: bool = False) -> int:
    """The mode ``open``/``mkdir`` would give a new file (``0o666``) or folder (``0o777``) under
    the current umask."""
    return (0o777 if directory else 0o666) & ~current_umask()


def apply_umask(path: str | os.PathLike) -> None:
    """Give a folder made by ``tempfile.mkdtemp`` and everything in it the modes ``mkdir``/``open``
    would have given them (folders ``0o777``, files ``0o666``, minus the umask). For temp folders
    that are renamed into place, and for files a library writes privately (safetensors' ``save_file``
    creates ``0o600``)."""
    path = Path(path)
    dir_mode, file_mode = default_mode(directory=True), default_mode()
    os.chmod(path, dir_mode if path.is_dir() else file_mode)
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            for d in dirs:
                os.chmod(os.path.join(root, d), dir_mode)
            for f in files:
                if not os.path.islink(os.path.join(root, f)):
                    os.chmod(os.path.join(root, f), file_mode)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, os.replace).

    The file ends up with the mode a plain write would give it: the old file's mode when it is
    replaced, else ``0o666`` minus the umask."""
    return write_with(path, lambda f: f.write(data))


def write_with(path: str | os.PathLike, write) -> Path:
    """The one atomic file writer: ``write(f)`` fills a binary temp file in ``path``'s folder
    (e.g. ``torch.save(obj, f)``), which is fsynced and renamed over ``path``. Modes as
    ``write_bytes``."""
    path = Path(path)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = default_mode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # mkstemp's 0o600 would otherwise become the file's mode
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno is not None and e.filename is None:
            # a full disk at write or fsync names no file: name the one being written
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """``write_bytes`` of UTF-8 text."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj, indent: int | None = 2, **dumps_kwargs) -> Path:
    """``obj`` as indented JSON plus a newline, written atomically."""
    return write_text(path, json.dumps(obj, indent=indent, **dumps_kwargs) + "\n")


def write_jsonl(path: str | os.PathLike, rows, **dumps_kwargs) -> Path:
    """One JSON object per line, written atomically."""
    return write_text(path, "".join(json.dumps(row, **dumps_kwargs) + "\n" for row in rows))


def write_folder(folder: str | os.PathLike, write) -> Path:
    """The one atomic folder writer: ``write(tmp)`` fills a fresh temp folder beside ``folder``,
    which is then swapped in. An interrupted write leaves the old folder (or nothing), never half
    a model. Modes as a plain ``mkdir``/``open`` would give them (see ``apply_umask``).

    A ``folder`` that is a symbolic link is replaced by the new folder; the folder it points to
    keeps its contents (only the link's parent is resolved, never the link itself)."""
    import shutil
    folder = Path(folder)
    folder = folder.parent.resolve() / folder.name
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        write(tmp)
        apply_umask(tmp)  # mkdtemp's 0o700 (and e.g. safetensors' 0o600) would keep lab-mates out
        if folder.exists() or folder.is_symlink():
            # rename(2) cannot replace a non-empty folder (nor put a folder over a link): move the
            # old one aside, then delete it. rename moves a link itself, and rmtree of the folder
            # aside unlinks a link in it without following it.
            old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.old-"))
            os.replace(folder, old / "x")
            try:
                os.replace(tmp, folder)
            except BaseException:
                os.replace(old / "x", folder)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def remove_path(path: str | os.PathLike) -> None:
    """Delete a file, a folder with everything in it, or a symbolic link (the link, never what it
    points to); nothing if ``path`` does not exist."""
    import shutil
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


# ---- one writer per folder ------------------------------------------------------------------------

LOCK_FILE = ".lock"


class FolderBusy(BertlabError, RuntimeError):
    """Another live process holds the folder's lock (``folder_lock``); the message names it."""


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike):
    """Hold an exclusive lock on ``folder`` while the block runs, or raise ``FolderBusy`` naming
    the process that holds it (pid, host, since when, its command).

    The lock is ``fcntl.flock`` on ``folder/.lock``, taken without waiting. The kernel drops it
    when its process ends, however it ends (Ctrl-C, SIGKILL, a crash), so a run that died never
    leaves a stale lock: the next process takes it at once. The file only says who holds the lock;
    it is removed on release, while still held, and a process that locked a file removed under it
    tries again. A folder the lock created is removed again if nothing was written in it. Where
    ``fcntl`` is missing (Windows), or the file system has no locks, nothing is locked (the block
    gets None instead of the lock file's path)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, as before
        yield None
        return
    folder = Path(folder)
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = _take_lock(path, folder, fcntl)
    try:
        if fd is not None:
            holder = {"pid": os.getpid(), "host": socket.gethostname(),
                      "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": _command()}
            os.ftruncate(fd, 0)
            os.write(fd, (json.dumps(holder) + "\n").encode("utf-8"))
        yield path if fd is not None else None
    finally:
        if fd is not None:
            path.unlink(missing_ok=True)  # before the lock is dropped: no one locks a file about to go
            os.close(fd)
        if made:
            with contextlib.suppress(OSError):  # not empty: something was written
                folder.rmdir()


def _take_lock(path: Path, folder: Path, fcntl) -> int | None:
    """The descriptor of ``path``, locked (``folder_lock``); None on a file system without locks
    (some network and FUSE file systems answer ENOLCK or EOPNOTSUPP), where the folder is used
    unlocked as before."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderBusy(f"{folder}: {_lock_holder(path)} is writing this folder; wait for it to "
                             f"end, or use another folder") from None
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                path.unlink(missing_ok=True)
                return None
            raise
        except BaseException:
            os.close(fd)
            raise
        try:  # the file we locked may have been removed by its last holder since we opened it
            here = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            here = False
        if here:
            return fd
        os.close(fd)


def _command() -> str:
    """This process's command line, as typed (``python -m bertlab`` for ``bertlab/__main__.py``)."""
    if not sys.argv or not sys.argv[0]:
        return ""
    prog = Path(sys.argv[0])
    name = f"python -m {prog.parent.name}" if prog.name == "__main__.py" else shlex.quote(prog.name)
    return " ".join([name, shlex.join(sys.argv[1:])]).strip()


def _lock_holder(path: Path) -> str:
    """Who holds the lock of ``path``, in words, from what its holder wrote into it."""
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        text = f"pid {holder['pid']} on {holder['host']}, since {holder['since']}"
    except (OSError, ValueError, KeyError, TypeError):  # just created, not written yet
        return "another process"
    return text + (f" ({holder['command']})" if holder.get("command") else "")
