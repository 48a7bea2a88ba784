"""Markdown tables and reports shared by the zoo table and the benchmarks."""
import pytest

from ppcls_ext.report import markdown_table, publish


def test_markdown_table_aligns_each_column():
    table = markdown_table(["model", "ms", "ok"], [["M0", 1.5, "yes"], ["B0", "-", "no"]], "lrc")
    assert table.splitlines() == ["| model | ms | ok |", "|---|---:|:---:|", "| M0 | 1.5 | yes |", "| B0 | - | no |"]


def test_alignment_must_cover_every_column():
    with pytest.raises(ValueError, match=r"align needs one of l/r/c per column \(2\), got 'lx'"):
        markdown_table(["a", "b"], [], "lx")


def test_publish_prints_and_writes(tmp_path, capsys):
    publish("| a |", str(tmp_path / "out.md"))
    assert capsys.readouterr().out == "| a |\n"
    assert (tmp_path / "out.md").read_text(encoding="utf-8") == "| a |\n"
