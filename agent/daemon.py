"""The agent's lifecycle: sample, fold into windows, sign into the spool, ship, until stopped.

    daemon = Daemon(config, sampler, signer, clock=SystemClock())
    signal.signal(signal.SIGTERM, lambda *_: daemon.stop())
    daemon.run()            # returns after stop() (or at the end of an offline replay)

One poll per tick (ticks are multiples of the sample interval in wall-clock time); every closed
window is signed and stored by :meth:`agent.spool.Spool.append` before the shipper, in its own
thread, can see it. Around that:

- The first window signed after a start carries an AGENT_START event whose gap runs from the end
  of the last window in the spool to the start of this run's first window.
- When the spool is full (``spool.max_unacked_envelopes`` / ``max_unacked_bytes``) windows are not
  signed, sampling goes on, and the first window signed once there is room carries a SPOOL_FULL
  event covering the windows that were not. A failed write to the spool is handled the same way.
- A wall clock that moves against the monotonic clock by more than the tolerance adds a
  CLOCK_JUMP event.
- Stopping signs the partial window (if it is long enough), gives a connected shipper up to 3 s
  to send what is pending, and stops it; whatever is still unacknowledged ships after the next
  start.

The loop catches unexpected exceptions per tick, records them and carries on (the only
``except Exception`` in the agent besides the CLI entry): a daemon must not die on one bad tick.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.clock import NS_PER_MS, NS_PER_S, Clock, SystemClock, align_up
from agent.config import AgentConfig
from agent.identity import AGENT_VERSION, agent_digest, boot_id
from agent.metrics import AGENT_ERROR_KIND, AgentMetrics
from agent.sampler.base import EventKind, Sampler, SamplerEvent
from agent.sampler.replay import ReplaySampler
from agent.sdnotify import Notifier
from agent.shipper import Shipper
from agent.spool import Spool, SpoolBacklog, SpoolError, WindowTimes
from agent.tpm import Tpm2Tools
from agent.tpm_quotes import ImaLog, WindowQuoter
from agent.windows import BodyContext, ClosedWindow, Windower, WindowSettings, build_body
from attest.attestation import validate_body
from attest.envelope import PayloadType, sign_envelope
from attest.errors import BodyError, ConfigError
from attest.ids import NodeId
from attest.keys import Signer
from attest.samples import encode_sample

log = logging.getLogger(__name__)

SPOOL_FILE = "spool.db"
LOCK_FILE = "agent.lock"
PRUNE_EVERY_NS = 3600 * NS_PER_S
CLOCK_JUMP_TOLERANCE_NS = 2 * NS_PER_S
DRAIN_STEPS = 150
DRAIN_STEP_S = 0.02


class AgentLockedError(ConfigError):
    """Another agent holds the state directory: a usage error (exit 2), like a bad config, and one
    systemd must not restart into (RestartPreventExitStatus=2)."""


def spool_path(config: AgentConfig) -> Path:
    return config.node.state_dir / SPOOL_FILE


class StateLock:
    """An exclusive ``flock`` on the state directory's lock file: one agent per state directory.
    The kernel drops it when the process dies, however it dies."""

    def __init__(self, state_dir: Path) -> None:
        self._path = state_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AgentLockedError(
                f"another pausewatch-agent is running on {self._path.parent}"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def held_by_other(self) -> bool:
        """Whether an agent holds the lock now (for ``status``)."""
        if not self._path.exists():
            return False
        fd = os.open(self._path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False


@dataclass(frozen=True, slots=True)
class DaemonOptions:
    ship: bool = True
    """Start the shipper (off for an offline replay into a scratch state directory)."""


class Daemon:
    """See the module docs."""

    def __init__(
        self,
        config: AgentConfig,
        sampler: Sampler,
        signer: Signer,
        *,
        clock: Clock,
        metrics: AgentMetrics | None = None,
        options: DaemonOptions | None = None,
        shipper_factory: Callable[[Path, NodeId], Shipper] | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self._config = config
        self._sampler = sampler
        self._signer = signer
        self._clock = clock
        self._metrics = metrics or AgentMetrics()
        self._metrics.build_info.info({"version": AGENT_VERSION, "backend": sampler.backend.value})
        self._options = options or DaemonOptions()
        self._shipper_factory = shipper_factory
        self._notifier = notifier
        self._stop = threading.Event()
        self._quoter: WindowQuoter | None = None
        if config.tpm.tcti:
            self._quoter = WindowQuoter(
                Tpm2Tools(config.tpm.tcti),
                ImaLog(config.tpm.ima_log),
                every_windows=config.tpm.quote_every_windows,
            )
        self._node_id = NodeId(signer.key_id)
        self._context = BodyContext(
            lab_id=config.node.lab_id,
            node_id=self._node_id,
            boot_id=boot_id(),
            agent_version=AGENT_VERSION,
            agent_digest=agent_digest(config.canonical_json()),
            backend=sampler.backend,
            sample_interval_ms=sampler.sample_interval_ms,
        )
        self._start_event_pending = True
        self._run_start_ns: int | None = None
        self._previous_end_ns: int | None = None
        self._unattested_since_ns: int | None = None
        self._unattested_reason = ""
        self._shipper: Shipper | None = None
        self._spool: Spool | None = None
        self.windows_signed = 0

    @property
    def node_id(self) -> NodeId:
        return self._node_id

    def stop(self) -> None:
        """Ask the loop to finish (safe from a signal handler)."""
        self._stop.set()
        wake = getattr(self._clock, "wake", None)
        if callable(wake):
            wake()

    # -- the run -------------------------------------------------------------------------------

    def run(self) -> None:
        """Run until :meth:`stop` (or the end of an offline replay)."""
        lock = StateLock(self._config.node.state_dir)
        lock.acquire()
        try:
            self._spool = Spool.open(spool_path(self._config), node_id=self._node_id)
            self._run(self._spool)
        finally:
            if self._spool is not None:
                self._spool.close()
            lock.release()

    def _run(self, spool: Spool) -> None:
        head = spool.head()
        self._previous_end_ns = None if head is None else head.window_end_ns
        sampler = self._sampler
        settings = WindowSettings(
            window_ns=self._config.sampling.window_ns,
            sample_interval_ms=sampler.sample_interval_ms,
            cadence_ns=sampler.cadence_ns if isinstance(sampler, ReplaySampler) else 0,
        )
        windower = Windower(settings, not_before_ns=self._previous_end_ns or 0)
        self._metrics.head_seq.set(-1 if head is None else head.seq)
        self._metrics.observe_backlog(spool.backlog())
        thread = self._start_shipper()
        server = None
        if self._config.metrics.port:
            server = self._metrics.serve(
                port=self._config.metrics.port, address=self._config.metrics.address
            )
        log.info(
            "agent started node_id=%s lab=%s backend=%s version=%s head_seq=%s window_ms=%d "
            "interval_ms=%d",
            bytes(self._node_id).hex(),
            self._config.node.lab_id,
            self._sampler.backend.value,
            AGENT_VERSION,
            "none" if head is None else head.seq,
            settings.window_ns // NS_PER_MS,
            settings.sample_interval_ms,
        )
        try:
            self._sampler.open(self._clock.time_ns())
            if self._notifier is not None:
                self._notifier.ready(
                    f"sampling {self._sampler.backend.value}, head seq "
                    f"{'none' if head is None else head.seq}"
                )
            last_ns = self._loop(spool, windower, settings)
            if self._notifier is not None:
                self._notifier.stopping()
            final = windower.flush(last_ns + settings.sample_interval_ns)
            if final is not None:
                self._sign(spool, final)
            self._drain(spool)
        finally:
            self._sampler.close()
            if self._shipper is not None:
                self._shipper.stop()
            if thread is not None:
                thread.join(timeout=10)
            if server is not None:
                server.shutdown()
            log.info("agent stopped windows_signed=%d", self.windows_signed)

    def _drain(self, spool: Spool) -> None:
        """On a clean stop, give a connected shipper a moment to send what is pending (it would
        go out after the next start anyway)."""
        shipper = self._shipper
        if shipper is None or not shipper.connected.is_set():
            return
        shipper.notify()
        for _ in range(DRAIN_STEPS):  # real time, at most DRAIN_STEPS x DRAIN_STEP_S
            if not spool.stats().pending_count or not shipper.connected.is_set():
                return
            time.sleep(DRAIN_STEP_S)

    def _start_shipper(self) -> threading.Thread | None:
        if not self._options.ship:
            return None
        path = spool_path(self._config)
        if self._shipper_factory is not None:
            self._shipper = self._shipper_factory(path, self._node_id)
        else:
            # The shipper gets its own system clock: stopping the daemon wakes the daemon's
            # sleeps, and the shipper's backoff must not turn into a busy loop meanwhile.
            clock = SystemClock() if isinstance(self._clock, SystemClock) else self._clock
            self._shipper = Shipper(
                path,
                self._node_id,
                self._config.verifier,
                clock=clock,
                metrics=self._metrics,
            )
        thread = threading.Thread(target=self._shipper.run, name="shipper", daemon=True)
        thread.start()
        return thread

    def _loop(self, spool: Spool, windower: Windower, settings: WindowSettings) -> int:
        """Poll until stopped; returns the timestamp of the last poll."""
        interval_ns = settings.sample_interval_ns
        realtime = self._sampler.realtime
        next_tick = align_up(self._clock.time_ns(), interval_ns)
        last_ns = self._clock.time_ns()
        last_wall: int | None = None
        last_mono = 0
        next_prune = self._clock.monotonic_ns()
        while not self._stop.is_set():
            if realtime:
                next_tick = self._wait_for_tick(next_tick, interval_ns)
                if self._stop.is_set():
                    break
            try:
                now = self._clock.time_ns()
                mono = self._clock.monotonic_ns()
                if realtime and last_wall is not None:
                    drift = (now - last_wall) - (mono - last_mono)
                    if abs(drift) > max(CLOCK_JUMP_TOLERANCE_NS, 2 * interval_ns):
                        self._event(
                            windower,
                            SamplerEvent(
                                kind=EventKind.CLOCK_JUMP,
                                observed_at_ns=now,
                                detail=f"wall clock moved {drift // NS_PER_MS} ms against the "
                                "monotonic clock",
                            ),
                        )
                last_wall, last_mono = now, mono
                poll = self._sampler.poll(now)
                if poll is None:
                    log.info("sampler exhausted (end of replay)")
                    break
                last_ns = poll.timestamp_ns
                if self._notifier is not None:
                    self._notifier.watchdog_due(mono)
                self._metrics.observe_poll(poll)
                for window in windower.add(poll):
                    self._sign(spool, window)
                if mono >= next_prune:
                    next_prune = mono + PRUNE_EVERY_NS
                    self._prune(spool, now)
            except Exception as exc:  # the agent's main loop: record, carry on
                log.exception("tick failed error=%s", type(exc).__name__)
                self._metrics.sampler_events.labels(kind=AGENT_ERROR_KIND).inc()
                with contextlib.suppress(SpoolError):
                    spool.record_error("agent", type(exc).__name__, at_ns=self._clock.time_ns())
            if realtime:
                next_tick += interval_ns
                now = self._clock.time_ns()
                if next_tick <= now:  # we fell behind: skip the ticks we missed
                    skipped = (now - next_tick) // interval_ns + 1
                    next_tick = align_up(now + 1, interval_ns)
                    if skipped > 1:
                        log.warning(
                            "polls skipped count=%d: the loop fell behind (a slow NVML call, "
                            "a suspended host, or the wall clock stepped forward)",
                            skipped,
                        )
        return last_ns

    def _wait_for_tick(self, next_tick_ns: int, interval_ns: int) -> int:
        """Sleep until the next tick; returns the tick actually waited for. If the wall clock
        stepped back, the old tick is far ahead: wait for the next tick on the new time instead
        (with a log line) rather than stall for the size of the step."""
        wait_ns = next_tick_ns - self._clock.time_ns()
        if wait_ns > 2 * interval_ns:
            now = self._clock.time_ns()
            realigned = align_up(now + 1, interval_ns)
            log.warning(
                "wall clock stepped back step_ms=%d: polling on the new time at once instead "
                "of waiting (a CLOCK_JUMP event records it)",
                (next_tick_ns - interval_ns - now) // NS_PER_MS,
            )
            next_tick_ns = realigned
            wait_ns = next_tick_ns - now
        self._clock.sleep(wait_ns)
        return next_tick_ns

    def _event(self, windower: Windower, event: SamplerEvent) -> None:
        self._metrics.sampler_events.labels(kind=event.kind.value).inc()
        log.warning("event kind=%s detail=%r", event.kind.value, event.detail)
        windower.add_event(event)

    def _prune(self, spool: Spool, now_ns: int) -> None:
        dropped = spool.prune(
            now_ns=now_ns,
            samples_retention_days=self._config.spool.samples_retention_days,
            acked_retention_days=self._config.spool.acked_retention_days,
        )
        if dropped:
            log.info("spool pruned acknowledged_envelopes=%d", dropped)

    # -- signing -------------------------------------------------------------------------------

    def _daemon_events(self, window: ClosedWindow) -> tuple[SamplerEvent, ...]:
        now = self._clock.time_ns()
        events: list[SamplerEvent] = []
        if self._run_start_ns is None:
            self._run_start_ns = window.start_ns
        if self._start_event_pending:
            gap_start = self._previous_end_ns
            gap_end = self._run_start_ns
            events.append(
                SamplerEvent(
                    kind=EventKind.AGENT_START,
                    observed_at_ns=now,
                    detail=f"agent {AGENT_VERSION} started, backend {self._sampler.backend.value}"
                    + ("" if gap_start is not None else ", first window after enrolment"),
                    gap_start_ns=gap_end if gap_start is None else min(gap_start, gap_end),
                    gap_end_ns=gap_end,
                )
            )
        if self._unattested_since_ns is not None:
            events.append(
                SamplerEvent(
                    kind=EventKind.SPOOL_FULL,
                    observed_at_ns=now,
                    detail=self._unattested_reason,
                    gap_start_ns=self._unattested_since_ns,
                    gap_end_ns=window.start_ns,
                )
            )
        return tuple(events)

    def _unattested(self, window: ClosedWindow, reason: str) -> None:
        if self._run_start_ns is None:
            self._run_start_ns = window.start_ns
        if self._unattested_since_ns is None:
            self._unattested_since_ns = window.start_ns
            self._unattested_reason = reason
            log.error(
                "window not attested reason=%r start_ns=%d; sampling goes on, the gap will "
                "be recorded",
                reason,
                window.start_ns,
            )
        self._metrics.windows_unattested.inc()

    def _sign(self, spool: Spool, window: ClosedWindow) -> None:
        spool_config = self._config.spool
        backlog = spool.backlog()  # one query for the bound and the gauges
        if (
            backlog.count >= spool_config.max_unacked_envelopes
            or backlog.size_bytes >= spool_config.max_unacked_bytes
        ):
            self._metrics.observe_backlog(backlog)
            self._unattested(window, "spool full")
            return
        extra = self._daemon_events(window)

        def sign(seq: int, prev_digest: bytes, nonce: bytes) -> bytes:
            body = build_body(
                window,
                self._context,
                seq=seq,
                prev_digest=prev_digest,
                verifier_nonce=nonce,
                extra_events=extra,
            )
            if self._quoter is not None:
                self._quoter.attach(body)
            problem = ""
            try:
                validate_body(body, self._signer.key_id)
            except BodyError as exc:  # our own bug: sign anyway, the verifier will say so
                problem = exc.diagnostics()
            if problem:
                log.error("window body fails validation seq=%d error=%s", seq, problem)
            payload = body.SerializeToString(deterministic=True)
            return sign_envelope(self._signer, PayloadType.ATTESTATION, payload)

        samples = b"".join(encode_sample(s) for s in window.samples)
        try:
            stored = spool.append(
                sign,
                WindowTimes(window.start_ns, window.end_ns),
                samples=samples,
                created_at_ns=self._clock.time_ns(),
            )
        except SpoolError as exc:
            self._unattested(window, exc.diagnostics()[:200])
            return
        self._start_event_pending = False
        if self._unattested_since_ns is not None:
            log.warning(
                "spool writable again seq=%d: signing resumed; the gap since start_ns=%d is "
                "recorded as a SPOOL_FULL event",
                stored.seq,
                self._unattested_since_ns,
            )
        self._unattested_since_ns = None
        self._previous_end_ns = window.end_ns
        self.windows_signed += 1
        self._metrics.windows.inc()
        self._metrics.head_seq.set(stored.seq)
        self._metrics.last_signed.set(self._clock.time_ns() / NS_PER_S)
        self._metrics.observe_backlog(
            SpoolBacklog(
                count=backlog.count + 1,
                size_bytes=backlog.size_bytes + len(stored.envelope),
                oldest_window_start_ns=stored.window_start_ns
                if backlog.oldest_window_start_ns is None
                else backlog.oldest_window_start_ns,
            )
        )
        for event in extra:
            self._metrics.sampler_events.labels(kind=event.kind.value).inc()
        log.info(
            "window signed seq=%d start_ns=%d end_ns=%d gpus=%d samples=%d events=%d busy_ms=%s",
            stored.seq,
            window.start_ns,
            window.end_ns,
            len(window.gpus),
            len(window.samples),
            len(window.events) + len(extra),
            ",".join(str(g.busy_ms) for g in window.gpus),
        )
        if self._shipper is not None:
            self._shipper.notify()
