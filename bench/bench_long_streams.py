"""Does a long-lived stream cost the verifier more memory with every message it carries?

    python bench/bench_long_streams.py [--streams 300] [--messages 400] [--plaintext]

A fleet's agents keep one stream open for days: 1,440 one-window batches a day each. A cost that
grew per message (a per-call arena, a buffer never given back) would not show in
bench_streams.py, whose streams carry a handful of messages, and would take a verifier down after
some days. One verifier process (SQLite, roles on, mutual TLS unless ``--plaintext``); ``--streams``
agents in this process, each on its own connection, send ``--messages`` one-window batches back to
back, in step: at each mark (1, 10, 50, 100, 200, 400, ... messages per stream) every stream
waits until all have got there, and the verifier's RSS is read. Printed: RSS at each mark, and
the RSS after the last message as a ratio to the RSS after the first (1.00: no growth), with
the growth per stream per message that the difference works out to.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent)]

from bench_streams import (  # noqa: E402
    SEED,
    S,
    _answer,
    _channel,
    _rss_mib,
    enroll_fleet,
    prepare,
)
from pausewatch.v1 import attestation_service_pb2 as spb  # noqa: E402
from pausewatch.v1 import attestation_service_pb2_grpc as spb_grpc  # noqa: E402

from tests.builders import TestNode  # noqa: E402
from tests.verifier_harness import start_verifier_process, stop_process  # noqa: E402

MARKS = (1, 10, 50, 100, 200, 400, 800, 1600, 3200)


class Marks:
    """Every stream waits at each mark until all streams have reached it; the RSS is read then."""

    def __init__(self, streams: int, marks: list[int], pid: int) -> None:
        self.streams = streams
        self.pid = pid
        self.arrived = dict.fromkeys(marks, 0)
        self.passed = {mark: asyncio.Event() for mark in marks}
        self.rss_mib: dict[int, float] = {}

    async def reached(self, mark: int) -> None:
        self.arrived[mark] += 1
        if self.arrived[mark] == self.streams:
            await asyncio.sleep(1.0)  # the last receipts' buffers settle
            rss = self.rss_mib[mark] = _rss_mib(self.pid)
            earlier = [m for m in self.rss_mib if m < mark]
            since = ""
            if earlier:
                previous = max(earlier)
                growth_b = (rss - self.rss_mib[previous]) * 2**20
                since = (
                    f" ({growth_b / (self.streams * (mark - previous)):+.1f} bytes per stream "
                    f"per message since {previous})"
                )
            print(f"after {mark:5d} messages per stream: RSS {rss:.0f} MiB{since}", flush=True)
            self.passed[mark].set()
        await self.passed[mark].wait()


async def _stream(
    address: str, tls: Path | None, node: TestNode, chain: list[bytes], marks: Marks
) -> int:
    accepted = 0
    async with _channel(address, tls, node) as channel:
        call = spb_grpc.AttestationServiceStub(channel).SubmitAttestations()
        for sent, envelope in enumerate(chain, start=1):
            await call.write(spb.SubmitAttestationsRequest(envelopes=[envelope]))
            response = _answer(await call.read())
            accepted += sum(r.status == spb.RECEIPT_STATUS_ACCEPTED for r in response.receipts)
            if sent in marks.passed:
                await marks.reached(sent)
        await call.done_writing()
        await call.code()
    return accepted


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--plaintext", action="store_true")
    args = parser.parse_args()
    marks = [mark for mark in MARKS if mark <= args.messages]
    if args.messages not in marks:
        marks.append(args.messages)
    setup = prepare(
        "bench-long-streams-",
        plaintext=args.plaintext,
        max_streams_per_peer=args.streams + 100,
        max_streams_per_identity=1,
        # No waiting for company: the streams send back to back, and what is measured is memory.
        linger_ms=0,
    )
    running = start_verifier_process(
        setup.files, setup.tmp / "verifier.log", setup.regulator_channel
    )
    assert running.process is not None
    try:
        now = time.time_ns()
        t0 = now - now % (60 * S) - 24 * 3600 * S
        nodes = [TestNode.from_seed(SEED + i, t0_ns=t0, gpus=8) for i in range(args.streams)]
        enroll_fleet(setup, running.address, nodes, t0)
        chains = [node.chain(args.messages) for node in nodes]
        print(
            f"verifier pid {running.process.pid}, "
            f"{'plaintext' if args.plaintext else 'mTLS'}: {args.streams} streams x "
            f"{args.messages} one-window batches; RSS before the streams "
            f"{_rss_mib(running.process.pid):.0f} MiB; log in {setup.tmp}",
            flush=True,
        )
        progress = Marks(args.streams, marks, running.process.pid)
        tls = None if args.plaintext else setup.tls

        async def all_streams() -> list[int]:
            return await asyncio.gather(
                *(
                    _stream(running.address, tls, node, chain, progress)
                    for node, chain in zip(nodes, chains, strict=True)
                )
            )

        started = time.monotonic()
        accepted = sum(asyncio.run(all_streams()))
        first, last = progress.rss_mib[marks[0]], progress.rss_mib[marks[-1]]
        per_message_b = (last - first) * 2**20 / (args.streams * (marks[-1] - marks[0]))
        print(
            f"accepted {accepted} of {args.streams * args.messages} in "
            f"{time.monotonic() - started:.0f} s; RSS after {marks[-1]} messages / after "
            f"{marks[0]}: {last:.0f} / {first:.0f} MiB = {last / first:.3f}x "
            f"({per_message_b:+.1f} bytes per stream per message)",
            flush=True,
        )
        return 0 if accepted == args.streams * args.messages else 1
    finally:
        stop_process(running, timeout_s=60)


if __name__ == "__main__":
    sys.exit(main())
