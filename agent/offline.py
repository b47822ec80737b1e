"""Windows for an offline what-if analysis: a recording signed as windows, or a spool's windows.

    export = sign_recording(recording, lab_id="lab-a", node_name="node7", key_seed=seed)
    export = spool_export(config)                       # what a node's spool already holds
    Path("node7.windows.json").write_text(export.to_json())

``pausewatch audit analyse`` (the regulator's CLI) runs ``pausewatch-agent export-windows`` and
reads its output: the agent and verifier packages never import each other, and the windows are
made by the very code that makes a running agent's (:mod:`agent.windows`).

A recording's windows are signed by a throwaway node key derived from ``key_seed`` (the CLI uses
the file's SHA-256 and the node name), so the same file gives the same analysis, two files never
share a node id or GPU UUIDs, and nothing claims to be a real node's attestation: the key signs
only to reuse the verifier's pure checks, and the export says ``attested: false``.

The output is one JSON object (``format`` ``pausewatch.windows.v1``): ``source`` (``replay`` or
``spool``), ``lab_id``, ``node_name``, ``node_public_key`` (hex, raw Ed25519), ``attested``,
``envelopes`` (base64, chain order) and ``recording`` (what the parser read: GPU count and how it
was told, cadence, stalls, model given) for a replay.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.clock import NS_PER_MS
from agent.config import AgentConfig
from agent.daemon import spool_path
from agent.identity import agent_digest
from agent.sampler.replay import Recording, ReplaySampler
from agent.spool import Spool
from agent.windows import BodyContext, ClosedWindow, Windower, WindowSettings, build_body
from attest import keys
from attest.attestation import validate_body
from attest.envelope import PayloadType, envelope_digest, sign_envelope
from attest.errors import ConfigError
from attest.ids import NodeId

EXPORT_FORMAT = "pausewatch.windows.v1"
OFFLINE_AGENT_VERSION = "pausewatch-offline-analysis"
ZERO_DIGEST = bytes(32)


@dataclass(frozen=True, slots=True)
class WindowsExport:
    """What ``export-windows`` writes (module docs)."""

    source: str
    lab_id: str
    node_name: str
    node_public_key: bytes
    attested: bool
    envelopes: tuple[bytes, ...]
    recording: dict[str, object] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": EXPORT_FORMAT,
                "source": self.source,
                "lab_id": self.lab_id,
                "node_name": self.node_name,
                "node_public_key": self.node_public_key.hex(),
                "attested": self.attested,
                "recording": self.recording,
                "envelopes": [base64.b64encode(e).decode() for e in self.envelopes],
            },
            sort_keys=True,
        )


def analysis_key(key_seed: bytes) -> Ed25519PrivateKey:
    """The throwaway node key of an analysis, derived from ``key_seed``."""
    seed = hashlib.sha256(b"pausewatch offline analysis node key\x00" + key_seed).digest()
    return Ed25519PrivateKey.from_private_bytes(seed)


def recording_summary(recording: Recording) -> dict[str, object]:
    """What the parser read, for the analysis report's data-quality notes."""
    first = recording.polls[0].timestamp_ns if recording.polls else 0
    last = recording.polls[-1].timestamp_ns if recording.polls else 0
    return {
        "polls": len(recording.polls),
        "gpus": recording.gpu_count,
        "gpu_count_source": recording.gpu_count_source,
        "gpu_model": recording.gpu_model,
        "has_names": recording.has_names,
        "cadence_ms": recording.inferred_interval_ms,
        "stalls": recording.stalls,
        "first_ns": first,
        "last_ns": last,
    }


def sign_recording(
    recording: Recording,
    *,
    lab_id: str,
    node_name: str,
    key_seed: bytes,
    window_ns: int = 60_000 * NS_PER_MS,
) -> WindowsExport:
    """The recording replayed offline into windows, each signed as a chain (module docs)."""
    if not recording.polls:
        raise ConfigError("the recording has no rows to analyse")
    signer = keys.Ed25519Signer.from_private_key(analysis_key(key_seed))
    node_id = NodeId(signer.key_id)
    sampler = ReplaySampler(recording, node_id=bytes(node_id).hex())
    context = BodyContext(
        lab_id=lab_id,
        node_id=node_id,
        boot_id="offline-analysis",
        agent_version=OFFLINE_AGENT_VERSION,
        agent_digest=agent_digest(b"{}"),
        backend=sampler.backend,
        sample_interval_ms=sampler.sample_interval_ms,
    )
    settings = WindowSettings(
        window_ns=window_ns,
        sample_interval_ms=sampler.sample_interval_ms,
        cadence_ns=sampler.cadence_ns,
    )
    windower = Windower(settings)
    envelopes: list[bytes] = []
    prev = ZERO_DIGEST

    def sign(window: ClosedWindow) -> None:
        # Each window is signed as it closes and only its envelope kept: a week-long recording's
        # samples are never all in memory at once.
        nonlocal prev
        body = build_body(window, context, seq=len(envelopes), prev_digest=prev, verifier_nonce=b"")
        validate_body(body, signer.key_id)
        envelope = sign_envelope(
            signer, PayloadType.ATTESTATION, body.SerializeToString(deterministic=True)
        )
        envelopes.append(envelope)
        prev = bytes(envelope_digest(envelope))

    sampler.open(0)
    last_ns = 0
    while (poll := sampler.poll(0)) is not None:
        for window in windower.add(poll):
            sign(window)
        last_ns = poll.timestamp_ns
    final = windower.flush(last_ns + settings.sample_interval_ns)
    if final is not None:
        sign(final)
    return WindowsExport(
        source="replay",
        lab_id=lab_id,
        node_name=node_name,
        node_public_key=keys.raw_public_key(signer.public_key),
        attested=False,
        envelopes=tuple(envelopes),
        recording=recording_summary(recording),
    )


def spool_export(config: AgentConfig) -> WindowsExport:
    """The windows a node's spool holds, in chain order, with the node's public key."""
    path = spool_path(config)
    if not path.exists():
        raise ConfigError(
            f"no spool at {path}: is {config.node.state_dir} a node's state directory?"
        )
    public = keys.raw_public_key(keys.load_private_key(config.node.key_file).public_key())
    spool = Spool.open(path, create=False)
    try:
        envelopes = tuple(item.envelope for item in spool.envelopes())
    finally:
        spool.close()
    if not envelopes:
        raise ConfigError(f"the spool at {path} holds no windows")
    return WindowsExport(
        source="spool",
        lab_id=config.node.lab_id,
        node_name=config.node.name,
        node_public_key=public,
        attested=True,
        envelopes=envelopes,
    )


def write_export(export: WindowsExport, out: Path) -> None:
    """Write the export (to a temporary name first, so a reader never sees half a file)."""
    partial = out.with_name(out.name + ".partial")
    partial.write_text(export.to_json(), encoding="utf-8")
    partial.replace(out)
