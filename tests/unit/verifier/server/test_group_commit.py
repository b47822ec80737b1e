"""GroupCommitter: batches from many streams share transactions, and every transaction runs on the
runtime's one writer thread (its store connection keeps its page cache from commit to commit)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

from verifier.access import Access
from verifier.config import parse_config
from verifier.server.ingest import Ingestor
from verifier.server.limits import Limiter
from verifier.server.metrics import VerifierMetrics
from verifier.server.servicers import SMALL_BATCH_ENVELOPES, GroupCommitter, Runtime


@dataclass
class _Batch:
    raws: list[bytes]
    result: object = None


@dataclass
class _Ingestor:
    """Stands in for the ingest pipeline: records which thread checked and committed what."""

    commits: list[tuple[str, int]] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)

    def unchecked(self, raws: list[bytes]) -> _Batch:
        return _Batch(raws)

    def check(self, raws: list[bytes]) -> _Batch:
        self.checks.append(threading.current_thread().name)
        return _Batch(raws)

    def commit(self, batches: list[_Batch]) -> None:
        self.commits.append((threading.current_thread().name, len(batches)))
        for batch in batches:
            batch.result = f"receipts for {len(batch.raws)}"


def _runtime(pool: ThreadPoolExecutor, writer: ThreadPoolExecutor) -> Runtime:
    config = parse_config(b"[server]\ninsecure_no_tls = true\n")
    return Runtime(
        pool, writer, Access(config.access), Limiter(config.limits), VerifierMetrics(),
        threading.Event(),
    )  # fmt: skip


def test_every_group_commits_on_the_writer_thread_and_large_batches_are_checked_on_the_pool() -> (
    None
):
    ingestor = _Ingestor()
    pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="test-pool")
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-writer")
    committer = GroupCommitter(
        cast(Ingestor, ingestor), _runtime(pool, writer), linger_ns=0, full_envelopes=1000
    )
    large = SMALL_BATCH_ENVELOPES + 1

    async def main() -> list[Any]:
        answers = []
        for wave in range(5):  # waves apart in time: several groups, not one
            sizes = [1, 2, large] if wave % 2 else [1] * 6
            answers += await asyncio.gather(*(committer.submit([b"x"] * size) for size in sizes))
        return answers

    try:
        answers = asyncio.run(main())
    finally:
        pool.shutdown()
        writer.shutdown()
    assert len(answers) == 3 * 6 + 2 * 3
    assert answers[:6] == ["receipts for 1"] * 6
    assert answers[6:9] == ["receipts for 1", "receipts for 2", f"receipts for {large}"]
    assert len(ingestor.commits) >= 5
    assert sum(count for _, count in ingestor.commits) == len(answers)
    assert {name.rsplit("_", 1)[0] for name, _ in ingestor.commits} == {"test-writer"}
    # Only the large batches had a check job of their own, on the pool.
    assert len(ingestor.checks) == 2
    assert all(name.startswith("test-pool") for name in ingestor.checks)
