"""BENCHMARKS.md sections: a benchmark module rewrites its own section and leaves the others byte for byte."""

from __future__ import annotations

import pytest

from bench.sections import replace_section, write_section


def test_a_section_is_replaced_and_the_others_are_kept(tmp_path):
    document = "# Benchmarks\n\nintro\n"
    document = replace_section(document, "core", "## Core\nold figures")
    document = replace_section(document, "cpu", "## CPU\n0.30")
    updated = replace_section(document, "core", "## Core\nnew figures")
    assert "new figures" in updated and "old figures" not in updated
    assert updated.count("<!-- bench:core -->") == 1
    # Everything from the cpu section on is untouched, and so is the intro.
    cpu_start = document.index("<!-- bench:cpu -->")
    assert updated.endswith(document[cpu_start:])
    assert updated.startswith("# Benchmarks\n\nintro\n")

    path = tmp_path / "BENCHMARKS.md"
    path.write_text(updated)
    write_section("cpu", "## CPU\n0.25", path)
    text = path.read_text()
    assert "0.25" in text and "0.30" not in text and "new figures" in text


def test_section_keys_are_checked():
    with pytest.raises(ValueError, match="section key"):
        replace_section("", "Bad Key", "x")
