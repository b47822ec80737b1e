"""Raw GPU samples and their canonical encoding, the leaves of an attestation's samples root.

An agent keeps every raw sample of a window and commits to them with ``samples_merkle_root``;
on an audit request the lab reveals them, and anyone can check them against the signed root::

    leaves = [encode_sample(s) for s in samples]          # in (timestamp_ns, gpu_index) order
    root = samples_root(samples)                          # == body.samples_merkle_root

The encoding is fixed-width big-endian (51 bytes), version-tagged, with an explicit bit per metric
saying whether it was read, so "not read" can never be confused with zero.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntFlag

from attest import merkle

SAMPLE_ENCODING_VERSION = 1


class SampleFlags(IntFlag):
    """Which metrics this sample holds a reading for."""

    NONE = 0
    UTILIZATION = 1 << 0
    ENERGY = 1 << 1
    POWER = 1 << 2
    MEMORY_USED = 1 << 3
    COMPUTE_PROCESSES = 1 << 4
    TENSOR_ACTIVE = 1 << 5
    SM_ACTIVE = 1 << 6


# version u8 | gpu_index u16 | flags u16 | timestamp_ns i64 | utilization_pct u8 | energy_mj u64 |
# power_mw u32 | memory_used_bytes u64 | compute_processes u32 | tensor_active_ppm u32 |
# sm_active_ppm u32 | interval_ms u32 | reserved u8
_FORMAT = struct.Struct(">BHHqBQIQIIIIB")
SAMPLE_SIZE = _FORMAT.size


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of one GPU. A field is meaningful only if its flag is set."""

    gpu_index: int
    timestamp_ns: int
    interval_ms: int
    flags: SampleFlags
    utilization_pct: int = 0
    energy_mj: int = 0
    power_mw: int = 0
    memory_used_bytes: int = 0
    compute_processes: int = 0
    tensor_active_ppm: int = 0
    sm_active_ppm: int = 0


def encode_sample(sample: Sample) -> bytes:
    """The canonical bytes of a sample (a samples-tree leaf input)."""
    return _FORMAT.pack(
        SAMPLE_ENCODING_VERSION,
        sample.gpu_index,
        int(sample.flags),
        sample.timestamp_ns,
        sample.utilization_pct,
        sample.energy_mj,
        sample.power_mw,
        sample.memory_used_bytes,
        sample.compute_processes,
        sample.tensor_active_ppm,
        sample.sm_active_ppm,
        sample.interval_ms,
        0,
    )


def decode_sample(data: bytes) -> Sample:
    """Parse the canonical bytes of a sample; raises ValueError on anything else."""
    if len(data) != SAMPLE_SIZE:
        raise ValueError(f"a sample is {SAMPLE_SIZE} bytes, got {len(data)}")
    (
        version,
        gpu_index,
        flags,
        timestamp_ns,
        utilization_pct,
        energy_mj,
        power_mw,
        memory_used_bytes,
        compute_processes,
        tensor_active_ppm,
        sm_active_ppm,
        interval_ms,
        reserved,
    ) = _FORMAT.unpack(data)
    if version != SAMPLE_ENCODING_VERSION:
        raise ValueError(f"sample encoding version {version} is not {SAMPLE_ENCODING_VERSION}")
    if reserved != 0 or flags & ~0x7F:
        raise ValueError("sample has reserved bits set")
    if utilization_pct > 100:
        raise ValueError(f"sample utilization {utilization_pct}% is over 100")
    return Sample(
        gpu_index=gpu_index,
        timestamp_ns=timestamp_ns,
        interval_ms=interval_ms,
        flags=SampleFlags(flags),
        utilization_pct=utilization_pct,
        energy_mj=energy_mj,
        power_mw=power_mw,
        memory_used_bytes=memory_used_bytes,
        compute_processes=compute_processes,
        tensor_active_ppm=tensor_active_ppm,
        sm_active_ppm=sm_active_ppm,
    )


def samples_root(samples: Iterable[Sample]) -> bytes:
    """RFC 6962 root over the encoded samples, in the order given (the empty tree if none)."""
    return merkle.root_from_leaf_hashes([merkle.leaf_hash(encode_sample(s)) for s in samples])
