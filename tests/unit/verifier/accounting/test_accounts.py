from __future__ import annotations

import dataclasses
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pausewatch.v1 import attestation_pb2 as apb

from attest import compute
from attest.attestation import VerifiedAttestation, verify_attestation, window_energy_mj
from attest.envelope import StaticKeyring
from attest.ids import NodeId
from tests.builders import T0_NS, WINDOW_NS, TestNode
from verifier.accounting import accounts
from verifier.accounting.accounts import (
    Bucket,
    Figure,
    Gap,
    GpuEdge,
    GpuWindowFigures,
    WindowEdge,
    WindowFlagKind,
    accumulate,
    bucket_start,
    fold_attestation,
    gap_between,
    gpu_window_figures,
    node_active_span,
    node_gaps_from_summary,
    node_gaps_from_windows,
    window_edge,
)

NODE = TestNode.from_seed(11)
NODE_ID = NodeId(NODE.node_id)
H100 = "NVIDIA H100 80GB HBM3"
S = 1_000_000_000  # one second in ns
UUID0 = NODE.gpu_uuid(0)
UUID1 = NODE.gpu_uuid(1)


def verified(body: apb.AttestationBody) -> VerifiedAttestation:
    keys = StaticKeyring()
    keys.add(NODE.signer.public_key)
    return verify_attestation(NODE.sign_body(body), keys)


def figures(
    *,
    log_index: int = 0,
    start_ns: int = T0_NS,
    window_ns: int = WINDOW_NS,
    upper: int = 0,
    central: int = 0,
    energy: int = 0,
    busy_ms: int = 0,
    attested_ms: int | None = None,
    declared: bool = True,
    assumed: bool = False,
    unknown_model: bool = False,
    uuid: str = UUID0,
) -> GpuWindowFigures:
    return GpuWindowFigures(
        log_index=log_index,
        node_id=NODE_ID,
        gpu_uuid=uuid,
        model=H100,
        window_start_ns=start_ns,
        window_end_ns=start_ns + window_ns,
        upper_bound_flop=upper,
        central_estimate_flop=central,
        energy_flop=energy,
        energy_mj=0,
        busy_ms=busy_ms,
        attested_ms=window_ns // 1_000_000 if attested_ms is None else attested_ms,
        declared=declared,
        assumed=assumed,
        unknown_model=unknown_model,
    )


# --- figures per GPU-window ----------------------------------------------------------------------


def test_figures_of_a_known_attestation_match_hand_computation() -> None:
    # Two H100 SXM GPUs, 60 s window, 30 s busy, 21 kJ each, no GPM reading.
    out = gpu_window_figures(verified(NODE.body(3)), log_index=17, declared_uuids={UUID0})
    assert [f.gpu_uuid for f in out] == [UUID0, UUID1]
    first = out[0]
    # 1979 TFLOP/s (fp8 dense) x 30 s
    assert first.upper_bound_flop == 59_370_000_000_000_000
    # 989.5 TFLOP/s (bf16 dense) x 30 s x 0.4 assumed utilisation
    assert first.central_estimate_flop == 11_874_000_000_000_000
    # 21,000 J x (1979e12 FLOP/s / 700 W) = 21,000 x 2.827...e12 = 30 x 1979e12
    assert first.energy_flop == 59_370_000_000_000_000
    assert first.energy_mj == 21_000_000
    assert first.busy_ms == 30_000
    assert first.attested_ms == 60_000
    assert first.log_index == 17
    assert first.node_id == NODE.node_id
    assert first.window_start_ns == T0_NS + 3 * WINDOW_NS
    assert first.window_end_ns == T0_NS + 4 * WINDOW_NS
    assert first.model == H100
    assert first.assumed is True
    assert first.unknown_model is False
    assert first.declared is True
    assert out[1].declared is False


def test_tensor_active_time_replaces_the_assumed_utilisation() -> None:
    body = NODE.body(0)
    gpu = body.gpus[0]
    gpu.tensor_active_ms = 12_000
    gpu.metric_status.add(metric=apb.METRIC_GPM_TENSOR_ACTIVE, state=apb.METRIC_STATE_SUPPORTED)
    first = gpu_window_figures(verified(body), 0, set())[0]
    assert first.assumed is False
    assert first.central_estimate_flop == 989_500_000_000_000 * 12


def test_unknown_model_is_bounded_with_the_table_maximum() -> None:
    body = NODE.body(0)
    body.gpus[0].model = "Mystery Accelerator 9000"
    first = gpu_window_figures(verified(body), 0, set())[0]
    assert first.unknown_model is True
    assert first.upper_bound_flop == compute.table_max_flops_per_s() * 30


def test_unusable_energy_counter_gives_zero_energy_and_the_time_bound() -> None:
    body = NODE.body(0)
    body.gpus[1].energy_counter_state = apb.ENERGY_COUNTER_STATE_RESET
    body.gpus[1].energy_end_mj = 0
    first, second = gpu_window_figures(verified(body), 0, set())
    assert second.energy_mj == 0
    assert second.energy_flop == 0
    # ADR 0003: evaluated at peak x window (60 s), not at the attested 30 busy seconds.
    assert second.attested_upper_bound_flop == 59_370_000_000_000_000
    assert second.upper_bound_flop == 118_740_000_000_000_000
    assert second.flag is WindowFlagKind.ENERGY_COUNTER_UNUSABLE
    assert first.flag is None
    assert first.upper_bound_flop == first.attested_upper_bound_flop == 59_370_000_000_000_000


@pytest.mark.parametrize(
    ("presence", "samples_taken", "expected_ms"),
    [
        (apb.GPU_PRESENCE_PRESENT, 61, 60_000),  # present, every sample read: the whole window
        (apb.GPU_PRESENCE_PRESENT, 10, 10_000),  # present but utilisation read 10 times only
        (apb.GPU_PRESENCE_LOST, 20, 20_000),  # lost: 20 samples x 1 s
        (apb.GPU_PRESENCE_APPEARED, 45, 45_000),
        (apb.GPU_PRESENCE_LOST, 61, 60_000),  # never more than the window
    ],
)
def test_attested_time_of_a_gpu_not_present_throughout(
    presence: int, samples_taken: int, expected_ms: int
) -> None:
    body = NODE.body(0)
    body.gpus[0].presence = presence  # type: ignore[assignment]
    body.gpus[0].samples_expected = 61
    body.gpus[0].samples_taken = samples_taken
    assert gpu_window_figures(verified(body), 0, set())[0].attested_ms == expected_ms


# --- buckets -------------------------------------------------------------------------------------


def test_bucket_start() -> None:
    assert bucket_start(125, 60) == 120
    assert bucket_start(120, 60) == 120
    assert bucket_start(-1, 60) == -60
    with pytest.raises(ValueError, match="bucket_ns"):
        bucket_start(5, 0)


def test_a_window_counts_entirely_in_the_bucket_of_its_start() -> None:
    bucket_ns = 60 * S
    edge = T0_NS + 10 * bucket_ns
    buckets: dict[int, Bucket] = {}
    accumulate(
        buckets,
        [
            figures(
                log_index=1, start_ns=edge - 1, upper=100
            ),  # almost all of it is after the edge
            figures(log_index=2, start_ns=edge, upper=10),
            figures(log_index=3, start_ns=edge + bucket_ns - 1, upper=1),
        ],
        bucket_ns,
    )
    assert sorted(buckets) == [edge - bucket_ns, edge]
    assert buckets[edge - bucket_ns].upper_bound_flop == 100
    assert buckets[edge].upper_bound_flop == 11
    assert (buckets[edge].first_log_index, buckets[edge].last_log_index) == (2, 3)
    assert buckets[edge].gpu_windows == 2


@pytest.mark.parametrize(
    ("busy_ms", "steps"),
    [
        (0, 0),
        (2_999, 0),  # 4.998 %
        (3_000, 1),  # exactly 5 %
        (29_999, 9),
        (30_000, 10),  # exactly 50 %
        (56_999, 18),
        (57_000, 19),  # exactly 95 %
        (59_999, 19),
        (60_000, 20),  # 100 %
        (61_000, 20),  # busy may integrate past the window by one sample
    ],
)
def test_busy_at_least_counts_each_5_percent_step_exactly(busy_ms: int, steps: int) -> None:
    bucket = Bucket(bucket_start_ns=T0_NS)
    bucket.add(figures(busy_ms=busy_ms, attested_ms=45_000))
    assert bucket.busy_at_least_ms == [45_000] * steps + [0] * (20 - steps)


def test_undeclared_gpus_count_for_compute_but_not_for_coverage() -> None:
    bucket = Bucket(bucket_start_ns=T0_NS)
    bucket.add(figures(upper=5, busy_ms=60_000, declared=True))
    bucket.add(figures(upper=7, busy_ms=60_000, declared=False, uuid=UUID1))
    assert bucket.upper_bound_flop == 12
    assert bucket.attested_gpu_ms == 60_000
    assert bucket.undeclared_gpu_ms == 60_000
    assert bucket.busy_at_least_ms[19] == 120_000  # a training signature sees both


def test_bucket_counts_assumed_and_unknown_model_windows() -> None:
    bucket = Bucket(bucket_start_ns=T0_NS)
    bucket.add(figures(assumed=True))
    bucket.add(figures(assumed=True, unknown_model=True))
    bucket.add(figures())
    assert (bucket.gpu_windows, bucket.assumed_gpu_windows, bucket.unknown_model_gpu_windows) == (
        3,
        2,
        1,
    )


def big_bucket() -> Bucket:
    bucket = Bucket(bucket_start_ns=T0_NS)
    for i in range(3):
        bucket.add(
            figures(
                log_index=40 + i,
                upper=2**64 + i,
                central=2**63 + 5,
                energy=3 * 2**64,
                busy_ms=40_000,
                assumed=bool(i),
            )
        )
    return bucket


def test_bucket_row_round_trip_keeps_flop_beyond_2_64() -> None:
    bucket = big_bucket()
    assert bucket.upper_bound_flop > 2**65
    row = bucket.to_row()
    assert row["upper_bound_flop"] == str(3 * 2**64 + 3)
    assert row["energy_flop"] == str(9 * 2**64)
    assert row["busy_at_least_65pct_ms"] == 180_000
    assert row["busy_at_least_70pct_ms"] == 0
    assert row["first_log_index"] == 40
    assert Bucket.from_row(row) == bucket
    assert Bucket.from_row(Bucket(bucket_start_ns=5).to_row()) == Bucket(bucket_start_ns=5)


def test_bucket_row_accepts_integer_flop_columns() -> None:
    bucket = big_bucket()
    row = dict(bucket.to_row())
    row["upper_bound_flop"] = bucket.upper_bound_flop
    assert Bucket.from_row(row) == bucket


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"upper_bound_flop": "-5"}, "upper_bound_flop"),
        ({"energy_flop": "1e25"}, "energy_flop"),
        ({"energy_mj": "5"}, "energy_mj"),
        ({"busy_at_least_5pct_ms": -1}, "busy_at_least_5pct_ms"),
        ({"first_log_index": -1}, "inconsistent"),
        ({"first_log_index": 50}, "inconsistent"),
        ({"gpu_windows": True}, "gpu_windows"),
        ({"surprise": 1}, "unknown columns surprise"),
    ],
)
def test_bucket_row_refuses_malformed_rows(change: dict[str, object], message: str) -> None:
    row: dict[str, object] = dict(big_bucket().to_row())
    row.update(change)
    with pytest.raises(ValueError, match=message):
        Bucket.from_row(row)


def test_bucket_row_refuses_a_missing_column() -> None:
    row: dict[str, object] = dict(big_bucket().to_row())
    del row["attested_gpu_ms"]
    with pytest.raises(ValueError, match="lacks attested_gpu_ms"):
        Bucket.from_row(row)


def test_merge_equals_adding_everything_to_one_bucket() -> None:
    items = [
        figures(log_index=i, upper=i * 10**20, busy_ms=i * 1000, declared=i % 2 == 0)
        for i in range(1, 9)
    ]
    whole = Bucket(bucket_start_ns=T0_NS)
    left, right = Bucket(bucket_start_ns=T0_NS), Bucket(bucket_start_ns=T0_NS)
    for item in items:
        whole.add(item)
        (left if item.log_index in {3, 7, 8} else right).add(item)
    left.merge(right)
    assert left == whole
    assert (left.first_log_index, left.last_log_index) == (1, 8)
    empty = Bucket(bucket_start_ns=T0_NS)
    empty.merge(Bucket(bucket_start_ns=T0_NS))
    assert empty.first_log_index is None
    with pytest.raises(ValueError, match="cannot merge"):
        whole.merge(Bucket(bucket_start_ns=T0_NS + 1))


def test_bucket_flop_picks_the_figure() -> None:
    bucket = Bucket(bucket_start_ns=0, upper_bound_flop=1, central_estimate_flop=2, energy_flop=3)
    assert [bucket.flop(f) for f in Figure] == [1, 2, 3, 0]  # site energy is not a window's


# --- gaps between two windows --------------------------------------------------------------------


def edge(
    seq: int,
    start_s: int,
    end_s: int,
    *,
    boot: str = "boot-1",
    gpus: tuple[GpuEdge, ...] | None = None,
    log_index: int | None = None,
) -> WindowEdge:
    if gpus is None:
        gpus = (
            GpuEdge(UUID0, H100, 1_000 * seq, 1_000 * seq + 500, True),
            GpuEdge(UUID1, "NVIDIA A100-SXM4-80GB", 2_000 * seq, 2_000 * seq + 500, True),
        )
    return WindowEdge(
        seq=seq,
        window_start_ns=T0_NS + start_s * S,
        window_end_ns=T0_NS + end_s * S,
        boot_id=boot,
        log_index=100 + seq if log_index is None else log_index,
        gpus=gpus,
    )


def test_energy_bounded_gap_sums_the_counters_across_it() -> None:
    a, b = edge(1, 0, 60), edge(5, 300, 360)
    gap = gap_between(NODE_ID, a, b, tolerance_ns=5 * S)
    assert gap is not None
    assert (gap.start_ns, gap.end_ns) == (T0_NS + 60 * S, T0_NS + 300 * S)
    assert (gap.seq_before, gap.seq_after) == (1, 5)
    assert (gap.log_index_before, gap.log_index_after) == (101, 105)
    assert gap.energy_bounded is True
    # GPU0: 5000 - 1500 = 3500 mJ; GPU1: 10000 - 2500 = 7500 mJ
    assert gap.energy_mj == 3_500 + 7_500
    assert gap.energy_bound_flop == compute.energy_bound_flop(H100, 3_500) + (
        compute.energy_bound_flop("NVIDIA A100-SXM4-80GB", 7_500)
    )
    # 240 s x (1979 + 624) TFLOP/s
    assert gap.time_bound_flop == 240 * (1_979 + 624) * 10**12
    assert gap.open is False
    assert gap.gpu_models_before == (H100, "NVIDIA A100-SXM4-80GB")


def test_window_edge_of_a_real_attestation() -> None:
    body = NODE.body(4)
    body.gpus[1].energy_counter_state = apb.ENERGY_COUNTER_STATE_ERROR
    got = window_edge(verified(body), 77)
    assert (got.seq, got.log_index, got.boot_id) == (4, 77, NODE.boot_id)
    assert got.window_start_ns == T0_NS + 4 * WINDOW_NS
    assert got.gpus[0] == GpuEdge(
        UUID0, H100, 1_000_000 + 4 * 21_000_000, 85_000_000 + 21_000_000, True
    )
    assert got.gpus[1].energy_ok is False


def test_real_consecutive_attestations_with_a_pause_are_energy_bounded() -> None:
    a = window_edge(verified(NODE.body(0)), 0)
    b = window_edge(verified(NODE.body(2)), 1)  # seq 1 missing: 60 s gap; counters advanced 21 kJ
    gap = gap_between(NODE_ID, a, b, 0)
    assert gap is not None
    assert gap.energy_bounded
    assert gap.energy_mj == 2 * 21_000_000
    assert gap.duration_ns == WINDOW_NS


def gpus_with(**change: object) -> tuple[GpuEdge, ...]:
    later = edge(5, 300, 360).gpus
    return (later[0]._replace(**change), later[1])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "b",
    [
        edge(5, 300, 360, boot="boot-2"),  # a reboot between them
        edge(5, 300, 360, gpus=gpus_with(energy_start_mj=1_499)),  # the counter dropped
        edge(5, 300, 360, gpus=gpus_with(energy_ok=False)),  # unreadable after the gap
        edge(5, 300, 360, gpus=gpus_with(uuid="GPU-other")),  # a GPU went missing
        edge(5, 300, 360, gpus=edge(5, 300, 360).gpus[1:]),  # fewer GPUs after
    ],
    ids=["boot id", "counter drop", "counter state", "gpu swapped", "gpu missing"],
)
def test_gap_is_unbounded_when_the_counters_do_not_span_it(b: WindowEdge) -> None:
    gap = gap_between(NODE_ID, edge(1, 0, 60), b, 0)
    assert gap is not None
    assert gap.energy_bounded is False
    assert (gap.energy_mj, gap.energy_bound_flop) == (0, 0)
    assert gap.time_bound_flop == 240 * (1_979 + 624) * 10**12


def test_gap_unbounded_when_the_earlier_counter_was_unusable() -> None:
    a = edge(1, 0, 60)
    a = dataclasses.replace(a, gpus=(a.gpus[0]._replace(energy_ok=False), a.gpus[1]))
    gap = gap_between(NODE_ID, a, edge(5, 300, 360), 0)
    assert gap is not None
    assert not gap.energy_bounded


def test_no_gap_within_tolerance_and_seq_must_increase() -> None:
    a = edge(1, 0, 60)
    assert gap_between(NODE_ID, a, edge(2, 65, 125), 5 * S) is None
    assert gap_between(NODE_ID, a, edge(2, 60, 120), 0) is None
    assert gap_between(NODE_ID, a, edge(2, 50, 120), 0) is None  # overlap: not a gap
    gap = gap_between(NODE_ID, a, edge(2, 65, 125), 5 * S - 1)
    assert gap is not None
    assert gap.duration_ns == 5 * S
    with pytest.raises(ValueError, match="does not follow"):
        gap_between(NODE_ID, edge(2, 0, 60), edge(2, 65, 125), 0)


def test_gap_invariants() -> None:
    with pytest.raises(ValueError, match="end after"):
        Gap(NODE_ID, 5, 5, None, None, False, 0, 0, 0, True, None, None)
    with pytest.raises(ValueError, match="no energy"):
        Gap(NODE_ID, 5, 6, None, None, False, 10, 0, 0, True, None, None)
    with pytest.raises(ValueError, match="together"):
        Gap(NODE_ID, 5, 6, 1, None, False, 0, 0, 0, True, None, None)


# --- gaps in a span ------------------------------------------------------------------------------


def spans(
    windows: list[WindowEdge],
    start_s: int,
    end_s: int,
    tolerance_s: int = 0,
    grace_s: int = 0,
    enrolled: tuple[str, ...] = (),
) -> tuple[list[Gap], list[Gap]]:
    """Both forms of the span rule, the server's fed as the server would be."""
    start_ns, end_ns = T0_NS + start_s * S, T0_NS + end_s * S
    full = node_gaps_from_windows(
        NODE_ID,
        start_ns,
        end_ns,
        windows,
        tolerance_ns=tolerance_s * S,
        grace_ns=grace_s * S,
        enrolled_gpu_models=enrolled,
    )
    interior = [
        g for a, b in pairwise(windows) if (g := gap_between(NODE_ID, a, b, tolerance_s * S))
    ]
    first = next((w for w in windows if w.window_end_ns > start_ns), None)
    last = next((w for w in reversed(windows) if w.window_start_ns < end_ns), None)
    summary = node_gaps_from_summary(
        NODE_ID,
        start_ns,
        end_ns,
        interior,
        first_window_ending_after_start=first,
        last_window_starting_before_end=last,
        tolerance_ns=tolerance_s * S,
        grace_ns=grace_s * S,
        enrolled_gpu_models=enrolled,
    )
    return full, summary


def seconds(gaps: list[Gap]) -> list[tuple[int, int, bool, bool]]:
    return [
        ((g.start_ns - T0_NS) // S, (g.end_ns - T0_NS) // S, g.open, g.energy_bounded) for g in gaps
    ]


def test_span_gaps_leading_interior_and_open() -> None:
    windows = [edge(0, 100, 160), edge(1, 160, 220), edge(3, 280, 340)]
    full, summary = spans(windows, 0, 1_000, tolerance_s=5, grace_s=30)
    assert full == summary
    assert seconds(full) == [
        (0, 100, False, False),  # before the first window: no energy reading to bound it
        (220, 280, False, True),  # seq 2 missing, counters span it
        (370, 1_000, True, False),  # open, from the last end + grace
    ]
    leading, interior, open_gap = full
    assert (leading.seq_before, leading.seq_after) == (None, 0)
    # Bounded in time by the GPUs of the window after it, as no window comes before.
    assert leading.time_bound_flop == 100 * (1_979 + 624) * 10**12
    assert (interior.seq_before, interior.seq_after) == (1, 3)
    assert (open_gap.seq_before, open_gap.seq_after, open_gap.log_index_before) == (3, None, 103)
    assert open_gap.time_bound_flop == 630 * (1_979 + 624) * 10**12


def test_gap_cut_by_the_span_start_is_unbounded_and_bounded_in_time_by_its_part() -> None:
    windows = [edge(0, 0, 60), edge(5, 400, 460)]
    full, summary = spans(windows, 100, 460)
    assert full == summary
    assert seconds(full) == [(100, 400, False, False)]
    assert (full[0].seq_before, full[0].seq_after) == (0, 5)
    assert full[0].time_bound_flop == 300 * (1_979 + 624) * 10**12


def test_windows_after_the_span_end_are_ignored() -> None:
    # The window at 400 s starts after as_of: the stretch before it is the open gap, as the
    # auditor (whose bundle ends at the period) sees it.
    windows = [edge(0, 0, 60), edge(1, 400, 460)]
    full, summary = spans(windows, 0, 300, grace_s=10)
    assert full == summary
    assert seconds(full) == [(70, 300, True, False)]


def test_node_without_windows_is_one_open_gap() -> None:
    full, summary = spans([], 10, 50)
    assert full == summary
    assert seconds(full) == [(10, 50, True, False)]
    assert full[0].time_bound_flop == 0  # no GPU known: no ceiling to give
    # Bounded in time by the GPUs the node enrolled with, in both forms alike.
    full, summary = spans([], 10, 50, enrolled=(H100, "NVIDIA A100-SXM4-80GB"))
    assert full == summary
    assert full[0].time_bound_flop == 40 * (1_979 + 624) * 10**12
    assert full[0].gpu_models_before == (H100, "NVIDIA A100-SXM4-80GB")


def test_enrolled_models_do_not_bound_a_node_that_has_windows() -> None:
    windows = [edge(0, 100, 160)]
    enrolled = ("NVIDIA B200",) * 4  # what the window says wins over the enrolment
    full, summary = spans(windows, 0, 1_000, grace_s=30, enrolled=enrolled)
    assert full == summary
    leading, open_gap = full
    assert leading.time_bound_flop == 100 * (1_979 + 624) * 10**12
    assert open_gap.time_bound_flop == 810 * (1_979 + 624) * 10**12


def test_tolerance_and_grace_boundaries() -> None:
    windows = [edge(0, 0, 60), edge(1, 65, 125)]
    assert spans(windows, 0, 125, tolerance_s=5) == ([], [])
    full, _ = spans(windows, 0, 125, tolerance_s=4)
    assert seconds(full) == [(60, 65, False, True)]
    # After the last window: 30 s to the end; grace 10 s leaves 20 s, more than tolerance 19 s.
    assert seconds(spans(windows, 0, 155, tolerance_s=19, grace_s=10)[0]) == [
        (135, 155, True, False)
    ]
    assert spans(windows, 0, 155, tolerance_s=20, grace_s=10) == ([], [])


def test_empty_span_has_no_gaps_and_arguments_are_checked() -> None:
    assert spans([edge(0, 0, 60)], 50, 50) == ([], [])
    with pytest.raises(ValueError, match="seq order"):
        node_gaps_from_windows(
            NODE_ID,
            0,
            10,
            [edge(1, 0, 60), edge(1, 60, 120)],
            tolerance_ns=0,
            grace_ns=0,
            enrolled_gpu_models=(),
        )
    with pytest.raises(ValueError, match="tolerance_ns"):
        node_gaps_from_windows(
            NODE_ID, 0, 10, [], tolerance_ns=-1, grace_ns=0, enrolled_gpu_models=()
        )
    with pytest.raises(ValueError, match="grace_ns"):
        node_gaps_from_summary(
            NODE_ID,
            0,
            10,
            [],
            first_window_ending_after_start=None,
            last_window_starting_before_end=None,
            tolerance_ns=0,
            grace_ns=-1,
            enrolled_gpu_models=(),
        )


def test_summary_form_refuses_inconsistent_inputs() -> None:
    gap = gap_between(NODE_ID, edge(0, 0, 60), edge(2, 120, 180), 0)
    assert gap is not None
    other = dataclasses.replace(gap, node_id=NodeId(b"\x01" * 32))
    with pytest.raises(ValueError, match="another node"):
        node_gaps_from_summary(
            NODE_ID,
            T0_NS,
            T0_NS + 200 * S,
            [other],
            first_window_ending_after_start=None,
            last_window_starting_before_end=None,
            tolerance_ns=0,
            grace_ns=0,
            enrolled_gpu_models=(),
        )
    with pytest.raises(ValueError, match="starts at or after"):
        node_gaps_from_summary(
            NODE_ID,
            T0_NS,
            T0_NS + 100 * S,
            [gap],
            first_window_ending_after_start=None,
            last_window_starting_before_end=edge(2, 120, 180),
            tolerance_ns=0,
            grace_ns=0,
            enrolled_gpu_models=(),
        )


@pytest.mark.parametrize(
    ("enrolled", "revoked", "expected"),
    [
        (0, None, (10, 100)),
        (20, None, (20, 100)),
        (100, None, None),  # enrolled at as_of
        (0, 9, None),  # revoked before the period
        (0, 10, (10, 10)),  # revoked at its start: an empty span
        (0, 50, (10, 50)),
        (0, 500, (10, 100)),
    ],
)
def test_node_active_span(
    enrolled: int, revoked: int | None, expected: tuple[int, int] | None
) -> None:
    assert node_active_span(10, 100, enrolled, revoked) == expected


# --- the two forms agree -------------------------------------------------------------------------

MODELS = (H100, "NVIDIA A100-SXM4-80GB", "Mystery Accelerator 9000")


@st.composite
def timelines(draw: st.DrawFn) -> tuple[list[WindowEdge], int, int, int, int]:
    """A node's accepted windows (seq order, times not going back, with missing seqs and pauses),
    a span, a tolerance and a grace, all in whole seconds so that boundaries coincide often."""
    count = draw(st.integers(0, 10))
    windows: list[WindowEdge] = []
    seq = draw(st.integers(0, 3))
    time_s = draw(st.integers(0, 20))
    boot = 0
    energy = [draw(st.integers(0, 10**6)) for _ in range(2)]
    gpu_count = draw(st.integers(0, 2))
    models = [draw(st.sampled_from(MODELS)) for _ in range(gpu_count)]
    for _ in range(count):
        length = draw(st.integers(1, 6))
        boot += draw(st.integers(0, 1)) if draw(st.booleans()) else 0
        gpus = []
        for g in range(gpu_count):
            if draw(st.integers(0, 9)) == 0:
                energy[g] = draw(st.integers(0, energy[g] + 1))  # a drop (or not)
            start_mj = energy[g]
            energy[g] += draw(st.integers(0, 5_000))
            gpus.append(
                GpuEdge(f"GPU-{g}", models[g], start_mj, energy[g], draw(st.integers(0, 9)) > 0)
            )
        windows.append(
            WindowEdge(
                seq=seq,
                window_start_ns=T0_NS + time_s * S,
                window_end_ns=T0_NS + (time_s + length) * S,
                boot_id=f"boot-{boot}",
                log_index=1_000 + seq,
                gpus=tuple(gpus),
            )
        )
        seq += 1 + (draw(st.integers(0, 3)) if draw(st.booleans()) else 0)
        time_s += length + (draw(st.integers(0, 8)) if draw(st.booleans()) else 0)
        for g in range(gpu_count):
            energy[g] += draw(st.integers(0, 2_000))  # energy used between windows
    horizon = time_s + 10
    start_s = draw(st.integers(-5, horizon))
    end_s = draw(st.integers(start_s, horizon + 5))
    return windows, start_s, end_s, draw(st.integers(0, 6)), draw(st.integers(0, 6))


@settings(max_examples=400, deadline=None)
@given(timelines())
def test_server_and_auditor_forms_of_the_span_rule_agree(
    case: tuple[list[WindowEdge], int, int, int, int],
) -> None:
    windows, start_s, end_s, tolerance_s, grace_s = case
    full, summary = spans(windows, start_s, end_s, tolerance_s, grace_s)
    assert full == summary
    # The auditor's bundle holds the last window before the span and every one from it on.
    start_ns = T0_NS + start_s * S
    before = [w for w in windows if w.window_start_ns < start_ns][-1:]
    bundle = before + [w for w in windows if w.window_start_ns >= start_ns]
    assert (
        node_gaps_from_windows(
            NODE_ID,
            start_ns,
            T0_NS + end_s * S,
            bundle,
            tolerance_ns=tolerance_s * S,
            grace_ns=grace_s * S,
            enrolled_gpu_models=(),
        )
        == full
    )
    for gap in full:
        assert gap.duration_ns > tolerance_s * S
        assert start_ns <= gap.start_ns < gap.end_ns <= T0_NS + end_s * S


@settings(max_examples=300, deadline=None)
@given(timelines())
def test_without_tolerance_or_grace_the_gaps_are_exactly_the_uncovered_time(
    case: tuple[list[WindowEdge], int, int, int, int],
) -> None:
    windows, start_s, end_s, _, _ = case
    full, _ = spans(windows, start_s, end_s)
    covered = {
        t
        for w in windows
        if w.window_start_ns < T0_NS + end_s * S
        for t in range((w.window_start_ns - T0_NS) // S, (w.window_end_ns - T0_NS) // S)
    }
    uncovered = {t for t in range(start_s, end_s) if t not in covered}
    in_gaps = [t for g in full for t in range((g.start_ns - T0_NS) // S, (g.end_ns - T0_NS) // S)]
    assert sorted(in_gaps) == sorted(uncovered)
    assert len(in_gaps) == len(set(in_gaps))


# --- wire form -----------------------------------------------------------------------------------


def test_gap_report_wire_form() -> None:
    gap = gap_between(NODE_ID, edge(1, 0, 60), edge(5, 300, 360), 0)
    assert gap is not None
    report = accounts.gap_report(gap, "node-a", finding_log_index=9)
    assert report.node_id == NODE.node_id
    assert report.node_name == "node-a"
    assert report.has_finding
    assert report.finding_log_index == 9
    assert report.gap.seq_before == 1
    assert report.gap.seq_after == 5
    assert report.gap.energy_bounded
    assert int(report.gap.energy_bound_flop) == gap.energy_bound_flop
    assert int(report.gap.time_bound_flop) == gap.time_bound_flop
    open_gap = node_gaps_from_windows(
        NODE_ID, T0_NS, T0_NS + 100 * S, [], tolerance_ns=0, grace_ns=0, enrolled_gpu_models=()
    )[0]
    plain = accounts.gap_report(open_gap, "node-b")
    assert plain.open
    assert not plain.has_finding
    assert (plain.gap.seq_before, plain.gap.seq_after) == (0, 0)
    assert plain.gap.energy_bound_flop == "0"


def test_unread_utilisation_is_not_attested() -> None:
    """Under MIG NVML reports no device utilisation: samples_taken is 0 and the time is unknown,
    not idle (fail closed), even though the GPU was present all along."""
    body = NODE.body(0)
    body.gpus[0].samples_taken = 0
    body.gpus[0].busy_ms = 0
    body.gpus[1].samples_taken = 45  # 45 of 60 one-second samples read
    out = gpu_window_figures(verified(body), 0, {UUID0, UUID1})
    assert out[0].attested_ms == 0
    assert out[1].attested_ms == 45_000


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_fold_attestation_equals_the_reference_functions(data: st.DataObject) -> None:
    """The ingest hot path (fold_attestation) adds exactly what accumulate(gpu_window_figures)
    adds, and returns the same edge and totals, for arbitrary GPU measurements."""
    body = NODE.body(data.draw(st.integers(0, 5)))
    for gpu in body.gpus:
        gpu.busy_ms = data.draw(st.integers(0, 61_000))
        gpu.samples_taken = data.draw(st.integers(0, 60))
        gpu.presence = data.draw(st.sampled_from([apb.GPU_PRESENCE_PRESENT, apb.GPU_PRESENCE_LOST]))
        gpu.energy_counter_state = data.draw(
            st.sampled_from([apb.ENERGY_COUNTER_STATE_OK, apb.ENERGY_COUNTER_STATE_RESET])
        )
        gpu.model = data.draw(st.sampled_from([H100, "NVIDIA A100-SXM4-80GB", "Mystery GPU"]))
        if data.draw(st.booleans()):
            gpu.tensor_active_ms = data.draw(st.integers(0, 60_000))
            gpu.metric_status.add(
                metric=apb.METRIC_GPM_TENSOR_ACTIVE, state=apb.METRIC_STATE_SUPPORTED
            )
    att = verified(body)
    declared = {UUID0} if data.draw(st.booleans()) else set()
    bucket_ns = data.draw(st.sampled_from([60 * S, 7 * S, 3600 * S]))
    expected: dict[int, Bucket] = {}
    figures = gpu_window_figures(att, 9, declared)
    accumulate(expected, figures, bucket_ns)
    got: dict[int, Bucket] = {}
    fold = fold_attestation(att, 9, declared, got, bucket_ns)
    assert {k: b.to_row() for k, b in got.items()} == {k: b.to_row() for k, b in expected.items()}
    assert fold.upper_bound_flop == sum(f.upper_bound_flop for f in figures)
    assert fold.central_estimate_flop == sum(f.central_estimate_flop for f in figures)
    assert fold.energy_flop == sum(f.energy_flop for f in figures)
    assert fold.energy_mj == window_energy_mj(body)
    assert fold.edge == window_edge(att, 9)
    assert [g.declared for g in fold.gpus] == [f.declared for f in figures]


def test_energy_that_contradicts_utilisation_counts_at_what_the_energy_allows() -> None:
    body = NODE.body(0, busy_ms=18_000)  # 30 % claimed
    body.gpus[0].energy_end_mj = body.gpus[0].energy_start_mj + 700 * 60_000  # 700 W drawn
    first, second = gpu_window_figures(verified(body), 0, set())
    assert first.flag is WindowFlagKind.ENERGY_MISMATCH
    assert first.attested_upper_bound_flop == 1_979_000_000_000_000 * 18
    assert first.upper_bound_flop == 1_979_000_000_000_000 * 60  # capped at peak x window
    assert second.flag is None  # 350 W at 30 % busy: within what utilisation explains


def test_missed_samples_give_the_energy_the_benefit_of_the_doubt() -> None:
    """A host that starves the agent of CPU credits less busy time while the counter runs on:
    the unread time may have been busy, so the same energy is not a contradiction there."""
    body = NODE.body(0, busy_ms=18_000)
    for gpu in body.gpus:
        gpu.energy_end_mj = gpu.energy_start_mj + 500 * 60_000
    body.gpus[1].samples_taken = 40  # 20 of 60 one-second samples missed
    first, second = gpu_window_figures(verified(body), 0, set())
    assert first.flag is WindowFlagKind.ENERGY_MISMATCH
    assert second.flag is None
    assert second.upper_bound_flop == second.attested_upper_bound_flop
    buckets: dict[int, Bucket] = {}
    fold = fold_attestation(verified(body), 0, set(), buckets, 60 * 10**9)
    assert [g.flag for g in fold.gpus] == [first.flag, second.flag]
    assert fold.upper_bound_flop == first.upper_bound_flop + second.upper_bound_flop


@pytest.mark.parametrize("in_force", [True, False])
def test_undeclared_gpus_are_flagged_only_against_a_declaration(in_force: bool) -> None:
    """With no declaration in force there is nothing to be outside of (coverage says so)."""
    body = NODE.body(0)
    declared = {body.gpus[0].uuid} if in_force else set()
    buckets: dict[int, Bucket] = {}
    fold_attestation(
        verified(body), 7, declared, buckets, 60 * 10**9, declaration_in_force=in_force
    )
    expected = (
        {(WindowFlagKind.UNDECLARED_GPU.value, bytes(NODE.node_id).hex(), body.gpus[1].uuid)}
        if in_force
        else set()
    )
    [bucket] = buckets.values()
    assert set(bucket.flags) == expected
    again: dict[int, Bucket] = {}
    accumulate(
        again,
        gpu_window_figures(verified(body), 7, declared, declaration_in_force=in_force),
        60 * 10**9,
    )
    assert set(again[bucket.bucket_start_ns].flags) == expected
    restored = Bucket.from_row(bucket.to_row())
    assert restored.flags == bucket.flags


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("flags", "not json", "flags is not JSON"),
        ("flags", '{"a": 1}', "flags is not a list"),
        ("flags", '[["energy_mismatch", "ab", "GPU-1", 1, 2]]', "malformed item"),
        ("flags", '[["energy_mismatch", "ab", "GPU-1", 1, 2, 3, "x", 4, 5]]', "malformed item"),
        ("flags", 7, "flags is not text"),
        ("raised_flop", "-5", "raised_flop is not a decimal integer"),
    ],
)
def test_a_corrupt_flag_or_raise_column_is_refused_by_name(
    column: str, value: object, message: str
) -> None:
    row = Bucket(bucket_start_ns=0).to_row()
    row[column] = value  # type: ignore[assignment]
    with pytest.raises(ValueError, match=message):
        Bucket.from_row(row)


def test_rows_written_before_flags_existed_read_as_none() -> None:
    row = Bucket(bucket_start_ns=60).to_row()
    assert "flags" not in row and "raised_flop" not in row
    bucket = Bucket.from_row(row)
    assert bucket.flags == {} and bucket.raised_flop == 0
