"""Who and what is attesting: the host's boot id and the digest of the agent's code and config.

    boot_id()                                   # "4b1c5a7e-0d3c-4f1a-9a57-0f2e8e3c1d00"
    agent_digest(config.canonical_json())       # 32 bytes, docs/wire-format.md section 3

The agent digest is SHA-256 of the UTF-8 text::

    pausewatch-agent-digest-v1\\n
    <hex SHA-256 of file> <path>\\n        one line per .py file of the agent and attest packages,
                                          path relative to the packages' parent, '/'-separated,
                                          sorted
    config <hex SHA-256 of the effective configuration as canonical JSON>\\n

Verifiers treat it as opaque; a change is reported, not rejected.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from pathlib import Path

import agent
import attest

log = logging.getLogger(__name__)

DIGEST_HEADER = "pausewatch-agent-digest-v1\n"
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
AGENT_VERSION = agent.__version__


def boot_id(path: Path = BOOT_ID_PATH) -> str:
    """The Linux boot id; a random one (logged) where the kernel does not provide it."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except OSError:
        text = ""
    if text and len(text) <= 64:
        return text
    fallback = f"no-boot-id-{uuid.uuid4()}"
    log.warning("no kernel boot id at %s; using %s for this run", path, fallback)
    return fallback


def package_files() -> list[tuple[str, Path]]:
    """(relative '/'-separated path, file) for every .py file of the agent and attest packages."""
    files: list[tuple[str, Path]] = []
    for package in (agent, attest):
        root = Path(package.__file__ or "").resolve().parent
        parent = root.parent
        for path in root.rglob("*.py"):
            files.append((path.relative_to(parent).as_posix(), path))
    return sorted(files)


def digest_text(config_json: bytes) -> str:
    """The text whose SHA-256 is the agent digest."""
    lines = [DIGEST_HEADER]
    for relative, path in package_files():
        lines.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()} {relative}\n")
    lines.append(f"config {hashlib.sha256(config_json).hexdigest()}\n")
    return "".join(lines)


def agent_digest(config_json: bytes) -> bytes:
    """SHA-256 over the agent's code and effective configuration."""
    return hashlib.sha256(digest_text(config_json).encode("utf-8")).digest()
