"""pausewatch-agent: the lab's daemon on every GPU node. It samples the GPUs, folds the samples
into windows, signs one attestation per window, keeps it durably and ships it to the verifier.

    pausewatch-agent init --state-dir /var/lib/pausewatch-agent --lab lab-a --verifier v:443
    pausewatch-agent enroll --operator-key operator.key
    pausewatch-agent run --backend nvml

See docs/agent.md. ``agent`` depends on ``attest`` and never on ``verifier``.
"""

__version__ = "0.1.0"
