"""The NVML backend on a real GPU (skipped where NVML does not initialise)."""

from __future__ import annotations

import time

import pytest

from agent.sampler.nvml import NvmlSampler
from attest.samples import SampleFlags


@pytest.mark.gpu
def test_real_nvml_reads_every_gpu() -> None:
    sampler = NvmlSampler(sample_interval_ms=1000)
    sampler.open(time.time_ns())
    if not sampler.initialized or not sampler.inventory():
        pytest.skip("NVML does not initialise here (no GPU or no driver)")
    try:
        poll = sampler.poll(time.time_ns())
        assert poll is not None
        assert len(poll.readings) == len(sampler.inventory())
        for reading in poll.readings:
            assert reading.identity.uuid.startswith(("GPU-", "MIG-"))
            assert reading.sample is not None
            assert reading.sample.flags & SampleFlags.ENERGY or any(
                f.metric.value == "energy" for f in reading.failures
            )
        assert poll.driver_version
    finally:
        sampler.close()
