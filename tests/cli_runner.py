"""Run ``pausewatch-agent`` in-process through its real entry point (exit-code mapping included).

code, out, err = run_agent_cli(capsys, "status", "--json", "--state-dir", str(state))
"""

from __future__ import annotations

import sys

import pytest

from agent.cli import main


def run_agent_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    old = sys.argv
    sys.argv = ["pausewatch-agent", *args]
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.argv = old
    captured = capsys.readouterr()
    return code, captured.out, captured.err
