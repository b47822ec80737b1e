from __future__ import annotations

import asyncio

from verifier.server.servicers import IdleStreams

IDLE_S = 0.2


async def _stream(idle: IdleStreams, waits_s: list[float], work_s: float = 0.0) -> str:
    """Waits for each of ``waits_s`` as a stream waits for a message, working ``work_s``
    between messages; what ended it."""
    task = asyncio.current_task()
    assert task is not None
    for wait_s in waits_s:
        idle.waiting(task)
        try:
            await asyncio.sleep(wait_s)
        except asyncio.CancelledError:
            if idle.expired(task):
                return "idle"
            raise
        finally:
            idle.forget(task)
        await asyncio.sleep(work_s)
    return "done"


def test_a_silent_stream_ends_and_a_talking_one_does_not() -> None:
    async def main() -> tuple[str, str, str, int]:
        idle = IdleStreams(IDLE_S)
        silent = asyncio.create_task(_stream(idle, [10.0]))
        # Alive five times the idle timeout, but never silent that long.
        talking = asyncio.create_task(_stream(idle, [IDLE_S / 4] * 20))
        # Works longer than the timeout between messages: only the waits are timed.
        busy = asyncio.create_task(_stream(idle, [0.01, 0.01], work_s=3 * IDLE_S))
        started = asyncio.get_running_loop().time()
        ended = await silent
        elapsed_ms = int(1000 * (asyncio.get_running_loop().time() - started))
        return ended, await talking, await busy, elapsed_ms

    silent, talking, busy, elapsed_ms = asyncio.run(main())
    assert (silent, talking, busy) == ("idle", "done", "done")
    assert elapsed_ms >= 1000 * IDLE_S


def test_a_cancellation_from_elsewhere_is_not_taken_for_silence() -> None:
    async def main() -> bool:
        idle = IdleStreams(60.0)
        task = asyncio.create_task(_stream(idle, [10.0]))
        await asyncio.sleep(0.01)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return True
        return False

    assert asyncio.run(main())


def test_the_timer_follows_the_oldest_waiting_stream() -> None:
    """Streams that start waiting later are swept when their own time comes, not before."""

    async def main() -> list[str]:
        idle = IdleStreams(IDLE_S)
        first = asyncio.create_task(_stream(idle, [10.0]))
        await asyncio.sleep(IDLE_S / 2)
        second = asyncio.create_task(_stream(idle, [10.0]))
        await first
        done_after_first = second.done()
        return [await second, str(done_after_first)]

    assert asyncio.run(main()) == ["idle", "False"]
