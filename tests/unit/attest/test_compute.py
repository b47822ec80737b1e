from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from attest import compute
from attest.compute import (
    CentralEstimateMethod,
    DatasheetSource,
    EnergyMethod,
    GpuSpec,
    Precision,
    UpperBoundMethod,
    compute_window,
    energy_bound_flop,
    is_energy_mismatch,
    lookup_model,
    time_bound_flop,
)

T = 10**12  # tera: hand arithmetic below is written in TFLOP/s

H100 = "NVIDIA H100 80GB HBM3"
UNKNOWN = "NVIDIA GH200 480GB"  # a real GPU that is deliberately not in the table


def spec(key: str) -> GpuSpec:
    for row in compute.GPU_TABLE:
        if row.key == key:
            return row
    raise AssertionError(f"no row {key}")


def fake_row(**overrides: object) -> GpuSpec:
    fields: dict[str, object] = {
        "key": "fake",
        "display_name": "Fake GPU",
        "nvml_family": frozenset({"fake"}),
        "nvml_variants": (),
        "fp64_flops_per_s": None,
        "tf32_flops_per_s": None,
        "bf16_flops_per_s": None,
        "fp16_flops_per_s": T + 1,
        "fp8_flops_per_s": None,
        "int8_ops_per_s": None,
        "fp4_flops_per_s": None,
        "board_power_w": 3,
        "source": DatasheetSource("test", "https://example.invalid/", "none"),
    }
    fields.update(overrides)
    return GpuSpec(**fields)  # type: ignore[arg-type]


# --- the table -----------------------------------------------------------------------------------


def test_table_version_and_keys_are_unique() -> None:
    keys = [row.key for row in compute.GPU_TABLE]
    assert compute.TABLE_VERSION == 1
    assert len(keys) == len(set(keys))


def test_required_rows_are_present() -> None:
    required = {
        "a100-sxm", "a100-pcie-40gb", "a100-pcie-80gb", "h100-sxm", "h100-pcie", "h100-nvl",
        "h200-sxm", "h200-nvl", "b200", "gb200", "mi300x", "l40s", "rtx-4090",
    }  # fmt: skip
    assert required <= {row.key for row in compute.GPU_TABLE}


@pytest.mark.parametrize("row", compute.GPU_TABLE, ids=lambda row: row.key)
def test_every_row_is_well_formed(row: GpuSpec) -> None:
    peaks = [row.peak_flops_per_s(p) for p in Precision]
    assert all(peak is None or (type(peak) is int and peak > 0) for peak in peaks)
    assert row.fastest_flops_per_s == max(peak for peak in peaks if peak is not None)
    assert row.central_flops_per_s <= row.fastest_flops_per_s
    assert type(row.board_power_w) is int
    assert row.board_power_w > 0
    assert row.source.url.startswith("https://")
    assert "sparsity" in row.source.sparsity_note.lower()


@pytest.mark.parametrize("row", compute.GPU_TABLE, ids=lambda row: row.key)
def test_every_row_is_found_by_its_display_name(row: GpuSpec) -> None:
    assert lookup_model(row.display_name) == row


@pytest.mark.parametrize(
    ("key", "precision", "flops_per_s"),
    [
        ("a100-sxm", Precision.INT8, 624 * T),  # A100 has no fp8: int8 624 TOPS dense
        ("h100-sxm", Precision.FP8, 1_979 * T),  # 3,958* / 2; ties with int8, narrower reported
        ("h100-pcie", Precision.FP8, 1_513 * T),  # 3,026* / 2
        ("h100-nvl", Precision.FP8, 1_670_500 * 10**9),  # 3,341* / 2
        ("h200-nvl", Precision.FP8, 1_670_500 * 10**9),
        ("b200", Precision.FP4, 9_000 * T),  # 18 PF* / 2
        ("gb200", Precision.FP4, 10_000 * T),  # 20 PF* / 2
        ("gb300", Precision.FP4, 15_000 * T),  # 1,080 PF dense / 72
        ("mi300x", Precision.FP8, 2_614_900 * 10**9),  # AMD prints dense
        ("l40s", Precision.FP8, 733 * T),
        ("rtx-4090", Precision.FP8, 660_600 * 10**9),
        ("t4", Precision.INT8, 130 * T),
        ("v100-sxm2", Precision.FP16, 125 * T),
    ],
)
def test_fastest_dense_precision(key: str, precision: Precision, flops_per_s: int) -> None:
    row = spec(key)
    assert row.fastest_precision is precision
    assert row.fastest_flops_per_s == flops_per_s


def test_central_rate_falls_back_to_fp16_without_bf16() -> None:
    assert spec("t4").bf16_flops_per_s is None
    assert spec("t4").central_flops_per_s == 65 * T
    assert spec("rtx-4090").central_flops_per_s == 165_200 * 10**9  # bf16, not the 330.3 fp16


def test_row_without_bf16_or_fp16_is_rejected() -> None:
    with pytest.raises(ValueError, match="bf16 or an fp16"):
        fake_row(fp16_flops_per_s=None, fp8_flops_per_s=T)


@pytest.mark.parametrize(
    "overrides",
    [
        {"key": "Bad Key"},
        {"board_power_w": 0},
        {"fp16_flops_per_s": 0},
        {"nvml_family": frozenset()},
    ],
)
def test_malformed_rows_are_rejected(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 -- each case has its own message
        fake_row(**overrides)


def test_table_maxima() -> None:
    assert compute.table_max_flops_per_s() == 15_000 * T  # GB300 fp4
    assert compute.table_max_central_flops_per_s() == 2_500 * T  # GB200 / GB300 bf16
    assert compute.table_max_flop_per_joule() == spec("gb300").flop_per_joule_at_peak
    assert compute.table_max_board_power_w() == 1_400


# --- name matching -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nvml_name", "key"),
    [
        ("NVIDIA H100 80GB HBM3", "h100-sxm"),
        ("NVIDIA H100 PCIe", "h100-pcie"),
        ("NVIDIA H100 NVL", "h100-nvl"),
        ("NVIDIA H200", "h200-sxm"),
        ("NVIDIA H200 NVL", "h200-nvl"),
        ("NVIDIA A100-SXM4-80GB", "a100-sxm"),
        ("NVIDIA A100-SXM4-40GB", "a100-sxm"),
        ("NVIDIA A100-PCIE-40GB", "a100-pcie-40gb"),
        ("NVIDIA A100 80GB PCIe", "a100-pcie-80gb"),
        ("NVIDIA B200", "b200"),
        ("NVIDIA GB200", "gb200"),
        ("NVIDIA GB300", "gb300"),
        ("NVIDIA L40S", "l40s"),
        ("NVIDIA L4", "l4"),
        ("NVIDIA A10", "a10"),
        ("Tesla T4", "t4"),
        ("Tesla V100-SXM2-16GB", "v100-sxm2"),
        ("Tesla V100-PCIE-32GB", "v100-pcie"),
        ("Tesla V100S-PCIE-32GB", "v100s-pcie"),
        ("NVIDIA GeForce RTX 4090", "rtx-4090"),
        ("NVIDIA RTX 6000 Ada Generation", "rtx-6000-ada"),
        ("AMD Instinct MI300X", "mi300x"),
        ("AMD Instinct MI325X", "mi325x"),
        ("AMD Instinct MI250X / MI250", "mi250x"),
    ],
)
def test_nvml_names(nvml_name: str, key: str) -> None:
    found = lookup_model(nvml_name)
    assert found is not None
    assert found.key == key


@pytest.mark.parametrize(
    ("nvml_name", "key"),
    [
        ("  nvidia   h100   PCIE ", "h100-pcie"),
        ("NVIDIA_A100-sxm4_80gb", "a100-sxm"),
        ("amd instinct mi300x", "mi300x"),
        ("NVIDIA\tH100\nNVL", "h100-nvl"),
    ],
)
def test_matching_ignores_case_spacing_and_punctuation(nvml_name: str, key: str) -> None:
    found = lookup_model(nvml_name)
    assert found is not None
    assert found.key == key


@pytest.mark.parametrize(
    ("nvml_name", "key"),
    [
        ("NVIDIA H100", "h100-sxm"),  # SXM 1,979 > NVL 1,670.5 > PCIe 1,513
        ("NVIDIA H100 80GB HBM3e", "h100-sxm"),  # no variant token known: ambiguous, go high
        ("NVIDIA H100 PCIe NVL", "h100-nvl"),  # two variants match: NVL is higher than PCIe
        ("NVIDIA H200 141GB HBM3e", "h200-sxm"),
        ("NVIDIA A100", "a100-pcie-40gb"),  # equal peaks: the highest FLOP per joule (250 W)
    ],
)
def test_ambiguous_names_resolve_to_the_higher_peak(nvml_name: str, key: str) -> None:
    found = lookup_model(nvml_name)
    assert found is not None
    assert found.key == key


def test_a_bare_family_name_never_resolves_below_any_row_of_the_family() -> None:
    for row in compute.GPU_TABLE:
        found = lookup_model(" ".join(sorted(row.nvml_family)))
        assert found is not None
        assert found.fastest_flops_per_s >= row.fastest_flops_per_s


@pytest.mark.parametrize(
    "nvml_name",
    [
        UNKNOWN,
        "NVIDIA L40",  # not the L40S
        "NVIDIA A10G",  # not the A10
        "NVIDIA B300 SXM6 AC",  # no confirmed datasheet row
        "Tesla V100-SXM3-32GB",  # faster than the SXM2 row: must not match it
        "NVIDIA H800",
        "",
        "   ",
    ],
)
def test_unknown_names(nvml_name: str) -> None:
    assert lookup_model(nvml_name) is None


# --- known answers -------------------------------------------------------------------------------


def test_h100_sxm_half_busy_minute_assumed_utilization() -> None:
    figures = compute_window(H100, busy_ms=30_000, tensor_active_ms=None, energy_mj=21_000_000)
    # upper = 1,979 TFLOP/s (fp8, 3,958*/2) x 30 s = 59,370 PFLOP
    assert figures.upper_bound_flop == 59_370_000_000_000_000
    assert figures.upper_bound_method is UpperBoundMethod.PEAK_TIMES_BUSY
    # central = 989.5 TFLOP/s (bf16) x 30 s x 0.4 = 11,874 PFLOP
    assert figures.central_estimate_flop == 11_874_000_000_000_000
    assert figures.central_estimate_method is CentralEstimateMethod.ASSUMED_UTILIZATION
    assert figures.assumed_utilization_ppm == 400_000
    # energy = 21,000 J (700 W for 30 s) x 1,979e12 / 700 FLOP/J = 59,370 PFLOP: full board power
    # for exactly the busy time gives exactly the upper bound.
    assert figures.energy_flop == 59_370_000_000_000_000
    assert figures.energy_method is EnergyMethod.FLOP_PER_JOULE_AT_PEAK
    assert figures.table_model_key == "h100-sxm"
    assert figures.table_version == 1


def test_h100_sxm_tensor_active_path() -> None:
    figures = compute_window(H100, busy_ms=30_000, tensor_active_ms=15_000, energy_mj=None)
    # central = 989.5 TFLOP/s (bf16) x 15 tensor-active s = 14,842.5 PFLOP; no assumption made
    assert figures.central_estimate_flop == 14_842_500_000_000_000
    assert figures.central_estimate_method is CentralEstimateMethod.TENSOR_ACTIVE
    assert figures.assumed_utilization_ppm == 0
    assert figures.upper_bound_flop == 59_370_000_000_000_000  # unchanged: busy time drives it


def test_tensor_active_zero_is_a_measurement_not_an_absence() -> None:
    figures = compute_window(H100, busy_ms=30_000, tensor_active_ms=0, energy_mj=None)
    assert figures.central_estimate_flop == 0
    assert figures.central_estimate_method is CentralEstimateMethod.TENSOR_ACTIVE


def test_a100_full_minute() -> None:
    figures = compute_window("NVIDIA A100-SXM4-80GB", 60_000, None, None)
    assert figures.upper_bound_flop == 37_440_000_000_000_000  # 624 TOPS (int8) x 60 s
    assert figures.central_estimate_flop == 7_488_000_000_000_000  # 312 TF x 60 s x 0.4


def test_mi300x_tensor_active() -> None:
    figures = compute_window("AMD Instinct MI300X", 10_000, 2_500, None)
    assert figures.upper_bound_flop == 26_149_000_000_000_000  # 2,614.9 TF (fp8) x 10 s
    assert figures.central_estimate_flop == 3_268_500_000_000_000  # 1,307.4 TF (bf16) x 2.5 s


def test_t4_central_uses_fp16() -> None:
    figures = compute_window("Tesla T4", 10_000, None, None)
    assert figures.upper_bound_flop == 1_300_000_000_000_000  # 130 TOPS (int8) x 10 s
    assert figures.central_estimate_flop == 260_000_000_000_000  # 65 TF (fp16) x 10 s x 0.4


def test_b200_upper_bound_uses_fp4() -> None:
    figures = compute_window("NVIDIA B200", 1_000, None, None)
    assert figures.upper_bound_flop == 9_000_000_000_000_000  # 9 PF (fp4, 18*/2) x 1 s


def test_energy_unavailable() -> None:
    figures = compute_window(H100, 30_000, None, None)
    assert figures.energy_flop == 0
    assert figures.energy_method is EnergyMethod.UNAVAILABLE


def test_energy_is_rounded_up() -> None:
    # 1 mJ x 1,979e12 / 700 FLOP/J = 2,827,142,857.14... -> 2,827,142,858
    assert energy_bound_flop(H100, 1) == 2_827_142_858
    assert compute_window(H100, 0, None, 1).energy_flop == 2_827_142_858


def test_unknown_model_uses_table_max_and_says_so() -> None:
    figures = compute_window(UNKNOWN, 10_000, None, 1_000)
    assert figures.upper_bound_flop == 150_000_000_000_000_000  # 15 PF (GB300 fp4) x 10 s
    assert figures.upper_bound_method is UpperBoundMethod.UNKNOWN_MODEL_TABLE_MAX
    assert figures.central_estimate_flop == 10_000_000_000_000_000  # 2.5 PF (bf16) x 10 s x 0.4
    assert figures.energy_flop == 10_714_285_714_286  # 1 J x 15e15 / 1,400 W, rounded up
    assert figures.table_model_key == ""


@pytest.mark.parametrize("row", compute.GPU_TABLE, ids=lambda row: row.key)
def test_unknown_model_is_never_below_a_known_one(row: GpuSpec) -> None:
    known = compute_window(row.display_name, 1_234, 567, 89_000)
    unknown = compute_window(UNKNOWN, 1_234, 567, 89_000)
    assert unknown.upper_bound_flop >= known.upper_bound_flop
    assert unknown.central_estimate_flop >= known.central_estimate_flop
    assert unknown.energy_flop >= known.energy_flop


def test_upper_bound_is_rounded_up(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every real row's peak is a multiple of 1,000 FLOP/s, so a fake row shows the rounding:
    # (1e12 + 1) FLOP/s x 1 ms = 1,000,000,000.001 FLOP.
    monkeypatch.setattr(compute, "GPU_TABLE", (fake_row(),))
    figures = compute_window("Fake", busy_ms=1, tensor_active_ms=1, energy_mj=None)
    assert figures.upper_bound_flop == 1_000_000_001  # ceil: it is a bound
    assert figures.central_estimate_flop == 1_000_000_000  # floor: it is an estimate
    assert time_bound_flop("Fake", gpu_count=1, duration_ms=1) == 1_000_000_001
    assumed = compute_window("Fake", busy_ms=1, tensor_active_ms=None, energy_mj=None)
    assert assumed.central_estimate_flop == 400_000_000  # 400,000,000.0004, floored


def test_time_bound() -> None:
    # 8 H100 SXM for an hour: 1,979e12 x 3,600 s x 8
    assert time_bound_flop(H100, gpu_count=8, duration_ms=3_600_000) == 56_995_200 * T
    assert time_bound_flop(UNKNOWN, gpu_count=8, duration_ms=3_600_000) == 432_000 * 10**15
    assert time_bound_flop(H100, gpu_count=0, duration_ms=3_600_000) == 0


def test_window_figures_fit_uint64() -> None:
    # The worst row at 100 % busy for the longest window (10 min) stays below 2**64:
    # 15e15 FLOP/s x 600 s = 9e18 < 1.8447e19.
    worst = max(row.fastest_flops_per_s for row in compute.GPU_TABLE)
    assert worst * 600 < 2**64
    figures = compute_window(UNKNOWN, 600_000, 600_000, 1_400 * 600_000, window_ms=600_000)
    assert figures.upper_bound_flop == 9 * 10**18
    assert max(figures.upper_bound_flop, figures.energy_flop, figures.central_estimate_flop) < 2**64


def test_reference_thresholds() -> None:
    assert compute.EU_AI_ACT_SYSTEMIC_RISK_FLOP == 10**25
    assert compute.US_EO_14110_MODEL_FLOP == 10**26
    assert compute.US_EO_14110_CLUSTER_FLOPS_PER_S == 10**20
    assert compute.CA_SB53_FRONTIER_MODEL_FLOP == 10**26


# --- input validation ----------------------------------------------------------------------------


@pytest.mark.parametrize("argument", ["busy_ms", "tensor_active_ms", "energy_mj", "window_ms"])
def test_negative_inputs_are_rejected(argument: str) -> None:
    kwargs: dict[str, int | None] = {
        "busy_ms": 10,
        "tensor_active_ms": 5,
        "energy_mj": 7,
        "window_ms": 60_000,
    }
    kwargs[argument] = -1
    with pytest.raises(ValueError, match=argument):
        compute_window(H100, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [1.0, True, "10", None])
def test_non_integer_busy_is_rejected(bad: object) -> None:
    with pytest.raises(TypeError, match="busy_ms"):
        compute_window(H100, bad, None, None)  # type: ignore[arg-type]


def test_window_limits_when_given() -> None:
    assert compute_window(H100, 60_000, 60_000, None, window_ms=60_000).upper_bound_flop > 0
    with pytest.raises(ValueError, match="busy_ms"):
        compute_window(H100, 60_001, None, None, window_ms=60_000)
    with pytest.raises(ValueError, match="tensor_active_ms"):
        compute_window(H100, 10, 60_001, None, window_ms=60_000)


def test_other_entry_points_reject_negatives() -> None:
    with pytest.raises(ValueError, match="gpu_count"):
        time_bound_flop(H100, -1, 10)
    with pytest.raises(ValueError, match="duration_ms"):
        time_bound_flop(H100, 1, -10)
    with pytest.raises(ValueError, match="energy_mj"):
        energy_bound_flop(H100, -1)


# --- energy against utilisation ------------------------------------------------------------------

FACTOR_2X = 2_000_000
IDLE_10PC = 100_000


def test_mismatch_flags_high_energy_with_low_busy() -> None:
    # 700 W for the whole minute but only 6 busy seconds reported.
    bounds = compute_window(H100, 6_000, None, 42_000_000, window_ms=60_000)
    # energy  = 42,000 J x 1,979e12 / 700           = 118,740 PFLOP
    # idle    = 0.1 x 1,979e12 x 60 s               =  11,874 PFLOP
    # limit   = 2 x upper = 2 x 1,979e12 x 6 s      =  23,748 PFLOP < 106,866 PFLOP above idle
    assert bounds.energy_flop == 118_740_000_000_000_000
    assert is_energy_mismatch(bounds, 60_000, spec("h100-sxm"), FACTOR_2X, IDLE_10PC)


def test_mismatch_does_not_flag_consistent_window() -> None:
    # Same energy, busy the whole minute: 106,866 PFLOP above idle < 2 x 118,740 PFLOP.
    bounds = compute_window(H100, 60_000, None, 42_000_000, window_ms=60_000)
    assert not is_energy_mismatch(bounds, 60_000, spec("h100-sxm"), FACTOR_2X, IDLE_10PC)


def test_mismatch_boundary_is_strict() -> None:
    # Factor 1, no idle allowance: full power for exactly the busy time equals the upper bound.
    at_limit = compute_window(H100, 30_000, None, 21_000_000)
    assert at_limit.energy_flop == at_limit.upper_bound_flop
    assert not is_energy_mismatch(at_limit, 60_000, spec("h100-sxm"), 1_000_000, 0)
    over = compute_window(H100, 30_000, None, 21_000_001)  # one more millijoule
    assert is_energy_mismatch(over, 60_000, spec("h100-sxm"), 1_000_000, 0)


def test_mismatch_gives_rounding_the_benefit_of_the_doubt(monkeypatch: pytest.MonkeyPatch) -> None:
    # A fake row at 1,000 FLOP/s and 1 W: 1 mJ is exactly 1 FLOP, 1 busy second is 1,000 FLOP.
    row = fake_row(fp16_flops_per_s=1_000, board_power_w=1)
    monkeypatch.setattr(compute, "GPU_TABLE", (row,))
    for energy_mj, flagged in [(1_000, False), (1_001, False), (1_002, True)]:
        bounds = compute_window("Fake", 1_000, None, energy_mj)
        assert bounds.energy_flop == energy_mj
        # energy_flop is rounded up, so the check takes one FLOP off before comparing.
        assert is_energy_mismatch(bounds, 1_000, row, 1_000_000, 0) is flagged


def test_mismatch_needs_energy() -> None:
    bounds = compute_window(H100, 0, None, None, window_ms=60_000)
    assert not is_energy_mismatch(bounds, 60_000, spec("h100-sxm"), FACTOR_2X, 0)
    # The method decides, not the figure: a figure marked unavailable is never evidence.
    stale = compute_window(H100, 0, None, 42_000_000, window_ms=60_000)
    assert is_energy_mismatch(stale, 60_000, spec("h100-sxm"), FACTOR_2X, 0)
    unavailable = dataclasses.replace(stale, energy_method=EnergyMethod.UNAVAILABLE)
    assert not is_energy_mismatch(unavailable, 60_000, spec("h100-sxm"), FACTOR_2X, 0)


def test_mismatch_unknown_model() -> None:
    busy_none = compute_window(UNKNOWN, 0, None, 84_000_000, window_ms=60_000)
    assert is_energy_mismatch(busy_none, 60_000, None, FACTOR_2X, IDLE_10PC)
    # An unknown GPU idling at 10 % of the table's highest board power (1,400 W x 0.1 x 60 s =
    # 8,400 J) is within the allowance.
    idle_only = compute_window(UNKNOWN, 0, None, 8_400_000, window_ms=60_000)
    assert not is_energy_mismatch(idle_only, 60_000, None, FACTOR_2X, IDLE_10PC)
    above_idle = compute_window(UNKNOWN, 0, None, 8_500_000, window_ms=60_000)
    assert is_energy_mismatch(above_idle, 60_000, None, FACTOR_2X, IDLE_10PC)


def test_mismatch_rejects_the_wrong_row_and_bad_parameters() -> None:
    bounds = compute_window(H100, 6_000, None, 42_000_000)
    with pytest.raises(ValueError, match="not the row"):
        is_energy_mismatch(bounds, 60_000, spec("a100-sxm"), FACTOR_2X, IDLE_10PC)
    with pytest.raises(ValueError, match="not the row"):
        is_energy_mismatch(bounds, 60_000, None, FACTOR_2X, IDLE_10PC)
    with pytest.raises(ValueError, match="factor_ppm"):
        is_energy_mismatch(bounds, 60_000, spec("h100-sxm"), 999_999, IDLE_10PC)
    with pytest.raises(ValueError, match="idle_power_fraction_ppm"):
        is_energy_mismatch(bounds, 60_000, spec("h100-sxm"), FACTOR_2X, 1_000_001)
    with pytest.raises(ValueError, match="window_ms"):
        is_energy_mismatch(bounds, -1, spec("h100-sxm"), FACTOR_2X, IDLE_10PC)


rows = st.sampled_from(compute.GPU_TABLE)


@given(
    row=rows,
    window_ms=st.integers(1, 600_000),
    busy_share=st.integers(0, 1_000),
    idle_ppm=st.integers(0, 1_000_000),
)
def test_an_honest_gpu_is_never_flagged(
    row: GpuSpec, window_ms: int, busy_share: int, idle_ppm: int
) -> None:
    # The most an honest GPU can draw: board power while busy, the idle allowance otherwise.
    busy_ms = window_ms * busy_share // 1_000
    energy_mj = row.board_power_w * busy_ms + (
        idle_ppm * row.board_power_w * (window_ms - busy_ms) // 1_000_000
    )
    bounds = compute_window(row.display_name, busy_ms, None, energy_mj, window_ms=window_ms)
    assert not is_energy_mismatch(bounds, window_ms, row, 1_000_000, idle_ppm)


@given(row=rows, window_ms=st.integers(1_000, 600_000), idle_ppm=st.integers(0, 900_000))
def test_full_power_with_no_busy_time_is_always_flagged(
    row: GpuSpec, window_ms: int, idle_ppm: int
) -> None:
    bounds = compute_window(row.display_name, 0, None, row.board_power_w * window_ms)
    assert bounds.upper_bound_flop == 0
    assert is_energy_mismatch(bounds, window_ms, row, 10_000_000, idle_ppm)


# --- properties ----------------------------------------------------------------------------------

names = st.sampled_from([row.display_name for row in compute.GPU_TABLE] + [UNKNOWN])
millis = st.integers(0, 600_000)


@given(name=names, a=millis, b=millis)
def test_upper_bound_is_monotone_in_busy_time(name: str, a: int, b: int) -> None:
    low, high = sorted((a, b))
    assert (
        compute_window(name, low, None, None).upper_bound_flop
        <= compute_window(name, high, None, None).upper_bound_flop
    )


@given(name=names, busy_ms=millis, data=st.data())
def test_upper_bound_is_at_least_the_central_estimate(
    name: str, busy_ms: int, data: st.DataObject
) -> None:
    tensor_active_ms = data.draw(st.none() | st.integers(0, busy_ms))
    figures = compute_window(name, busy_ms, tensor_active_ms, None)
    assert figures.upper_bound_flop >= figures.central_estimate_flop


def test_window_compute_is_frozen() -> None:
    figures = compute_window(H100, 1, None, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        figures.upper_bound_flop = 0  # type: ignore[misc]
