"""Tag schemes (IOB1, IOB2, IOBES, BILOU): spans <-> tags, conversion, validity checks, IOB2 repair.

A span is ``(start, end, type)`` over token indices, ``end`` exclusive. The four schemes differ only
in how they mark mention boundaries::

    tokens   the  left  main  coronary  artery      mention "left main coronary artery" (Anatomy)
    IOB2     O    B-A   I-A   I-A       I-A         B- starts every mention
    IOB1     O    I-A   I-A   I-A       I-A         B- only between two touching mentions of one type
    IOBES    O    B-A   I-A   I-A       E-A         E- ends, S- is a one-token mention
    BILOU    O    B-A   I-A   I-A       L-A         L(ast) and U(nit) instead of E and S
"""
from __future__ import annotations

SCHEMES = ("IOB1", "IOB2", "IOBES", "BILOU")

# scheme -> (begin, inside, end, single); None where the scheme has no such prefix
_PREFIXES = {
    "IOB1": ("B", "I", None, None),
    "IOB2": ("B", "I", None, None),
    "IOBES": ("B", "I", "E", "S"),
    "BILOU": ("B", "I", "L", "U"),
}


def _prefixes(scheme: str) -> tuple:
    try:
        return _PREFIXES[scheme.upper()]
    except KeyError:
        raise ValueError(f"unknown tag scheme {scheme!r}; expected one of {', '.join(SCHEMES)}") from None


def split_tag(tag: str, scheme: str = "IOB2") -> tuple[str, str | None]:
    """``"B-Drug" -> ("B", "Drug")``, ``"O" -> ("O", None)``; ValueError for a prefix the scheme lacks."""
    if tag == "O":
        return "O", None
    allowed = [p for p in _prefixes(scheme) if p]
    prefix, sep, type_ = tag.partition("-")
    if not sep or prefix not in allowed or not type_:
        raise ValueError(f"tag {tag!r} is not valid {scheme.upper()}: expected 'O' or "
                         f"{'/'.join(p + '-Type' for p in allowed)}")
    return prefix, type_


def spans_from_tags(tags: list[str], scheme: str = "IOB2") -> list[tuple[int, int, str]]:
    """Mentions ``(start, end, type)`` encoded by ``tags`` (token indices, end exclusive).

    Invalid sequences are read the forgiving way (an ``I-X`` after ``O`` starts a mention, an
    unterminated ``B-X`` in IOBES ends at the next change); use :func:`tag_problems` to reject them.
    """
    begin, _, end, single = _prefixes(scheme)
    spans, start, current = [], None, None

    def close(stop):
        nonlocal start, current
        if current is not None:
            spans.append((start, stop, current))
        start, current = None, None

    for i, tag in enumerate(tags):
        prefix, type_ = split_tag(tag, scheme)
        if prefix == "O":
            close(i)
            continue
        if prefix in (begin, single) or type_ != current:
            close(i)
            start, current = i, type_
        if prefix in (end, single) and prefix is not None:
            close(i + 1)
    close(len(tags))
    return spans


def tags_from_spans(spans, length: int, scheme: str = "IOB2") -> list[str]:
    """Tags of ``length`` tokens encoding ``spans``; ValueError if spans overlap or leave the range."""
    scheme = scheme.upper()
    begin, inside, end, single = _prefixes(scheme)
    tags = ["O"] * length
    previous_end, previous_type = None, None
    for start, stop, type_ in sorted(spans):
        if not 0 <= start < stop <= length:
            raise ValueError(f"span {(start, stop, type_)} is outside 0..{length} or empty")
        if tags[start] != "O" or (previous_end is not None and start < previous_end):
            raise ValueError(f"span {(start, stop, type_)} overlaps another span; resolve overlaps first")
        if scheme == "IOB1":
            touching_same = previous_end == start and previous_type == type_
            first = begin if touching_same else inside
            tags[start:stop] = [f"{first}-{type_}"] + [f"{inside}-{type_}"] * (stop - start - 1)
        elif scheme == "IOB2":
            tags[start:stop] = [f"{begin}-{type_}"] + [f"{inside}-{type_}"] * (stop - start - 1)
        elif stop - start == 1:
            tags[start] = f"{single}-{type_}"
        else:
            tags[start:stop] = ([f"{begin}-{type_}"] + [f"{inside}-{type_}"] * (stop - start - 2)
                                + [f"{end}-{type_}"])
        previous_end, previous_type = stop, type_
    return tags


def convert_tags(tags: list[str], source: str, target: str) -> list[str]:
    """Re-encode a valid tag sequence from scheme ``source`` to scheme ``target``."""
    return tags_from_spans(spans_from_tags(tags, source), len(tags), target)


def tag_problems(tags: list[str], scheme: str = "IOB2") -> list[tuple[int, str]]:
    """Every violation of ``scheme`` in ``tags`` as ``(token index, message)``; empty when valid."""
    begin, inside, end, single = _prefixes(scheme)
    scheme = scheme.upper()
    problems = []
    parsed = []
    for i, tag in enumerate(tags):
        try:
            parsed.append(split_tag(tag, scheme))
        except ValueError as e:
            problems.append((i, str(e)))
            parsed.append(("O", None))  # keep checking the neighbours as if it were O
    for i, (prefix, type_) in enumerate(parsed):
        prev = parsed[i - 1] if i > 0 else ("O", None)
        nxt = parsed[i + 1] if i + 1 < len(parsed) else ("O", None)
        opens = prev[1] == type_ and prev[0] in (begin, inside)  # previous token leaves X open
        if scheme == "IOB2" and prefix == inside and not opens:
            before = tags[i - 1] if i else "the sentence start"
            problems.append((i, f"{tags[i]} must follow B-{type_} or I-{type_}, not {before}"))
        elif scheme == "IOB1" and prefix == begin and prev[1] != type_:
            problems.append((i, f"{tags[i]} in IOB1 only directly follows another {type_} mention"))
        elif scheme in ("IOBES", "BILOU"):
            if prefix in (inside, end) and not opens:
                problems.append((i, f"{tags[i]} must follow B-{type_} or I-{type_}"))
            if prefix in (begin, inside) and not (nxt[1] == type_ and nxt[0] in (inside, end)):
                problems.append((i, f"{tags[i]} must be followed by I-{type_} or {end}-{type_}"))
    return problems


def check_tags(tags: list[str], scheme: str = "IOB2") -> None:
    """Raise ValueError naming the first token that violates ``scheme``."""
    problems = tag_problems(tags, scheme)
    if problems:
        i, message = problems[0]
        raise ValueError(f"token {i}: {message}")


def repair_iob2(tags: list[str]) -> tuple[list[str], list[tuple[int, str, str]]]:
    """Make an IOB2 sequence valid by turning each orphan ``I-X`` into ``B-X``.

    Returns ``(repaired tags, [(index, old tag, new tag), ...])`` so the caller can report every change.
    """
    repaired, changes = list(tags), []
    for i, (prefix, type_) in enumerate(split_tag(t) for t in tags):
        prev = split_tag(repaired[i - 1]) if i > 0 else ("O", None)
        if prefix == "I" and prev[1] != type_:
            repaired[i] = f"B-{type_}"
            changes.append((i, tags[i], repaired[i]))
    return repaired, changes
