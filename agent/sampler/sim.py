"""A simulated GPU node driven by a scenario file, deterministic under its seed.

    scenario = load_scenario(Path("scenarios/busy-node.toml"))
    sampler = SimSampler(scenario, sample_interval_ms=1000)
    sampler.open(now_ns)
    poll = sampler.poll(now_ns)

A scenario (TOML) sets the GPU model and count, a seed, a linear power model, which GPUs are busy
over time (``[[phase]]`` tables, or a cluster trace in ``[trace]``), and faults at given times::

    seed = 7
    gpu_model = "NVIDIA H100 80GB HBM3"
    gpu_count = 8
    gpm = true                          # report GPM tensor/SM activity (Hopper and newer)
    # start_unix_s = 1764403200         # time origin of phases, trace and faults (default: open)

    [power]
    idle_w = 70
    max_w = 700

    [utilization]
    busy_pct = 95                       # a busy GPU's utilisation
    idle_pct = 0
    jitter_pct = 3                      # +/- uniform, from a hash of (seed, gpu, tick)
    tensor_active_fraction = 0.6        # tensor-active time as a fraction of busy time
    # reported_fraction = 0.3           # a modified sampler: reports only this fraction of the
                                        # utilisation simulated; power and energy stay real

    [[phase]]                           # from from_s on: busy_gpus GPUs (0..n-1) are busy
    from_s = 0
    busy_gpus = 8                       # or utilization_pct = 40 for every GPU

    [trace]                             # instead of phases: a cluster trace (e.g. Helios)
    file = "helios_trace.csv"           # relative paths are read beside the scenario file
    running_column = "running_gpu_num"  # busy GPUs = gpu_count x running / total, rounded
    total_column = "total_gpu_num"      # (or busy_fraction_column = "gpu_utilization")
    seconds_per_row = 1.0               # row = start_row + floor(t / seconds_per_row), wrapping
    start_row = 0

    [[fault]]
    at_s = 30
    kind = "driver_reload"              # driver_reload | gpu_lost | library_mismatch | nvml_error
    gpu = 3                             # gpu_lost only
    duration_s = 10                     # gpu_lost / library_mismatch / nvml_error; 0 = for good

Utilisation and jitter are functions of (seed, GPU, sample tick), so two runs of one scenario give
the same samples at the same instants, and a restarted agent picks up where the scenario is. The
energy counter starts, at ``open``, from ``max_w`` x the time since the driver was loaded (the
host's boot time, or the last driver_reload fault): never below what an earlier run reported, so
a restart never looks like a reset, and it counts the time the agent was down as full power.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import logging
import struct
import time
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from pathlib import Path

from agent.clock import NS_PER_MS, NS_PER_S
from agent.config import TomlTable, read_toml
from agent.sampler.base import (
    Backend,
    EventKind,
    GpuIdentity,
    GpuReading,
    IntervalTracker,
    Metric,
    MetricFailure,
    MigMode,
    Poll,
    SamplerEvent,
)
from attest.errors import ConfigError
from attest.samples import Sample, SampleFlags

log = logging.getLogger(__name__)

PPM = 1_000_000
MIB = 1 << 20
_NOT_SUPPORTED = "NVML_ERROR_NOT_SUPPORTED"


class FaultKind(StrEnum):
    DRIVER_RELOAD = "driver_reload"
    GPU_LOST = "gpu_lost"
    LIBRARY_MISMATCH = "library_mismatch"
    NVML_ERROR = "nvml_error"


@dataclass(frozen=True, slots=True)
class Phase:
    from_ns: int
    busy_gpus: int | None
    utilization_pct: int | None


@dataclass(frozen=True, slots=True)
class Trace:
    busy_ppm: tuple[int, ...]
    """Busy fraction of each row, in parts per million."""
    ns_per_row: int
    start_row: int

    def busy_gpus(self, t_ns: int, gpu_count: int) -> int:
        row = (self.start_row + max(0, t_ns) // self.ns_per_row) % len(self.busy_ppm)
        return (gpu_count * self.busy_ppm[row] + PPM // 2) // PPM


@dataclass(frozen=True, slots=True)
class Fault:
    at_ns: int
    kind: FaultKind
    gpu: int
    duration_ns: int
    """0: lasts for good."""

    def active(self, t_ns: int) -> bool:
        return t_ns >= self.at_ns and (
            self.duration_ns == 0 or t_ns < self.at_ns + self.duration_ns
        )


@dataclass(frozen=True, slots=True)
class Scenario:
    """A parsed scenario file."""

    seed: int
    gpu_model: str
    gpu_count: int
    gpm: bool
    start_ns: int | None
    driver_loaded_ns: int | None
    idle_mw: int
    max_mw: int
    busy_pct: int
    idle_pct: int
    jitter_pct: int
    tensor_active_ppm: int
    reported_ppm: int
    """The fraction of the simulated utilisation the sampler reports (1,000,000: all of it;
    less plays a dishonest lab's modified sampler, whose power and energy stay real)."""
    memory_busy_bytes: int
    memory_idle_bytes: int
    phases: tuple[Phase, ...]
    trace: Trace | None
    faults: tuple[Fault, ...]


def _ns(seconds: Decimal) -> int:
    return int(seconds * NS_PER_S)


def load_scenario(path: Path) -> Scenario:
    """Read and validate a scenario file; errors name the key."""
    path = path.resolve()
    root = TomlTable(read_toml(path, "scenario file"), "", str(path))
    seed = root.integer("seed", 0, minimum=0, maximum=2**63 - 1)
    gpu_model = root.string("gpu_model", "NVIDIA H100 80GB HBM3", max_len=96)
    if not gpu_model:
        raise root.error("gpu_model", "is empty")
    gpu_count = root.integer("gpu_count", 8, minimum=0, maximum=256)
    gpm = root.boolean("gpm", True)
    start_s = root.decimal("start_unix_s", None, minimum=0)
    loaded_s = root.decimal("driver_loaded_unix_s", None, minimum=0)

    power = root.table("power")
    idle_w = power.decimal("idle_w", Decimal(70), minimum=0, maximum=10_000)
    max_w = power.decimal("max_w", Decimal(700), minimum=idle_w, maximum=10_000)
    power.finish()

    util = root.table("utilization")
    busy_pct = util.integer("busy_pct", 95, minimum=0, maximum=100)
    idle_pct = util.integer("idle_pct", 0, minimum=0, maximum=100)
    jitter_pct = util.integer("jitter_pct", 0, minimum=0, maximum=50)
    tensor_fraction = util.decimal("tensor_active_fraction", Decimal("0.6"), minimum=0, maximum=1)
    reported = util.decimal("reported_fraction", Decimal(1), minimum=0, maximum=1)
    memory_busy_mib = util.integer("memory_busy_mib", 60_000, minimum=0)
    memory_idle_mib = util.integer("memory_idle_mib", 0, minimum=0)
    util.finish()

    phases: list[Phase] = []
    for table in root.tables("phase"):
        from_s = table.decimal("from_s", minimum=0)
        busy = table.integer("busy_gpus", None, minimum=0, maximum=gpu_count)
        pct = table.integer("utilization_pct", None, minimum=0, maximum=100)
        if (busy is None) == (pct is None):
            raise table.error("busy_gpus", "give exactly one of busy_gpus and utilization_pct")
        table.finish()
        phases.append(Phase(from_ns=_ns(from_s), busy_gpus=busy, utilization_pct=pct))
    phases.sort(key=lambda p: p.from_ns)

    trace: Trace | None = None
    if root.has("trace"):
        if phases:
            raise root.error("trace", "use either [trace] or [[phase]] tables, not both")
        trace = _load_trace(root.table("trace"), path.parent)

    faults: list[Fault] = []
    for table in root.tables("fault"):
        kind = table.choice("kind", tuple(k.value for k in FaultKind))
        gpu = table.integer("gpu", 0, minimum=0, maximum=max(0, gpu_count - 1))
        fault = Fault(
            at_ns=_ns(table.decimal("at_s", minimum=0)),
            kind=FaultKind(kind),
            gpu=gpu,
            duration_ns=_ns(table.decimal("duration_s", 0, minimum=0)),
        )
        table.finish()
        faults.append(fault)
    faults.sort(key=lambda f: f.at_ns)
    root.finish()
    return Scenario(
        seed=seed,
        gpu_model=gpu_model,
        gpu_count=gpu_count,
        gpm=gpm,
        start_ns=None if start_s is None else _ns(start_s),
        driver_loaded_ns=None if loaded_s is None else _ns(loaded_s),
        idle_mw=int(idle_w * 1000),
        max_mw=int(max_w * 1000),
        busy_pct=busy_pct,
        idle_pct=idle_pct,
        jitter_pct=jitter_pct,
        tensor_active_ppm=int(tensor_fraction * PPM),
        reported_ppm=int(reported * PPM),
        memory_busy_bytes=memory_busy_mib * MIB,
        memory_idle_bytes=memory_idle_mib * MIB,
        phases=tuple(phases),
        trace=trace,
        faults=tuple(faults),
    )


def _load_trace(table: TomlTable, base: Path) -> Trace:
    file = table.path("file", base)
    fraction_column = table.string("busy_fraction_column", None)
    running_column = table.string("running_column", None)
    total_column = table.string("total_column", None)
    if fraction_column is None and (running_column is None or total_column is None):
        raise table.error(
            "busy_fraction_column", "give busy_fraction_column, or running_column and total_column"
        )
    if fraction_column is not None and (running_column or total_column):
        raise table.error("busy_fraction_column", "cannot be combined with running/total columns")
    seconds_per_row = table.decimal(
        "seconds_per_row", Decimal(60), minimum=Decimal("0.001"), maximum=86_400
    )
    start_row = table.integer("start_row", 0, minimum=0)
    table.finish()
    rows: list[int] = []
    try:
        with file.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            for line, row in enumerate(reader, start=2):
                rows.append(_busy_ppm(row, fraction_column, running_column, total_column, line))
    except FileNotFoundError:
        raise table.error("file", f"{file} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise table.error("file", f"cannot read {file}: {exc}") from None
    except _TraceRowError as exc:
        raise table.error("file", f"{file}: {exc}") from None
    if not rows:
        raise table.error("file", f"{file} has no data rows")
    if start_row >= len(rows):
        raise table.error("start_row", f"is past the trace's {len(rows)} rows")
    return Trace(busy_ppm=tuple(rows), ns_per_row=_ns(seconds_per_row), start_row=start_row)


class _TraceRowError(ValueError):
    pass


def _busy_ppm(
    row: dict[str, str],
    fraction_column: str | None,
    running_column: str | None,
    total_column: str | None,
    line: int,
) -> int:
    try:
        if fraction_column is not None:
            fraction = Decimal(row[fraction_column])
        else:
            assert running_column is not None
            assert total_column is not None
            total = Decimal(row[total_column])
            fraction = Decimal(row[running_column]) / total if total else Decimal(0)
    except KeyError as exc:
        raise _TraceRowError(f"line {line}: no column {exc.args[0]!r}") from None
    except ArithmeticError:
        raise _TraceRowError(f"line {line}: not a number") from None
    if not fraction.is_finite():
        raise _TraceRowError(f"line {line}: not a number")
    return int(min(max(fraction, Decimal(0)), Decimal(1)) * PPM)


def _hash_int(*parts: int) -> int:
    digest = hashlib.blake2b(struct.pack(f">{len(parts)}q", *parts), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def host_boot_time_ns() -> int:
    """When the host booted (our stand-in for when the driver was loaded)."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("btime "):
                    return int(line.split()[1]) * NS_PER_S
    except (OSError, ValueError):
        pass
    return time.time_ns() - time.monotonic_ns()


class SimSampler:
    """A :class:`~agent.sampler.base.Sampler` over a :class:`Scenario`."""

    def __init__(
        self,
        scenario: Scenario,
        *,
        sample_interval_ms: int,
        boot_time_ns: int | None = None,
    ) -> None:
        self._scenario = scenario
        self._interval_ms = sample_interval_ms
        self._boot_time_ns = boot_time_ns
        self._origin_ns = 0
        self._intervals = IntervalTracker(sample_interval_ms)
        self._identities = tuple(self._identity(i) for i in range(scenario.gpu_count))
        self._energy_uj: list[int] = []
        self._loaded_ns = 0
        self._last_ns: int | None = None
        self._lost: set[int] = set()
        self._opened = False

    @property
    def backend(self) -> Backend:
        return Backend.SIM

    @property
    def sample_interval_ms(self) -> int:
        return self._interval_ms

    @property
    def realtime(self) -> bool:
        return True

    def _identity(self, index: int) -> GpuIdentity:
        h = _hash_int(self._scenario.seed, index, 0x1D).to_bytes(8, "big").hex()
        g = _hash_int(self._scenario.seed, index, 0x2E).to_bytes(8, "big").hex()
        return GpuIdentity(
            index=index,
            uuid=f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{g[:4]}-{g[4:16]}",
            model=self._scenario.gpu_model,
            serial=f"1650{_hash_int(self._scenario.seed, index, 0x3F) % 10**9:09d}",
            board_part_number="692-2G520-0200-000",
            pci_bus_id=f"00000000:{0x18 + index:02X}:00.0",
            mig_mode=MigMode.DISABLED,
        )

    def open(self, now_ns: int | None = None) -> None:
        """Start the scenario clock at ``now_ns`` (unless the scenario fixes its start)."""
        now = time.time_ns() if now_ns is None else now_ns
        scenario = self._scenario
        self._origin_ns = scenario.start_ns if scenario.start_ns is not None else now
        base = scenario.driver_loaded_ns
        if base is None:
            base = self._boot_time_ns if self._boot_time_ns is not None else host_boot_time_ns()
        self._loaded_ns = min(self._last_reload_ns(now, base), now)
        history_uj = scenario.max_mw * ((now - self._loaded_ns) // NS_PER_MS)
        self._energy_uj = [history_uj] * scenario.gpu_count
        self._last_ns = now
        self._opened = True
        log.info(
            "sim node opened gpus=%d model=%r seed=%d",
            scenario.gpu_count,
            scenario.gpu_model,
            scenario.seed,
        )

    def _last_reload_ns(self, now_ns: int, base_ns: int) -> int:
        loaded = base_ns
        for fault in self._scenario.faults:
            at = self._origin_ns + fault.at_ns
            if fault.kind is FaultKind.DRIVER_RELOAD and at <= now_ns:
                loaded = max(loaded, at)
        return loaded

    def inventory(self) -> tuple[GpuIdentity, ...]:
        return self._identities

    def close(self) -> None:
        self._opened = False

    def _busy_gpus(self, t_ns: int) -> tuple[int, int | None]:
        """(number of busy GPUs, utilisation for all GPUs or None)."""
        scenario = self._scenario
        if scenario.trace is not None:
            return scenario.trace.busy_gpus(t_ns, scenario.gpu_count), None
        if not scenario.phases:
            return scenario.gpu_count, None
        index = bisect.bisect_right([p.from_ns for p in scenario.phases], t_ns) - 1
        if index < 0:
            return 0, None
        phase = scenario.phases[index]
        if phase.utilization_pct is not None:
            return scenario.gpu_count, phase.utilization_pct
        assert phase.busy_gpus is not None
        return phase.busy_gpus, None

    def _utilization(self, gpu: int, busy: bool, all_pct: int | None, tick: int) -> int:
        scenario = self._scenario
        base = all_pct if all_pct is not None else scenario.busy_pct if busy else scenario.idle_pct
        jitter = scenario.jitter_pct
        if jitter and base:
            base += _hash_int(scenario.seed, gpu, tick) % (2 * jitter + 1) - jitter
        return min(100, max(0, base))

    def poll(self, now_ns: int) -> Poll | None:
        if not self._opened:
            self.open(now_ns)
        scenario = self._scenario
        t_ns = now_ns - self._origin_ns
        elapsed_ms = 0 if self._last_ns is None else max(0, (now_ns - self._last_ns) // NS_PER_MS)
        self._last_ns = now_ns
        events: list[SamplerEvent] = []
        readings: list[GpuReading] = []
        reload_at = self._last_reload_ns(now_ns, self._loaded_ns)
        if reload_at > self._loaded_ns:
            self._loaded_ns = reload_at
            since_ms = (now_ns - reload_at) // NS_PER_MS
            self._energy_uj = [scenario.idle_mw * since_ms] * scenario.gpu_count
            elapsed_ms = 0
        for fault in scenario.faults:
            if fault.kind in (FaultKind.LIBRARY_MISMATCH, FaultKind.NVML_ERROR) and fault.active(
                t_ns
            ):
                kind = (
                    EventKind.LIBRARY_MISMATCH
                    if fault.kind is FaultKind.LIBRARY_MISMATCH
                    else EventKind.NVML_ERROR
                )
                events.append(
                    SamplerEvent(kind=kind, observed_at_ns=now_ns, detail=f"sim fault {fault.kind}")
                )
        if events:
            return Poll(timestamp_ns=now_ns, readings=(), events=tuple(events))
        busy_count, all_pct = self._busy_gpus(t_ns)
        tick = now_ns // (self._interval_ms * NS_PER_MS)
        lost_now = {
            f.gpu for f in scenario.faults if f.kind is FaultKind.GPU_LOST and f.active(t_ns)
        }
        for gpu, identity in enumerate(self._identities):
            if gpu in lost_now:
                if gpu not in self._lost:
                    self._lost.add(gpu)
                    self._intervals.forget(identity.uuid)
                    events.append(
                        SamplerEvent(
                            kind=EventKind.GPU_LOST,
                            observed_at_ns=now_ns,
                            gpu_uuid=identity.uuid,
                            detail="NVML_ERROR_GPU_IS_LOST (sim fault)",
                        )
                    )
                readings.append(GpuReading(identity=identity, sample=None, lost=True))
                continue
            if gpu in self._lost:
                self._lost.discard(gpu)
                events.append(
                    SamplerEvent(
                        kind=EventKind.GPU_APPEARED,
                        observed_at_ns=now_ns,
                        gpu_uuid=identity.uuid,
                        detail="back after a sim gpu_lost fault",
                    )
                )
            busy = gpu < busy_count
            util = self._utilization(gpu, busy, all_pct, tick)
            power_mw = scenario.idle_mw + (scenario.max_mw - scenario.idle_mw) * util // 100
            self._energy_uj[gpu] += power_mw * elapsed_ms
            flags = (
                SampleFlags.UTILIZATION
                | SampleFlags.ENERGY
                | SampleFlags.POWER
                | SampleFlags.MEMORY_USED
                | SampleFlags.COMPUTE_PROCESSES
            )
            failures: tuple[MetricFailure, ...] = ()
            tensor_ppm = sm_ppm = 0
            # The power (above) follows the simulated utilisation; what is reported may not.
            util = util * scenario.reported_ppm // PPM
            if scenario.gpm:
                flags |= SampleFlags.TENSOR_ACTIVE | SampleFlags.SM_ACTIVE
                tensor_ppm = util * scenario.tensor_active_ppm // 100
                sm_ppm = util * 10_000
            else:
                failures = (
                    MetricFailure(Metric.GPM_TENSOR_ACTIVE, _NOT_SUPPORTED, not_supported=True),
                    MetricFailure(Metric.GPM_SM_ACTIVE, _NOT_SUPPORTED, not_supported=True),
                )
            active = busy or (all_pct is not None and util > 0)
            sample = Sample(
                gpu_index=identity.index,
                timestamp_ns=now_ns,
                interval_ms=self._intervals.interval_ms(identity.uuid, now_ns),
                flags=flags,
                utilization_pct=util,
                energy_mj=self._energy_uj[gpu] // 1000,
                power_mw=power_mw,
                memory_used_bytes=scenario.memory_busy_bytes
                if active
                else scenario.memory_idle_bytes,
                compute_processes=1 if active else 0,
                tensor_active_ppm=tensor_ppm,
                sm_active_ppm=sm_ppm,
            )
            readings.append(GpuReading(identity=identity, sample=sample, failures=failures))
        return Poll(timestamp_ns=now_ns, readings=tuple(readings), events=tuple(events))


def check_scenario_file(path: Path) -> Scenario:
    """Load a scenario for the CLI, wrapping a missing path in a ConfigError."""
    if not path.exists():
        raise ConfigError(f"scenario file {path} does not exist")
    return load_scenario(path)
