"""``python -m verifier.cli``: the regulator's command line run from a checkout, as ``pausewatch``.

    python -m verifier.cli audit report --lab lab-a --since 2026-11-01 --until 2026-12-01

The demo and the tests start it this way, so that the process runs the code beside them.
"""

from verifier.cli.main import main

main()
