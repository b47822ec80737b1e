"""Process-wide settings for a long-running verifier (``pausewatch verifier serve``).

A verifier holding a fleet's streams keeps a large, long-lived heap: each open stream is about 70
objects that the garbage collector tracks (10,000 streams: about 900,000), and each batch leaves
a few dozen objects that wait for the stream's next message, a minute later. With CPython's
default thresholds (700, 10, 10), those objects outlive two young collections and reach the
oldest generation, and a full collection of the whole heap followed every 30 s or so, at 0.4 s
each (bench/bench_streams.py, 10,000 agents; docs/adr/0012-fleet-serving.md).
:func:`tune_garbage_collector` raises the thresholds so that an object living one agent interval
dies in the middle generation: a young collection every 20,000 net allocations (seconds apart at a
fleet's rate) and a middle one every 50 of those (minutes apart), so a minute-long object is
freed by reference counting before it can be promoted. Reference cycles are still collected, later.
"""

from __future__ import annotations

import gc

GC_THRESHOLDS = (20_000, 50, 10)
"""(young, middle, old): see the module docstring for why these values."""


def tune_garbage_collector() -> tuple[int, int, int]:
    """Set :data:`GC_THRESHOLDS` and move what start-up allocated (modules, configuration) out of
    the collector's sight. Returns the thresholds that were in force before."""
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    return before
