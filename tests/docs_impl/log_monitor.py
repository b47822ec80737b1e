"""A monitor of a pausewatch verifier's log, written from the project's documentation alone
(docs/wire-format.md §5, docs/verifier.md, docs/witness.md, docs/auditing.md,
docs/threat-model.md) and the .proto files: it imports nothing of the project but the generated
protobuf modules.

It pins the log's signed-note verifier key, fetches the latest checkpoint over gRPC as any
client may (the ``public`` role), verifies its signed note (and witness cosignatures when given
witness keys), keeps it, and on each later check proves with an RFC 9162 consistency proof that
the new checkpoint extends the kept one. Entries are fetched with their inclusion proofs (the
``public`` role may not call ``GetLogEntry``; an inclusion proof carries its entry) and checked
against a kept checkpoint. Every outcome is a :class:`Report` that says what was found in words:
consistent growth, a fork, a rollback, a bad signature, an entry that does not match its proof.

    monitor = LogMonitor(grpc.insecure_channel(address), LogKey.parse(published_key))
    print(monitor.check().message)        # first: ...
    ...
    print(monitor.check().message)        # consistent: ... / FORK: ... / ROLLBACK: ...
    for report in monitor.check_entries(range(10)):
        print(report.message)

    python -m tests.docs_impl.log_monitor --verifier HOST:PORT --ca-cert ca.pem \
        --log-key 'origin+0123abcd+AXs...' --state kept.note [--witness KEY ...] [--entry N ...]
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import grpc
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import DecodeError
from pausewatch.v1 import audit_pb2, audit_pb2_grpc, envelope_pb2

EM_DASH_SP = "\u2014 "
ALG_ED25519 = 0x01  # a log's signed-note key (wire-format.md §5)
ALG_COSIGNATURE_V1 = 0x04  # a witness's tlog-cosignature key (witness.md)
HASH_SIZE = 32
RPC_TIMEOUT_S = 30.0


class NoteError(ValueError):
    """A key, note or checkpoint that does not parse or verify; the message says why."""


# --- keys ----------------------------------------------------------------------------------------


def _canonical_b64(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise NoteError(f"{what} is not base64: {exc}") from exc
    if base64.b64encode(raw).decode("ascii") != text:
        raise NoteError(f"{what} is not canonical base64")
    return raw


def _valid_name(name: str) -> bool:
    return bool(name) and all(
        c not in "+" and not c.isspace() and c.isprintable() and ord(c) >= 0x20 for c in name
    )


def key_hash(name: str, algorithm: int, public_key: bytes) -> bytes:
    """First 4 bytes of SHA-256(name || "\\n" || algorithm byte || raw public key)."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([algorithm]) + public_key).digest()[:4]


@dataclass(frozen=True)
class _NoteKey:
    name: str
    hash: bytes
    public_key: Ed25519PublicKey
    algorithm: int
    text: str

    @classmethod
    def _parse(cls, text: str, algorithm: int, what: str) -> _NoteKey:
        text = text.strip()
        parts = text.split("+", 2)  # the base64 may itself hold '+': split at the first two
        if len(parts) != 3:
            raise NoteError(f"{what} {text!r} is not <name>+<key hash>+<base64>")
        name, hash_hex, b64 = parts
        if not _valid_name(name):
            raise NoteError(f"{what} {text!r}: the name is empty or holds '+', space or controls")
        if len(hash_hex) != 8 or any(c not in "0123456789abcdef" for c in hash_hex):
            raise NoteError(f"{what} {text!r}: the key hash is not 8 lowercase hex digits")
        raw = _canonical_b64(b64, f"{what} {text!r}: the key")
        if len(raw) != 33 or raw[0] != algorithm:
            raise NoteError(
                f"{what} {text!r}: the key is not algorithm byte 0x{algorithm:02x} and 32 bytes"
            )
        if key_hash(name, algorithm, raw[1:]) != bytes.fromhex(hash_hex):
            raise NoteError(f"{what} {text!r}: the key hash does not match its name and key")
        return cls(name, bytes.fromhex(hash_hex), Ed25519PublicKey.from_public_bytes(raw[1:]),
                   algorithm, text)  # fmt: skip

    def verify_signature(self, signature: bytes, message: bytes) -> bool:
        try:
            self.public_key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class LogKey(_NoteKey):
    """The log's signed-note verifier key, ``<origin>+<key hash>+<base64(0x01 || key)>``."""

    @classmethod
    def parse(cls, text: str) -> LogKey:
        key = cls._parse(text, ALG_ED25519, "log key")
        assert isinstance(key, LogKey)
        return key


@dataclass(frozen=True)
class WitnessKey(_NoteKey):
    """A witness's cosignature/v1 verifier key, ``<name>+<key hash>+<base64(0x04 || key)>``."""

    @classmethod
    def parse(cls, text: str) -> WitnessKey:
        key = cls._parse(text, ALG_COSIGNATURE_V1, "witness key")
        assert isinstance(key, WitnessKey)
        return key


# --- checkpoints ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint whose log signature verified under the pinned key."""

    origin: str
    size: int
    root: bytes
    text: str
    """The signed text: every line before the blank line, final newline included."""
    note: str
    """The whole signed note as received."""
    witnesses: tuple[str, ...]
    """Names of the required witnesses whose cosignature verified."""

    def describe(self) -> str:
        return f"size {self.size} (root {self.root.hex()[:16]}…)"


def _split_note(note: str) -> tuple[str, list[tuple[str, bytes]]]:
    """(signed text, [(signer name, signature bytes)]) of a signed note."""
    if not note.endswith("\n"):
        raise NoteError("the note does not end with a newline")
    head, sep, tail = note.partition("\n\n")
    if not sep:
        raise NoteError("the note has no blank line before its signatures")
    text = head + "\n"
    signatures: list[tuple[str, bytes]] = []
    for line in tail[:-1].split("\n"):
        if not line.startswith(EM_DASH_SP):
            raise NoteError(f"not a signature line: {line!r}")
        name, space, b64 = line[len(EM_DASH_SP) :].partition(" ")
        if not space or not _valid_name(name):
            raise NoteError(f"not a signature line: {line!r}")
        signatures.append((name, _canonical_b64(b64, f"the signature of {name}")))
    if not signatures:
        raise NoteError("the note has no signature lines")
    return text, signatures


def _parse_body(text: str) -> tuple[str, int, bytes]:
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise NoteError("a checkpoint has an origin, a size and a root line")
    origin, size_text, root_text = lines[:3]
    if any(not line for line in lines):
        raise NoteError("a checkpoint's text has an empty line")
    if (
        not size_text.isascii()
        or not size_text.isdigit()
        or (len(size_text) > 1 and size_text[0] == "0")
    ):
        raise NoteError(f"the tree size {size_text!r} is not decimal without leading zeros")
    root = _canonical_b64(root_text, "the root hash")
    if len(root) != HASH_SIZE:
        raise NoteError(f"the root hash is {len(root)} bytes, not 32")
    return origin, int(size_text), root


def verify_checkpoint(
    note: str,
    log_key: LogKey,
    witnesses: Sequence[WitnessKey] = (),
    threshold: int | None = None,
) -> Checkpoint:
    """Parse and verify a checkpoint note under the pinned log key; with ``witnesses``, at
    least ``threshold`` of them (default: all) must have cosigned it. Raises :class:`NoteError`
    naming what is wrong."""
    need = len(witnesses) if threshold is None else threshold
    if not 0 <= need <= len(witnesses):
        raise ValueError(f"a witness threshold of {need} with {len(witnesses)} witnesses")
    text, signatures = _split_note(note)
    origin, size, root = _parse_body(text)
    if origin != log_key.name:
        raise NoteError(
            f"the checkpoint is for origin {origin!r}, not the pinned log {log_key.name!r}"
        )
    by_log = 0
    cosigned: set[str] = set()
    for name, signature in signatures:
        if name == log_key.name and signature[:4] == log_key.hash:
            if len(signature) != 4 + 64 or not log_key.verify_signature(
                signature[4:], text.encode()
            ):
                raise NoteError(
                    f"the log's signature on the checkpoint of size {size} does not verify"
                )
            by_log += 1
            continue
        for witness in witnesses:
            if name != witness.name or signature[:4] != witness.hash:
                continue
            if len(signature) != 4 + 8 + 64:
                raise NoteError(f"the cosignature of {name} is not 76 bytes")
            timestamp = int.from_bytes(signature[4:12], "big")
            message = f"cosignature/v1\ntime {timestamp}\n{text}".encode()
            if not witness.verify_signature(signature[12:], message):
                raise NoteError(f"the cosignature of {name} does not verify")
            cosigned.add(name)
    if by_log == 0:
        raise NoteError(
            f"the checkpoint of size {size} has no signature by the pinned log key "
            f"{log_key.name}+{log_key.hash.hex()}"
        )
    if len(cosigned) < need:
        missing = sorted({w.name for w in witnesses} - cosigned)
        raise NoteError(
            f"the checkpoint of size {size} has {len(cosigned)} of the {need} witness "
            f"cosignatures required; missing: {', '.join(missing)}"
        )
    return Checkpoint(origin, size, root, text, note, tuple(sorted(cosigned)))


# --- RFC 9162 ------------------------------------------------------------------------------------


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> bool:
    """RFC 9162 §2.1.3.2."""
    if index >= size or any(len(p) != HASH_SIZE for p in proof):
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = _node(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = _node(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def consistency_problem(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> str | None:
    """RFC 9162 §2.1.4.2; None if the proof shows the tree of ``size2`` extends that of
    ``size1``, else what is wrong."""
    if size1 == 0 or size1 > size2:
        return f"no consistency proof exists from size {size1} to size {size2}"
    if size1 == size2:
        if proof:
            return "a proof between equal sizes must be empty"
        return None if root1 == root2 else "equal sizes with different roots"
    if not proof or any(len(p) != HASH_SIZE for p in proof):
        return "the proof is empty or holds a hash that is not 32 bytes"
    path = list(proof)
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return "the proof is longer than the trees allow"
        if fn & 1 or fn == sn:
            fr = _node(c, fr)
            sr = _node(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = _node(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        return "the proof is shorter than the trees need"
    if fr != root1:
        return f"the proof does not rebuild the root of the tree of size {size1} that was kept"
    if sr != root2:
        return f"the proof does not rebuild the root of the tree of size {size2}"
    return None


# --- the monitor ---------------------------------------------------------------------------------


class Status(StrEnum):
    FIRST = "first"
    CONSISTENT = "consistent"
    UNCHANGED = "unchanged"
    FORK = "fork"
    ROLLBACK = "rollback"
    BAD_CHECKPOINT = "bad-checkpoint"
    """A checkpoint that does not parse, is not signed by the pinned key, or lacks cosignatures."""
    UNPROVEN = "unproven"
    """The verifier did not answer a proof that an honest log can always give."""
    ENTRY_OK = "entry-ok"
    ENTRY_MISMATCH = "entry-mismatch"


GOOD = frozenset({Status.FIRST, Status.CONSISTENT, Status.UNCHANGED, Status.ENTRY_OK})


@dataclass(frozen=True)
class Report:
    status: Status
    message: str
    checkpoint: Checkpoint | None = None
    """The checkpoint fetched (verified), when there was one."""

    @property
    def ok(self) -> bool:
        return self.status in GOOD


def _rpc_words(exc: grpc.RpcError) -> str:
    code, details = getattr(exc, "code", None), getattr(exc, "details", None)
    if callable(code) and callable(details):
        status = code()
        return f"{getattr(status, 'name', status)}: {details()}"
    return str(exc)


class LogMonitor:
    """Keeps the largest checkpoint it verified and checks every new one against it."""

    def __init__(
        self,
        channel: grpc.Channel,
        log_key: LogKey,
        *,
        witnesses: Sequence[WitnessKey] = (),
        threshold: int | None = None,
        kept: Checkpoint | None = None,
    ) -> None:
        self.stub = audit_pb2_grpc.AuditServiceStub(channel)
        self.log_key = log_key
        self.witnesses = tuple(witnesses)
        self.threshold = threshold
        self.kept = kept
        self.evidence: list[str] = []
        """Notes signed by the log key that contradict what was kept."""

    def verify(self, note: str) -> Checkpoint:
        return verify_checkpoint(note, self.log_key, self.witnesses, self.threshold)

    def fetch(self) -> Checkpoint:
        """The verifier's latest checkpoint, verified (raises NoteError or grpc.RpcError)."""
        response = self.stub.GetCheckpoint(audit_pb2.GetCheckpointRequest(), timeout=RPC_TIMEOUT_S)
        checkpoint = self.verify(response.signed_note)
        if (response.tree_size, bytes(response.root_hash)) != (checkpoint.size, checkpoint.root):
            raise NoteError(
                f"the response says size {response.tree_size} root "
                f"{bytes(response.root_hash).hex()[:16]}…, its signed note {checkpoint.describe()}"
            )
        return checkpoint

    def check(self) -> Report:
        """Fetch the latest checkpoint and compare it with the one kept."""
        try:
            new = self.fetch()
        except NoteError as exc:
            return Report(Status.BAD_CHECKPOINT, f"BAD CHECKPOINT: refused: {exc}")
        except grpc.RpcError as exc:
            return Report(
                Status.UNPROVEN, f"no checkpoint: the verifier answered {_rpc_words(exc)}"
            )
        return self.compare(new)

    def compare(self, new: Checkpoint) -> Report:
        """Compare a verified checkpoint with the one kept, keeping it if it extends it."""
        old = self.kept
        if old is None:
            self.kept = new
            return Report(Status.FIRST, f"first: kept the checkpoint of {new.describe()}", new)
        if new.size < old.size:
            self.evidence.append(new.note)
            return Report(
                Status.ROLLBACK,
                f"ROLLBACK: the log is at {new.describe()}, smaller than the kept checkpoint of "
                f"{old.describe()}: {old.size - new.size} entries have disappeared",
                new,
            )
        if new.size == old.size:
            if new.root == old.root:
                return Report(Status.UNCHANGED, f"unchanged: still {new.describe()}", new)
            self.evidence.append(new.note)
            return Report(
                Status.FORK,
                f"FORK: two checkpoints of tree size {new.size} with different roots: kept "
                f"{old.root.hex()[:16]}…, now {new.root.hex()[:16]}…",
                new,
            )
        try:
            response = self.stub.GetConsistencyProof(
                audit_pb2.GetConsistencyProofRequest(size1=old.size, size2=new.size),
                timeout=RPC_TIMEOUT_S,
            )
        except grpc.RpcError as exc:
            return Report(
                Status.UNPROVEN,
                f"UNPROVEN: the log at {new.describe()} may not extend the kept checkpoint of "
                f"{old.describe()}: no consistency proof ({_rpc_words(exc)})",
                new,
            )
        if (response.size1, response.size2) != (old.size, new.size):
            problem: str | None = (
                f"the proof is for sizes {response.size1} to {response.size2}, "
                f"not {old.size} to {new.size}"
            )
        else:
            # The roots in the response are the verifier's word; the kept root and the signed
            # new root are what the proof must rebuild.
            problem = consistency_problem(
                old.size, new.size, [bytes(p) for p in response.proof], old.root, new.root
            )
        if problem is not None:
            self.evidence.append(new.note)
            return Report(
                Status.FORK,
                f"FORK: the log at {new.describe()} does not extend the kept checkpoint of "
                f"{old.describe()}: {problem}",
                new,
            )
        self.kept = new
        return Report(
            Status.CONSISTENT,
            f"consistent: the log grew from {old.describe()} to {new.describe()}, and the "
            f"consistency proof shows it extends the kept checkpoint",
            new,
        )

    def check_entries(
        self, indices: Iterable[int], against: Checkpoint | None = None
    ) -> list[Report]:
        """Fetch each entry with its inclusion proof in the tree of ``against`` (default: the
        kept checkpoint) and check both against that checkpoint's signed root."""
        checkpoint = against or self.kept
        if checkpoint is None:
            raise ValueError("no checkpoint kept yet: call check() first")
        return [self.check_entry(index, checkpoint) for index in indices]

    def check_entry(self, index: int, checkpoint: Checkpoint) -> Report:
        where = f"entry {index} in the checkpoint of {checkpoint.describe()}"
        if index >= checkpoint.size:
            return Report(Status.ENTRY_MISMATCH, f"{where}: beyond the tree", checkpoint)
        try:
            response = self.stub.GetInclusionProof(
                audit_pb2.GetInclusionProofRequest(leaf_index=index, tree_size=checkpoint.size),
                timeout=RPC_TIMEOUT_S,
            )
        except grpc.RpcError as exc:
            return Report(
                Status.UNPROVEN, f"UNPROVEN: {where}: no inclusion proof ({_rpc_words(exc)})",
                checkpoint,
            )  # fmt: skip
        entry = bytes(response.entry)
        computed = leaf_hash(entry)
        problems: list[str] = []
        if (response.leaf_index, response.tree_size) != (index, checkpoint.size):
            problems.append(
                f"the proof is for entry {response.leaf_index} in a tree of size "
                f"{response.tree_size}"
            )
        if bytes(response.leaf_hash) != computed:
            problems.append("the entry's bytes do not hash to the leaf hash sent with it")
        if not verify_inclusion(
            index, checkpoint.size, computed, [bytes(p) for p in response.proof], checkpoint.root
        ):
            problems.append("its inclusion proof does not lead to the checkpoint's signed root")
        kind = _payload_type(entry)
        if problems:
            return Report(
                Status.ENTRY_MISMATCH,
                f"ENTRY MISMATCH: {where} ({kind}): {'; '.join(problems)}",
                checkpoint,
            )
        return Report(Status.ENTRY_OK, f"{where} ({kind}) is in the log", checkpoint)


def _payload_type(entry: bytes) -> str:
    envelope = envelope_pb2.Envelope()
    try:
        envelope.ParseFromString(entry)
    except DecodeError:
        return "not an envelope"
    return envelope.payload_type or "an envelope without a payload type"


# --- command line --------------------------------------------------------------------------------


def _channel(args: argparse.Namespace) -> grpc.Channel:
    if args.insecure_no_tls:
        return grpc.insecure_channel(args.verifier)

    def read(path: str | None) -> bytes | None:
        return Path(path).read_bytes() if path else None

    credentials = grpc.ssl_channel_credentials(
        read(args.ca_cert), read(args.client_key), read(args.client_cert)
    )
    return grpc.secure_channel(args.verifier, credentials)


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 when every check is good, 3 when one is not, 2 on a usage error."""
    parser = argparse.ArgumentParser(prog="log_monitor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--verifier", required=True, help="HOST:PORT")
    parser.add_argument("--ca-cert")
    parser.add_argument("--client-cert")
    parser.add_argument("--client-key")
    parser.add_argument("--insecure-no-tls", action="store_true")
    parser.add_argument("--log-key", required=True, help="the published signed-note key")
    parser.add_argument("--witness", action="append", default=[], help="a witness's key")
    parser.add_argument("--witness-threshold", type=int)
    parser.add_argument("--state", required=True, type=Path, help="the kept checkpoint's note")
    parser.add_argument("--entry", action="append", type=int, default=[], help="an index")
    args = parser.parse_args(argv)
    try:
        log_key = LogKey.parse(args.log_key)
        witnesses = [WitnessKey.parse(w) for w in args.witness]
    except NoteError as exc:
        parser.error(str(exc))
    kept = None
    if args.state.exists():
        try:
            kept = verify_checkpoint(args.state.read_text(encoding="utf-8"), log_key)
        except NoteError as exc:
            print(f"the kept checkpoint {args.state} does not verify: {exc}", file=sys.stderr)
            return 3
    with _channel(args) as channel:
        monitor = LogMonitor(
            channel, log_key, witnesses=witnesses, threshold=args.witness_threshold, kept=kept
        )
        reports = [monitor.check()]
        if reports[0].ok and monitor.kept is not None:
            reports += monitor.check_entries(args.entry)
    for report in reports:
        print(report.message, file=sys.stdout if report.ok else sys.stderr)
    if monitor.kept is not None and monitor.kept is not kept:
        temporary = args.state.with_name(args.state.name + ".tmp")
        temporary.write_text(monitor.kept.note, encoding="utf-8")
        temporary.replace(args.state)
    return 0 if all(r.ok for r in reports) else 3


if __name__ == "__main__":
    sys.exit(main())
