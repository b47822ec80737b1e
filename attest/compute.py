"""Compute figures for one GPU and one window: the rule a regulator relies on (ADR 0001, "Figures
per GPU-window"), and the versioned table of GPU peaks it rests on. Pure integer arithmetic, no I/O.

    >>> figures = compute_window("NVIDIA H100 80GB HBM3", busy_ms=30_000,
    ...                          tensor_active_ms=None, energy_mj=21_000_000)
    >>> figures.upper_bound_flop            # 1_979e12 FLOP/s (fp8, dense) x 30 busy seconds
    59370000000000000
    >>> figures.central_estimate_method     # no GPM reading: busy x bf16 peak x 0.4, and it says so
    <CentralEstimateMethod.ASSUMED_UTILIZATION: 'assumed_utilization'>

Three figures per GPU and window, each with its method:

- **upper bound**: peak dense FLOP/s at the model's fastest precision x busy seconds, rounded up.
  Sound as far as the vendor peak is: no kernel running, no FLOP. An unknown model gets the highest
  peak in the table (method ``unknown_model_table_max``): never guess low.
- **central estimate**: tensor-active seconds (GPM) x peak bf16 where measured; otherwise busy
  seconds x peak bf16 x :data:`ASSUMED_UTILIZATION_PPM` (Epoch AI's typical 40 %), labelled as
  assumed. Models without bf16 (V100, T4) use fp16. Rounded down: an estimate, not a bound.
- **energy cross-check**: joules x the model's FLOP per joule at peak (fastest dense peak / board
  power), rounded up. A GPU run below its peak clocks can beat that efficiency, so this is a
  cross-check and a gap estimate, not a sound bound; :func:`is_energy_mismatch` turns it into a
  finding.

The table (:data:`GPU_TABLE`, version :data:`TABLE_VERSION`) holds *dense* peaks. Vendor datasheets
mostly print sparse (2:4 structured sparsity) figures with a footnote; every row's ``source`` names
the document and its footnote and says how the dense figure was obtained. Datasheet figures are
rounded to three or four significant figures, so a stored peak can differ from the exact
architectural one by under 0.1 %. Further limits, stated plainly:

- Peaks are at the vendor's stated boost clock. Power limits keep sustained tensor throughput at or
  below them in practice; the energy cross-check is the backstop.
- Integer operations count (the EO 14110 and SB 53 definitions count integer or floating-point
  operations), but only down to 8 bits: the int4/int1 modes of A100, T4, A10 and Ada parts are
  inference-only and are not in the table.
- The table is per physical GPU. A partition reported as its own device (a MIG instance, an MI300X
  CPX partition, one GCD of an MI250X) gets the whole GPU's peak: an over-count, the safe way.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from fractions import Fraction
from typing import Final, NamedTuple

TABLE_VERSION: Final = 1
"""Bump whenever a row's figures, matchers or the set of rows changes."""

ASSUMED_UTILIZATION_PPM: Final = 400_000
"""Utilisation assumed for the central estimate when no tensor-active time is measured: 0.4, the
typical model-FLOP utilisation Epoch AI uses for large training runs."""

PPM: Final = 1_000_000
MS_PER_S: Final = 1_000
MJ_PER_J: Final = 1_000

ENERGY_EFFICIENCY_MARGIN_PPM: Final = 2_000_000
"""The margin between a row's FLOP per joule at peak (fastest dense peak / board power) and the
best FLOP per joule its GPU can reach: 2x, for every row of :data:`GPU_TABLE`.

Why a margin at all: the table's efficiency is the one at the vendor's boost clock and full board
power. A GPU held at a lower clock (a power cap, a locked clock) finishes fewer FLOP per second
but spends less energy per FLOP, because dynamic power grows faster than linearly with clock
(the voltage rises with it). The energy a GPU used therefore bounds its compute only at its *best*
efficiency, not at the datasheet one.

Why 2x: published power-capping studies of training on data-centre GPUs report energy savings of
tens of per cent, not multiples, for a given amount of work (e.g. Zhao et al., "Great Power, Great
Responsibility: Recommendations for Reducing Energy for Training Language Models", Findings of
NAACL 2022, on V100s capped at 150 W of 250 W), and NVML does not let a board's power limit go
below its minimum enforced limit (a sizeable fraction of board power on every row of the table).
Twice the datasheet efficiency is well beyond those savings; it is a chosen safety margin, not a
measured figure, and one figure for every row because no vendor publishes a best efficiency. It
is used only where the energy is the evidence: a window whose utilisation the energy contradicts,
energy that rose outside any window, and a gap the counter spans (:func:`energy_allowed_flop`)."""

# Reference thresholds (policy examples; the policy file, not this module, decides what applies).
EU_AI_ACT_SYSTEMIC_RISK_FLOP: Final = 10**25
"""Regulation (EU) 2024/1689 (AI Act), Art. 51(2): a general-purpose AI model is presumed to have
high-impact capabilities when its cumulative training compute is greater than 10^25 FLOP."""

US_EO_14110_MODEL_FLOP: Final = 10**26
"""US Executive Order 14110 (30 Oct 2023), Sec. 4.2(b)(i): reporting duty for models trained with
more than 10^26 integer or floating-point operations. The order was revoked on 20 Jan 2025; the
figure remains a common reference."""

US_EO_14110_CLUSTER_FLOPS_PER_S: Final = 10**20
"""US Executive Order 14110, Sec. 4.2(b)(ii): reporting duty for a computing cluster with a
theoretical maximum capacity of 10^20 integer or floating-point operations per second for AI
training (machines co-located in one data centre, networked at over 100 Gbit/s)."""

CA_SB53_FRONTIER_MODEL_FLOP: Final = 10**26
"""California SB 53 (Transparency in Frontier Artificial Intelligence Act, 2025): a frontier model
is one trained with more than 10^26 integer or floating-point operations, fine-tuning included."""

_KEY = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_NAME_SEPARATORS = re.compile(r"[^0-9a-z]+")


class Precision(StrEnum):
    """A tensor-core number format. Declared order breaks ties in :attr:`GpuSpec.fastest_precision`
    (the narrower format is reported)."""

    FP4 = "fp4"
    FP8 = "fp8"
    INT8 = "int8"
    FP16 = "fp16"
    BF16 = "bf16"
    TF32 = "tf32"
    FP64 = "fp64"


class UpperBoundMethod(StrEnum):
    """How ``upper_bound_flop`` was obtained (wire values of the ComputeBounds message)."""

    PEAK_TIMES_BUSY = "peak_times_busy"
    UNKNOWN_MODEL_TABLE_MAX = "unknown_model_table_max"


class CentralEstimateMethod(StrEnum):
    """How ``central_estimate_flop`` was obtained."""

    TENSOR_ACTIVE = "tensor_active"
    ASSUMED_UTILIZATION = "assumed_utilization"


class EnergyMethod(StrEnum):
    """How ``energy_flop`` was obtained."""

    FLOP_PER_JOULE_AT_PEAK = "flop_per_joule_at_peak"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class DatasheetSource:
    """Where a row's figures come from, and what the document's footnote says about sparsity."""

    document: str
    url: str
    sparsity_note: str


@dataclass(frozen=True, slots=True)
class GpuSpec:
    """One row of the GPU table: dense peaks by precision (``None`` where the GPU has no tensor
    path for it) and the board power the peaks are specified at.

    Matching an NVML product name: the name is lowercased and split into alphanumeric tokens. The
    row is a candidate when every token of ``nvml_family`` is present; it matches *specifically*
    when, in addition, every token of one of its ``nvml_variants`` is present. See
    :func:`lookup_model`.
    """

    key: str
    display_name: str
    nvml_family: frozenset[str]
    nvml_variants: tuple[frozenset[str], ...]
    fp64_flops_per_s: int | None
    tf32_flops_per_s: int | None
    bf16_flops_per_s: int | None
    fp16_flops_per_s: int | None
    fp8_flops_per_s: int | None
    int8_ops_per_s: int | None
    fp4_flops_per_s: int | None
    board_power_w: int
    source: DatasheetSource
    _fastest: Precision = field(init=False, repr=False, compare=False)
    _flop_per_joule: Fraction = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if _KEY.fullmatch(self.key) is None:
            raise ValueError(f"GPU table key {self.key!r} is not lowercase words joined by '-'")
        if not self.nvml_family:
            raise ValueError(f"{self.key}: nvml_family is empty")
        for precision in Precision:
            peak = self.peak_flops_per_s(precision)
            if peak is not None and (isinstance(peak, bool) or not isinstance(peak, int)):
                raise TypeError(f"{self.key}: {precision} peak must be an int")
            if peak is not None and peak <= 0:
                raise ValueError(f"{self.key}: {precision} peak must be positive")
        if self.bf16_flops_per_s is None and self.fp16_flops_per_s is None:
            raise ValueError(f"{self.key}: a row needs a bf16 or an fp16 peak")
        if isinstance(self.board_power_w, bool) or not isinstance(self.board_power_w, int):
            raise TypeError(f"{self.key}: board_power_w must be an int")
        if self.board_power_w <= 0:
            raise ValueError(f"{self.key}: board_power_w must be positive")
        if not self.source.url.startswith("https://"):
            raise ValueError(f"{self.key}: source url must be https")
        # Derived once: the verifier asks for these for every GPU of every attestation.
        object.__setattr__(self, "_fastest", self._find_fastest_precision())
        fastest = self.peak_flops_per_s(self._fastest)
        assert fastest is not None
        object.__setattr__(self, "_flop_per_joule", Fraction(fastest, self.board_power_w))

    def peak_flops_per_s(self, precision: Precision) -> int | None:
        """Dense peak at ``precision`` (operations per second; for int8, integer operations)."""
        match precision:
            case Precision.FP4:
                return self.fp4_flops_per_s
            case Precision.FP8:
                return self.fp8_flops_per_s
            case Precision.INT8:
                return self.int8_ops_per_s
            case Precision.FP16:
                return self.fp16_flops_per_s
            case Precision.BF16:
                return self.bf16_flops_per_s
            case Precision.TF32:
                return self.tf32_flops_per_s
            case Precision.FP64:
                return self.fp64_flops_per_s

    @property
    def fastest_precision(self) -> Precision:
        """The precision with the highest dense peak (the narrower one on a tie)."""
        return self._fastest

    def _find_fastest_precision(self) -> Precision:
        best = Precision.FP64
        best_peak = 0
        for precision in Precision:
            peak = self.peak_flops_per_s(precision)
            if peak is not None and peak > best_peak:
                best, best_peak = precision, peak
        return best

    @property
    def fastest_flops_per_s(self) -> int:
        """Dense peak at the fastest precision: the rate behind the upper bound."""
        peak = self.peak_flops_per_s(self.fastest_precision)
        assert peak is not None  # __post_init__ guarantees a bf16 or fp16 peak
        return peak

    @property
    def central_flops_per_s(self) -> int:
        """Dense bf16 peak, or fp16 where the GPU has no bf16: the rate behind the estimate."""
        if self.bf16_flops_per_s is not None:
            return self.bf16_flops_per_s
        assert self.fp16_flops_per_s is not None  # __post_init__ guarantees one of the two
        return self.fp16_flops_per_s

    @property
    def flop_per_joule_at_peak(self) -> Fraction:
        """Fastest dense peak / board power, exact."""
        return self._flop_per_joule

    def matches_family(self, tokens: frozenset[str]) -> bool:
        return self.nvml_family <= tokens

    def matches_variant(self, tokens: frozenset[str]) -> bool:
        return any(variant <= tokens for variant in self.nvml_variants)


@dataclass(frozen=True, slots=True)
class WindowCompute:
    """The compute figures for one GPU and one window (the ComputeBounds message).

    ``assumed_utilization_ppm`` is 0 unless the central estimate is ``assumed_utilization``;
    ``energy_flop`` is 0 and means nothing when ``energy_method`` is ``unavailable``;
    ``table_model_key`` is "" when the model was not in the table.
    """

    upper_bound_flop: int
    upper_bound_method: UpperBoundMethod
    central_estimate_flop: int
    central_estimate_method: CentralEstimateMethod
    assumed_utilization_ppm: int
    energy_flop: int
    energy_method: EnergyMethod
    table_model_key: str
    table_version: int


def _tokens(text: str) -> frozenset[str]:
    return frozenset(token for token in _NAME_SEPARATORS.split(text.lower()) if token)


def _variants(*texts: str) -> tuple[frozenset[str], ...]:
    return tuple(_tokens(text) for text in texts)


_SPARSE_HALVED = (
    "Footnote '* With sparsity' marks the tf32, bf16, fp16, fp8 and int8 figures; stored values "
    "are those figures / 2. FP64 figures are dense as printed."
)

_H100 = DatasheetSource(
    document="NVIDIA H100 Tensor Core GPU datasheet (H100 SXM and H100 NVL columns)",
    url="https://www.nvidia.com/en-us/data-center/h100/",
    sparsity_note=_SPARSE_HALVED + " NVL figures are per GPU (early editions printed a pair).",
)
_H200 = DatasheetSource(
    document="NVIDIA H200 Tensor Core GPU datasheet (H200 SXM and H200 NVL columns)",
    url="https://www.nvidia.com/en-us/data-center/h200/",
    sparsity_note=_SPARSE_HALVED,
)
_A100 = DatasheetSource(
    document="NVIDIA A100 Tensor Core GPU datasheet (r4)",
    url=(
        "https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/"
        "nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf"
    ),
    sparsity_note=(
        "Prints 'dense | sparse*' pairs ('* With sparsity'); the dense figure is stored as is. "
        "Board power: SXM 400 W, PCIe 40GB 250 W, PCIe 80GB 300 W."
    ),
)
_BLACKWELL = DatasheetSource(
    document=(
        "NVIDIA GB200 NVL72 and HGX B200 technical specifications, 'Individual Blackwell GPU "
        "Specifications' (GB200 and HGX B200 columns)"
    ),
    url="https://www.nvidia.com/en-us/data-center/gb200-nvl72/",
    sparsity_note=(
        "Tensor Core figures other than FP64 are with sparsity (HGX pages print FP4 as "
        "'sparse | dense', e.g. 144 | 72 PFLOPS per 8 GPUs); stored values are / 2. "
        "FP64/FP64 Tensor is dense (GB200 was first printed as 45 TF, now 40 TF)."
    ),
)
_GB300 = DatasheetSource(
    document="NVIDIA GB300 NVL72 specifications (rack of 72 GPUs; stored per GPU)",
    url="https://www.nvidia.com/en-us/data-center/gb300-nvl72/",
    sparsity_note=(
        "FP4 printed 'sparse | dense' as 1,440 | 1,080 PFLOPS: dense / 72 stored (the sparse "
        "figure is NOT twice the dense one on Blackwell Ultra). FP8/FP6 720 PF, FP16/BF16 360 PF, "
        "TF32 180 PF and INT8 24 POPS are with sparsity: / 72 / 2 stored. FP64 100 TF is dense: "
        "/ 72, rounded up. Board power 1,400 W per GPU (NVIDIA Blackwell Ultra announcement)."
    ),
)
_L40S = DatasheetSource(
    document="NVIDIA L40S GPU datasheet",
    url="https://www.nvidia.com/en-us/data-center/l40s/",
    sparsity_note=(
        "Prints 'dense | sparse*' pairs ('* With sparsity'). For bf16/fp16 it prints "
        "362.05 | 733*; the higher of the printed dense figure and sparse / 2 (366.5) is stored."
    ),
)
_L4 = DatasheetSource(
    document="NVIDIA L4 Tensor Core GPU datasheet",
    url="https://www.nvidia.com/en-us/data-center/l4/",
    sparsity_note="Tensor figures carry '* With sparsity'; stored values are those figures / 2.",
)
_A10 = DatasheetSource(
    document="NVIDIA A10 Tensor Core GPU datasheet",
    url="https://www.nvidia.com/en-us/data-center/products/a10-gpu/",
    sparsity_note="Prints 'dense | sparse*' pairs ('* With sparsity'); dense stored as is.",
)
_T4 = DatasheetSource(
    document="NVIDIA T4 Tensor Core GPU datasheet",
    url="https://www.nvidia.com/en-us/data-center/tesla-t4/",
    sparsity_note="Turing has no structured sparsity: figures are dense as printed (fp16 = mixed "
    "precision FP16/FP32).",
)
_V100 = DatasheetSource(
    document="NVIDIA V100 Tensor Core GPU datasheet",
    url="https://www.nvidia.com/en-us/data-center/v100/",
    sparsity_note="Volta has no structured sparsity: 'Tensor Performance' is dense fp16 (mixed "
    "precision) as printed; no bf16, tf32, int8 or fp64 tensor path.",
)
_ADA = DatasheetSource(
    document="NVIDIA Ada GPU Architecture whitepaper, Appendix A (GeForce RTX 4090 column)",
    url="https://images.nvidia.com/aem-dam/Solutions/geforce/ada/nvidia-ada-gpu-architecture.pdf",
    sparsity_note=(
        "Prints 'dense/sparse' pairs, the second with sparsity; dense stored. GeForce runs "
        "fp16/bf16 with FP32 accumulate at half rate: fp16 and fp8 store the FP16-accumulate "
        "rate (the higher), bf16 the only (FP32-accumulate) rate."
    ),
)
_RTX6000_ADA = DatasheetSource(
    document="NVIDIA RTX 6000 Ada Generation datasheet; Ada GPU Architecture whitepaper",
    url="https://www.nvidia.com/en-us/design-visualization/rtx-6000/",
    sparsity_note=(
        "Datasheet prints one tensor figure, 1,457 TFLOPS, FP8 with sparsity: / 2 stored for "
        "fp8/int8; the whitepaper's dense/sparse pairs give the other precisions."
    ),
)
_MI300 = DatasheetSource(
    document="AMD Instinct MI300X / MI325X accelerator specifications",
    url="https://www.amd.com/en/products/accelerators/instinct/mi300/mi300x.html",
    sparsity_note=(
        "AMD prints dense peaks and, separately, 'with structured sparsity' peaks; the dense "
        "figures are stored. MI325X: same compute, 1,000 W (amd.com .../mi300/mi325x.html)."
    ),
)
_MI250X = DatasheetSource(
    document="AMD Instinct MI250X accelerator specifications",
    url="https://www.amd.com/en/products/accelerators/instinct/mi200/mi250x.html",
    sparsity_note=(
        "CDNA 2 has no structured sparsity: figures are dense as printed. Board power "
        "'500 W | 560 W peak': 560 W stored."
    ),
)


def _a100(key: str, display: str, variants: tuple[frozenset[str], ...], power_w: int) -> GpuSpec:
    return GpuSpec(
        key=key,
        display_name=display,
        nvml_family=_tokens("a100"),
        nvml_variants=variants,
        fp64_flops_per_s=19_500_000_000_000,
        tf32_flops_per_s=156_000_000_000_000,
        bf16_flops_per_s=312_000_000_000_000,
        fp16_flops_per_s=312_000_000_000_000,
        fp8_flops_per_s=None,
        int8_ops_per_s=624_000_000_000_000,
        fp4_flops_per_s=None,
        board_power_w=power_w,
        source=_A100,
    )


def _hopper_sxm(key: str, display: str, family: str, src: DatasheetSource) -> GpuSpec:
    # Datasheet: FP64 Tensor 67 TF; TF32 989*; BF16/FP16 1,979*; FP8 3,958*; INT8 3,958* TOPS.
    return GpuSpec(
        key=key,
        display_name=display,
        nvml_family=_tokens(family),
        nvml_variants=_variants("sxm", "sxm5", "hbm3"),
        fp64_flops_per_s=67_000_000_000_000,
        tf32_flops_per_s=494_500_000_000_000,
        bf16_flops_per_s=989_500_000_000_000,
        fp16_flops_per_s=989_500_000_000_000,
        fp8_flops_per_s=1_979_000_000_000_000,
        int8_ops_per_s=1_979_000_000_000_000,
        fp4_flops_per_s=None,
        board_power_w=700,
        source=src,
    )


def _hopper_nvl(key: str, display: str, family: str, power_w: int, src: DatasheetSource) -> GpuSpec:
    # Datasheet: FP64 Tensor 60 TF; TF32 835*; BF16/FP16 1,671*; FP8 3,341*; INT8 3,341* TOPS.
    return GpuSpec(
        key=key,
        display_name=display,
        nvml_family=_tokens(family),
        nvml_variants=_variants("nvl"),
        fp64_flops_per_s=60_000_000_000_000,
        tf32_flops_per_s=417_500_000_000_000,
        bf16_flops_per_s=835_500_000_000_000,
        fp16_flops_per_s=835_500_000_000_000,
        fp8_flops_per_s=1_670_500_000_000_000,
        int8_ops_per_s=1_670_500_000_000_000,
        fp4_flops_per_s=None,
        board_power_w=power_w,
        source=src,
    )


def _cdna3(key: str, display: str, family: str, power_w: int) -> GpuSpec:
    # AMD dense peaks: FP64 matrix 163.4 TF; TF32 653.7; FP16/BF16 1,307.4; FP8 2,614.9;
    # INT8 2,614.9 TOPS.
    return GpuSpec(
        key=key,
        display_name=display,
        nvml_family=_tokens(family),
        nvml_variants=(),
        fp64_flops_per_s=163_400_000_000_000,
        tf32_flops_per_s=653_700_000_000_000,
        bf16_flops_per_s=1_307_400_000_000_000,
        fp16_flops_per_s=1_307_400_000_000_000,
        fp8_flops_per_s=2_614_900_000_000_000,
        int8_ops_per_s=2_614_900_000_000_000,
        fp4_flops_per_s=None,
        board_power_w=power_w,
        source=_MI300,
    )


def _volta(key: str, display: str, family: str, fp16_flops_per_s: int, power_w: int) -> GpuSpec:
    return GpuSpec(
        key=key,
        display_name=display,
        nvml_family=_tokens(family),
        nvml_variants=(),
        fp64_flops_per_s=None,
        tf32_flops_per_s=None,
        bf16_flops_per_s=None,
        fp16_flops_per_s=fp16_flops_per_s,
        fp8_flops_per_s=None,
        int8_ops_per_s=None,
        fp4_flops_per_s=None,
        board_power_w=power_w,
        source=_V100,
    )


GPU_TABLE: Final[tuple[GpuSpec, ...]] = (
    _a100("a100-sxm", "NVIDIA A100 SXM4 (40GB and 80GB)", _variants("sxm4", "sxm"), 400),
    _a100("a100-pcie-40gb", "NVIDIA A100 PCIe 40GB", _variants("pcie 40gb"), 250),
    _a100("a100-pcie-80gb", "NVIDIA A100 PCIe 80GB", _variants("pcie 80gb"), 300),
    _hopper_sxm("h100-sxm", "NVIDIA H100 SXM5", "h100", _H100),
    GpuSpec(
        # H100 PCIe column of the 2022 datasheet: FP64 Tensor 51 TF; TF32 756*; BF16/FP16 1,513*;
        # FP8 3,026*; INT8 3,026* TOPS. TDP 300-350 W (Product Brief PB-11133-001: 350 W max).
        key="h100-pcie",
        display_name="NVIDIA H100 PCIe",
        nvml_family=_tokens("h100"),
        nvml_variants=_variants("pcie"),
        fp64_flops_per_s=51_000_000_000_000,
        tf32_flops_per_s=378_000_000_000_000,
        bf16_flops_per_s=756_500_000_000_000,
        fp16_flops_per_s=756_500_000_000_000,
        fp8_flops_per_s=1_513_000_000_000_000,
        int8_ops_per_s=1_513_000_000_000_000,
        fp4_flops_per_s=None,
        board_power_w=350,
        source=DatasheetSource(
            document=(
                "NVIDIA H100 Tensor Core GPU datasheet, 2022 edition (H100 PCIe column); "
                "NVIDIA H100 PCIe Product Brief PB-11133-001 for the 350 W maximum"
            ),
            url="https://www.nvidia.com/en-us/data-center/h100/",
            sparsity_note=_SPARSE_HALVED,
        ),
    ),
    _hopper_nvl("h100-nvl", "NVIDIA H100 NVL", "h100", 400, _H100),
    _hopper_sxm("h200-sxm", "NVIDIA H200 SXM", "h200", _H200),
    _hopper_nvl("h200-nvl", "NVIDIA H200 NVL", "h200", 600, _H200),
    GpuSpec(
        # HGX B200, per GPU: FP4 18 PF*; FP8/FP6 9 PF*; INT8 9 POPS*; FP16/BF16 4.5 PF*;
        # TF32 2.2 PF*; FP64/FP64 Tensor 37 TF; configurable up to 1,000 W.
        key="b200",
        display_name="NVIDIA B200 (HGX)",
        nvml_family=_tokens("b200"),
        nvml_variants=(),
        fp64_flops_per_s=37_000_000_000_000,
        tf32_flops_per_s=1_100_000_000_000_000,
        bf16_flops_per_s=2_250_000_000_000_000,
        fp16_flops_per_s=2_250_000_000_000_000,
        fp8_flops_per_s=4_500_000_000_000_000,
        int8_ops_per_s=4_500_000_000_000_000,
        fp4_flops_per_s=9_000_000_000_000_000,
        board_power_w=1_000,
        source=_BLACKWELL,
    ),
    GpuSpec(
        # GB200, per GPU: FP4 20 PF*; FP8/FP6 10 PF*; INT8 10 POPS*; FP16/BF16 5 PF*;
        # TF32 2.5 PF*; FP64/FP64 Tensor 40 TF; configurable up to 1,200 W.
        key="gb200",
        display_name="NVIDIA GB200 (per Blackwell GPU)",
        nvml_family=_tokens("gb200"),
        nvml_variants=(),
        fp64_flops_per_s=40_000_000_000_000,
        tf32_flops_per_s=1_250_000_000_000_000,
        bf16_flops_per_s=2_500_000_000_000_000,
        fp16_flops_per_s=2_500_000_000_000_000,
        fp8_flops_per_s=5_000_000_000_000_000,
        int8_ops_per_s=5_000_000_000_000_000,
        fp4_flops_per_s=10_000_000_000_000_000,
        board_power_w=1_200,
        source=_BLACKWELL,
    ),
    GpuSpec(
        # GB300 NVL72 / 72: FP4 1,080 PF dense -> 15 PF; FP8 720 PF* -> 5 PF; INT8 24 POPS* ->
        # 166.67 TOPS (rounded up); FP16/BF16 360 PF* -> 2.5 PF; TF32 180 PF* -> 1.25 PF;
        # FP64 100 TF -> 1.389 TF (rounded up).
        key="gb300",
        display_name="NVIDIA GB300 (per Blackwell Ultra GPU)",
        nvml_family=_tokens("gb300"),
        nvml_variants=(),
        fp64_flops_per_s=1_388_888_888_889,
        tf32_flops_per_s=1_250_000_000_000_000,
        bf16_flops_per_s=2_500_000_000_000_000,
        fp16_flops_per_s=2_500_000_000_000_000,
        fp8_flops_per_s=5_000_000_000_000_000,
        int8_ops_per_s=166_666_666_666_667,
        fp4_flops_per_s=15_000_000_000_000_000,
        board_power_w=1_400,
        source=_GB300,
    ),
    _cdna3("mi300x", "AMD Instinct MI300X", "mi300x", 750),
    _cdna3("mi325x", "AMD Instinct MI325X", "mi325x", 1_000),
    GpuSpec(
        # AMD: FP64 matrix 95.7 TF; FP16/BF16 383 TF; INT8 383 TOPS; no TF32 or FP8 matrix path.
        key="mi250x",
        display_name="AMD Instinct MI250X (both GCDs)",
        nvml_family=_tokens("mi250x"),
        nvml_variants=(),
        fp64_flops_per_s=95_700_000_000_000,
        tf32_flops_per_s=None,
        bf16_flops_per_s=383_000_000_000_000,
        fp16_flops_per_s=383_000_000_000_000,
        fp8_flops_per_s=None,
        int8_ops_per_s=383_000_000_000_000,
        fp4_flops_per_s=None,
        board_power_w=560,
        source=_MI250X,
    ),
    GpuSpec(
        # Datasheet: TF32 183 | 366*; BF16/FP16 362.05 | 733*; FP8 733 | 1,466*;
        # INT8 733 | 1,466* TOPS; 350 W. No FP64 tensor path.
        key="l40s",
        display_name="NVIDIA L40S",
        nvml_family=_tokens("l40s"),
        nvml_variants=(),
        fp64_flops_per_s=None,
        tf32_flops_per_s=183_000_000_000_000,
        bf16_flops_per_s=366_500_000_000_000,
        fp16_flops_per_s=366_500_000_000_000,
        fp8_flops_per_s=733_000_000_000_000,
        int8_ops_per_s=733_000_000_000_000,
        fp4_flops_per_s=None,
        board_power_w=350,
        source=_L40S,
    ),
    GpuSpec(
        # Datasheet: TF32 120*; BF16/FP16 242*; FP8 485*; INT8 485* TOPS; 72 W.
        key="l4",
        display_name="NVIDIA L4",
        nvml_family=_tokens("l4"),
        nvml_variants=(),
        fp64_flops_per_s=None,
        tf32_flops_per_s=60_000_000_000_000,
        bf16_flops_per_s=121_000_000_000_000,
        fp16_flops_per_s=121_000_000_000_000,
        fp8_flops_per_s=242_500_000_000_000,
        int8_ops_per_s=242_500_000_000_000,
        fp4_flops_per_s=None,
        board_power_w=72,
        source=_L4,
    ),
    GpuSpec(
        # Datasheet: TF32 62.5 | 125*; BF16/FP16 125 | 250*; INT8 250 | 500* TOPS; 150 W.
        key="a10",
        display_name="NVIDIA A10",
        nvml_family=_tokens("a10"),
        nvml_variants=(),
        fp64_flops_per_s=None,
        tf32_flops_per_s=62_500_000_000_000,
        bf16_flops_per_s=125_000_000_000_000,
        fp16_flops_per_s=125_000_000_000_000,
        fp8_flops_per_s=None,
        int8_ops_per_s=250_000_000_000_000,
        fp4_flops_per_s=None,
        board_power_w=150,
        source=_A10,
    ),
    GpuSpec(
        # Datasheet: mixed precision (FP16/FP32) 65 TF; INT8 130 TOPS; 70 W. No bf16.
        key="t4",
        display_name="NVIDIA T4",
        nvml_family=_tokens("t4"),
        nvml_variants=(),
        fp64_flops_per_s=None,
        tf32_flops_per_s=None,
        bf16_flops_per_s=None,
        fp16_flops_per_s=65_000_000_000_000,
        fp8_flops_per_s=None,
        int8_ops_per_s=130_000_000_000_000,
        fp4_flops_per_s=None,
        board_power_w=70,
        source=_T4,
    ),
    # V100 families name the form factor: a V100 whose form factor is not one of these (SXM3 in
    # DGX-2H runs faster) must fall to the table maximum rather than to a lower row.
    _volta("v100-sxm2", "NVIDIA V100 SXM2", "v100 sxm2", 125_000_000_000_000, 300),
    _volta("v100-pcie", "NVIDIA V100 PCIe", "v100 pcie", 112_000_000_000_000, 250),
    _volta("v100s-pcie", "NVIDIA V100S PCIe", "v100s", 130_000_000_000_000, 250),
    GpuSpec(
        # Whitepaper (dense/sparse): TF32 82.6/165.2; BF16 (FP32 acc.) 165.2/330.4;
        # FP16 (FP16 acc.) 330.3/660.6; FP8 (FP16 acc.) 660.6/1,321.2; INT8 660.6/1,321.2 TOPS;
        # 450 W total graphics power.
        key="rtx-4090",
        display_name="NVIDIA GeForce RTX 4090",
        nvml_family=_tokens("rtx 4090"),
        nvml_variants=(),
        fp64_flops_per_s=None,
        tf32_flops_per_s=82_600_000_000_000,
        bf16_flops_per_s=165_200_000_000_000,
        fp16_flops_per_s=330_300_000_000_000,
        fp8_flops_per_s=660_600_000_000_000,
        int8_ops_per_s=660_600_000_000_000,
        fp4_flops_per_s=None,
        board_power_w=450,
        source=_ADA,
    ),
    GpuSpec(
        # Datasheet: 1,457 TF FP8 with sparsity; 300 W. Whitepaper (dense/sparse): TF32
        # 182.1/364.2; BF16/FP16 364.2/728.5; INT8 728.5/1,457 TOPS.
        key="rtx-6000-ada",
        display_name="NVIDIA RTX 6000 Ada Generation",
        nvml_family=_tokens("rtx 6000 ada"),
        nvml_variants=(),
        fp64_flops_per_s=None,
        tf32_flops_per_s=182_100_000_000_000,
        bf16_flops_per_s=364_200_000_000_000,
        fp16_flops_per_s=364_200_000_000_000,
        fp8_flops_per_s=728_500_000_000_000,
        int8_ops_per_s=728_500_000_000_000,
        fp4_flops_per_s=None,
        board_power_w=300,
        source=_RTX6000_ADA,
    ),
)
"""The GPU table, version :data:`TABLE_VERSION`. Not listed on purpose, for want of a vendor
datasheet that could be confirmed: H800, A800, H20, B100, B300 (HGX). They fall to the table
maximum, which is never lower than their peaks."""


def lookup_model(nvml_name: str) -> GpuSpec | None:
    """The table row for a product name as NVML (or amd-smi) reports it, or ``None``.

    Case, spacing and punctuation do not matter. Within a family (rows sharing ``nvml_family``),
    rows whose variant tokens appear in the name win; if none do, the name is ambiguous between
    all the family's rows. Among the rows left, the one with the highest fastest peak is returned
    (then the highest FLOP per joule, then the key): never guess low. So "NVIDIA H100" is the SXM.
    """
    # A name always resolves to the same row of a given table, so cache it (the verifier looks up
    # every GPU of every attestation); the key names the table, so replacing it starts afresh.
    key = (id(GPU_TABLE), nvml_name)
    try:
        return _LOOKUPS[key]
    except KeyError:
        pass
    if len(_LOOKUPS) > 4096:
        _LOOKUPS.clear()
    found = _LOOKUPS[key] = _lookup_uncached(nvml_name)
    return found


_LOOKUPS: dict[tuple[int, str], GpuSpec | None] = {}


def _lookup_uncached(nvml_name: str) -> GpuSpec | None:
    tokens = _tokens(nvml_name)
    candidates = [spec for spec in GPU_TABLE if spec.matches_family(tokens)]
    specific_families = {spec.nvml_family for spec in candidates if spec.matches_variant(tokens)}
    pool = [
        spec
        for spec in candidates
        if spec.nvml_family not in specific_families or spec.matches_variant(tokens)
    ]
    return _highest(pool)


def _highest(specs: Iterable[GpuSpec]) -> GpuSpec | None:
    ranked = sorted(
        specs,
        key=lambda spec: (spec.fastest_flops_per_s, spec.flop_per_joule_at_peak, spec.key),
    )
    return ranked[-1] if ranked else None


def table_max_flops_per_s() -> int:
    """The highest fastest-precision peak in the table: the rate for an unknown model."""
    return _table_maxima(id(GPU_TABLE))[0]


def table_max_central_flops_per_s() -> int:
    """The highest bf16 (or fp16) peak in the table: the central rate for an unknown model."""
    return _table_maxima(id(GPU_TABLE))[1]


def table_max_flop_per_joule() -> Fraction:
    """The highest FLOP per joule at peak in the table: the efficiency for an unknown model."""
    return _table_maxima(id(GPU_TABLE))[2]


def table_max_board_power_w() -> int:
    """The highest board power in the table."""
    return _table_maxima(id(GPU_TABLE))[3]


@functools.lru_cache(maxsize=8)
def _table_maxima(table_id: int) -> tuple[int, int, Fraction, int]:
    """The table's maxima, computed once per table (``table_id`` names the table in the key)."""
    del table_id
    return (
        max(spec.fastest_flops_per_s for spec in GPU_TABLE),
        max(spec.central_flops_per_s for spec in GPU_TABLE),
        max(spec.flop_per_joule_at_peak for spec in GPU_TABLE),
        max(spec.board_power_w for spec in GPU_TABLE),
    )


class WindowFlop(NamedTuple):
    """The three figures of one GPU-window as plain integers and flags: the hot-path form of
    :class:`WindowCompute` (the verifier computes one for every GPU of every attestation)."""

    upper_bound_flop: int
    central_estimate_flop: int
    energy_flop: int
    """0 when the energy counter was unusable (``energy_known`` is False)."""
    assumed: bool
    """The central estimate used the assumed utilisation (no tensor-active reading)."""
    unknown_model: bool
    """The model is not in the table: the figures used the table's maxima."""
    energy_known: bool


class ModelRates(NamedTuple):
    """The rates behind the figures for one product name, resolved once (see :func:`rates_for`)."""

    peak_flops_per_s: int
    """Fastest dense peak: the upper bound's rate (the table's maximum for an unknown model)."""
    central_flops_per_s: int
    """bf16 (or fp16) peak: the central estimate's rate."""
    flop_per_joule_num: int
    flop_per_joule_den: int
    """FLOP per joule at peak, as an exact fraction."""
    unknown_model: bool
    board_power_w: int
    """Board power the peaks are specified at (the table's highest for an unknown model): the
    base of the idle allowance."""


_RATES: dict[tuple[int, str], ModelRates] = {}


def rates_for(model_name: str) -> ModelRates:
    """The rates for a product name (cached per table, like :func:`lookup_model`)."""
    key = (id(GPU_TABLE), model_name)
    rates = _RATES.get(key)
    if rates is None:
        if len(_RATES) > 4096:
            _RATES.clear()
        spec = lookup_model(model_name)
        if spec is None:
            per_joule = table_max_flop_per_joule()
            rates = ModelRates(
                table_max_flops_per_s(),
                table_max_central_flops_per_s(),
                per_joule.numerator,
                per_joule.denominator,
                True,
                table_max_board_power_w(),
            )
        else:
            per_joule = spec.flop_per_joule_at_peak
            rates = ModelRates(
                spec.fastest_flops_per_s,
                spec.central_flops_per_s,
                per_joule.numerator,
                per_joule.denominator,
                False,
                spec.board_power_w,
            )
        _RATES[key] = rates
    return rates


def flop_from_rates(
    rates: ModelRates, busy_ms: int, tensor_active_ms: int | None, energy_mj: int | None
) -> tuple[int, int, int]:
    """``(upper_bound_flop, central_estimate_flop, energy_flop)``: the arithmetic of
    :func:`compute_window`, in one place (energy_flop is 0 when ``energy_mj`` is None)."""
    upper = -(-rates.peak_flops_per_s * busy_ms // MS_PER_S)
    if tensor_active_ms is not None:
        central = rates.central_flops_per_s * tensor_active_ms // MS_PER_S
    else:
        central = rates.central_flops_per_s * busy_ms * ASSUMED_UTILIZATION_PPM // (MS_PER_S * PPM)
    energy = (
        0
        if energy_mj is None
        else -(-energy_mj * rates.flop_per_joule_num // (rates.flop_per_joule_den * MJ_PER_J))
    )
    return upper, central, energy


def time_bound_from_rates(rates: ModelRates, duration_ms: int) -> int:
    """Peak x ``duration_ms``, rounded up: what one GPU could do running flat out."""
    return -(-rates.peak_flops_per_s * duration_ms // MS_PER_S)


def energy_allowed_flop(
    rates: ModelRates, energy_mj: int, duration_ms: int, idle_power_fraction_ppm: int
) -> int:
    """The compute one GPU's energy allows over ``duration_ms``: the energy above the idle
    allowance (``idle_power_fraction_ppm`` of board power over the duration) x the model's *best*
    FLOP per joule (the datasheet figure x :data:`ENERGY_EFFICIENCY_MARGIN_PPM`), rounded up, and
    never more than peak x duration (:func:`time_bound_from_rates`). 0 when the energy is within
    the allowance.

    This is the figure a window is evaluated at when its energy contradicts its utilisation
    (:func:`energy_contradicts`): sound against a sampler that lies about utilisation while the
    counter is real, as far as the margin is.
    """
    # Scaled by 10^9 (ms x mJ/J x ppm): excess J x 10^9 = E_mJ x 10^6 - idle_ppm x P_W x T_ms.
    excess_scaled = energy_mj * PPM - idle_power_fraction_ppm * rates.board_power_w * duration_ms
    if excess_scaled <= 0:
        return 0
    allowed = -(
        -excess_scaled
        * rates.flop_per_joule_num
        * ENERGY_EFFICIENCY_MARGIN_PPM
        // (rates.flop_per_joule_den * MJ_PER_J * PPM * PPM)
    )
    return min(allowed, time_bound_from_rates(rates, duration_ms))


def energy_contradicts(
    rates: ModelRates,
    upper_bound_flop: int,
    energy_mj: int,
    window_ms: int,
    *,
    factor_ppm: int,
    idle_power_fraction_ppm: int,
) -> bool:
    """Whether one GPU-window's energy, less the idle allowance, at the datasheet FLOP per joule,
    implies more than ``factor`` x its upper bound: the attested utilisation is contradicted.

    The reasoning is :func:`is_energy_mismatch`'s (an honest GPU within the idle allowance never
    exceeds factor 1); here exactly, from the energy in mJ rather than a rounded FLOP figure:
    (E_J - idle x P x W) x num/den > factor x upper, scaled by 10^9 x den.
    """
    excess_scaled = energy_mj * PPM - idle_power_fraction_ppm * rates.board_power_w * window_ms
    if excess_scaled <= 0:
        return False
    return (
        excess_scaled * rates.flop_per_joule_num
        > factor_ppm * upper_bound_flop * MS_PER_S * rates.flop_per_joule_den
    )


def window_flop(
    model_name: str, busy_ms: int, tensor_active_ms: int | None, energy_mj: int | None
) -> WindowFlop:
    """The same figures as :func:`compute_window`, for trusted non-negative ints (no argument
    checks, no methods in words); :func:`compute_window` is built on it."""
    rates = rates_for(model_name)
    upper, central, energy = flop_from_rates(rates, busy_ms, tensor_active_ms, energy_mj)
    return WindowFlop(
        upper_bound_flop=upper,
        central_estimate_flop=central,
        energy_flop=energy,
        assumed=tensor_active_ms is None,
        unknown_model=rates.unknown_model,
        energy_known=energy_mj is not None,
    )


def compute_window(
    model_name: str,
    busy_ms: int,
    tensor_active_ms: int | None,
    energy_mj: int | None,
    *,
    window_ms: int | None = None,
) -> WindowCompute:
    """The three compute figures for one GPU over one window.

    ``busy_ms`` is the integral of utilisation; ``tensor_active_ms`` the GPM tensor-pipe active
    time, ``None`` where not supported; ``energy_mj`` the window's energy, ``None`` where the
    counter was unusable. When ``window_ms`` is given, ``busy_ms`` and ``tensor_active_ms`` may
    not exceed it. ``tensor_active_ms`` above ``busy_ms`` is accepted (the two come from different
    counters) but is inconsistent evidence: the central estimate may then exceed the upper bound.

    Raises TypeError for a non-integer count and ValueError, naming the argument, for a negative
    one.
    """
    if not isinstance(model_name, str):
        raise TypeError(f"model_name must be a str, got {type(model_name).__name__}")
    _require_count("busy_ms", busy_ms)
    if tensor_active_ms is not None:
        _require_count("tensor_active_ms", tensor_active_ms)
    if energy_mj is not None:
        _require_count("energy_mj", energy_mj)
    if window_ms is not None:
        _require_count("window_ms", window_ms)
        if busy_ms > window_ms:
            raise ValueError(f"busy_ms ({busy_ms}) exceeds window_ms ({window_ms})")
        if tensor_active_ms is not None and tensor_active_ms > window_ms:
            raise ValueError(
                f"tensor_active_ms ({tensor_active_ms}) exceeds window_ms ({window_ms})"
            )

    flop = window_flop(model_name, busy_ms, tensor_active_ms, energy_mj)
    spec = lookup_model(model_name)
    return WindowCompute(
        upper_bound_flop=flop.upper_bound_flop,
        upper_bound_method=(
            UpperBoundMethod.UNKNOWN_MODEL_TABLE_MAX
            if flop.unknown_model
            else UpperBoundMethod.PEAK_TIMES_BUSY
        ),
        central_estimate_flop=flop.central_estimate_flop,
        central_estimate_method=(
            CentralEstimateMethod.ASSUMED_UTILIZATION
            if flop.assumed
            else CentralEstimateMethod.TENSOR_ACTIVE
        ),
        assumed_utilization_ppm=ASSUMED_UTILIZATION_PPM if flop.assumed else 0,
        energy_flop=flop.energy_flop,
        energy_method=(
            EnergyMethod.FLOP_PER_JOULE_AT_PEAK if flop.energy_known else EnergyMethod.UNAVAILABLE
        ),
        table_model_key="" if spec is None else spec.key,
        table_version=TABLE_VERSION,
    )


def time_bound_flop(model_name: str, gpu_count: int, duration_ms: int) -> int:
    """Ceiling from time alone, for a gap with no attestation: fastest peak x duration x GPUs,
    rounded up. An unknown model gets the table maximum (``lookup_model`` says which applied)."""
    _require_count("gpu_count", gpu_count)
    _require_count("duration_ms", duration_ms)
    spec = lookup_model(model_name)
    peak = table_max_flops_per_s() if spec is None else spec.fastest_flops_per_s
    return _ceil_div(peak * duration_ms * gpu_count, MS_PER_S)


def energy_bound_flop(model_name: str, energy_mj: int) -> int:
    """Energy x the model's FLOP per joule at peak, rounded up (the table's highest efficiency for
    an unknown model). A cross-check, not a sound bound: see the module notes."""
    _require_count("energy_mj", energy_mj)
    return _energy_flop(lookup_model(model_name), energy_mj)


def is_energy_mismatch(
    bounds: WindowCompute,
    window_ms: int,
    spec: GpuSpec | None,
    factor_ppm: int,
    idle_power_fraction_ppm: int,
) -> bool:
    """Whether a window's energy implies more than ``factor`` x its upper bound: a sampler that
    under-reports utilisation while the GPU draws power.

    The reasoning. Let P be the board power, I = idle_power_fraction x P the idle allowance, b the
    busy seconds, W the window seconds. An honest GPU idles at no more than I when no kernel runs
    and draws at most P when one does, so its energy is E <= P*b + I*(W - b). Then
    E - I*W <= (P - I)*b <= P*b, and (E - I*W) x (peak / P) <= peak x b = the upper bound. So with
    ``factor_ppm`` >= 1,000,000 an honest GPU is never flagged, as long as its real idle draw is
    within the allowance; the factor is the margin for everything else (power readings, transient
    excursions over the limit). P cancels: the allowance in FLOP is idle_fraction x peak x W.

    ``spec`` must be the row ``bounds`` was computed with (``None`` for an unknown model, where
    the table's highest efficiency and highest board power give the widest allowance). Returns
    False when the energy figure is unavailable: no evidence, no finding. A finding, not a verdict.
    """
    _require_count("window_ms", window_ms)
    _require_count("factor_ppm", factor_ppm)
    _require_count("idle_power_fraction_ppm", idle_power_fraction_ppm)
    if factor_ppm < PPM:
        raise ValueError("factor_ppm below 1,000,000 would flag honest GPUs")
    if idle_power_fraction_ppm > PPM:
        raise ValueError("idle_power_fraction_ppm must be at most 1,000,000")
    expected_key = "" if spec is None else spec.key
    if bounds.table_model_key != expected_key:
        raise ValueError(
            f"spec {expected_key or 'None'!r} is not the row the bounds used "
            f"({bounds.table_model_key or 'unknown'!r})"
        )
    if bounds.energy_method is EnergyMethod.UNAVAILABLE:
        return False
    return energy_exceeds(
        bounds.upper_bound_flop,
        bounds.energy_flop,
        window_ms,
        spec,
        factor_ppm=factor_ppm,
        idle_power_fraction_ppm=idle_power_fraction_ppm,
    )


def energy_exceeds(
    upper_bound_flop: int,
    energy_flop: int,
    window_ms: int,
    spec: GpuSpec | None,
    *,
    factor_ppm: int,
    idle_power_fraction_ppm: int,
) -> bool:
    """The comparison of :func:`is_energy_mismatch`, for trusted figures of a known energy
    reading (the verifier's hot path); see there for the reasoning."""
    if spec is None:
        flop_per_joule = table_max_flop_per_joule()
        power_w = table_max_board_power_w()
    else:
        flop_per_joule = spec.flop_per_joule_at_peak
        power_w = spec.board_power_w
    # Everything scaled by denominator x 10^9 (ppm x ms) to stay in integers:
    #   idle J = idle_ppm / 10^6 x power_w x window_ms / 10^3
    # energy_flop was rounded up; one FLOP off makes it a lower bound of the exact figure, so
    # rounding alone can never produce a finding.
    num, den = flop_per_joule.numerator, flop_per_joule.denominator
    energy_scaled = (energy_flop - 1) * den * PPM * MS_PER_S
    idle_scaled = idle_power_fraction_ppm * power_w * window_ms * num
    limit_scaled = factor_ppm * upper_bound_flop * den * MS_PER_S
    return energy_scaled - idle_scaled > limit_scaled


def _energy_flop(spec: GpuSpec | None, energy_mj: int) -> int:
    flop_per_joule = table_max_flop_per_joule() if spec is None else spec.flop_per_joule_at_peak
    return _ceil_div(energy_mj * flop_per_joule.numerator, flop_per_joule.denominator * MJ_PER_J)


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def _require_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")
