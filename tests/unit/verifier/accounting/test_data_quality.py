"""Data-quality warnings read from a report alone: each fires on its weak input, not otherwise."""

from __future__ import annotations

from pausewatch.v1 import audit_pb2 as pb

from verifier.accounting.data_quality import ENERGY_GAP_FACTOR, data_quality_warnings


def report(
    *,
    upper: int = 10**18,
    energy: int = 10**18,
    unknown: int = 0,
    assumed: int = 0,
    declared_ms: int = 1000,
) -> pb.ComplianceReport:
    return pb.ComplianceReport(
        totals=pb.ComputeTotals(
            upper_bound_flop=str(upper),
            energy_flop=str(energy),
            unknown_model_gpu_windows=unknown,
            assumed_gpu_windows=assumed,
        ),
        coverage=pb.Coverage(attested_gpu_ms=1000, declared_gpu_ms=declared_ms),
    )


def test_a_sound_report_has_no_warning() -> None:
    assert data_quality_warnings(report()) == []


def test_unknown_models_are_named_with_the_fix() -> None:
    (warning,) = data_quality_warnings(report(unknown=72))
    assert warning.startswith("72 GPU-windows name a GPU model not in the compute table")
    assert "--gpu-model" in warning


def test_an_upper_bound_far_above_what_the_energy_allows() -> None:
    assert data_quality_warnings(report(upper=ENERGY_GAP_FACTOR * 10**18)) == []
    (warning,) = data_quality_warnings(report(upper=ENERGY_GAP_FACTOR * 10**18 + 1))
    assert "is 4x what the energy drawn allows" in warning
    assert data_quality_warnings(report(upper=10**20, energy=0)) == []  # no energy: no ratio


def test_assumed_utilisation_and_no_declared_inventory() -> None:
    warnings = data_quality_warnings(report(assumed=5, declared_ms=0))
    assert any("central estimate of 5 GPU-windows uses an assumed" in w for w in warnings)
    assert any("No GPU inventory was declared" in w for w in warnings)


def test_a_node_with_more_gpus_than_a_server_holds() -> None:
    crowded = report()
    crowded.nodes.add(node_name="node7", enrolled_gpus=16)
    crowded.nodes.add(node_name="node8", enrolled_gpus=8)
    (warning,) = data_quality_warnings(crowded)
    assert warning.startswith("Node node7 enrolled 16 GPUs, more than common servers hold (8)")


def test_malformed_amounts_do_not_raise() -> None:
    bad = report()
    bad.totals.upper_bound_flop = "not a number"
    assert data_quality_warnings(bad) == []
