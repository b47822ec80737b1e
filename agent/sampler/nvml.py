"""The real sampler: every GPU through NVML (``pynvml`` from nvidia-ml-py). The only module that
imports ``pynvml``.

    sampler = NvmlSampler(sample_interval_ms=1000)
    sampler.open()                       # never raises: a missing library is recorded and retried
    poll = sampler.poll(time.time_ns())  # utilisation, energy, power, memory, processes, GPM

Per GPU it reads the identity once (UUID, serial, board part number, PCI bus id, product name,
MIG mode) and at every poll: ``nvmlDeviceGetUtilizationRates().gpu``,
``nvmlDeviceGetTotalEnergyConsumption`` (mJ since the driver was loaded),
``nvmlDeviceGetPowerUsage`` (mW), ``nvmlDeviceGetMemoryInfo().used``, the number of compute
processes and, where GPM is supported (Hopper and newer), tensor-pipe and SM activity between two
GPM samples.

NVML trouble is recorded, never raised:

- ``NotSupported`` for a metric: a NOT_SUPPORTED failure of that metric; sampling goes on.
- ``GPU_IS_LOST`` (or a GPU that vanished from the device list after a re-init): the reading is
  marked lost and a GPU_LOST event is recorded once; the other GPUs go on. A lost GPU is retried
  at every poll and a GPU_APPEARED event marks its return.
- ``UNINITIALIZED`` or ``DRIVER_NOT_LOADED`` during sampling, or an energy counter that went down:
  the driver was reloaded. NVML is shut down and initialised again at the next poll, with a
  DRIVER_RELOAD event (and one naming the old and new driver versions if they differ).
- ``NVMLLibraryMismatchError`` (not an ``NVMLError`` subclass: pynvml raises it when an
  unversioned call finds no function in the loaded library) on a metric: an ERROR failure of that
  metric named ``NVMLLibraryMismatchError`` and one LIBRARY_MISMATCH event per GPU.
- A device that cannot be identified when NVML enumerates: an NVML_ERROR event naming its index;
  the other GPUs go on.
- ``LIBRARY_NOT_FOUND``, ``LIB_RM_VERSION_MISMATCH`` or any other failure to initialise or
  enumerate: the poll has no readings and a LIBRARY_NOT_FOUND / LIBRARY_MISMATCH / NVML_ERROR
  event (the node is alive but blind), and initialisation is retried with exponential backoff.

GPU indices are stable for the life of the agent: a GPU keeps the index it was first seen at, and a
new GPU that would take a used index gets the next free one.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import pynvml

from agent.clock import NS_PER_MS
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
from attest.samples import Sample, SampleFlags

log = logging.getLogger(__name__)

LIBRARY_MISMATCH_NAME = "NVMLLibraryMismatchError"
_ERROR_NAMES: dict[int, str] = {
    value: name
    for name, value in vars(pynvml).items()
    if name.startswith("NVML_ERROR_") and isinstance(value, int)
}
_PPM_PER_PCT = 10_000
_GPM_METRICS = (
    (Metric.GPM_TENSOR_ACTIVE, pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL),
    (Metric.GPM_SM_ACTIVE, pynvml.NVML_GPM_METRIC_SM_UTIL),
)


def nvml_error_name(exc: BaseException) -> str:
    """The NVML error name of an exception, e.g. ``NVML_ERROR_GPU_IS_LOST``."""
    if isinstance(exc, pynvml.NVMLLibraryMismatchError):
        return LIBRARY_MISMATCH_NAME
    if isinstance(exc, pynvml.NVMLError):
        value = getattr(exc, "value", None)
        if isinstance(value, int):
            return _ERROR_NAMES.get(value, f"NVML_ERROR_{value}")
    return type(exc).__name__


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


class _DriverGoneError(Exception):
    """NVML answered UNINITIALIZED / DRIVER_NOT_LOADED: start again."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


@dataclass(slots=True)
class _Device:
    identity: GpuIdentity
    handle: Any
    gpm_supported: bool
    gpm_samples: list[Any] = field(default_factory=list)
    lost: bool = False
    last_energy_mj: int | None = None
    mismatch_reported: bool = False


class NvmlSampler:
    """A :class:`~agent.sampler.base.Sampler` over the NVIDIA Management Library."""

    def __init__(
        self,
        *,
        sample_interval_ms: int,
        retry_initial_ms: int = 1000,
        retry_max_ms: int = 60_000,
    ) -> None:
        self._interval_ms = sample_interval_ms
        self._retry_initial_ns = retry_initial_ms * NS_PER_MS
        self._retry_max_ns = retry_max_ms * NS_PER_MS
        self._retry_delay_ns = self._retry_initial_ns
        self._next_init_ns = 0
        self._initialized = False
        self._devices: list[_Device] = []
        self._index_by_uuid: dict[str, int] = {}
        self._known_uuids: set[str] = set()
        self._intervals = IntervalTracker(sample_interval_ms)
        self._driver_version = ""
        self._nvml_version = ""
        self._blind_event: SamplerEvent | None = None
        self._pending: list[SamplerEvent] = []
        self._reinit_requested = False

    @property
    def backend(self) -> Backend:
        return Backend.NVML

    @property
    def sample_interval_ms(self) -> int:
        return self._interval_ms

    @property
    def realtime(self) -> bool:
        return True

    @property
    def initialized(self) -> bool:
        return self._initialized

    @property
    def driver_version(self) -> str:
        return self._driver_version

    def open(self, now_ns: int | None = None) -> None:
        """Initialise NVML and enumerate the GPUs; failures are recorded for the first poll."""
        self._try_init(0 if now_ns is None else now_ns)

    def inventory(self) -> tuple[GpuIdentity, ...]:
        return tuple(d.identity for d in self._devices if not d.lost)

    def close(self) -> None:
        self._shutdown()

    # -- initialisation ------------------------------------------------------------------------

    def _shutdown(self) -> None:
        if not self._initialized:
            return
        self._initialized = False
        for device in self._devices:
            for sample in device.gpm_samples:
                with contextlib.suppress(pynvml.NVMLError, pynvml.NVMLLibraryMismatchError):
                    pynvml.nvmlGpmSampleFree(sample)
            device.gpm_samples = []
        try:
            pynvml.nvmlShutdown()
        except (pynvml.NVMLError, pynvml.NVMLLibraryMismatchError) as exc:
            log.info("nvml shutdown failed error=%s", nvml_error_name(exc))

    def _blind(self, kind: EventKind, name: str, now_ns: int) -> None:
        self._blind_event = SamplerEvent(
            kind=kind, observed_at_ns=now_ns, detail=f"{name}; NVML not usable, retrying"
        )
        self._next_init_ns = now_ns + self._retry_delay_ns
        log.warning(
            "nvml unusable kind=%s error=%s retry_in_ms=%d",
            kind.value,
            name,
            self._retry_delay_ns // NS_PER_MS,
        )
        self._retry_delay_ns = min(2 * self._retry_delay_ns, self._retry_max_ns)

    def _try_init(self, now_ns: int) -> None:
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError_LibraryNotFound as exc:
            self._blind(EventKind.LIBRARY_NOT_FOUND, nvml_error_name(exc), now_ns)
            return
        except pynvml.NVMLError_LibRmVersionMismatch as exc:
            self._blind(EventKind.LIBRARY_MISMATCH, nvml_error_name(exc), now_ns)
            return
        except pynvml.NVMLLibraryMismatchError as exc:
            self._blind(EventKind.LIBRARY_MISMATCH, nvml_error_name(exc), now_ns)
            return
        except pynvml.NVMLError as exc:
            self._blind(EventKind.NVML_ERROR, nvml_error_name(exc), now_ns)
            return
        self._initialized = True
        try:
            self._enumerate(now_ns)
        except (pynvml.NVMLError, pynvml.NVMLLibraryMismatchError) as exc:
            self._shutdown()
            kind = (
                EventKind.LIBRARY_MISMATCH
                if isinstance(exc, pynvml.NVMLLibraryMismatchError)
                else EventKind.NVML_ERROR
            )
            self._blind(kind, nvml_error_name(exc), now_ns)
            return
        self._blind_event = None
        self._retry_delay_ns = self._retry_initial_ns

    def _enumerate(self, now_ns: int) -> None:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        try:
            self._nvml_version = _text(pynvml.nvmlSystemGetNVMLVersion())
        except pynvml.NVMLError:
            self._nvml_version = ""
        if self._driver_version and driver != self._driver_version:
            self._pending.append(
                SamplerEvent(
                    kind=EventKind.DRIVER_RELOAD,
                    observed_at_ns=now_ns,
                    detail=f"driver version {self._driver_version} -> {driver}",
                )
            )
        self._driver_version = driver
        count = pynvml.nvmlDeviceGetCount()
        previous = {d.identity.uuid for d in self._devices}
        devices: list[_Device] = []
        for nvml_index in range(count):
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(nvml_index)
                identity = self._identify(handle, nvml_index)
            except (pynvml.NVMLError_Uninitialized, pynvml.NVMLError_DriverNotLoaded):
                raise
            except pynvml.NVMLError as exc:
                # One GPU that cannot be identified must not blind the node: record it and go on
                # (if it was known before, it is also reported lost below).
                name = nvml_error_name(exc)
                self._pending.append(
                    SamplerEvent(
                        kind=EventKind.NVML_ERROR,
                        observed_at_ns=now_ns,
                        detail=f"device {nvml_index} could not be identified: {name}",
                    )
                )
                log.warning("gpu not identified nvml_index=%d error=%s", nvml_index, name)
                continue
            device = _Device(
                identity=identity, handle=handle, gpm_supported=self._gpm_supported(handle)
            )
            if device.gpm_supported:
                self._prime_gpm(device)
            devices.append(device)
        self._devices = devices
        seen = {d.identity.uuid for d in devices}
        first_enumeration = not self._known_uuids
        for uuid in sorted(previous - seen):
            self._pending.append(
                SamplerEvent(
                    kind=EventKind.GPU_LOST,
                    observed_at_ns=now_ns,
                    gpu_uuid=uuid,
                    detail="no longer in NVML's device list",
                )
            )
        for device in devices:
            uuid = device.identity.uuid
            if uuid not in self._known_uuids and not first_enumeration:
                self._pending.append(
                    SamplerEvent(
                        kind=EventKind.GPU_APPEARED,
                        observed_at_ns=now_ns,
                        gpu_uuid=uuid,
                        detail="new in NVML's device list",
                    )
                )
            elif uuid in self._known_uuids and uuid not in previous:
                self._pending.append(
                    SamplerEvent(
                        kind=EventKind.GPU_APPEARED,
                        observed_at_ns=now_ns,
                        gpu_uuid=uuid,
                        detail="back in NVML's device list",
                    )
                )
            self._known_uuids.add(uuid)
            self._intervals.forget(uuid)
        log.info(
            "nvml initialised driver=%s nvml=%s gpus=%d",
            self._driver_version,
            self._nvml_version,
            len(devices),
        )

    def _stable_index(self, uuid: str, nvml_index: int) -> int:
        known = self._index_by_uuid.get(uuid)
        if known is not None:
            return known
        used = set(self._index_by_uuid.values())
        index = nvml_index if nvml_index not in used else max(used) + 1
        self._index_by_uuid[uuid] = index
        return index

    def _identify(self, handle: Any, nvml_index: int) -> GpuIdentity:
        uuid = _text(pynvml.nvmlDeviceGetUUID(handle))

        def optional(read: Any) -> str:
            try:
                return _text(read(handle))
            except pynvml.NVMLError:
                return ""

        try:
            pci_bus_id = _text(pynvml.nvmlDeviceGetPciInfo(handle).busId)
        except pynvml.NVMLError:
            pci_bus_id = ""
        try:
            current, _pending = pynvml.nvmlDeviceGetMigMode(handle)
            mig = MigMode.ENABLED if current == pynvml.NVML_DEVICE_MIG_ENABLE else MigMode.DISABLED
        except pynvml.NVMLError_NotSupported:
            mig = MigMode.NOT_SUPPORTED
        except pynvml.NVMLError:
            mig = MigMode.UNSPECIFIED
        return GpuIdentity(
            index=self._stable_index(uuid, nvml_index),
            uuid=uuid,
            model=optional(pynvml.nvmlDeviceGetName) or "unknown",
            serial=optional(pynvml.nvmlDeviceGetSerial),
            board_part_number=optional(pynvml.nvmlDeviceGetBoardPartNumber),
            pci_bus_id=pci_bus_id,
            mig_mode=mig,
        )

    @staticmethod
    def _gpm_supported(handle: Any) -> bool:
        try:
            return bool(pynvml.nvmlGpmQueryDeviceSupport(handle).isSupportedDevice)
        except pynvml.NVMLError:
            return False

    @staticmethod
    def _prime_gpm(device: _Device) -> None:
        try:
            device.gpm_samples = [pynvml.nvmlGpmSampleAlloc(), pynvml.nvmlGpmSampleAlloc()]
            pynvml.nvmlGpmSampleGet(device.handle, device.gpm_samples[0])
        except pynvml.NVMLError as exc:
            log.info("gpm unavailable uuid=%s error=%s", device.identity.uuid, nvml_error_name(exc))
            device.gpm_supported = False

    # -- sampling -------------------------------------------------------------------------------

    def poll(self, now_ns: int) -> Poll | None:
        events: list[SamplerEvent] = []
        if not self._initialized and now_ns >= self._next_init_ns:
            self._try_init(now_ns)
        events.extend(self._pending)
        self._pending.clear()
        if not self._initialized:
            if self._blind_event is not None:
                events.append(
                    SamplerEvent(
                        kind=self._blind_event.kind,
                        observed_at_ns=now_ns,
                        detail=self._blind_event.detail,
                    )
                )
            return Poll(timestamp_ns=now_ns, readings=(), events=tuple(events))
        readings: list[GpuReading] = []
        try:
            for device in self._devices:
                readings.append(self._read(device, now_ns, events))
        except _DriverGoneError as gone:
            self._shutdown()
            self._next_init_ns = now_ns  # try again at the next poll
            events.append(
                SamplerEvent(
                    kind=EventKind.DRIVER_RELOAD,
                    observed_at_ns=now_ns,
                    detail=f"{gone.name} while sampling; re-initialising NVML",
                )
            )
            log.warning("nvml driver gone error=%s; re-initialising", gone.name)
        if self._reinit_requested:
            self._reinit_requested = False
            log.warning("energy counter went down; re-initialising NVML")
            self._shutdown()
            self._next_init_ns = now_ns
        return Poll(
            timestamp_ns=now_ns,
            readings=tuple(readings),
            events=tuple(events),
            driver_version=self._driver_version,
            nvml_version=self._nvml_version,
        )

    def _read(self, device: _Device, now_ns: int, events: list[SamplerEvent]) -> GpuReading:
        handle = device.handle
        uuid = device.identity.uuid
        flags = SampleFlags.NONE
        failures: list[MetricFailure] = []
        values = [0, 0, 0, 0, 0, 0, 0]  # util, energy, power, memory, processes, tensor, sm

        def attempt(metric: Metric, read: Any) -> Any:
            try:
                return read(handle)
            except pynvml.NVMLError_NotSupported as exc:
                failures.append(MetricFailure(metric, nvml_error_name(exc), not_supported=True))
            except pynvml.NVMLError_GpuIsLost:
                raise
            except (pynvml.NVMLError_Uninitialized, pynvml.NVMLError_DriverNotLoaded) as exc:
                raise _DriverGoneError(nvml_error_name(exc)) from None
            except pynvml.NVMLLibraryMismatchError:
                failures.append(MetricFailure(metric, LIBRARY_MISMATCH_NAME, not_supported=False))
                if not device.mismatch_reported:
                    device.mismatch_reported = True
                    events.append(
                        SamplerEvent(
                            kind=EventKind.LIBRARY_MISMATCH,
                            observed_at_ns=now_ns,
                            gpu_uuid=uuid,
                            detail=f"{LIBRARY_MISMATCH_NAME} reading {metric.value}",
                        )
                    )
            except pynvml.NVMLError as exc:
                failures.append(MetricFailure(metric, nvml_error_name(exc), not_supported=False))
            return None

        try:
            util = attempt(Metric.UTILIZATION, pynvml.nvmlDeviceGetUtilizationRates)
            if util is not None:
                flags |= SampleFlags.UTILIZATION
                values[0] = min(100, int(util.gpu))
            energy = attempt(Metric.ENERGY, pynvml.nvmlDeviceGetTotalEnergyConsumption)
            if energy is not None:
                flags |= SampleFlags.ENERGY
                values[1] = int(energy)
            power = attempt(Metric.POWER, pynvml.nvmlDeviceGetPowerUsage)
            if power is not None:
                flags |= SampleFlags.POWER
                values[2] = int(power)
            memory = attempt(Metric.MEMORY_USED, pynvml.nvmlDeviceGetMemoryInfo)
            if memory is not None:
                flags |= SampleFlags.MEMORY_USED
                values[3] = int(memory.used)
            processes = attempt(
                Metric.COMPUTE_PROCESSES, pynvml.nvmlDeviceGetComputeRunningProcesses
            )
            if processes is not None:
                flags |= SampleFlags.COMPUTE_PROCESSES
                values[4] = len(processes)
            if device.gpm_supported:
                flags |= self._read_gpm(device, values, failures)
            else:
                for metric, _ in _GPM_METRICS:
                    failures.append(
                        MetricFailure(metric, "NVML_ERROR_NOT_SUPPORTED", not_supported=True)
                    )
        except pynvml.NVMLError_GpuIsLost:
            if not device.lost:
                device.lost = True
                self._intervals.forget(uuid)
                events.append(
                    SamplerEvent(
                        kind=EventKind.GPU_LOST,
                        observed_at_ns=now_ns,
                        gpu_uuid=uuid,
                        detail="NVML_ERROR_GPU_IS_LOST",
                    )
                )
                log.warning("gpu lost uuid=%s", uuid)
            return GpuReading(identity=device.identity, sample=None, lost=True)
        if device.lost:
            device.lost = False
            events.append(
                SamplerEvent(
                    kind=EventKind.GPU_APPEARED,
                    observed_at_ns=now_ns,
                    gpu_uuid=uuid,
                    detail="answering again after GPU_IS_LOST",
                )
            )
        if flags & SampleFlags.ENERGY:
            if device.last_energy_mj is not None and values[1] < device.last_energy_mj:
                # The counter went down: the driver was reloaded under us. The windower records
                # the reset and the event; start NVML afresh to pick up the new driver.
                self._reinit_requested = True
            device.last_energy_mj = values[1]
        sample = Sample(
            gpu_index=device.identity.index,
            timestamp_ns=now_ns,
            interval_ms=self._intervals.interval_ms(uuid, now_ns),
            flags=flags,
            utilization_pct=values[0],
            energy_mj=values[1],
            power_mw=values[2],
            memory_used_bytes=values[3],
            compute_processes=values[4],
            tensor_active_ppm=values[5],
            sm_active_ppm=values[6],
        )
        return GpuReading(identity=device.identity, sample=sample, failures=tuple(failures))

    def _read_gpm(
        self, device: _Device, values: list[int], failures: list[MetricFailure]
    ) -> SampleFlags:
        previous, current = device.gpm_samples
        try:
            pynvml.nvmlGpmSampleGet(device.handle, current)
            request = pynvml.c_nvmlGpmMetricsGet_t()
            request.version = pynvml.NVML_GPM_METRICS_GET_VERSION
            request.numMetrics = len(_GPM_METRICS)
            request.sample1 = previous
            request.sample2 = current
            for i, (_, metric_id) in enumerate(_GPM_METRICS):
                request.metrics[i].metricId = metric_id
            pynvml.nvmlGpmMetricsGet(request)
        except pynvml.NVMLError_GpuIsLost:
            raise
        except (pynvml.NVMLError_Uninitialized, pynvml.NVMLError_DriverNotLoaded) as exc:
            raise _DriverGoneError(nvml_error_name(exc)) from None
        except pynvml.NVMLError as exc:
            name = nvml_error_name(exc)
            ns = isinstance(exc, pynvml.NVMLError_NotSupported)
            for metric, _ in _GPM_METRICS:
                failures.append(MetricFailure(metric, name, not_supported=ns))
            return SampleFlags.NONE
        device.gpm_samples = [current, previous]
        flags = SampleFlags.NONE
        for i, (metric, _) in enumerate(_GPM_METRICS):
            result = request.metrics[i]
            ret = int(result.nvmlReturn)
            if ret != pynvml.NVML_SUCCESS:
                failures.append(
                    MetricFailure(
                        metric,
                        _ERROR_NAMES.get(ret, f"NVML_ERROR_{ret}"),
                        not_supported=ret == pynvml.NVML_ERROR_NOT_SUPPORTED,
                    )
                )
                continue
            ppm = round(float(result.value) * _PPM_PER_PCT)
            ppm = min(1_000_000, max(0, ppm))
            if metric is Metric.GPM_TENSOR_ACTIVE:
                flags |= SampleFlags.TENSOR_ACTIVE
                values[5] = ppm
            else:
                flags |= SampleFlags.SM_ACTIVE
                values[6] = ppm
        return flags


def loaded_library_path() -> str:
    """Where the loaded libnvidia-ml came from, for ``status`` (empty if not loaded)."""
    lib = pynvml.nvmlLib
    name = getattr(lib, "_name", "")
    return name if isinstance(name, str) else ""
