"""The real agent as a child process, for integration tests: start it, scrape its metrics.

agent = AgentProcess.start(state_dir, tmp_path / "agent.log", metrics_port=free_port())
values = agent.scrape()            # {(name, labels): value}, or None if the scrape failed
agent.stop()                       # SIGTERM; returns the exit code
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.prom_rules import Labels, parse_exposition
from tests.testdata import REPO_ROOT


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def agent_env(**extra: str) -> dict[str, str]:
    return dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "protos")]),
        **extra,
    )


def wait_until(predicate: Callable[[], bool], timeout_s: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"condition not met in {timeout_s} s: {what}")


@dataclass
class AgentProcess:
    process: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int

    @classmethod
    def start(
        cls,
        state_dir: Path,
        log_path: Path,
        *,
        metrics_port: int = 0,
        log_format: str = "kv",
        env: dict[str, str] | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> AgentProcess:
        args = [sys.executable, "-m", "agent.cli", "--log-format", log_format, "run",
                "--state-dir", str(state_dir), *extra_args]  # fmt: skip
        if metrics_port:
            args += ["--metrics-port", str(metrics_port)]
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                args,
                cwd=REPO_ROOT,
                env=env or agent_env(),
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        return cls(process, log_path, metrics_port)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def scrape(self) -> dict[tuple[str, Labels], float] | None:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2
            ) as response:
                return parse_exposition(response.read().decode())
        except OSError:
            return None

    def value(self, name: str, **labels: str) -> float | None:
        values = self.scrape()
        if values is None:
            return None
        return values.get((name, tuple(sorted(labels.items()))))

    def stop(self, timeout_s: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
