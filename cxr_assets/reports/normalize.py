"""Meaning-preserving normalisation of report text.

What changes: runs of spaces/tabs collapse to one space, blank-line runs to one newline, list
numbering ("1)", "1 -", "(1)", "#1") becomes "1.", and every de-identification span (IU/OpenI
"XXXX", MIMIC "___" and "[** ... **]") becomes the single marker token `DEID_TOKEN`, with
adjacent spans (one redacted name or date) merged into one marker. What never changes: words,
their case, negations, numbers and punctuation, so labels and sections read the same before
and after.
"""

from __future__ import annotations

import re

DEID_TOKEN = "[DEID]"

# IU writes "XXXX" (also glued to words: "x-XXXX"), MIMIC "___" or "[** Name **]".
_DEID = re.compile(r"\[\*\*.*?\*\*\]|X{3,}|_{2,}")
_DEID_RUN = re.compile(rf"{re.escape(DEID_TOKEN)}(?:[ \t,]*{re.escape(DEID_TOKEN)})+")
# A list marker starts a line or follows the end of a sentence ("... clear. 2) No ...").
_NUMBERING = re.compile(r"(?m)(^[ \t]*|(?<=[.:;!?])[ \t]+)(?:\((\d{1,2})\)|#(\d{1,2})|(\d{1,2})\s*(?:\)|-(?=\s)))(?=\s)")
_SPACES = re.compile(r"[ \t\u00a0]+")
_BLANK_LINES = re.compile(r"\n\s*\n+")


def count_deid(text: str) -> int:
    """Number of de-identification spans (raw tokens or markers; adjacent raw ones count once)."""
    return len(_DEID_RUN.sub(DEID_TOKEN, _DEID.sub(DEID_TOKEN, text or "")).split(DEID_TOKEN)) - 1


def mark_deid(text: str) -> str:
    """Every de-identification span replaced by DEID_TOKEN; adjacent spans merged."""
    return _DEID_RUN.sub(DEID_TOKEN, _DEID.sub(DEID_TOKEN, text))


def normalize_numbering(text: str) -> str:
    """List markers "1)", "(1)", "#1", "1 -" -> "1." (only before whitespace, so "1)" in "(see 1)" stays)."""

    def repl(match: re.Match) -> str:
        number = match.group(2) or match.group(3) or match.group(4)
        return f"{match.group(1)}{number}."

    return _NUMBERING.sub(repl, text)


def normalize_text(text: str, keep_newlines: bool = True) -> str:
    """Whitespace, numbering and de-id markers normalised (see module docstring)."""
    if not isinstance(text, str):
        raise TypeError(f"report text must be str, got {type(text).__name__}")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = normalize_numbering(mark_deid(text))
    if keep_newlines:
        lines = [_SPACES.sub(" ", line).strip() for line in _BLANK_LINES.sub("\n", text).split("\n")]
        return "\n".join(line for line in lines if line)
    return " ".join(text.split())
