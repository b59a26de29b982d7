"""One error path for every ``bertlab`` command.

A failure the user causes or meets (a bad config field, a malformed data file, a busy run folder, a
full disk, a diverging run) is printed as one line naming the file, line, key or field, and the
command exits with status 2. Anything else is a bug: it gets one line too, with its exception type and
a pointer to the traceback. ``BERTLAB_DEBUG=1`` (or a command's ``--debug``) shows the traceback of
either kind instead, in every command.

Error classes that mean "the user's input or machine, not bertlab" derive from ``BertlabError``; this
module imports nothing else from bertlab so that every module can use it.
"""
from __future__ import annotations

import os
import sys
import traceback

EXIT_ERROR = 2         # a command that failed (argparse uses the same status for bad arguments)
EXIT_INTERRUPTED = 130  # Ctrl-C, the shell's status for SIGINT


class BertlabError(Exception):
    """A failure the user causes or meets; its message names the file, line, key or field at fault."""


def debug_requested(argv=()) -> bool:
    """Whether the traceback was asked for: ``--debug`` in ``argv`` or ``BERTLAB_DEBUG`` set to
    anything but empty or ``0``."""
    return "--debug" in argv or os.environ.get("BERTLAB_DEBUG", "0") not in ("", "0")


def chain(e: BaseException) -> list[BaseException]:
    """``e`` and the exceptions it was raised from or during (torch wraps a full disk's OSError)."""
    seen = []
    while e is not None and e not in seen:
        seen.append(e)
        e = e.__cause__ or e.__context__
    return seen


def is_expected(e: BaseException, also: tuple[type, ...] = ()) -> bool:
    """Failures a user causes or meets (``BertlabError``s, a missing or unreadable file, a full disk,
    undecodable text, a damaged checkpoint, and the types in ``also``), as opposed to bugs."""
    kinds = (BertlabError, OSError, UnicodeDecodeError) + tuple(also)
    return any(isinstance(x, kinds) for x in chain(e)) or (
        isinstance(e, RuntimeError) and ("checkpoint" in str(e) or "No space left" in str(e)))


def one_line(e: BaseException, also: tuple[type, ...] = ()) -> str:
    """The error as one line: a ``BertlabError`` (or a type in ``also``) says its own message;
    otherwise an OSError anywhere in the chain is ``file: reason`` (a full disk says "No space left
    on device", not torch's "enforce fail at inline_container.cc"); a bug keeps its exception type
    in front. A multi-line message is joined with "; "."""
    text = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
    if isinstance(e, (BertlabError,) + tuple(also)) and text:
        return text  # its own message already names what is wrong (perhaps raised from an OSError)
    for x in chain(e):
        if isinstance(x, OSError) and (x.filename or x.strerror):
            return f"{x.filename or ''}{': ' if x.filename else ''}{x.strerror or x}"
    if is_expected(e, also):
        return text or type(e).__name__
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def fail(command: str, e: BaseException, debug: bool = False, also: tuple[type, ...] = (),
         hint: str = "") -> int:
    """Say ``e`` on stderr as ``bertlab COMMAND: one line[ hint]`` and return ``EXIT_ERROR``; with
    ``debug`` (or ``BERTLAB_DEBUG``) print its traceback first. ``also``: exception types this command
    raises for bad input besides ``BertlabError`` (e.g. ``ValueError`` from a parser), printed without
    their type name. Call it from a command's ``except Exception``."""
    debug = debug or debug_requested()
    if debug:
        traceback.print_exception(e)
    elif not is_expected(e, also):
        hint += " (BERTLAB_DEBUG=1 for the traceback)"
    print(f"bertlab {command}: {one_line(e, also)}{hint}", file=sys.stderr)
    return EXIT_ERROR
