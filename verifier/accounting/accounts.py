"""Accounts: from one accepted attestation to per-GPU figures, to time buckets; and gaps.

    figures = gpu_window_figures(verified, log_index=41, declared_uuids=in_force.gpu_uuids)
    accumulate(buckets, figures, bucket_ns=60_000_000_000)      # buckets: dict[int, Bucket]
    gap = gap_between(node_id, window_edge(previous, 40), window_edge(verified, 41), tolerance_ns)
    gaps = node_gaps_from_windows(node_id, start_ns, end_ns, edges, tolerance_ns=t, grace_ns=g)

The arithmetic of ADR 0001, pure (no I/O, no store, no gRPC), shared by the verifier, which feeds it
at ingest and stores the results, and by the offline auditor, which replays it over a bundle:

- **Figures per GPU-window** (:func:`gpu_window_figures`): the compute figures recomputed with the
  verifier's own GPU table (:func:`attest.attestation.window_compute`), the GPU-time attested, and
  whether the GPU was declared.
- **Buckets** (:class:`Bucket`): a window counts entirely in the bucket that contains its start,
  so every sum is an exact integer. FLOP sums exceed 2^64; :meth:`Bucket.to_row` keeps them as
  decimal text.
- **Gaps** (:func:`gap_between`, :func:`node_gaps_from_windows`, :func:`node_gaps_from_summary`):
  the unattested stretches of a node's active span. The span rule exists in two forms that must
  agree: from a node's whole window list (the auditor's) and from the interior gaps recorded at
  ingest plus two looked-up windows (the server's). The tests check they do.

Every quantity is an integer in the unit its name states; there are no floats.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import pairwise
from typing import NamedTuple

from pausewatch.v1 import attestation_pb2 as apb
from pausewatch.v1 import audit_pb2, findings_pb2

from attest import compute
from attest.attestation import VerifiedAttestation, window_flop
from attest.ids import NodeId

NS_PER_MS = 1_000_000
BUSY_STEP_PERCENT = 5
BUSY_STEPS = 100 // BUSY_STEP_PERCENT
"""``Bucket.busy_at_least_ms[i]`` is the GPU-time of GPU-windows at least ``(i + 1) x 5 %`` busy."""


def add_busy_steps(steps: list[int], busy_ms: int, window_ms: int, attested_ms: int) -> None:
    """Add ``attested_ms`` to ``steps[i]`` for every 5 % step the GPU-window reached:
    busy/window >= (i+1) x 5 %  <=>  busy x 20 >= (i+1) x window, so the first
    min(20, busy x 20 // window) steps."""
    if window_ms > 0 and attested_ms:
        for i in range(min(BUSY_STEPS, busy_ms * BUSY_STEPS // window_ms)):
            steps[i] += attested_ms


class Figure(StrEnum):
    """Which compute figure a rule measures (ADR 0001, "Figures per GPU-window")."""

    UPPER_BOUND = "upper_bound"
    """Peak dense FLOP/s at the fastest precision x busy seconds: sound, and the default."""
    CENTRAL_ESTIMATE = "central_estimate"
    """Tensor-active (or assumed 0.4 of busy) seconds x peak bf16: a best estimate."""
    ENERGY = "energy"
    """Energy x FLOP per joule at peak: a cross-check (0 where the counter was unusable)."""
    SITE_ENERGY = "site_energy"
    """Site energy no attested GPU explains, at the GPU table's best FLOP per joule (site power:
    per bucket of the report, never per window; 0 where the lab has no metered site)."""


class WindowFlagKind(StrEnum):
    """Why a GPU-window (or the energy between two windows) is named in every report over it.

    Flags are kept in the buckets (:attr:`Bucket.flags`), so a report over any slice names those
    inside it from the stored data, whatever findings were rate-limited."""

    ENERGY_MISMATCH = "energy_mismatch"
    """The energy contradicts the attested utilisation: evaluated at what the energy allows."""
    ENERGY_COUNTER_UNUSABLE = "energy_counter_unusable"
    """The counter was claimed unusable (not OK): evaluated at its time bound (ADR 0003)."""
    ENERGY_OUTSIDE_WINDOWS = "energy_outside_windows"
    """The counter rose between two back-to-back windows: energy outside any window, counted in
    the later window's figures."""
    UNDECLARED_GPU = "undeclared_gpu"
    """The GPU was not in the declared inventory in force at the window's start."""


class EnergyCheck(NamedTuple):
    """The verifier's settings for the energy cross-check (``[ingest]`` in its config; a bundle
    carries them so that the auditor replays the same arithmetic)."""

    factor_ppm: int = 1_250_000
    """A window's energy less the idle allowance may imply up to this factor x its upper bound
    before the utilisation counts as contradicted (at least 1,000,000)."""
    idle_power_fraction_ppm: int = 300_000
    """The idle allowance: this fraction of the model's board power over the window."""
    gap_tolerance_ns: int = 0
    """Windows at most this far apart are back-to-back: a counter rise between them is energy
    outside any window (further apart, it is a gap's energy bound)."""


DEFAULT_ENERGY_CHECK = EnergyCheck()
"""The verifier's defaults (with no gap tolerance)."""


# --- figures per GPU-window ----------------------------------------------------------------------


class GpuWindowFigures(NamedTuple):
    """The figures of one GPU over one accepted window (ADR 0001, "Figures per GPU-window").

    (A named tuple: the verifier makes one for every GPU of every accepted attestation.)"""

    log_index: int
    node_id: NodeId
    gpu_uuid: str
    model: str
    window_start_ns: int
    window_end_ns: int
    upper_bound_flop: int
    central_estimate_flop: int
    energy_flop: int
    """0 when the energy counter was not usable in the window."""
    energy_mj: int
    """0 when the energy counter was not usable in the window."""
    busy_ms: int
    attested_ms: int
    """GPU-time the window covers for this GPU: the window if present throughout with every
    expected sample taken, else the samples taken x the sample interval, at most the window (so
    unread utilisation, as under MIG, is never attested)."""
    declared: bool
    """Whether the GPU was in the declared inventory in force at window start."""
    assumed: bool
    """The central estimate used the assumed utilisation (no GPM tensor-active reading)."""
    unknown_model: bool
    """The upper bound used the table's highest peak (model not in the table)."""
    attested_upper_bound_flop: int = 0
    """Peak x busy as the window claims; ``upper_bound_flop`` is the evaluated bound."""
    flag: WindowFlagKind | None = None
    """Why the two differ (energy mismatch, counter unusable), or None."""
    declaration_in_force: bool = True
    """The lab had an inventory declaration in force (else an undeclared GPU is not flagged)."""

    @property
    def window_ms(self) -> int:
        return (self.window_end_ns - self.window_start_ns) // NS_PER_MS

    def flop(self, figure: Figure) -> int:
        """The FLOP of ``figure``."""
        return _pick(figure, self.upper_bound_flop, self.central_estimate_flop, self.energy_flop)

    def busy_at_least(self, percent: int) -> bool:
        """Whether busy_ms / window_ms >= percent / 100, exactly."""
        return self.busy_ms * 100 >= percent * self.window_ms


def gpu_window_figures(
    att: VerifiedAttestation,
    log_index: int,
    declared_uuids: Collection[str],
    energy: EnergyCheck = DEFAULT_ENERGY_CHECK,
    *,
    declaration_in_force: bool = True,
) -> list[GpuWindowFigures]:
    """One :class:`GpuWindowFigures` per GPU of an accepted attestation, in the body's order.

    ``declared_uuids`` is the declared inventory in force at the window's start. The upper bound
    is the one evaluated against thresholds (:func:`evaluated_upper_bound`).
    """
    body = att.body
    window_ms = att.window_ms
    out: list[GpuWindowFigures] = []
    for gpu in body.gpus:
        figures = window_flop(gpu)
        energy_ok = gpu.energy_counter_state == apb.ENERGY_COUNTER_STATE_OK
        # Fail closed: time whose utilisation was not read (a lost GPU, MIG mode where NVML
        # reports no device utilisation) is not attested, whatever else the window says.
        taken = gpu.samples_taken
        if gpu.presence == apb.GPU_PRESENCE_PRESENT and 0 < gpu.samples_expected <= taken:
            attested_ms = window_ms
        else:
            attested_ms = min(window_ms, taken * body.sample_interval_ms)
        evaluated, flag = evaluated_upper_bound(
            compute.rates_for(gpu.model),
            figures.upper_bound_flop,
            gpu.energy_end_mj - gpu.energy_start_mj if energy_ok else None,
            window_ms,
            energy,
            window_ms - attested_ms,
        )
        out.append(
            GpuWindowFigures(
                log_index=log_index,
                node_id=att.node_id,
                gpu_uuid=gpu.uuid,
                model=gpu.model,
                window_start_ns=body.window_start_ns,
                window_end_ns=body.window_end_ns,
                upper_bound_flop=evaluated,
                central_estimate_flop=figures.central_estimate_flop,
                energy_flop=figures.energy_flop,
                energy_mj=gpu.energy_end_mj - gpu.energy_start_mj if energy_ok else 0,
                busy_ms=gpu.busy_ms,
                attested_ms=attested_ms,
                declared=gpu.uuid in declared_uuids,
                assumed=figures.assumed,
                unknown_model=figures.unknown_model,
                attested_upper_bound_flop=figures.upper_bound_flop,
                flag=flag,
                declaration_in_force=declaration_in_force,
            )
        )
    return out


def evaluated_upper_bound(  # noqa: PLR0917
    rates: compute.ModelRates,
    upper_bound_flop: int,
    energy_mj: int | None,
    window_ms: int,
    energy: EnergyCheck,
    unattested_ms: int = 0,
) -> tuple[int, WindowFlagKind | None]:
    """The upper bound a GPU-window is evaluated at against thresholds, and why it differs from
    the attested one (``None`` where it does not):

    - counter unusable (``energy_mj`` None): peak x window, the time bound (ADR 0003);
    - energy contradicting the utilisation (:func:`attest.compute.energy_contradicts`): the larger
      of the attested bound and what the energy allows (:func:`attest.compute.energy_allowed_flop`,
      never above peak x window);
    - otherwise the attested bound.

    ``unattested_ms`` is the window's time whose utilisation was not read (samples missed, as
    when a loaded host delays the agent's polls): the energy is compared with the attested bound
    plus peak x that time, since the GPU may have been busy then. An honest agent starved of CPU
    is not flagged; a lab that claims missed samples loses coverage instead.
    """
    if energy_mj is None:
        return max(upper_bound_flop, compute.time_bound_from_rates(rates, window_ms)), (
            WindowFlagKind.ENERGY_COUNTER_UNUSABLE
        )
    if compute.energy_contradicts(
        rates,
        upper_bound_flop
        + (compute.time_bound_from_rates(rates, unattested_ms) if unattested_ms else 0),
        energy_mj,
        window_ms,
        factor_ppm=energy.factor_ppm,
        idle_power_fraction_ppm=energy.idle_power_fraction_ppm,
    ):
        allowed = compute.energy_allowed_flop(
            rates, energy_mj, window_ms, energy.idle_power_fraction_ppm
        )
        return max(upper_bound_flop, allowed), WindowFlagKind.ENERGY_MISMATCH
    return upper_bound_flop, None


class GpuFold(NamedTuple):
    """What ingest's findings need of one GPU-window after :func:`fold_attestation`."""

    uuid: str
    model: str
    upper_bound_flop: int
    """As attested (peak x busy); ``evaluated_flop`` is what thresholds see."""
    energy_flop: int
    energy_ok: bool
    declared: bool
    evaluated_flop: int
    flag: WindowFlagKind | None
    """Why ``evaluated_flop`` differs from ``upper_bound_flop`` (energy mismatch, counter
    unusable), or None."""


class EnergyJump(NamedTuple):
    """A counter that rose between two back-to-back windows of a node, for one GPU."""

    uuid: str
    model: str
    energy_mj: int
    flop: int
    """What the energy allows (best FLOP per joule, no idle allowance), at most peak x the two
    windows' span."""


class AttestationFold(NamedTuple):
    """One accepted attestation, folded into the accounts: its totals, edge and GPUs."""

    log_index: int
    window_start_ns: int
    upper_bound_flop: int
    """Evaluated: the GPUs' evaluated bounds plus the energy that rose since the previous window
    (what thresholds, node figures and evidence use)."""
    central_estimate_flop: int
    energy_flop: int
    edge: WindowEdge
    gpus: tuple[GpuFold, ...]
    counter_reset: bool
    """Some GPU's energy counter dropped inside the window (a driver reload)."""
    attested_upper_bound_flop: int = 0
    """Peak x busy summed over the GPUs, as the window claims."""
    jumps: tuple[EnergyJump, ...] = ()
    """Energy that rose since the previous back-to-back window, per GPU."""
    energy_mj: int = 0
    """The window's measured GPU energy: the sum over GPUs whose counter read OK at both edges
    (:func:`attest.attestation.window_energy_mj`, without a second pass over the body)."""


def energy_jumps(a: WindowEdge, b: WindowEdge, tolerance_ns: int) -> list[EnergyJump]:
    """Energy outside any window: for each GPU of ``b`` also in ``a`` (``b`` the next accepted
    window of the node), with the counter OK in both, the same boot, and ``b`` starting no more
    than ``tolerance_ns`` after ``a`` ends (back to back: no gap), the rise of the counter between
    ``a``'s end and ``b``'s start. An honest agent's windows tile the counter (the reading that
    closes one window opens the next), so any rise is energy the windows do not show."""
    if b.seq <= a.seq or a.boot_id != b.boot_id:
        return []
    if b.window_start_ns - a.window_end_ns > tolerance_ns:
        return []
    before = {gpu.uuid: gpu for gpu in a.gpus}
    span_ms = -(-(b.window_end_ns - a.window_start_ns) // NS_PER_MS)
    out: list[EnergyJump] = []
    for gpu in b.gpus:
        old = before.get(gpu.uuid)
        if old is None or not old.energy_ok or not gpu.energy_ok:
            continue
        rose_mj = gpu.energy_start_mj - old.energy_end_mj
        if rose_mj > 0:
            rates = compute.rates_for(gpu.model)
            # No idle allowance: the rise took (almost) no time by the windows' own clocks.
            flop = compute.energy_allowed_flop(rates, rose_mj, span_ms, 0)
            out.append(EnergyJump(gpu.uuid, gpu.model, rose_mj, flop))
    return out


def fold_attestation(
    att: VerifiedAttestation,
    log_index: int,
    declared_uuids: Collection[str],
    buckets: dict[int, Bucket],
    bucket_ns: int,
    *,
    energy: EnergyCheck = DEFAULT_ENERGY_CHECK,
    previous: WindowEdge | None = None,
    declaration_in_force: bool = True,
) -> AttestationFold:
    """Add an accepted attestation's GPU-windows to ``buckets`` and return its totals, its
    :class:`WindowEdge` and its GPUs, in one pass over the body.

    Each GPU-window counts at its evaluated upper bound (:func:`evaluated_upper_bound`), and the
    energy that rose since ``previous`` (the node's accepted window before this one, if any;
    :func:`energy_jumps`) is added to this window's. Both, and undeclared GPUs, are flagged in
    the bucket (:attr:`Bucket.flags`).

    The same result as ``accumulate(buckets, gpu_window_figures(att, log_index, declared),
    bucket_ns)`` plus :func:`window_edge` (the tests check they agree), without a figures object
    per GPU: it is the hot path of ingest and of the offline re-verification alike.
    """
    body = att.body
    start_ns = body.window_start_ns
    window_ms = (body.window_end_ns - start_ns) // NS_PER_MS
    interval_ms = body.sample_interval_ms
    key = bucket_start(start_ns, bucket_ns)
    tensor_metric = apb.METRIC_GPM_TENSOR_ACTIVE
    supported = apb.METRIC_STATE_SUPPORTED
    counter_ok = apb.ENERGY_COUNTER_STATE_OK
    present = apb.GPU_PRESENCE_PRESENT
    rates_for = compute.rates_for
    flop_from_rates = compute.flop_from_rates
    upper_sum = central_sum = energy_sum = energy_mj_sum = busy_sum = 0
    attested_sum = undeclared_sum = assumed_n = unknown_n = 0
    evaluated_sum = 0
    node_hex = ""
    flags: list[tuple[WindowFlagKind, str, int]] = []
    # reached[k]: GPU-time of the window's GPUs that reached exactly k busy steps; summed into the
    # bucket's at-least steps once per window (add_busy_steps per GPU costs up to 20 adds each).
    reached = [0] * (BUSY_STEPS + 1)
    last_model: str | None = None
    rates = None
    counter_reset_state = apb.ENERGY_COUNTER_STATE_RESET
    counter_reset = False
    edges: list[GpuEdge] = []
    gpus: list[GpuFold] = []
    for gpu in body.gpus:
        uuid = gpu.uuid
        model = gpu.model
        busy_ms = gpu.busy_ms
        tensor_active_ms = None
        for status in gpu.metric_status:
            if status.metric == tensor_metric:
                if status.state == supported:
                    tensor_active_ms = gpu.tensor_active_ms
                break
        energy_start_mj = gpu.energy_start_mj
        energy_end_mj = gpu.energy_end_mj
        counter_state = gpu.energy_counter_state
        energy_ok = counter_state == counter_ok
        counter_reset = counter_reset or counter_state == counter_reset_state
        energy_mj = energy_end_mj - energy_start_mj if energy_ok else None
        if model != last_model:
            rates = rates_for(model)
            last_model = model
        assert rates is not None
        upper, central, energy_flop = flop_from_rates(rates, busy_ms, tensor_active_ms, energy_mj)
        taken = gpu.samples_taken
        if gpu.presence == present and 0 < gpu.samples_expected <= taken:
            attested_ms = window_ms
        else:
            attested_ms = min(window_ms, taken * interval_ms)
        evaluated, flag = evaluated_upper_bound(
            rates, upper, energy_mj, window_ms, energy, window_ms - attested_ms
        )
        if flag is not None:
            flags.append((flag, uuid, evaluated - upper))
        evaluated_sum += evaluated
        declared = uuid in declared_uuids
        upper_sum += upper
        central_sum += central
        energy_sum += energy_flop
        if energy_mj is not None:
            energy_mj_sum += energy_mj
        busy_sum += busy_ms
        if declared:
            attested_sum += attested_ms
        else:
            undeclared_sum += attested_ms
            if declaration_in_force:
                flags.append((WindowFlagKind.UNDECLARED_GPU, uuid, 0))
        assumed_n += tensor_active_ms is None
        unknown_n += rates.unknown_model
        if window_ms > 0 and attested_ms:
            reached[min(BUSY_STEPS, busy_ms * BUSY_STEPS // window_ms)] += attested_ms
        edges.append(GpuEdge(uuid, model, energy_start_mj, energy_end_mj, energy_ok))
        gpus.append(GpuFold(uuid, model, upper, energy_flop, energy_ok, declared, evaluated, flag))
    edge = WindowEdge(
        seq=body.seq,
        window_start_ns=start_ns,
        window_end_ns=body.window_end_ns,
        boot_id=body.boot_id,
        log_index=log_index,
        gpus=tuple(edges),
        sampler_backend=body.sampler_backend,
        agent_digest=body.agent_digest,
        agent_version=body.agent_version,
    )
    jumps: tuple[EnergyJump, ...] = ()
    if previous is not None:
        jumps = tuple(energy_jumps(previous, edge, energy.gap_tolerance_ns))
        for jump in jumps:
            evaluated_sum += jump.flop
            flags.append((WindowFlagKind.ENERGY_OUTSIDE_WINDOWS, jump.uuid, jump.flop))
    steps = [0] * BUSY_STEPS
    at_least = 0
    for i in range(BUSY_STEPS, 0, -1):
        at_least += reached[i]
        steps[i - 1] = at_least
    if gpus:
        bucket = buckets.get(key)
        if bucket is None:
            bucket = buckets[key] = Bucket(bucket_start_ns=key)
        if flags:
            node_hex = bytes(att.node_id).hex()
            for kind, uuid, extra_flop in flags:
                bucket.add_flag(
                    kind, node_hex, uuid, log_index, start_ns, body.window_end_ns, extra_flop
                )
        bucket.add_sums(
            upper_bound_flop=evaluated_sum,
            central_estimate_flop=central_sum,
            energy_flop=energy_sum,
            energy_mj=energy_mj_sum,
            busy_gpu_ms=busy_sum,
            attested_gpu_ms=attested_sum,
            undeclared_gpu_ms=undeclared_sum,
            gpu_windows=len(gpus),
            assumed_gpu_windows=assumed_n,
            unknown_model_gpu_windows=unknown_n,
            busy_at_least_ms=steps,
            log_index=log_index,
            raised_flop=evaluated_sum - upper_sum,
        )
    return AttestationFold(
        log_index,
        start_ns,
        evaluated_sum,
        central_sum,
        energy_sum,
        edge,
        tuple(gpus),
        counter_reset,
        upper_sum,
        jumps,
        energy_mj_sum,
    )


# --- buckets -------------------------------------------------------------------------------------


def bucket_start(ts_ns: int, bucket_ns: int) -> int:
    """Start of the bucket containing ``ts_ns``: ``ts - ts % bucket_ns``."""
    if bucket_ns <= 0:
        raise ValueError(f"bucket_ns must be positive, got {bucket_ns}")
    return ts_ns - ts_ns % bucket_ns


def _zero_steps() -> list[int]:
    return [0] * BUSY_STEPS


@dataclass(slots=True)
class Bucket:
    """The sums of one time bucket of a lab's accounts (ADR 0001, "Buckets").

    FLOP, energy and busy sums cover every GPU-window whose window starts in the bucket, declared
    or not (compute is compute); ``attested_gpu_ms`` counts declared GPUs only (coverage uses it)
    and ``undeclared_gpu_ms`` the rest. ``first_log_index``/``last_log_index`` are the lowest and
    highest log index that contributed (``None`` while empty).
    """

    bucket_start_ns: int
    upper_bound_flop: int = 0
    central_estimate_flop: int = 0
    energy_flop: int = 0
    energy_mj: int = 0
    busy_gpu_ms: int = 0
    attested_gpu_ms: int = 0
    undeclared_gpu_ms: int = 0
    gpu_windows: int = 0
    assumed_gpu_windows: int = 0
    unknown_model_gpu_windows: int = 0
    busy_at_least_ms: list[int] = field(default_factory=_zero_steps)
    first_log_index: int | None = None
    last_log_index: int | None = None
    raised_flop: int = 0
    """How much of ``upper_bound_flop`` is above the windows' attested bounds: energy that
    contradicts utilisation, unusable counters at their time bound, energy outside windows."""
    flags: dict[tuple[str, str, str], FlagTally] = field(default_factory=dict)
    """Flagged GPU-windows by (kind, node id in hex, GPU UUID)."""

    def flop(self, figure: Figure) -> int:
        """The FLOP sum of ``figure``."""
        return _pick(figure, self.upper_bound_flop, self.central_estimate_flop, self.energy_flop)

    def add_flag(  # noqa: PLR0917
        self,
        kind: str,
        node_hex: str,
        gpu_uuid: str,
        log_index: int,
        window_start_ns: int,
        window_end_ns: int,
        extra_flop: int,
    ) -> None:
        """Count one flagged GPU-window (see :class:`WindowFlagKind`)."""
        key = (str(kind), node_hex, gpu_uuid)
        tally = self.flags.get(key)
        if tally is None:
            self.flags[key] = FlagTally(
                1, log_index, log_index, extra_flop, window_start_ns, window_end_ns
            )
        else:
            tally.merge(
                FlagTally(1, log_index, log_index, extra_flop, window_start_ns, window_end_ns)
            )

    def add(self, figures: GpuWindowFigures) -> None:
        """Add one GPU-window (whose window must start in this bucket; not checked here)."""
        if figures.flag is not None:
            self.add_flag(
                figures.flag,
                bytes(figures.node_id).hex(),
                figures.gpu_uuid,
                figures.log_index,
                figures.window_start_ns,
                figures.window_end_ns,
                figures.upper_bound_flop - figures.attested_upper_bound_flop,
            )
            self.raised_flop += figures.upper_bound_flop - figures.attested_upper_bound_flop
        if not figures.declared and figures.declaration_in_force:
            self.add_flag(
                WindowFlagKind.UNDECLARED_GPU,
                bytes(figures.node_id).hex(),
                figures.gpu_uuid,
                figures.log_index,
                figures.window_start_ns,
                figures.window_end_ns,
                0,
            )
        self.add_values(
            upper_bound_flop=figures.upper_bound_flop,
            central_estimate_flop=figures.central_estimate_flop,
            energy_flop=figures.energy_flop,
            energy_mj=figures.energy_mj,
            busy_ms=figures.busy_ms,
            attested_ms=figures.attested_ms,
            window_ms=figures.window_ms,
            declared=figures.declared,
            assumed=figures.assumed,
            unknown_model=figures.unknown_model,
            log_index=figures.log_index,
        )

    def add_values(
        self,
        *,
        upper_bound_flop: int,
        central_estimate_flop: int,
        energy_flop: int,
        energy_mj: int,
        busy_ms: int,
        attested_ms: int,
        window_ms: int,
        declared: bool,
        assumed: bool,
        unknown_model: bool,
        log_index: int,
    ) -> None:
        """:meth:`add` from the values themselves."""
        steps = [0] * BUSY_STEPS
        add_busy_steps(steps, busy_ms, window_ms, attested_ms)
        self.add_sums(
            upper_bound_flop=upper_bound_flop,
            central_estimate_flop=central_estimate_flop,
            energy_flop=energy_flop,
            energy_mj=energy_mj,
            busy_gpu_ms=busy_ms,
            attested_gpu_ms=attested_ms if declared else 0,
            undeclared_gpu_ms=0 if declared else attested_ms,
            gpu_windows=1,
            assumed_gpu_windows=int(assumed),
            unknown_model_gpu_windows=int(unknown_model),
            busy_at_least_ms=steps,
            log_index=log_index,
        )

    def add_sums(
        self,
        *,
        upper_bound_flop: int,
        central_estimate_flop: int,
        energy_flop: int,
        energy_mj: int,
        busy_gpu_ms: int,
        attested_gpu_ms: int,
        undeclared_gpu_ms: int,
        gpu_windows: int,
        assumed_gpu_windows: int,
        unknown_model_gpu_windows: int,
        busy_at_least_ms: Sequence[int],
        log_index: int,
        raised_flop: int = 0,
    ) -> None:
        """Add the sums of several GPU-windows of one attestation (the ingest hot path)."""
        self.raised_flop += raised_flop
        self.upper_bound_flop += upper_bound_flop
        self.central_estimate_flop += central_estimate_flop
        self.energy_flop += energy_flop
        self.energy_mj += energy_mj
        self.busy_gpu_ms += busy_gpu_ms
        self.attested_gpu_ms += attested_gpu_ms
        self.undeclared_gpu_ms += undeclared_gpu_ms
        self.gpu_windows += gpu_windows
        self.assumed_gpu_windows += assumed_gpu_windows
        self.unknown_model_gpu_windows += unknown_model_gpu_windows
        at_least = self.busy_at_least_ms
        for i, value in enumerate(busy_at_least_ms):
            if value:
                at_least[i] += value
        self._note_log_indices(log_index, log_index)

    def merge(self, other: Bucket) -> None:
        """Add another bucket of the same start (e.g. one transaction's sums to a stored row)."""
        if other.bucket_start_ns != self.bucket_start_ns:
            raise ValueError(
                f"cannot merge bucket {other.bucket_start_ns} into bucket {self.bucket_start_ns}"
            )
        self.upper_bound_flop += other.upper_bound_flop
        self.raised_flop += other.raised_flop
        for key, tally in other.flags.items():
            mine = self.flags.get(key)
            if mine is None:
                self.flags[key] = FlagTally(*tally.as_tuple())
            else:
                mine.merge(tally)
        self.central_estimate_flop += other.central_estimate_flop
        self.energy_flop += other.energy_flop
        self.energy_mj += other.energy_mj
        self.busy_gpu_ms += other.busy_gpu_ms
        self.attested_gpu_ms += other.attested_gpu_ms
        self.undeclared_gpu_ms += other.undeclared_gpu_ms
        self.gpu_windows += other.gpu_windows
        self.assumed_gpu_windows += other.assumed_gpu_windows
        self.unknown_model_gpu_windows += other.unknown_model_gpu_windows
        for i in range(BUSY_STEPS):
            self.busy_at_least_ms[i] += other.busy_at_least_ms[i]
        if other.first_log_index is not None and other.last_log_index is not None:
            self._note_log_indices(other.first_log_index, other.last_log_index)

    def _note_log_indices(self, first: int, last: int) -> None:
        if self.first_log_index is None or first < self.first_log_index:
            self.first_log_index = first
        if self.last_log_index is None or last > self.last_log_index:
            self.last_log_index = last

    def to_row(self) -> dict[str, int | str]:
        """A flat row for a store: FLOP sums as decimal strings (they exceed 2^64), the busy
        steps as ``busy_at_least_{5..100}pct_ms``, and -1 for an absent log index."""
        row: dict[str, int | str] = {"bucket_start_ns": self.bucket_start_ns}
        for name in _FLOP_COLUMNS:
            row[name] = str(getattr(self, name))
        for name in _INT_COLUMNS:
            row[name] = getattr(self, name)
        for i, name in enumerate(_BUSY_COLUMNS):
            row[name] = self.busy_at_least_ms[i]
        row["first_log_index"] = -1 if self.first_log_index is None else self.first_log_index
        row["last_log_index"] = -1 if self.last_log_index is None else self.last_log_index
        if self.raised_flop:
            row["raised_flop"] = str(self.raised_flop)
        if self.flags:
            row["flags"] = json.dumps(
                [[*key, *tally.as_row()] for key, tally in sorted(self.flags.items())],
                separators=(",", ":"),
            )
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, object]) -> Bucket:
        """The inverse of :meth:`to_row`; raises ValueError naming a missing or malformed column.

        FLOP columns may be decimal strings or integers (whatever the store hands back)."""
        expected = {"bucket_start_ns", "first_log_index", "last_log_index", *_FLOP_COLUMNS}
        expected |= {*_INT_COLUMNS, *_BUSY_COLUMNS}
        missing = sorted(expected - row.keys())
        if missing:
            raise ValueError(f"bucket row lacks {', '.join(missing)}")
        extra = sorted(set(row.keys()) - expected - set(_OPTIONAL_COLUMNS))
        if extra:
            raise ValueError(f"bucket row has unknown columns {', '.join(extra)}")
        bucket = cls(bucket_start_ns=_row_int(row, "bucket_start_ns", minimum=None))
        for name in _FLOP_COLUMNS:
            value = row[name]
            if isinstance(value, str):
                if not value.isascii() or not value.isdigit():
                    raise ValueError(f"bucket row {name} is not a decimal integer: {value!r}")
                setattr(bucket, name, int(value))
            else:
                setattr(bucket, name, _row_int(row, name))
        for name in _INT_COLUMNS:
            setattr(bucket, name, _row_int(row, name))
        bucket.busy_at_least_ms = [_row_int(row, name) for name in _BUSY_COLUMNS]
        first = _row_int(row, "first_log_index", minimum=-1)
        last = _row_int(row, "last_log_index", minimum=-1)
        if (first == -1) != (last == -1) or first > last:
            raise ValueError(f"bucket row log indices {first}..{last} are inconsistent")
        bucket.first_log_index = None if first == -1 else first
        bucket.last_log_index = None if last == -1 else last
        # Rows written before these columns existed have neither: nothing was raised or flagged.
        raised = row.get("raised_flop", "0")
        if not isinstance(raised, str) or not raised.isascii() or not raised.isdigit():
            raise ValueError(f"bucket row raised_flop is not a decimal integer: {raised!r}")
        bucket.raised_flop = int(raised)
        flags_text = row.get("flags", "[]")
        if not isinstance(flags_text, str):
            raise ValueError("bucket row flags is not text")  # noqa: TRY004
        bucket.flags = _flags_from_json(flags_text)
        return bucket


_FLOP_COLUMNS = ("upper_bound_flop", "central_estimate_flop", "energy_flop")
_OPTIONAL_COLUMNS = ("raised_flop", "flags")


@dataclass(slots=True)
class FlagTally:
    """Flagged GPU-windows of one kind, node and GPU within a bucket."""

    gpu_windows: int
    first_log_index: int
    last_log_index: int
    extra_flop: int
    """FLOP the flag added to the evaluated upper bound (0 for an undeclared GPU)."""
    first_window_start_ns: int
    last_window_end_ns: int

    def merge(self, other: FlagTally) -> None:
        self.gpu_windows += other.gpu_windows
        self.first_log_index = min(self.first_log_index, other.first_log_index)
        self.last_log_index = max(self.last_log_index, other.last_log_index)
        self.extra_flop += other.extra_flop
        self.first_window_start_ns = min(self.first_window_start_ns, other.first_window_start_ns)
        self.last_window_end_ns = max(self.last_window_end_ns, other.last_window_end_ns)

    def as_tuple(self) -> tuple[int, int, int, int, int, int]:
        return (
            self.gpu_windows,
            self.first_log_index,
            self.last_log_index,
            self.extra_flop,
            self.first_window_start_ns,
            self.last_window_end_ns,
        )

    def as_row(self) -> list[int | str]:
        """For JSON: the FLOP as decimal text (it may exceed 2^64)."""
        values: list[int | str] = list(self.as_tuple())
        values[3] = str(self.extra_flop)
        return values


def _flags_from_json(text: str) -> dict[tuple[str, str, str], FlagTally]:
    try:
        items = json.loads(text)
    except ValueError as exc:
        raise ValueError("bucket row flags is not JSON") from exc
    if not isinstance(items, list):
        raise ValueError("bucket row flags is not a list")  # noqa: TRY004
    out: dict[tuple[str, str, str], FlagTally] = {}
    for item in items:
        if (
            not isinstance(item, list)
            or len(item) != 9
            or not all(isinstance(v, str) for v in item[:3])
            or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0
                for v in (*item[3:6], *item[7:])
            )
            or not isinstance(item[6], str)
            or not item[6].isascii()
            or not item[6].isdigit()
        ):
            raise ValueError(f"bucket row flags has a malformed item: {item!r}")
        out[(item[0], item[1], item[2])] = FlagTally(
            item[3], item[4], item[5], int(item[6]), item[7], item[8]
        )
    return out


_INT_COLUMNS = (
    "energy_mj",
    "busy_gpu_ms",
    "attested_gpu_ms",
    "undeclared_gpu_ms",
    "gpu_windows",
    "assumed_gpu_windows",
    "unknown_model_gpu_windows",
)
_BUSY_COLUMNS = tuple(
    f"busy_at_least_{(i + 1) * BUSY_STEP_PERCENT}pct_ms" for i in range(BUSY_STEPS)
)


def _row_int(row: Mapping[str, object], name: str, *, minimum: int | None = 0) -> int:
    value = row[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"bucket row {name} is not an integer: {value!r}")  # noqa: TRY004
    if minimum is not None and value < minimum:
        raise ValueError(f"bucket row {name} is below {minimum}: {value}")
    return value


def accumulate(
    buckets: dict[int, Bucket], figures: Iterable[GpuWindowFigures], bucket_ns: int
) -> None:
    """Add each GPU-window to the bucket containing its window start, creating buckets as needed."""
    for item in figures:
        start = bucket_start(item.window_start_ns, bucket_ns)
        bucket = buckets.get(start)
        if bucket is None:
            bucket = buckets[start] = Bucket(bucket_start_ns=start)
        bucket.add(item)


def _pick(figure: Figure, upper: int, central: int, energy: int) -> int:
    match figure:
        case Figure.UPPER_BOUND:
            return upper
        case Figure.CENTRAL_ESTIMATE:
            return central
        case Figure.ENERGY:
            return energy
        case Figure.SITE_ENERGY:  # not a window's figure: the evaluation adds it per bucket
            return 0


# --- windows and gaps ----------------------------------------------------------------------------


class GpuEdge(NamedTuple):
    """What the gap rule needs of one GPU of a window: its identity and energy readings.

    (A named tuple: one is made for every GPU of every accepted attestation.)"""

    uuid: str
    model: str
    energy_start_mj: int
    energy_end_mj: int
    energy_ok: bool
    """The counter state was OK in this window (read at both edges, no reset)."""


@dataclass(frozen=True, slots=True)
class WindowEdge:
    """What the gap rule needs of one accepted window."""

    seq: int
    window_start_ns: int
    window_end_ns: int
    boot_id: str
    log_index: int
    gpus: tuple[GpuEdge, ...]
    sampler_backend: int = 0
    """The window's ``SamplerBackend`` (provenance, shown per node in reports)."""
    agent_digest: bytes = b""
    agent_version: str = ""

    @property
    def gpu_models(self) -> tuple[str, ...]:
        return tuple(gpu.model for gpu in self.gpus)


def backend_name(value: int) -> str:
    """A ``SamplerBackend`` as the verifier's config names it: nvml, sim, replay."""
    try:
        return apb.SamplerBackend.Name(value).removeprefix("SAMPLER_BACKEND_").lower()  # type: ignore[arg-type]
    except ValueError:
        return f"unknown ({value})"


def span_edges(
    windows: Sequence[WindowEdge], span_start_ns: int, span_end_ns: int
) -> tuple[WindowEdge, ...]:
    """A node's first and last window (in seq order) that overlap its span, from all of its
    windows: what both the server and the offline auditor show as the node's provenance."""
    first = next((w for w in windows if w.window_end_ns > span_start_ns), None)
    last = next((w for w in reversed(windows) if w.window_start_ns < span_end_ns), None)
    return edges_in_span(first, last, span_start_ns, span_end_ns)


def edges_in_span(
    first: WindowEdge | None, last: WindowEdge | None, span_start_ns: int, span_end_ns: int
) -> tuple[WindowEdge, ...]:
    """``first`` (the first window ending after the span's start) and ``last`` (the last one
    starting before its end), each only if it overlaps the span."""
    found: list[WindowEdge] = []
    for edge in (first, last):
        if edge is None or edge.window_start_ns >= span_end_ns:
            continue
        if edge.window_end_ns <= span_start_ns:
            continue
        if edge not in found:
            found.append(edge)
    return tuple(found)


def window_edge(att: VerifiedAttestation, log_index: int) -> WindowEdge:
    """The :class:`WindowEdge` of an accepted attestation."""
    body = att.body
    return WindowEdge(
        seq=body.seq,
        window_start_ns=body.window_start_ns,
        window_end_ns=body.window_end_ns,
        boot_id=body.boot_id,
        log_index=log_index,
        gpus=tuple(
            GpuEdge(
                uuid=gpu.uuid,
                model=gpu.model,
                energy_start_mj=gpu.energy_start_mj,
                energy_end_mj=gpu.energy_end_mj,
                energy_ok=gpu.energy_counter_state == apb.ENERGY_COUNTER_STATE_OK,
            )
            for gpu in body.gpus
        ),
        sampler_backend=body.sampler_backend,
        agent_digest=body.agent_digest,
        agent_version=body.agent_version,
    )


@dataclass(frozen=True, slots=True)
class Gap:
    """An unattested stretch ``[start_ns, end_ns)`` of one node (ADR 0001, "Gaps").

    ``seq_before``/``log_index_before`` name the accepted window before it (``None`` for a gap at
    the start of the node's timeline), ``seq_after``/``log_index_after`` the one after it (``None``
    for an open gap). ``energy_mj`` and ``energy_bound_flop`` are 0 unless ``energy_bounded``.
    ``time_bound_flop`` is the ceiling from time alone over the GPUs of the window before
    (``gpu_models_before``, kept so that a part of the gap can be re-bounded); for a gap at the
    start of the timeline, over the GPUs of the window after it; for a node with no window at
    all, over the GPUs it enrolled with (``enrolled_gpu_models`` of the span functions).
    """

    node_id: NodeId
    start_ns: int
    end_ns: int
    seq_before: int | None
    seq_after: int | None
    energy_bounded: bool
    energy_mj: int
    energy_bound_flop: int
    time_bound_flop: int
    open: bool
    log_index_before: int | None
    log_index_after: int | None
    gpu_models_before: tuple[str, ...] = ()
    late: bool = False
    """The stretch holds late evidence counted like a gap (verifier/accounting/late.py)."""

    def __post_init__(self) -> None:
        if self.end_ns <= self.start_ns:
            raise ValueError(f"a gap must end after it starts ({self.start_ns}..{self.end_ns})")
        if (self.seq_before is None) != (self.log_index_before is None):
            raise ValueError("seq_before and log_index_before are set together")
        if (self.seq_after is None) != (self.log_index_after is None):
            raise ValueError("seq_after and log_index_after are set together")
        if not self.energy_bounded and (self.energy_mj or self.energy_bound_flop):
            raise ValueError("an unbounded gap has no energy figures")

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns


def gap_counted_flop(gap: Gap) -> int:
    """What a gap counts for in upper-bound rules: where the counter spans it, its energy at the
    best FLOP per joule (the energy bound x :data:`attest.compute.ENERGY_EFFICIENCY_MARGIN_PPM`,
    no idle allowance), at most its time bound; otherwise its time bound (peak x time)."""
    if not gap.energy_bounded:
        return gap.time_bound_flop
    margin = compute.ENERGY_EFFICIENCY_MARGIN_PPM
    return min(gap.time_bound_flop, -(-gap.energy_bound_flop * margin // compute.PPM))


def time_bound_for(gpu_models: Sequence[str], duration_ns: int) -> int:
    """Peak x duration summed over ``gpu_models`` (one GPU each); the duration rounded up to ms."""
    duration_ms = -(-duration_ns // NS_PER_MS)
    return sum(compute.time_bound_flop(model, 1, duration_ms) for model in gpu_models)


def gap_between(node_id: NodeId, a: WindowEdge, b: WindowEdge, tolerance_ns: int) -> Gap | None:
    """The gap between two consecutive accepted windows of a node (``b`` follows ``a`` in seq),
    or ``None`` when ``b`` starts no more than ``tolerance_ns`` after ``a`` ends.

    Energy-bounded when both share the boot id and every GPU of ``a`` is in ``b`` (same UUID)
    with the counter OK in both and not lower at ``b``'s start than at ``a``'s end.
    """
    if b.seq <= a.seq:
        raise ValueError(f"window seq {b.seq} does not follow seq {a.seq}")
    if tolerance_ns < 0:
        raise ValueError(f"tolerance_ns must not be negative, got {tolerance_ns}")
    start_ns, end_ns = a.window_end_ns, b.window_start_ns
    if end_ns - start_ns <= tolerance_ns:
        return None
    after = {gpu.uuid: gpu for gpu in b.gpus}
    bounded = a.boot_id == b.boot_id
    energy_mj = 0
    energy_flop = 0
    for gpu in a.gpus:
        later = after.get(gpu.uuid)
        if (
            later is None
            or not gpu.energy_ok
            or not later.energy_ok
            or later.energy_start_mj < gpu.energy_end_mj
        ):
            bounded = False
            break
        used_mj = later.energy_start_mj - gpu.energy_end_mj
        energy_mj += used_mj
        energy_flop += compute.energy_bound_flop(gpu.model, used_mj)
    return Gap(
        node_id=node_id,
        start_ns=start_ns,
        end_ns=end_ns,
        seq_before=a.seq,
        seq_after=b.seq,
        energy_bounded=bounded,
        energy_mj=energy_mj if bounded else 0,
        energy_bound_flop=energy_flop if bounded else 0,
        time_bound_flop=time_bound_for(a.gpu_models, end_ns - start_ns),
        open=False,
        log_index_before=a.log_index,
        log_index_after=b.log_index,
        gpu_models_before=a.gpu_models,
    )


def node_active_span(
    period_start_ns: int, as_of_ns: int, enrolled_at_ns: int, revoked_at_ns: int | None
) -> tuple[int, int] | None:
    """A node's active span in a report, ``[max(period_start, enrolled_at), min(as_of,
    revoked_at))``, or ``None`` for a node enrolled at or after ``as_of`` or revoked before the
    period. The span may be empty (start == end) for a node revoked at the period's start."""
    if enrolled_at_ns >= as_of_ns:
        return None
    if revoked_at_ns is not None and revoked_at_ns < period_start_ns:
        return None
    end = as_of_ns if revoked_at_ns is None else min(as_of_ns, revoked_at_ns)
    start = max(period_start_ns, enrolled_at_ns)
    return start, max(start, end)


def _edge_gap(
    node_id: NodeId,
    start_ns: int,
    end_ns: int,
    after: WindowEdge | None,
    enrolled_gpu_models: Sequence[str],
) -> Gap:
    """A stretch with no window before it in the node's timeline: unbounded by energy, and
    bounded in time by the GPUs of the window after it, or with no window at all by the GPUs the
    node enrolled with."""
    models = tuple(enrolled_gpu_models) if after is None else after.gpu_models
    return Gap(
        node_id=node_id,
        start_ns=start_ns,
        end_ns=end_ns,
        seq_before=None,
        seq_after=None if after is None else after.seq,
        energy_bounded=False,
        energy_mj=0,
        energy_bound_flop=0,
        time_bound_flop=time_bound_for(models, end_ns - start_ns),
        open=after is None,
        log_index_before=None,
        log_index_after=None if after is None else after.log_index,
        gpu_models_before=models,
    )


def _open_gap(node_id: NodeId, start_ns: int, end_ns: int, last: WindowEdge) -> Gap:
    """The stretch after a node's last window: open, unbounded, bounded in time by its GPUs."""
    return Gap(
        node_id=node_id,
        start_ns=start_ns,
        end_ns=end_ns,
        seq_before=last.seq,
        seq_after=None,
        energy_bounded=False,
        energy_mj=0,
        energy_bound_flop=0,
        time_bound_flop=time_bound_for(last.gpu_models, end_ns - start_ns),
        open=True,
        log_index_before=last.log_index,
        log_index_after=None,
        gpu_models_before=last.gpu_models,
    )


def _clip_start(gap: Gap, start_ns: int) -> Gap:
    """``gap`` cut to begin at ``start_ns`` (the span's start): a gap at the edge is unbounded,
    and its time ceiling covers the part kept."""
    if start_ns <= gap.start_ns:
        return gap
    return Gap(
        node_id=gap.node_id,
        start_ns=start_ns,
        end_ns=gap.end_ns,
        seq_before=gap.seq_before,
        seq_after=gap.seq_after,
        energy_bounded=False,
        energy_mj=0,
        energy_bound_flop=0,
        time_bound_flop=time_bound_for(gap.gpu_models_before, gap.end_ns - start_ns),
        open=gap.open,
        log_index_before=gap.log_index_before,
        log_index_after=gap.log_index_after,
        gpu_models_before=gap.gpu_models_before,
    )


def _check_span_arguments(tolerance_ns: int, grace_ns: int) -> None:
    if tolerance_ns < 0:
        raise ValueError(f"tolerance_ns must not be negative, got {tolerance_ns}")
    if grace_ns < 0:
        raise ValueError(f"grace_ns must not be negative, got {grace_ns}")


def node_gaps_from_windows(
    node_id: NodeId,
    span_start_ns: int,
    span_end_ns: int,
    windows: Sequence[WindowEdge],
    *,
    tolerance_ns: int,
    grace_ns: int,
    enrolled_gpu_models: Sequence[str],
) -> list[Gap]:
    """A node's gaps in its active span ``[span_start_ns, span_end_ns)``, from its windows in seq
    order (the offline auditor's form). By time.

    ``windows`` must include the node's last accepted window that starts before the span (if any)
    and every one after it; earlier ones change nothing. A window starting at or after the span's
    end is ignored, and so is everything after it: nothing after ``as_of`` counts either way.

    The gaps are the maximal stretches of the span not covered by a window and longer than
    ``tolerance_ns``; the stretch after the last window counts only from its end +
    ``grace_ns`` and is ``open``. (Stretches are taken between consecutive windows, as at ingest;
    for windows that do not go back in time this is exactly the uncovered part of the span.)
    """
    _check_span_arguments(tolerance_ns, grace_ns)
    for earlier, later in pairwise(windows):
        if later.seq <= earlier.seq:
            raise ValueError(f"windows are not in seq order ({earlier.seq} then {later.seq})")
    if span_end_ns <= span_start_ns:
        return []
    gaps: list[Gap] = []
    previous: WindowEdge | None = None
    for window in windows:
        if window.window_start_ns >= span_end_ns:
            break
        if window.window_end_ns > span_start_ns:
            if previous is None:
                if window.window_start_ns - span_start_ns > tolerance_ns:
                    gaps.append(
                        _edge_gap(
                            node_id,
                            span_start_ns,
                            window.window_start_ns,
                            window,
                            enrolled_gpu_models,
                        )
                    )
            else:
                start_ns = max(span_start_ns, previous.window_end_ns)
                if window.window_start_ns - start_ns > tolerance_ns:
                    whole = gap_between(node_id, previous, window, 0)
                    assert whole is not None  # longer than the part of it in the span
                    gaps.append(_clip_start(whole, start_ns))
        previous = window
    if previous is None:
        if span_end_ns - span_start_ns > tolerance_ns:
            gaps.append(_edge_gap(node_id, span_start_ns, span_end_ns, None, enrolled_gpu_models))
    else:
        start_ns = max(span_start_ns, previous.window_end_ns + grace_ns)
        if span_end_ns - start_ns > tolerance_ns:
            gaps.append(_open_gap(node_id, start_ns, span_end_ns, previous))
    gaps.sort(key=lambda gap: (gap.start_ns, gap.end_ns))
    return gaps


def node_gaps_from_summary(
    node_id: NodeId,
    span_start_ns: int,
    span_end_ns: int,
    interior_gaps: Sequence[Gap],
    *,
    first_window_ending_after_start: WindowEdge | None,
    last_window_starting_before_end: WindowEdge | None,
    tolerance_ns: int,
    grace_ns: int,
    enrolled_gpu_models: Sequence[str],
) -> list[Gap]:
    """The same gaps as :func:`node_gaps_from_windows`, from what the server keeps (its form).

    ``interior_gaps``: the gaps :func:`gap_between` recorded at ingest between the node's
    consecutive windows (with the same ``tolerance_ns``), at least those that overlap the span;
    others are ignored. The two windows are the node's first (in seq order) that ends after the
    span's start and its last that starts before the span's end, or ``None``.
    """
    _check_span_arguments(tolerance_ns, grace_ns)
    if span_end_ns <= span_start_ns:
        return []
    first = first_window_ending_after_start
    last = last_window_starting_before_end
    if first is not None and first.window_start_ns >= span_end_ns:
        first = None  # after as_of: as if not yet there
    if last is not None and last.window_start_ns >= span_end_ns:
        raise ValueError("last_window_starting_before_end starts at or after the span's end")
    gaps: list[Gap] = []
    first_has_gap_before = False
    for gap in interior_gaps:
        if gap.node_id != node_id:
            raise ValueError("an interior gap of another node was given")
        if gap.open or gap.seq_before is None or gap.seq_after is None:
            raise ValueError("interior gaps lie between two windows")
        # The window after the gap starts at gap.end_ns; one at or after the span's end is
        # ignored, and the stretch before it is then the open gap after the last window.
        if gap.end_ns <= span_start_ns or gap.end_ns >= span_end_ns:
            continue
        if first is not None and gap.seq_after == first.seq:
            first_has_gap_before = True
        start_ns = max(span_start_ns, gap.start_ns)
        if gap.end_ns - start_ns > tolerance_ns:
            gaps.append(_clip_start(gap, start_ns))
    # Before the first window in the span: part of a recorded gap (above), or nothing was before
    # it, or its predecessor ended within tolerance of it (and so is this stretch).
    if (
        first is not None
        and not first_has_gap_before
        and first.window_start_ns - span_start_ns > tolerance_ns
    ):
        gaps.append(
            _edge_gap(node_id, span_start_ns, first.window_start_ns, first, enrolled_gpu_models)
        )
    if last is None:
        if span_end_ns - span_start_ns > tolerance_ns:
            gaps.append(_edge_gap(node_id, span_start_ns, span_end_ns, None, enrolled_gpu_models))
    else:
        start_ns = max(span_start_ns, last.window_end_ns + grace_ns)
        if span_end_ns - start_ns > tolerance_ns:
            gaps.append(_open_gap(node_id, start_ns, span_end_ns, last))
    gaps.sort(key=lambda gap: (gap.start_ns, gap.end_ns))
    return gaps


# --- wire form -----------------------------------------------------------------------------------


def gap_detail(gap: Gap) -> findings_pb2.GapDetail:
    """The GapDetail of a gap (an absent seq is 0 on the wire; see ``GapReport.open``)."""
    return findings_pb2.GapDetail(
        gap_start_ns=gap.start_ns,
        gap_end_ns=gap.end_ns,
        seq_before=0 if gap.seq_before is None else gap.seq_before,
        seq_after=0 if gap.seq_after is None else gap.seq_after,
        energy_bounded=gap.energy_bounded,
        energy_mj=gap.energy_mj,
        energy_bound_flop=str(gap.energy_bound_flop),
        time_bound_flop=str(gap.time_bound_flop),
    )


def gap_report(
    gap: Gap, node_name: str, finding_log_index: int | None = None
) -> audit_pb2.GapReport:
    """The GapReport of a gap, with the log index of its GAP finding where one was logged."""
    report = audit_pb2.GapReport(
        node_id=bytes(gap.node_id),
        node_name=node_name,
        gap=gap_detail(gap),
        open=gap.open,
        late=gap.late,
    )
    if finding_log_index is not None:
        report.finding_log_index = finding_log_index
        report.has_finding = True
    return report
