"""Where the tests' own data is: ``tests/data/`` (vectors and trace excerpts, with licences).

The repository carries every file its tests read, so a clone with nothing beside it passes::

    from tests.testdata import TLOG
    vectors = json.loads((TLOG / "signed-note" / "signed_note_vectors.json").read_text())
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTDATA = REPO_ROOT / "tests" / "data"
TLOG = TESTDATA / "tlog"
TRACES = TESTDATA / "traces"
