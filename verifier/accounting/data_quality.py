"""What a report's figures rest on, in words a reader sees beside the verdict.

    for warning in data_quality_warnings(report):
        print("!", warning)

A verdict computed from weak inputs looks like any other; these warnings say when the inputs were
weak, from the report alone (so the server's report, an offline bundle check and an offline
analysis all warn alike):

- GPU models not in the compute table: bounded at the table's highest peak, which can be many
  times the real GPU's (an unknown model is never priced low);
- the central estimate resting on the assumed utilisation (no tensor-activity reading);
- an energy cross-check far below the upper bound: the bound is loose (an unknown model, or GPUs
  busy at low power), or the energy under-reported;
- no declared inventory at all;
- a node enrolled with more GPUs than common servers hold (a replay that merged polls enrolled
  twice its GPUs, and doubled its figures).

The terminal report lists them under the verdict and the HTML report in a banner beside it.
"""

from __future__ import annotations

from pausewatch.v1 import audit_pb2 as pb

from attest import compute
from verifier.accounting.policy import scientific

ENERGY_GAP_FACTOR = 4
"""Warn when the upper bound exceeds the energy cross-check by more than this factor."""
COMMON_MAX_GPUS_PER_NODE = 8
"""HGX and DGX servers hold 8 GPUs: more in one node is worth checking."""


def _int(text: str) -> int:
    try:
        return int(text or "0")
    except ValueError:
        return 0


def data_quality_warnings(report: pb.ComplianceReport) -> list[str]:
    """The report's data-quality warnings, most serious first; [] when there is nothing to say."""
    totals = report.totals
    warnings: list[str] = []
    unknown = totals.unknown_model_gpu_windows
    if unknown:
        peak = compute.table_max_flops_per_s()
        warnings.append(
            f"{unknown} GPU-windows name a GPU model not in the compute table: their upper bound "
            f"uses the table's highest peak ({scientific(peak)} FLOP/s), which can be many times "
            "the real GPU's. Name the model (for a replay: --gpu-model)."
        )
    upper = _int(totals.upper_bound_flop)
    energy = _int(totals.energy_flop)
    if energy > 0 and upper > ENERGY_GAP_FACTOR * energy:
        warnings.append(
            f"The upper bound ({scientific(upper)} FLOP) is {upper // energy}x what the energy "
            f"drawn allows at peak efficiency ({scientific(energy)} FLOP): the bound is loose "
            "(a model priced too high, or GPUs busy at low power), or energy was under-reported."
        )
    if totals.assumed_gpu_windows:
        warnings.append(
            f"The central estimate of {totals.assumed_gpu_windows} GPU-windows uses an assumed "
            "utilisation (no tensor-activity reading): it is an estimate, not a measurement."
        )
    crowded = [node for node in report.nodes if node.enrolled_gpus > COMMON_MAX_GPUS_PER_NODE]
    for node in crowded[:5]:
        name = node.node_name or node.node_id.hex()[:16]
        warnings.append(
            f"Node {name} enrolled {node.enrolled_gpus} GPUs, more than common servers hold "
            f"({COMMON_MAX_GPUS_PER_NODE}): check its inventory (a recording whose polls were "
            "merged reads as twice the GPUs, and twice the compute)."
        )
    if len(crowded) > 5:
        warnings.append(f"... and {len(crowded) - 5} more nodes with over 8 GPUs.")
    coverage = report.coverage
    if coverage.declared_gpu_ms == 0 and coverage.attested_gpu_ms:
        warnings.append("No GPU inventory was declared for the period: coverage cannot be judged.")
    return warnings
