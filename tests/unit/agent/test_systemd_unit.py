"""The shipped unit file (docs/pausewatch-agent.service): `systemd-analyze verify` has nothing to
say about it, its settings are in the sections systemd reads them from, and the agent speaks
sd_notify (READY, WATCHDOG from its loop, STOPPING) to a real datagram socket."""

from __future__ import annotations

import configparser
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agent.daemon import Daemon, DaemonOptions
from agent.sampler.sim import SimSampler, load_scenario
from agent.sdnotify import Notifier
from tests.agent_setup import write_state_dir
from tests.builders import T0_NS
from tests.fakes import FakeClock
from tests.testdata import REPO_ROOT
from tests.unit.agent.test_daemon import StopAfter, signer

UNIT = REPO_ROOT / "docs" / "pausewatch-agent.service"
S = 1_000_000_000


def unit_sections() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_the_unit_puts_each_setting_where_systemd_reads_it() -> None:
    unit = unit_sections()
    assert unit["Unit"]["StartLimitIntervalSec"] == "300"
    assert unit["Unit"]["StartLimitBurst"] == "10"
    service = unit["Service"]
    assert "StartLimitIntervalSec" not in service and "StartLimitBurst" not in service
    assert service["Type"] == "notify"
    assert int(service["WatchdogSec"]) > 0
    assert service["RestartPreventExitStatus"] == "2"  # config errors are not restarted
    for limit in ("MemoryMax", "CPUQuota", "TasksMax", "LimitNOFILE"):
        assert service[limit]
    # Documentation= names a file the install steps at the top of the unit install.
    doc = unit["Unit"]["Documentation"].removeprefix("file://")
    assert f"docs/agent.md {doc}" in UNIT.read_text()


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here"
)
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    # verify checks that ExecStart's program exists: point it at this checkout's entry point.
    program = shutil.which("pausewatch-agent") or str(
        Path(sys.executable).parent / "pausewatch-agent"
    )
    if not Path(program).exists():
        pytest.skip("the pausewatch-agent entry point is not installed")
    unit = tmp_path / "pausewatch-agent.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/pausewatch-agent", program))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "" and result.stdout.strip() == ""


class NotifySocket:
    """A datagram socket standing in for systemd's notification socket."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue

    def close(self) -> list[str]:
        self._stop.set()
        self.thread.join(2)
        self.sock.close()
        return self.messages


def test_ready_watchdog_and_stopping_reach_the_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    listener = NotifySocket(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", str(4 * 1_000_000))  # ping every 2 s of loop time
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = Notifier.from_environment()
    assert notifier is not None and notifier.watchdog_interval_ns == 2 * S
    config = write_state_dir(tmp_path, window_s="10")
    assert config.sim.scenario is not None
    sim = SimSampler(load_scenario(config.sim.scenario), sample_interval_ms=1000,
                     boot_time_ns=T0_NS - 3600 * S)  # fmt: skip
    sampler = StopAfter(sim, 21)
    daemon = Daemon(config, sampler, signer(config), clock=FakeClock(T0_NS),
                    options=DaemonOptions(ship=False), notifier=notifier)  # fmt: skip
    sampler.daemon = daemon
    daemon.run()
    messages = listener.close()
    assert messages[0].startswith("READY=1\nSTATUS=sampling sim")
    pings = [m for m in messages if m == "WATCHDOG=1"]
    assert 10 <= len(pings) <= 11  # 21 polls, 1 s apart, a ping every 2 s
    assert messages[-1].startswith("STOPPING=1")


def test_a_hung_poll_stops_the_pings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    listener = NotifySocket(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    config = write_state_dir(tmp_path, window_s="10")
    assert config.sim.scenario is not None
    sim = SimSampler(load_scenario(config.sim.scenario), sample_interval_ms=1000,
                     boot_time_ns=T0_NS - 3600 * S)  # fmt: skip
    release = threading.Event()

    def hang(count: int) -> None:
        if count == 5:
            release.wait(30)  # an NVML call that does not return

    sampler = StopAfter(sim, 8, on_poll=hang)
    daemon = Daemon(config, sampler, signer(config), clock=FakeClock(T0_NS),
                    options=DaemonOptions(ship=False), notifier=Notifier.from_environment())  # fmt: skip
    sampler.daemon = daemon
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        threading.Event().wait(1.0)
        during_hang = list(listener.messages)
        threading.Event().wait(1.0)
        assert listener.messages == during_hang  # no ping while the poll hangs
        assert during_hang.count("WATCHDOG=1") == 4  # the four polls before it
    finally:
        release.set()
        thread.join(10)
    assert listener.close().count("WATCHDOG=1") > 4  # pings resume once the poll returns


def test_no_socket_no_notifier(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert Notifier.from_environment() is None
    monkeypatch.setenv("NOTIFY_SOCKET", "not-a-path")
    assert Notifier.from_environment() is None
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/socket")
    notifier = Notifier.from_environment()
    assert notifier is not None and notifier.watchdog_interval_ns is None
    assert notifier.send("READY=1") is False  # logged, never raised
