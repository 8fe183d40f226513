"""Running the CLI in-process, as the tests of its contract do."""

from __future__ import annotations

import pytest

from modelfleet.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``(exit code, stdout, stderr)`` of ``modelfleet ARGV``, argparse's own usage errors included."""
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err
