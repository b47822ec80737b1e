"""nvidia-smi logs as users bring them, not as our generator writes them.

Each test sends one shape a real log takes (saved on Windows, compressed by logrotate, cut short
when the recorder was killed, restarted into the same file, ...) and checks that it reads with
the figures the log holds, or is refused naming the file, the line and what to do.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from agent.sampler.replay import Recording, RecordingError, ReplaySampler, load_recording

HEADER = "timestamp, index, uuid, name, utilization.gpu [%], power.draw [W], memory.used [MiB]"
H100 = "NVIDIA H100 80GB HBM3"


def docs_log(seconds: int = 10, gpus: int = 2, start_s: int = 0) -> list[str]:
    """Rows of the docs' recording command (``-l 1``): every GPU each second, 50 %, 300 W."""
    rows = []
    for second in range(start_s, start_s + seconds):
        stamp = f"2024/05/01 12:{second // 60:02d}:{second % 60:02d}.123"
        for gpu in range(gpus):
            uuid = f"GPU-{gpu:08x}-1111-2222-3333-444455556666"
            rows.append(f"{stamp}, {gpu}, {uuid}, {H100}, 50 %, 300.00 W, 1000 MiB")
    return rows


def figures(recording: Recording) -> list[tuple[int, int, int, int]]:
    """Per GPU: samples, utilisation-ms credited, the integrated energy (mJ) and the last time."""
    sampler = ReplaySampler(recording, node_id="ab" * 32)
    sampler.open(0)
    totals: dict[str, list[int]] = {}
    while (poll := sampler.poll(0)) is not None:
        for reading in poll.readings:
            sample = reading.sample
            assert sample is not None
            total = totals.setdefault(reading.identity.uuid, [0, 0, 0, 0])
            total[0] += 1
            total[1] += sample.utilization_pct * sample.interval_ms
            total[2] = sample.energy_mj
            total[3] = sample.timestamp_ns
    return [tuple(t) for _, t in sorted(totals.items())]  # type: ignore[misc]


def write(path: Path, lines: list[str], *, newline: str = "\n", encoding: str = "utf-8") -> Path:
    path.write_bytes((newline.join(lines) + newline).encode(encoding))
    return path


@pytest.fixture
def plain(tmp_path: Path) -> list[tuple[int, int, int, int]]:
    """The figures of the docs' log as nvidia-smi writes it."""
    return figures(load_recording(write(tmp_path / "plain.csv", [HEADER, *docs_log()])))


# -- how the file was saved --------------------------------------------------------------------


def test_a_log_saved_on_windows_with_a_bom_and_crlf_reads_as_the_plain_one(
    tmp_path: Path, plain: list[tuple[int, int, int, int]]
) -> None:
    path = write(tmp_path / "node.csv", [HEADER, *docs_log()], newline="\r\n", encoding="utf-8-sig")
    assert figures(load_recording(path)) == plain


def test_a_log_redirected_by_windows_powershell_utf16_reads_as_the_plain_one(
    tmp_path: Path, plain: list[tuple[int, int, int, int]]
) -> None:
    # Windows PowerShell 5's `>` writes UTF-16 LE with a BOM.
    path = write(tmp_path / "node.csv", [HEADER, *docs_log()], newline="\r\n", encoding="utf-16")
    assert figures(load_recording(path)) == plain


def test_a_gzip_compressed_log_reads_as_the_plain_one(
    tmp_path: Path, plain: list[tuple[int, int, int, int]]
) -> None:
    path = tmp_path / "node.csv.gz"
    path.write_bytes(gzip.compress(("\n".join([HEADER, *docs_log()]) + "\n").encode()))
    assert figures(load_recording(path)) == plain


def test_a_truncated_gzip_log_is_refused_naming_the_file_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "node.csv.gz"
    whole = gzip.compress(("\n".join([HEADER, *docs_log(seconds=600)]) + "\n").encode())
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(RecordingError) as refused:
        load_recording(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: ")
    assert message.count(str(path)) == 1
    assert "gzip" in message and "cut short" in message and "zcat" in message


def test_a_line_that_is_not_utf8_is_refused_naming_the_line(tmp_path: Path) -> None:
    lines = [HEADER, *docs_log()]
    path = tmp_path / "node.csv"
    body = ("\n".join(lines[:5]) + "\n").encode() + b"\xff\xfe garbage\n"
    path.write_bytes(body + ("\n".join(lines[5:]) + "\n").encode())
    with pytest.raises(RecordingError, match=rf"^{path}: line 6: not UTF-8 text"):
        load_recording(path)


def test_an_unreadable_file_is_named_once(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match=rf"^{tmp_path}: cannot read it"):
        load_recording(tmp_path)
    with pytest.raises(RecordingError, match=rf"^{tmp_path / 'no.csv'}: the recording does not"):
        load_recording(tmp_path / "no.csv")
