from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from attest import merkle, samples
from attest.samples import Sample, SampleFlags


def sample(**kwargs: object) -> Sample:
    fields: dict[str, object] = {
        "gpu_index": 3,
        "timestamp_ns": 1_795_939_200_123_456_789,
        "interval_ms": 1000,
        "flags": SampleFlags.UTILIZATION | SampleFlags.ENERGY,
        "utilization_pct": 87,
        "energy_mj": 5_000_000_123,
    }
    fields.update(kwargs)
    return Sample(**fields)  # type: ignore[arg-type]


def test_encoding_is_fixed_width_and_round_trips() -> None:
    s = sample()
    data = samples.encode_sample(s)
    assert len(data) == samples.SAMPLE_SIZE == 51
    assert data[0] == 1  # version
    assert samples.decode_sample(data) == s


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b[:-1], "51 bytes"),
        (lambda b: b"\x02" + b[1:], "version"),
        (lambda b: b[:-1] + b"\x01", "reserved"),
        (lambda b: b[:3] + b"\x80" + b[4:], "reserved"),
        (lambda b: b[:13] + bytes([101]) + b[14:], "over 100"),
    ],
)
def test_decode_rejects_malformed_samples(mutate, message) -> None:  # type: ignore[no-untyped-def]
    data = samples.encode_sample(sample())
    with pytest.raises(ValueError, match=message):
        samples.decode_sample(mutate(data))


def test_not_read_differs_from_zero() -> None:
    read_zero = sample(flags=SampleFlags.UTILIZATION, utilization_pct=0)
    not_read = sample(flags=SampleFlags.NONE, utilization_pct=0)
    assert samples.encode_sample(read_zero) != samples.encode_sample(not_read)


def test_samples_root_is_the_rfc6962_root_of_the_encodings() -> None:
    batch = [sample(timestamp_ns=1_000 + i, gpu_index=i % 2) for i in range(5)]
    expected = merkle.root_from_leaf_hashes(
        [merkle.leaf_hash(samples.encode_sample(s)) for s in batch]
    )
    assert samples.samples_root(batch) == expected
    assert samples.samples_root([]) == merkle.EMPTY_ROOT
    batch[2] = sample(timestamp_ns=1_002, gpu_index=0, utilization_pct=86)
    assert samples.samples_root(batch) != expected


@given(
    util=st.integers(0, 100),
    energy=st.integers(0, 2**64 - 1),
    power=st.integers(0, 2**32 - 1),
    flags=st.integers(0, 0x7F),
)
def test_property_round_trip(util: int, energy: int, power: int, flags: int) -> None:
    s = sample(utilization_pct=util, energy_mj=energy, power_mw=power, flags=SampleFlags(flags))
    assert samples.decode_sample(samples.encode_sample(s)) == s
