"""BENCHMARKS.md is made of sections, one per benchmark module; each module rewrites only its own.

A section sits between ``<!-- bench:KEY -->`` and ``<!-- /bench:KEY -->`` markers. Writing a section replaces that
block (or appends it when the file has none yet) and leaves every other section as it was, so each module can be
re-run on its own (``python -m bench.cpu_target --force``) and ``make bench`` runs them all.
"""

from __future__ import annotations

import re
from pathlib import Path

from qdq_toolkit._files import write_atomically

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "BENCHMARKS.md"


def _markers(key: str) -> tuple[str, str]:
    if not re.fullmatch(r"[a-z0-9_-]+", key):
        raise ValueError(f"section key {key!r}: use lower-case letters, digits, '-' or '_'")
    return f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"


def replace_section(document: str, key: str, text: str) -> str:
    """``document`` with the section ``key`` replaced by ``text`` (appended at the end when it is absent)."""
    start, end = _markers(key)
    block = f"{start}\n{text.strip()}\n{end}\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end) + r"\n?", re.DOTALL)
    if pattern.search(document):
        return pattern.sub(lambda _: block, document, count=1)
    return (document.rstrip() + "\n\n" if document.strip() else "") + block


def write_section(key: str, text: str, path: Path = BENCHMARKS) -> Path:
    """Replace the section ``key`` of ``path`` (BENCHMARKS.md by default) with ``text``, atomically.

    Only this section changes: the other modules' sections are kept byte for byte.
    """
    current = path.read_text(encoding="utf-8") if path.exists() else ""
    return write_atomically(path, replace_section(current, key, text).encode("utf-8"), force=True)
