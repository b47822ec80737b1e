"""Where the read-only ``shared/`` folder beside the checkout is (test vectors, real traces).

Looked up as ``$PAUSEWATCH_SHARED``, else ``../shared`` next to the repository, else ``shared/``
inside it. Missing data is an error, not a skip: the known-answer tests must run.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    candidates = []
    if os.environ.get("PAUSEWATCH_SHARED"):
        candidates.append(Path(os.environ["PAUSEWATCH_SHARED"]))
    candidates += [REPO_ROOT.parent / "shared", REPO_ROOT / "shared"]
    for candidate in candidates:
        if (candidate / "testdata").is_dir():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"the shared test data folder was not found (tried {tried})")


TLOG = shared_dir() / "testdata" / "tlog"
