"""Running the CLI in-process and checking the one-line user-error contract."""

from __future__ import annotations

import re

from tokcompile.cli.main import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_user_error(code: int, err: str, pattern: str) -> None:
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("tokcompile: error: ") and "Traceback" not in err
    assert re.search(pattern, lines[0]), lines[0]
