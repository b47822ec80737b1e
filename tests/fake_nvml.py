"""A fake NVML library behind the real ``pynvml`` binding.

The fake is a set of C-callable function pointers (ctypes ``CFUNCTYPE`` around Python functions)
installed as ``pynvml.nvmlLib``. pynvml calls them exactly as it calls libnvidia-ml.so: through
ctypes, with ``byref`` arguments and C structs, and turns their return codes into its own
exceptions (``NVMLError_NotSupported``, ``NVMLError_GpuIsLost``, ``NVMLLibraryMismatchError``...).
So the agent's NVML backend is tested against the real binding, not a mock of it.

    fake = FakeNvml([FakeGpu.h100(0), FakeGpu.h100(1)])
    fake.install(monkeypatch)           # or fake.install_globally() outside pytest
    fake.gpus[1].lost = True            # every device call on it now returns GPU_IS_LOST
    fake.missing.add("nvmlDeviceGetComputeRunningProcesses_v3")   # an old library
"""

from __future__ import annotations

import ctypes
import types
from ctypes import CFUNCTYPE, POINTER, c_int, c_uint, c_void_p
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pynvml

if TYPE_CHECKING:
    import pytest

SUCCESS = pynvml.NVML_SUCCESS
NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED
UNINITIALIZED = pynvml.NVML_ERROR_UNINITIALIZED
GPU_IS_LOST = pynvml.NVML_ERROR_GPU_IS_LOST
INSUFFICIENT_SIZE = pynvml.NVML_ERROR_INSUFFICIENT_SIZE
INVALID_ARGUMENT = pynvml.NVML_ERROR_INVALID_ARGUMENT
HANDLE_BASE = 0x1000
SAMPLE_BASE = 0x9000


@dataclass
class FakeGpu:
    """One fake device; tests change its fields between polls."""

    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    serial: str | None = "1650123456789"
    board_part_number: str | None = "692-2G520-0200-000"
    pci_bus_id: str = "00000000:18:00.0"
    mig_mode: int | None = 0
    utilization_pct: int = 0
    energy_mj: int = 1_000_000
    power_mw: int = 70_000
    memory_used_bytes: int = 0
    memory_total_bytes: int = 80 * 2**30
    processes: int = 0
    gpm: bool = True
    tensor_active_pct: float = 0.0
    sm_active_pct: float = 0.0
    lost: bool = False
    errors: dict[str, int] = field(default_factory=dict)
    """Function name -> NVML return code, for that function on this device."""

    @classmethod
    def h100(cls, index: int, **kwargs: Any) -> FakeGpu:
        return cls(
            uuid=f"GPU-{index:08x}-fake-4000-8000-{index:012x}",
            serial=f"16501234{index:05d}",
            pci_bus_id=f"00000000:{0x18 + index:02X}:00.0",
            **kwargs,
        )

    def run(self, utilization_pct: int, seconds: float, power_mw: int | None = None) -> None:
        """Advance the energy counter as if the GPU ran ``seconds`` at this load."""
        self.utilization_pct = utilization_pct
        if power_mw is not None:
            self.power_mw = power_mw
        self.energy_mj += int(self.power_mw * seconds)


class FakeNvml:
    """The fake library: devices, driver state, and the function table pynvml sees."""

    def __init__(
        self,
        gpus: list[FakeGpu],
        *,
        driver_version: str = "550.54.15",
        nvml_version: str = "12.550.54.15",
    ) -> None:
        self.gpus = gpus
        self.driver_version = driver_version
        self.nvml_version = nvml_version
        self.init_error: int | None = None
        self.needs_init = False
        self.initialized = False
        self.missing: set[str] = set()
        self.calls: dict[str, int] = {}
        self._gpm_samples: dict[int, tuple[float, float]] = {}
        self._next_sample = SAMPLE_BASE

    # -- test controls ----------------------------------------------------------------------------

    def reload_driver(self, driver_version: str | None = None) -> None:
        """A driver reload: counters restart, and calls fail until NVML is initialised again."""
        if driver_version is not None:
            self.driver_version = driver_version
        for gpu in self.gpus:
            gpu.energy_mj = 0
        self.needs_init = True

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(pynvml, "nvmlLib", self.library())
        monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer_cache", {})
        monkeypatch.setattr(pynvml, "_nvmlLib_refcount", 0)

    def install_globally(self) -> None:
        """For benchmarks: replace the library for the rest of the process."""
        pynvml.nvmlLib = self.library()
        pynvml._nvmlGetFunctionPointer_cache = {}

    # -- helpers --------------------------------------------------------------------------------

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def _device(self, handle: int | None, name: str) -> tuple[FakeGpu | None, int]:
        self._count(name)
        if self.needs_init or not self.initialized:
            return None, UNINITIALIZED
        index = (handle or 0) - HANDLE_BASE
        if not 0 <= index < len(self.gpus):
            return None, INVALID_ARGUMENT
        gpu = self.gpus[index]
        if gpu.lost:
            return None, GPU_IS_LOST
        code = gpu.errors.get(name)
        if code is not None:
            return None, code
        return gpu, SUCCESS

    @staticmethod
    def _write_string(buffer: int | None, length: int, text: str) -> int:
        data = text.encode() + b"\0"
        if buffer is None or len(data) > length:
            return INSUFFICIENT_SIZE
        ctypes.memmove(buffer, data, len(data))
        return SUCCESS

    # -- the functions pynvml calls -------------------------------------------------------------

    def _init(self, flags: int) -> int:
        self._count("nvmlInitWithFlags")
        if self.init_error is not None:
            return self.init_error
        self.initialized = True
        self.needs_init = False
        return SUCCESS

    def _shutdown(self) -> int:
        self._count("nvmlShutdown")
        self.initialized = False
        return SUCCESS

    def _system_string(self, name: str, value: str, buffer: int | None, length: int) -> int:
        self._count(name)
        if not self.initialized:
            return UNINITIALIZED
        return self._write_string(buffer, length, value)

    def _count_devices(self, out: int | None) -> int:
        self._count("nvmlDeviceGetCount_v2")
        if self.needs_init or not self.initialized:
            return UNINITIALIZED
        ctypes.c_uint.from_address(out or 0).value = len(self.gpus)
        return SUCCESS

    def _handle(self, index: int, out: int | None) -> int:
        self._count("nvmlDeviceGetHandleByIndex_v2")
        if self.needs_init or not self.initialized:
            return UNINITIALIZED
        if index >= len(self.gpus):
            return INVALID_ARGUMENT
        ctypes.c_void_p.from_address(out or 0).value = HANDLE_BASE + index
        return SUCCESS

    def _device_string(self, name: str, attribute: str) -> Any:
        def call(handle: int | None, buffer: int | None, length: int) -> int:
            gpu, code = self._device(handle, name)
            if gpu is None:
                return code
            value = getattr(gpu, attribute)
            if value is None:
                return NOT_SUPPORTED
            return self._write_string(buffer, length, value)

        return call

    def _pci_info(self, handle: int | None, out: int | None) -> int:
        gpu, code = self._device(handle, "nvmlDeviceGetPciInfo_v3")
        if gpu is None:
            return code
        info = ctypes.cast(out, POINTER(pynvml.nvmlPciInfo_t)).contents
        info.busId = gpu.pci_bus_id.encode()
        info.busIdLegacy = gpu.pci_bus_id.encode()
        return SUCCESS

    def _mig_mode(self, handle: int | None, current: int | None, pending: int | None) -> int:
        gpu, code = self._device(handle, "nvmlDeviceGetMigMode")
        if gpu is None:
            return code
        if gpu.mig_mode is None:
            return NOT_SUPPORTED
        ctypes.c_uint.from_address(current or 0).value = gpu.mig_mode
        ctypes.c_uint.from_address(pending or 0).value = gpu.mig_mode
        return SUCCESS

    def _utilization(self, handle: int | None, out: int | None) -> int:
        gpu, code = self._device(handle, "nvmlDeviceGetUtilizationRates")
        if gpu is None:
            return code
        util = ctypes.cast(out, POINTER(pynvml.c_nvmlUtilization_t)).contents
        util.gpu = gpu.utilization_pct
        util.memory = 0
        return SUCCESS

    def _energy(self, handle: int | None, out: int | None) -> int:
        gpu, code = self._device(handle, "nvmlDeviceGetTotalEnergyConsumption")
        if gpu is None:
            return code
        ctypes.c_uint64.from_address(out or 0).value = gpu.energy_mj
        return SUCCESS

    def _power(self, handle: int | None, out: int | None) -> int:
        gpu, code = self._device(handle, "nvmlDeviceGetPowerUsage")
        if gpu is None:
            return code
        ctypes.c_uint.from_address(out or 0).value = gpu.power_mw
        return SUCCESS

    def _memory(self, handle: int | None, out: int | None) -> int:
        gpu, code = self._device(handle, "nvmlDeviceGetMemoryInfo")
        if gpu is None:
            return code
        memory = ctypes.cast(out, POINTER(pynvml.c_nvmlMemory_t)).contents
        memory.total = gpu.memory_total_bytes
        memory.used = gpu.memory_used_bytes
        memory.free = gpu.memory_total_bytes - gpu.memory_used_bytes
        return SUCCESS

    def _processes(self, handle: int | None, count: int | None, infos: int | None) -> int:
        gpu, code = self._device(handle, "nvmlDeviceGetComputeRunningProcesses_v3")
        if gpu is None:
            return code
        counter = ctypes.c_uint.from_address(count or 0)
        if gpu.processes == 0:
            counter.value = 0
            return SUCCESS
        if not infos or counter.value < gpu.processes:
            counter.value = gpu.processes
            return INSUFFICIENT_SIZE
        array = ctypes.cast(infos, POINTER(pynvml.c_nvmlProcessInfo_v3_t))
        for i in range(gpu.processes):
            array[i].pid = 1000 + i
            array[i].usedGpuMemory = 1 << 30
        counter.value = gpu.processes
        return SUCCESS

    def _gpm_support(self, handle: int | None, out: int | None) -> int:
        gpu, code = self._device(handle, "nvmlGpmQueryDeviceSupport")
        if gpu is None:
            return code
        support = ctypes.cast(out, POINTER(pynvml.c_nvmlGpmSupport_t)).contents
        support.isSupportedDevice = 1 if gpu.gpm else 0
        return SUCCESS

    def _gpm_alloc(self, out: int | None) -> int:
        self._count("nvmlGpmSampleAlloc")
        self._next_sample += 1
        self._gpm_samples[self._next_sample] = (0.0, 0.0)
        ctypes.c_void_p.from_address(out or 0).value = self._next_sample
        return SUCCESS

    def _gpm_free(self, sample: int | None) -> int:
        self._count("nvmlGpmSampleFree")
        self._gpm_samples.pop(sample or 0, None)
        return SUCCESS

    def _gpm_get(self, handle: int | None, sample: int | None) -> int:
        gpu, code = self._device(handle, "nvmlGpmSampleGet")
        if gpu is None:
            return code
        if not gpu.gpm:
            return NOT_SUPPORTED
        self._gpm_samples[sample or 0] = (gpu.tensor_active_pct, gpu.sm_active_pct)
        return SUCCESS

    def _gpm_metrics(self, request: int | None) -> int:
        self._count("nvmlGpmMetricsGet")
        req = ctypes.cast(request, POINTER(pynvml.c_nvmlGpmMetricsGet_t)).contents
        second = ctypes.cast(req.sample2, c_void_p).value or 0
        if second not in self._gpm_samples:
            return INVALID_ARGUMENT
        tensor, sm = self._gpm_samples[second]
        for i in range(req.numMetrics):
            metric = req.metrics[i]
            if metric.metricId == pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL:
                metric.value = tensor
                metric.nvmlReturn = SUCCESS
            elif metric.metricId == pynvml.NVML_GPM_METRIC_SM_UTIL:
                metric.value = sm
                metric.nvmlReturn = SUCCESS
            else:
                metric.nvmlReturn = NOT_SUPPORTED
        return SUCCESS

    def library(self) -> types.SimpleNamespace:
        """The function table: what ``CDLL("libnvidia-ml.so.1")`` would have been."""
        handle_out = CFUNCTYPE(c_int, c_void_p, c_void_p)
        string_fn = CFUNCTYPE(c_int, c_void_p, c_void_p, c_uint)
        functions: dict[str, Any] = {
            "nvmlInitWithFlags": CFUNCTYPE(c_int, c_uint)(self._init),
            "nvmlShutdown": CFUNCTYPE(c_int)(self._shutdown),
            "nvmlSystemGetDriverVersion": CFUNCTYPE(c_int, c_void_p, c_uint)(
                lambda b, n: self._system_string(
                    "nvmlSystemGetDriverVersion", self.driver_version, b, n
                )
            ),
            "nvmlSystemGetNVMLVersion": CFUNCTYPE(c_int, c_void_p, c_uint)(
                lambda b, n: self._system_string(
                    "nvmlSystemGetNVMLVersion", self.nvml_version, b, n
                )
            ),
            "nvmlDeviceGetCount_v2": CFUNCTYPE(c_int, c_void_p)(self._count_devices),
            "nvmlDeviceGetHandleByIndex_v2": CFUNCTYPE(c_int, c_uint, c_void_p)(self._handle),
            "nvmlDeviceGetUUID": string_fn(self._device_string("nvmlDeviceGetUUID", "uuid")),
            "nvmlDeviceGetName": string_fn(self._device_string("nvmlDeviceGetName", "name")),
            "nvmlDeviceGetSerial": string_fn(self._device_string("nvmlDeviceGetSerial", "serial")),
            "nvmlDeviceGetBoardPartNumber": string_fn(
                self._device_string("nvmlDeviceGetBoardPartNumber", "board_part_number")
            ),
            "nvmlDeviceGetPciInfo_v3": handle_out(self._pci_info),
            "nvmlDeviceGetMigMode": CFUNCTYPE(c_int, c_void_p, c_void_p, c_void_p)(self._mig_mode),
            "nvmlDeviceGetUtilizationRates": handle_out(self._utilization),
            "nvmlDeviceGetTotalEnergyConsumption": handle_out(self._energy),
            "nvmlDeviceGetPowerUsage": handle_out(self._power),
            "nvmlDeviceGetMemoryInfo": handle_out(self._memory),
            "nvmlDeviceGetComputeRunningProcesses_v3": CFUNCTYPE(
                c_int, c_void_p, c_void_p, c_void_p
            )(self._processes),
            "nvmlGpmQueryDeviceSupport": handle_out(self._gpm_support),
            "nvmlGpmSampleAlloc": CFUNCTYPE(c_int, c_void_p)(self._gpm_alloc),
            "nvmlGpmSampleFree": CFUNCTYPE(c_int, c_void_p)(self._gpm_free),
            "nvmlGpmSampleGet": handle_out(self._gpm_get),
            "nvmlGpmMetricsGet": CFUNCTYPE(c_int, c_void_p)(self._gpm_metrics),
        }
        for name in self.missing:
            functions.pop(name, None)
        return _Library(functions, self.missing)


class _Library(types.SimpleNamespace):
    """Attribute access like a CDLL: a missing symbol raises AttributeError, as ctypes does. The
    set of missing names is read at lookup time, so tests can remove functions later too."""

    def __init__(self, functions: dict[str, Any], missing: set[str]) -> None:
        super().__init__(**functions)
        object.__setattr__(self, "_missing", missing)

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("_") and name in object.__getattribute__(self, "_missing"):
            raise AttributeError(name)
        return object.__getattribute__(self, name)


def install_missing_library(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make pynvml's own loader fail as on a host without libnvidia-ml.so.1."""

    def no_library(name: str, *args: object, **kwargs: object) -> None:
        raise OSError(f"{name}: cannot open shared object file: No such file or directory")

    monkeypatch.setattr(pynvml, "nvmlLib", None)
    monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer_cache", {})
    monkeypatch.setattr(pynvml, "CDLL", no_library)
