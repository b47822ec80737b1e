"""nvidia-smi logs as users bring them, not as our generator writes them.

Each test sends one shape a real log takes (saved on Windows, compressed by logrotate, cut short
when the recorder was killed, restarted into the same file, ...) and checks that it reads with
the figures the log holds, or is refused naming the file, the line and what to do.
"""

from __future__ import annotations

import gzip
import os
import re
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
    assert "compressed file is damaged or cut short" in message and "zcat" in message


def test_a_line_that_is_not_utf8_is_refused_naming_the_line(tmp_path: Path) -> None:
    lines = [HEADER, *docs_log()]
    path = tmp_path / "node.csv"
    body = ("\n".join(lines[:5]) + "\n").encode() + b"\xff\xfe garbage\n"
    path.write_bytes(body + ("\n".join(lines[5:]) + "\n").encode())
    with pytest.raises(RecordingError, match=rf"^{path}: line 6: not UTF-8 text"):
        load_recording(path)


def test_an_unreadable_file_is_named_once(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match=rf"^{tmp_path}: is a directory, not a recording$"):
        load_recording(tmp_path)
    with pytest.raises(RecordingError, match=rf"^{tmp_path / 'no.csv'}: the recording does not"):
        load_recording(tmp_path / "no.csv")


# -- cut short, and restarted into the same file ----------------------------------------------


def test_a_last_line_cut_short_when_the_recorder_was_killed_is_left_out(
    tmp_path: Path, plain: list[tuple[int, int, int, int]]
) -> None:
    # nvidia-smi's output to a file is block-buffered: a kill leaves half a line, no newline.
    path = tmp_path / "node.csv"
    rows = [HEADER, *docs_log(), docs_log(seconds=11)[-2][:41]]
    path.write_text("\n".join(rows), encoding="utf-8")
    assert figures(load_recording(path)) == plain


def test_a_line_cut_short_inside_the_file_is_refused_naming_it(tmp_path: Path) -> None:
    rows = [HEADER, *docs_log()]
    rows[7] = rows[7][:41]
    path = write(tmp_path / "node.csv", rows)
    with pytest.raises(RecordingError) as refused:
        load_recording(path)
    assert str(refused.value) == (
        f"{path}: line 8 has 3 columns, the header (line 1) has 7: a line cut short, or rows of "
        "another recording? delete it, or split the file there"
    )


def test_nul_bytes_left_by_a_power_loss_end_the_recording(
    tmp_path: Path, plain: list[tuple[int, int, int, int]]
) -> None:
    # A crash before the file system wrote the data back leaves the file's tail as NUL bytes.
    path = tmp_path / "node.csv"
    text = "\n".join([HEADER, *docs_log()]) + "\n" + docs_log(seconds=11)[-2][:30]
    path.write_bytes(text.encode() + b"\0" * 4096)
    assert figures(load_recording(path)) == plain


def test_a_restart_appended_to_the_same_file_reads_both_parts(tmp_path: Path) -> None:
    # `nvidia-smi ... >> gpu.csv` restarted after a power loss: the cut line, NUL bytes, then a
    # new header and rows, glued to the NULs (no newline before them). Then a clean restart.
    first, second, third = docs_log(10), docs_log(10, start_s=60), docs_log(10, start_s=120)
    text = "\n".join([HEADER, *first]) + "\n" + first[-1][:25]
    data = text.encode() + b"\0" * 100 + ("\n".join([HEADER, *second]) + "\n").encode()
    data += ("\n".join([HEADER, *third]) + "\n").encode()
    path = tmp_path / "node.csv"
    path.write_bytes(data)
    recording = load_recording(path)
    assert recording.gpu_count == 2
    assert len(recording.polls) == 30
    assert recording.stalls == 2  # the restarts' gaps stay gaps
    assert [samples for samples, _, _, _ in figures(recording)] == [30, 30]


def test_a_header_glued_to_a_cut_line_is_a_restart(tmp_path: Path) -> None:
    # Killed mid-line, restarted with `>>`: the new header follows the half line directly.
    first, second = docs_log(10), docs_log(10, start_s=60)
    text = "\n".join([HEADER, *first]) + "\n" + first[-1][:47] + HEADER + "\n"
    path = tmp_path / "node.csv"
    path.write_text(text + "\n".join(second) + "\n", encoding="utf-8")
    recording = load_recording(path)
    assert len(recording.polls) == 20
    assert [samples for samples, _, _, _ in figures(recording)] == [20, 20]


def test_a_header_with_other_columns_inside_the_file_is_refused(tmp_path: Path) -> None:
    other = "timestamp, index, utilization.gpu [%]"
    rows = [HEADER, *docs_log(5), other, "2024/05/01 12:01:00.000, 0, 5 %"]
    path = write(tmp_path / "node.csv", rows)
    with pytest.raises(RecordingError) as refused:
        load_recording(path)
    assert str(refused.value) == (
        f"{path}: line 12 is a header with other columns than line 1's: the file holds two "
        "recordings; split it at line 12 and replay each"
    )


def test_a_restart_of_a_log_without_index_reads_on_with_the_same_gpu_count(
    tmp_path: Path,
) -> None:
    from tests.nvsmi_logs import START_NS, generate_log

    before = generate_log(gpus=8, seconds=20, seed=5)
    after = generate_log(gpus=8, seconds=20, seed=6, start_ns=START_NS + 60 * 10**9)
    # Killed mid-poll: only 3 of the last poll's 8 rows were written.
    lines = before.text.splitlines()[:-5] + after.text.splitlines()
    path = write(tmp_path / "node.csv", lines)
    recording = load_recording(path, gpu_model=H100)
    assert recording.gpu_count == 8
    assert recording.gpu_count_source == "row cycle"
    assert len(recording.polls) == len(before.poll_ns) + len(after.poll_ns)
    assert [len(p.rows) for p in recording.polls].count(3) == 1
    assert recording.stalls == 1


def test_a_restart_with_fewer_gpus_in_a_log_without_index_is_refused_saying_why(
    tmp_path: Path,
) -> None:
    from tests.nvsmi_logs import START_NS, generate_log

    before = generate_log(gpus=8, seconds=5, seed=5)
    after = generate_log(gpus=7, seconds=5, seed=6, start_ns=START_NS + 60 * 10**9)
    path = write(tmp_path / "node.csv", before.text.splitlines() + after.text.splitlines())
    first_after = len(before.text.splitlines()) + 2
    with pytest.raises(RecordingError) as refused:
        load_recording(path)
    message = str(refused.value)
    assert f"bursts of 8 from line 2, then line {first_after} starts one of 7" in message
    assert "a GPU left or joined" in message and "--query-gpu=timestamp,index,uuid" in message


# -- GPUs named by index or uuid: rows missing, doubled, GPUs lost -----------------------------

S = 1_000_000_000
T0_NS = 1_714_564_800 * S  # 2024-05-01T12:00:00Z


def by_gpu(recording: Recording) -> dict[str, list[tuple[int, int, int]]]:
    """Per GPU uuid: (sample time - T0 in ms, index, interval_ms) of every sample replayed."""
    sampler = ReplaySampler(recording, node_id="ab" * 32)
    sampler.open(0)
    out: dict[str, list[tuple[int, int, int]]] = {}
    while (poll := sampler.poll(0)) is not None:
        for reading in poll.readings:
            sample = reading.sample
            assert sample is not None
            out.setdefault(reading.identity.uuid, []).append(
                ((sample.timestamp_ns - T0_NS) // 1_000_000, sample.gpu_index, sample.interval_ms)
            )
    return out


def test_a_gpu_row_missing_from_one_poll_leaves_the_others_at_their_own_time(
    tmp_path: Path,
) -> None:
    rows = docs_log(gpus=4)
    del rows[4 * 5]  # GPU 0's row of 12:00:05
    recording = load_recording(write(tmp_path / "node.csv", [HEADER, *rows]))
    gpu0 = by_gpu(recording)["GPU-00000000-1111-2222-3333-444455556666"]
    # Every row at the second it was recorded (not the poll before's), and the row after the
    # missing one credited up to the bound, 1.5 x the 1000 ms cadence.
    assert [at for at, _, _ in gpu0] == [123 + 1000 * s for s in (0, 1, 2, 3, 4, 6, 7, 8, 9)]
    assert [interval for _, _, interval in gpu0] == [1000] * 5 + [1500] + [1000] * 3
    assert len(recording.polls) == 10


def test_a_duplicated_line_is_left_out(
    tmp_path: Path, plain: list[tuple[int, int, int, int]]
) -> None:
    rows = docs_log()
    rows.insert(6, rows[5])  # a log shipper's retry
    assert figures(load_recording(write(tmp_path / "node.csv", [HEADER, *rows]))) == plain


def test_a_log_with_every_line_twice_reads_as_the_plain_one(
    tmp_path: Path, plain: list[tuple[int, int, int, int]]
) -> None:
    rows = [row for row in docs_log() for _ in (1, 2)]
    recording = load_recording(write(tmp_path / "node.csv", [HEADER, *rows]))
    assert recording.gpu_count == 2
    assert figures(recording) == plain


def test_two_different_readings_of_a_gpu_at_one_time_are_refused(tmp_path: Path) -> None:
    # -lms 500 with the milliseconds cut off: two polls a second share a timestamp.
    rows = [HEADER]
    for second in range(3):
        for half in (0, 1):
            for gpu in range(2):
                util = 40 + 10 * half
                rows.append(
                    f"2024/05/01 12:00:0{second}, {gpu}, GPU-{gpu}, {H100}, {util} %, 1 W, 1 MiB"
                )
    path = write(tmp_path / "node.csv", rows)
    with pytest.raises(RecordingError) as refused:
        load_recording(path)
    assert str(refused.value) == (
        f"{path}: line 4: GPU GPU-0 has a second row at 2024/05/01 12:00:00.000 (line 2) with "
        "other values; rows of one GPU need distinct times: are the milliseconds cut off, or "
        "were two recordings merged?"
    )


def test_a_gpu_lost_from_a_uuid_log_keeps_the_others_indices(tmp_path: Path) -> None:
    header = "timestamp, uuid, utilization.gpu [%], power.draw [W]"
    rows = [header]
    for second in range(6):
        for gpu in range(4):
            if gpu == 1 and second >= 3:
                continue  # fell off the bus
            rows.append(f"2024/05/01 12:00:0{second}.123, GPU-{gpu}, 50 %, 300.00 W")
    indices = {
        uuid: {index for _, index, _ in samples}
        for uuid, samples in by_gpu(load_recording(write(tmp_path / "n.csv", rows))).items()
    }
    assert indices == {"GPU-0": {0}, "GPU-1": {1}, "GPU-2": {2}, "GPU-3": {3}}


def test_a_log_with_pci_bus_ids_names_its_gpus_by_them(tmp_path: Path) -> None:
    header = "timestamp, pci.bus_id, utilization.gpu [%], power.draw [W]"
    rows = [header]
    for second in range(6):
        for gpu in range(3):
            if gpu == 0 and second >= 3:
                continue  # lost: without the bus id the rows could not be told apart
            bus = f"00000000:{0x17 + gpu:02X}:00.0"
            rows.append(f"2024/05/01 12:00:0{second}.123, {bus}, {10 * gpu} %, 300.00 W")
    recording = load_recording(write(tmp_path / "n.csv", rows))
    assert recording.gpu_count_source == "identity"
    samples = by_gpu(recording)
    assert sorted(len(s) for s in samples.values()) == [3, 6, 6]
    assert sorted({index for s in samples.values() for _, index, _ in s}) == [0, 1, 2]


# -- what drivers print instead of a value -----------------------------------------------------


@pytest.mark.parametrize(
    ("cell", "not_supported"),
    [
        ("[N/A]", True),
        ("[Not Supported]", True),
        ("[Unknown Error]", False),
        ("[GPU requires reset]", False),
        ("[Insufficient Permissions]", False),
        ("[GPU is lost]", False),
    ],
)
def test_a_cell_the_driver_could_not_read_is_an_error_not_an_unsupported_metric(
    tmp_path: Path, cell: str, not_supported: bool
) -> None:
    rows = docs_log(seconds=2)
    rows[-1] = rows[-1].replace("50 %", cell)
    sampler = ReplaySampler(load_recording(write(tmp_path / "n.csv", [HEADER, *rows])))
    sampler.open(0)
    sampler.poll(0)
    poll = sampler.poll(0)
    assert poll is not None
    (failure,) = poll.readings[1].failures
    assert (failure.error_name, failure.not_supported) == (cell, not_supported)
    assert not poll.readings[0].failures


def test_power_draw_not_available_falls_back_to_power_draw_instant(
    tmp_path: Path, plain: list[tuple[int, int, int, int]]
) -> None:
    # Some driver and GPU pairs answer power.draw with [N/A] and power.draw.instant with a value.
    header = HEADER.replace("power.draw [W]", "power.draw [W], power.draw.instant [W]")
    rows = [row.replace("300.00 W", "[N/A], 300.00 W") for row in docs_log()]
    assert figures(load_recording(write(tmp_path / "n.csv", [header, *rows]))) == plain


# -- time ----------------------------------------------------------------------------------------


def test_iso_times_with_a_zone_are_read_in_that_zone(tmp_path: Path) -> None:
    header = "timestamp, index, utilization.gpu [%]"
    rows = [
        header,
        "2024-05-01T12:00:00.123Z, 0, 5 %",
        "2024-05-01T14:00:01.123+02:00, 0, 5 %",
        "2024-05-01T07:00:02.123-05:00, 0, 5 %",
    ]
    recording = load_recording(write(tmp_path / "n.csv", rows))
    assert [p.timestamp_ns - T0_NS for p in recording.polls] == [
        123_000_000,
        1_123_000_000,
        2_123_000_000,
    ]


def test_a_time_in_no_known_format_is_refused_showing_the_expected_one(tmp_path: Path) -> None:
    rows = [HEADER, *docs_log(2)]
    rows[2] = rows[2].replace("2024/05/01 12:00:00.123", "05/01/2024 12:00")  # re-saved by Excel
    path = write(tmp_path / "n.csv", rows)
    with pytest.raises(RecordingError) as refused:
        load_recording(path)
    assert str(refused.value) == (
        f"{path}: line 3: timestamp '05/01/2024 12:00' is not in a known format (nvidia-smi's "
        "2024/05/01 12:00:00.123, or ISO 8601 such as 2024-05-01T12:00:00.123Z)"
    )


def test_a_clock_stepped_back_is_refused_naming_the_lines_and_the_fix(tmp_path: Path) -> None:
    rows = [*docs_log(5), *(r.replace(".123", ".900") for r in docs_log(5, start_s=3))]
    path = write(tmp_path / "n.csv", [HEADER, *rows])
    with pytest.raises(RecordingError) as refused:
        load_recording(path)
    assert str(refused.value) == (
        f"{path}: line 12: the time goes back 0.223 s, to 2024/05/01 12:00:03.900 from "
        "2024/05/01 12:00:04.123 on line 11: the clock was stepped back (NTP), or the log is in "
        "local time and daylight saving time ended. The same time cannot be replayed twice: "
        "record with TZ=UTC (nvidia-smi prints local time); for this file, delete the rows from "
        "line 12 on that are not later than 2024/05/01 12:00:04.123, or convert its times to UTC"
    )


def test_a_local_time_log_across_the_end_of_daylight_saving_is_refused(tmp_path: Path) -> None:
    # Europe/Berlin, 2024-10-27: 02:59:59 CEST is followed by 02:00:00 CET.
    header = "timestamp, index, utilization.gpu [%]"
    rows = [header, "2024/10/27 02:59:59.500, 0, 5 %", "2024/10/27 02:00:00.500, 0, 5 %"]
    path = write(tmp_path / "n.csv", rows)
    with pytest.raises(RecordingError, match=r"line 3: the time goes back 3599\.000 s.*TZ=UTC"):
        load_recording(path)


# -- not the log the docs asked for --------------------------------------------------------------


def test_a_log_without_its_header_is_refused_with_the_header_to_add(tmp_path: Path) -> None:
    path = write(tmp_path / "n.csv", docs_log(2))  # --format=csv,noheader
    with pytest.raises(RecordingError) as refused:
        load_recording(path)
    assert str(refused.value) == (
        f"{path}: line 1 is not a header (--format=csv,noheader leaves it out): add the header "
        "line nvidia-smi prints for the --query-gpu fields, such as 'timestamp, index, uuid, "
        "name, utilization.gpu [%], power.draw [W], memory.used [MiB]', or give the column names "
        "(--replay-columns)"
    )


def test_nvidia_smi_dmon_output_is_refused_naming_the_command_to_record_with(
    tmp_path: Path,
) -> None:
    rows = ["# gpu    pwr  gtemp  mtemp     sm    mem    enc    dec", "# Idx      W      C      C"]
    rows += ["    0     69     33     41      0      0      0      0"]
    path = write(tmp_path / "n.csv", rows)
    with pytest.raises(RecordingError) as refused:
        load_recording(path)
    assert str(refused.value) == (
        f"{path}: line 1 looks like `nvidia-smi dmon` output, which is not read: record with "
        "nvidia-smi --query-gpu=timestamp,index,uuid,name,utilization.gpu,power.draw,memory.used "
        "--format=csv -l 1"
    )


def test_a_log_without_utilization_is_refused_naming_the_fields_to_record(tmp_path: Path) -> None:
    path = write(
        tmp_path / "n.csv", ["timestamp, index, power.draw [W]", "2024/05/01 12:00:00, 0, 1 W"]
    )
    with pytest.raises(RecordingError) as refused:
        load_recording(path)
    assert str(refused.value) == (
        f"{path}: the header (line 1) has no utilization.gpu column: record with "
        "nvidia-smi --query-gpu=timestamp,index,uuid,name,utilization.gpu,power.draw,memory.used "
        "--format=csv -l 1"
    )


def test_an_index_that_is_not_a_number_is_refused_naming_the_line(tmp_path: Path) -> None:
    rows = [HEADER, *docs_log(2)]
    rows[3] = rows[3].replace(", 0, GPU", ", 00000000:17:00.0, GPU")
    path = write(tmp_path / "n.csv", rows)
    with pytest.raises(RecordingError) as refused:
        load_recording(path)
    assert str(refused.value) == (
        f"{path}: line 4: index '00000000:17:00.0' is not a GPU index (0, 1, ...)"
    )


@pytest.mark.timeout(30)
def test_a_pipe_is_refused_up_front_not_read_twice(tmp_path: Path) -> None:
    # `--replay <(zcat log.gz)`: the replay reads its file twice, and a pipe only once. (Opening
    # a pipe nobody writes to would wait for ever.)
    pipe = tmp_path / "log.csv"
    os.mkfifo(pipe)
    with pytest.raises(RecordingError) as refused:
        load_recording(pipe)
    assert str(refused.value) == (
        f"{pipe}: is not a regular file (a pipe or a device?): the replay reads the recording "
        "twice; save it to a file first (a gzip-compressed file is read as it is)"
    )


def test_xz_and_bzip2_compressed_logs_read_as_the_plain_one(
    tmp_path: Path, plain: list[tuple[int, int, int, int]]
) -> None:
    import bz2
    import lzma

    text = ("\n".join([HEADER, *docs_log()]) + "\n").encode()
    (tmp_path / "n.csv.xz").write_bytes(lzma.compress(text))
    (tmp_path / "n.csv.bz2").write_bytes(bz2.compress(text))
    assert figures(load_recording(tmp_path / "n.csv.xz")) == plain
    assert figures(load_recording(tmp_path / "n.csv.bz2")) == plain


def test_a_zstd_or_zip_file_is_refused_saying_what_it_is(tmp_path: Path) -> None:
    zstd = tmp_path / "n.csv.zst"
    zstd.write_bytes(b"\x28\xb5\x2f\xfd" + bytes(20))
    with pytest.raises(RecordingError) as refused:
        load_recording(zstd)
    assert str(refused.value) == (
        f"{zstd}: is zstd-compressed, which is not read: decompress it (zstd -d), or compress "
        "with gzip, xz or bzip2"
    )
    archive = tmp_path / "n.zip"
    archive.write_bytes(b"PK\x03\x04" + bytes(20))
    with pytest.raises(RecordingError, match=r"is a zip archive, which is not read: unzip it"):
        load_recording(archive)


def test_a_log_re_saved_by_a_spreadsheet_with_semicolons_is_refused_saying_so(
    tmp_path: Path,
) -> None:
    rows = [line.replace(", ", ";") for line in [HEADER, *docs_log(2)]]
    path = write(tmp_path / "n.csv", rows)
    with pytest.raises(RecordingError) as refused:
        load_recording(path)
    assert str(refused.value) == (
        f"{path}: line 1 separates its cells with ';' (re-saved by a spreadsheet?): nvidia-smi "
        "writes commas; replay the original log, or save it again as CSV with commas"
    )


def test_nvidia_smi_messages_in_the_log_are_left_out_and_the_lost_gpu_is_a_gap(
    tmp_path: Path,
) -> None:
    # A GPU falls off the bus: nvidia-smi says so in the log, then leaves the GPU out. A loop of
    # `nvidia-smi ...; sleep 1` during a driver reload logs that there are no devices.
    rows = ["Failed to initialize NVML: Driver/library version mismatch", HEADER, *docs_log(5)]
    rows.append("Unable to determine the device handle for GPU0000:3B:00.0: Unknown Error")
    rows += [row for row in docs_log(5, start_s=5) if ", 1, GPU" not in row]
    rows.append("No devices were found")
    rows.append("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.")
    rows += [HEADER, *docs_log(5, start_s=30)]
    recording = load_recording(write(tmp_path / "n.csv", rows))
    samples = by_gpu(recording)
    assert [len(s) for _, s in sorted(samples.items())] == [15, 10]
    assert recording.stalls == 1


def _loop_log(polls: int, lost_from: int = -1) -> list[str]:
    """`while true; do nvidia-smi --query-gpu=timestamp,power.draw,utilization.gpu,memory.used
    --format=csv; sleep 1; done >> gpu.csv`: a header and one poll of 8 GPUs a second."""
    lines = []
    for poll in range(polls):
        lines.append("timestamp, power.draw [W], utilization.gpu [%], memory.used [MiB]")
        gpus = 7 if 0 <= lost_from <= poll else 8
        for _ in range(gpus):
            lines.append(
                f"2024/05/01 12:{poll // 60:02d}:{poll % 60:02d}.123, 300.00 W, 50 %, 1 MiB"
            )
    return lines


def test_a_shell_loop_log_of_one_poll_per_header_reads_every_poll(tmp_path: Path) -> None:
    recording = load_recording(write(tmp_path / "n.csv", _loop_log(90)), gpu_model=H100)
    assert (recording.gpu_count, recording.gpu_count_source) == (8, "row cycle")
    assert len(recording.polls) == 90 and recording.stalls == 0


def test_a_shell_loop_log_losing_a_gpu_is_refused_not_read_as_short_polls(tmp_path: Path) -> None:
    path = write(tmp_path / "n.csv", _loop_log(90, lost_from=60))
    with pytest.raises(
        RecordingError, match=r"line 542 starts one of 7\); if a GPU left or joined"
    ):
        load_recording(path)


def test_a_log_without_index_or_milliseconds_needs_gpus_and_is_never_guessed(
    tmp_path: Path,
) -> None:
    # -lms 500 with the milliseconds cut off: two polls of 8 GPUs share each second, which the
    # row cycle read as one poll of 16 GPUs.
    cut = ["timestamp, power.draw [W], utilization.gpu [%], memory.used [MiB]"]
    for second in range(5):
        cut += [f"2024/05/01 12:00:0{second}, 300.00 W, 50 %, 1 MiB"] * 16
    path = write(tmp_path / "n.csv", cut)
    with pytest.raises(RecordingError) as refused:
        load_recording(path)
    assert str(refused.value) == (
        f"{path}: cannot group rows into polls: the times have no milliseconds, so rows of two "
        "polls within a second cannot be told apart; pass the node's GPU count with --gpus N, "
        "or record with --query-gpu=timestamp,index,uuid,... (nvidia-smi prints milliseconds)"
    )
    with pytest.raises(RecordingError, match=r"cannot group rows into polls of 8"):
        load_recording(path, gpus=8)
    # At -l 1 the polls are a second apart: --gpus 8 reads them.
    whole = [HEADER.replace("index, uuid, name, ", ""), *docs_log(5, gpus=8)]
    whole = [re.sub(r"\.123, \d+, GPU-\S+, [^,]+,", ",", line) for line in whole]
    recording = load_recording(write(tmp_path / "s.csv", whole), gpus=8)
    assert (recording.gpu_count, len(recording.polls)) == (8, 5)
