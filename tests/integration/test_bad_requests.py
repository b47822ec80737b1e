"""Bad requests against a real verifier: every one gets its documented status and a clear message
(never internal error text, never more than a short excerpt of what the caller sent), and the
store is left exactly as it was.

The verifier holds lab ``lab-a`` with one node, a chain of three accepted windows and its
findings (an undeclared GPU, a bit-flipped window's BAD_SIGNATURE).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from pausewatch.v1 import attestation_service_pb2 as spb
from pausewatch.v1 import audit_pb2 as apb
from pausewatch.v1 import registry_pb2 as rpb
from pausewatch.v1 import site_pb2, site_pb2_grpc

from attest.envelope import PayloadType, envelope_digest, sign_envelope
from attest.errors import NoteError
from tests.builders import TestNode
from tests.verifier_harness import (
    Client,
    RunningVerifier,
    enroll_request,
    enrollment_for,
    inventory_request,
    running_verifier,
)
from verifier.audit.auditor import Auditor

S = 10**9
MINUTE = 60 * S
U64_MAX = 2**64 - 1
I64_MAX = 2**63 - 1


@dataclass
class World:
    verifier: RunningVerifier
    client: Client
    node: TestNode
    t0: int


def counts(v: RunningVerifier) -> tuple[int, int, int, int]:
    with sqlite3.connect(v.files.store) as db:
        return (
            db.execute("SELECT COUNT(*) FROM log_entries").fetchone()[0],
            db.execute("SELECT COUNT(*) FROM attestations").fetchone()[0],
            db.execute("SELECT COUNT(*) FROM findings").fetchone()[0],
            db.execute("SELECT COUNT(*) FROM nodes").fetchone()[0],
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    directory = tmp_path_factory.mktemp("bad-requests")
    now = time.time_ns()
    t0 = now - now % MINUTE - 10 * MINUTE
    with running_verifier(directory) as v:
        client = v.client()
        node = TestNode.from_seed(20, t0_ns=t0)
        client.enroll(node)
        chain: list[bytes] = []
        prev = None
        for seq in range(3):
            raw = node.sign_body(node.body(seq, prev))
            chain.append(raw)
            prev = envelope_digest(raw)
        flipped = bytearray(node.sign_body(node.body(3, prev)))
        flipped[-3] ^= 0x01
        receipts = client.submit([*chain, bytes(flipped)])
        assert [r.status for r in receipts] == [spb.RECEIPT_STATUS_ACCEPTED] * 3 + [
            spb.RECEIPT_STATUS_REJECTED
        ]
        yield World(v, client, node, t0)


def refused(
    world: World, call: Callable[[], Any], code: grpc.StatusCode, message: str
) -> grpc.RpcError:
    """``call`` fails with ``code`` and a detail that contains ``message``; nothing is stored."""
    before = counts(world.verifier)
    with pytest.raises(grpc.RpcError) as info:
        call()
    error = info.value
    assert error.code() == code, error.details()
    details = error.details() or ""
    assert message in details
    assert "Traceback" not in details and "internal error" not in details
    assert counts(world.verifier) == before
    return error


# -- indices past the end of any log (uint64 beyond SQLite's INTEGER) ---------------------------


@pytest.mark.parametrize("index", [I64_MAX, I64_MAX + 1, U64_MAX])
def test_a_log_entry_past_the_end_is_not_found(world: World, index: int) -> None:
    refused(
        world,
        lambda: world.client.audit.GetLogEntry(apb.GetLogEntryRequest(index=index), timeout=10),
        grpc.StatusCode.NOT_FOUND,
        f"no entry at index {index}",
    )


@pytest.mark.parametrize("token", [I64_MAX, I64_MAX + 1, U64_MAX])
def test_a_findings_page_token_past_the_end_is_an_empty_page(world: World, token: int) -> None:
    before = counts(world.verifier)
    first = world.client.audit.ListFindings(apb.ListFindingsRequest(lab_id="lab-a"), timeout=10)
    assert len(first.findings) >= 1
    page = world.client.audit.ListFindings(
        apb.ListFindingsRequest(lab_id="lab-a", page_token=token), timeout=10
    )
    assert list(page.findings) == [] and page.next_page_token == 0
    assert counts(world.verifier) == before


@pytest.mark.parametrize("start", [I64_MAX + 1, U64_MAX])
def test_watching_from_past_the_end_waits_for_findings(world: World, start: int) -> None:
    stream = world.client.audit.WatchFindings(
        apb.WatchFindingsRequest(lab_id="lab-a", from_log_index=start), timeout=2
    )
    with pytest.raises(grpc.RpcError) as info:
        next(iter(stream))
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


# -- periods no report can be made of ------------------------------------------------------------


PERIODS = {
    "at the end of int64": (I64_MAX - 10, I64_MAX),
    "past 2200": (7_258_118_400 * S, 7_258_118_400 * S + 1),
    "zero start": (0, MINUTE),
    "end before start": (2 * MINUTE, MINUTE),
}


@pytest.mark.parametrize("case", sorted(PERIODS))
def test_a_report_of_an_impossible_period_is_invalid_argument(world: World, case: str) -> None:
    start, end = PERIODS[case]
    request = apb.GetComplianceReportRequest(
        lab_id="lab-a", period_start_ns=start, period_end_ns=end
    )
    refused(
        world,
        lambda: world.client.audit.GetComplianceReport(request, timeout=10),
        grpc.StatusCode.INVALID_ARGUMENT,
        "the period must",
    )


@pytest.mark.parametrize("case", sorted(PERIODS))
def test_a_bundle_of_an_impossible_period_is_invalid_argument(world: World, case: str) -> None:
    start, end = PERIODS[case]
    request = apb.ExportBundleRequest(lab_id="lab-a", period_start_ns=start, period_end_ns=end)
    refused(
        world,
        lambda: list(world.client.audit.ExportBundle(request, timeout=10)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "the period must",
    )


# -- errors no status is mapped to ------------------------------------------------------------------


def test_an_unmapped_error_is_internal_error_and_its_text_only_logged(
    world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(self: Auditor, lab_ids: object = None) -> object:
        raise NoteError("checkpoint note at /var/lib/pausewatch/secret does not parse")

    monkeypatch.setattr(Auditor, "list_labs", broken)
    with (
        caplog.at_level("ERROR", logger="verifier.server.servicers"),
        pytest.raises(grpc.RpcError) as info,
    ):
        world.client.audit.ListLabs(apb.ListLabsRequest(), timeout=10)
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert info.value.details() == "internal error"
    assert "/var/lib/pausewatch/secret" in caplog.text


# -- lab ids: checked before any access check or look-up, never echoed ----------------------------

BAD_LAB_IDS = {
    "empty": "",
    "upper case": "LAB-A",
    "CR LF NUL": "lab-a\r\nx-injected: 1\x00",
    "200 KB": "a" * 200_000,
}


def lab_calls(client: Client, lab_id: str) -> dict[str, Callable[[], Any]]:
    """Every read that takes a lab id, called with ``lab_id``."""
    sites = site_pb2_grpc.SiteServiceStub(client.channel)
    period = {"period_start_ns": 10**18, "period_end_ns": 10**18 + 3600 * S}
    return {
        "ListNodes": lambda: client.registry.ListNodes(
            rpb.ListNodesRequest(lab_id=lab_id), timeout=10
        ),
        "GetComplianceReport": lambda: client.audit.GetComplianceReport(
            apb.GetComplianceReportRequest(lab_id=lab_id, **period), timeout=10
        ),
        "ListFindings": lambda: client.audit.ListFindings(
            apb.ListFindingsRequest(lab_id=lab_id), timeout=10
        ),
        "WatchFindings": lambda: next(
            iter(client.audit.WatchFindings(apb.WatchFindingsRequest(lab_id=lab_id), timeout=10))
        ),
        "ExportBundle": lambda: list(
            client.audit.ExportBundle(apb.ExportBundleRequest(lab_id=lab_id, **period), timeout=10)
        ),
        "GetMeterHead": lambda: sites.GetMeterHead(
            site_pb2.GetMeterHeadRequest(lab_id=lab_id, meter_id="m1"), timeout=10
        ),
    }


LAB_CALLS = [
    "ListNodes",
    "GetComplianceReport",
    "ListFindings",
    "WatchFindings",
    "ExportBundle",
    "GetMeterHead",
]


@pytest.mark.parametrize("call", LAB_CALLS)
@pytest.mark.parametrize("case", sorted(BAD_LAB_IDS))
def test_an_invalid_lab_id_is_invalid_argument_for_every_read(
    world: World, call: str, case: str
) -> None:
    error = refused(
        world,
        lab_calls(world.client, BAD_LAB_IDS[case])[call],
        grpc.StatusCode.INVALID_ARGUMENT,
        "lab_id is not a valid lab id",
    )
    assert error.details() == "lab_id is not a valid lab id"


@pytest.fixture(scope="module")
def public(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A verifier whose callers without a certificate are public: every lab read is denied."""
    directory = tmp_path_factory.mktemp("bad-requests-public")
    with running_verifier(directory, access='unauthenticated_role = "public"') as v:
        yield World(v, v.client(), TestNode.from_seed(21), 0)


def write_calls(public: World, lab_id: str) -> dict[str, Callable[[], Any]]:
    """The registry writes, each signed for ``lab_id`` by the lab's operator key."""
    operator = public.verifier.files.operator
    enrollment = enrollment_for(public.node)
    enrollment.lab_id = lab_id
    revocation = rpb.NodeRevocation(
        format_version=1, lab_id=lab_id, node_id=public.node.node_id, created_at_ns=time.time_ns()
    )
    registry = public.client.registry
    return {
        "EnrollNode": lambda: registry.EnrollNode(
            enroll_request(enrollment, public.node, operator), timeout=10
        ),
        "DeclareInventory": lambda: registry.DeclareInventory(
            inventory_request(operator, ["GPU-1"], effective_from_ns=time.time_ns(), lab_id=lab_id),
            timeout=10,
        ),
        "RevokeNode": lambda: registry.RevokeNode(
            rpb.RevokeNodeRequest(
                revocation_envelope=sign_envelope(
                    operator, PayloadType.REVOCATION, revocation.SerializeToString()
                )
            ),
            timeout=10,
        ),
    }


@pytest.mark.parametrize("case", sorted(BAD_LAB_IDS))
def test_an_invalid_lab_id_is_invalid_argument_before_the_access_check(
    public: World, case: str
) -> None:
    calls = {
        **lab_calls(public.client, BAD_LAB_IDS[case]),
        **write_calls(public, BAD_LAB_IDS[case]),
    }
    for name, call in calls.items():
        error = refused(
            public, call, grpc.StatusCode.INVALID_ARGUMENT, "lab_id is not a valid lab id"
        )
        assert error.details() == "lab_id is not a valid lab id", name


def test_a_valid_lab_id_of_another_lab_is_still_permission_denied(public: World) -> None:
    calls = {**lab_calls(public.client, "lab-b"), **write_calls(public, "lab-b")}
    for name, call in calls.items():
        error = refused(public, call, grpc.StatusCode.PERMISSION_DENIED, "lab 'lab-b'")
        assert len(error.details() or "") < 100, name


# -- answers larger than one message ---------------------------------------------------------------

SMALL_MESSAGE = 4096


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A verifier whose messages are at most 4 KiB, with 42 nodes, 12 of them with two accepted
    windows and a bit-flipped one (a BAD_SIGNATURE finding carrying the 900-byte envelope)."""
    directory = tmp_path_factory.mktemp("bad-requests-small")
    now = time.time_ns()
    t0 = now - now % MINUTE - 10 * MINUTE
    with running_verifier(directory, extra_server=f"max_message_bytes = {SMALL_MESSAGE}") as v:
        client = v.client()
        for seed in range(30, 42):
            node = TestNode.from_seed(seed, t0_ns=t0)
            client.enroll(node)
            prev = None
            for seq in range(2):
                raw = node.sign_body(node.body(seq, prev))
                assert client.submit([raw])[0].status == spb.RECEIPT_STATUS_ACCEPTED
                prev = envelope_digest(raw)
            flipped = bytearray(node.sign_body(node.body(2, prev)))
            flipped[-3] ^= 0x01
            assert client.submit([bytes(flipped)])[0].status == spb.RECEIPT_STATUS_REJECTED
        for seed in range(42, 72):  # nodes without windows: a node list of some 9 KB
            client.enroll(TestNode.from_seed(seed, t0_ns=t0))
        yield World(v, client, node, t0)


def test_a_findings_page_stops_before_its_byte_budget(small: World) -> None:
    with sqlite3.connect(small.verifier.files.store) as db:
        stored = [
            row[0]
            for row in db.execute(
                "SELECT log_index FROM findings WHERE lab_id = 'lab-a' ORDER BY log_index"
            )
        ]
    assert len(stored) >= 12
    seen: list[int] = []
    token = 0
    pages = 0
    while True:
        page = small.client.audit.ListFindings(
            apb.ListFindingsRequest(lab_id="lab-a", page_size=1000, page_token=token), timeout=10
        )
        pages += 1
        assert page.findings and page.ByteSize() <= SMALL_MESSAGE
        seen += [f.log_index for f in page.findings]
        token = page.next_page_token
        if not token:
            break
        assert token == page.findings[-1].log_index + 1
    assert seen == stored
    assert pages > 3


def test_a_report_larger_than_a_message_is_refused_clearly(small: World) -> None:
    request = apb.GetComplianceReportRequest(
        lab_id="lab-a", period_start_ns=small.t0 - 86_400 * S, period_end_ns=small.t0 + 3600 * S
    )
    error = refused(
        small,
        lambda: small.client.audit.GetComplianceReport(request, timeout=30),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"more than this verifier's server.max_message_bytes ({SMALL_MESSAGE})",
    )
    assert "ask for a shorter period" in (error.details() or "")


def test_a_node_list_larger_than_a_message_is_refused_clearly(small: World) -> None:
    error = refused(
        small,
        lambda: small.client.registry.ListNodes(rpb.ListNodesRequest(lab_id="lab-a"), timeout=10),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "the lab's node list is",
    )
    assert "raise server.max_message_bytes" in (error.details() or "")


# -- WatchFindings when the verifier stops -----------------------------------------------------------


def test_a_watch_ends_unavailable_with_where_to_resume_when_the_verifier_stops(
    tmp_path: Path,
) -> None:
    now = time.time_ns()
    node = TestNode.from_seed(22, t0_ns=now - now % MINUTE - 10 * MINUTE)
    with contextlib.ExitStack() as stack:
        v = stack.enter_context(running_verifier(tmp_path))
        client = v.client()
        client.enroll(node)
        client.submit([node.sign_body(node.body(0))])  # its GPUs are undeclared: a finding
        stream = client.audit.WatchFindings(
            apb.WatchFindingsRequest(lab_id="lab-a", from_log_index=1), timeout=30
        )
        first = next(stream)
        stack.close()  # the verifier's graceful stop, as on SIGTERM
        with pytest.raises(grpc.RpcError) as info:
            for more in stream:
                first = more
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert info.value.details() == (
        "the verifier is shutting down: reconnect with from_log_index = "
        f"{first.log_index + 1} (the last log index received + 1)"
    )


@pytest.mark.parametrize(
    ("lab_id", "meter_id", "message"),
    [
        ("lab-zz", "main-1", "lab 'lab-zz' is not registered with this verifier"),
        ("lab-a", "main-1", "meter 'main-1' is not declared for a site of lab lab-a"),
        ("lab-a", "m\r\n" * 50_000, "meter 'm\\r\\nm\\r\\n"),
    ],
)
def test_the_head_of_an_unknown_lab_or_undeclared_meter_is_not_found(
    world: World, lab_id: str, meter_id: str, message: str
) -> None:
    sites = site_pb2_grpc.SiteServiceStub(world.client.channel)
    error = refused(
        world,
        lambda: sites.GetMeterHead(
            site_pb2.GetMeterHeadRequest(lab_id=lab_id, meter_id=meter_id), timeout=10
        ),
        grpc.StatusCode.NOT_FOUND,
        message,
    )
    assert len(error.details() or "") < 160
