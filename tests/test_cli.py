"""The storybot command's parser."""
import argparse
import subprocess
import sys

import pytest

from robot import cli


def test_parsing_serve_keeps_shutil_out():
    """argparse left to itself imports shutil (and bz2, lzma) for the terminal's width:
    0.3 MiB of the board daemon (board/README.md)."""
    code = ("import sys; from robot import cli; "
            "cli.build_parser(['serve']).parse_args(['serve', '--button', 'none']); "
            "print(sorted(m for m in ('shutil', 'bz2', 'lzma') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr


@pytest.mark.parametrize("columns", ["", "50", "200", "0", "wide"])
def test_help_is_as_wide_as_argparse_makes_it(monkeypatch, columns):
    monkeypatch.setenv("COLUMNS", columns)
    assert cli._Formatter("storybot")._width == argparse.HelpFormatter("storybot")._width


def test_subcommands_format_their_help_alike():
    parser = cli.build_parser(["serve"])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert parser.formatter_class is cli._Formatter
    assert all(p.formatter_class is cli._Formatter for p in sub.choices.values())
