"""Sampler backends behind one interface (:class:`agent.sampler.base.Sampler`).

    sampler = open_sampler(...)          # see agent.daemon; backends: nvml, sim, replay
    poll = sampler.poll(clock.time_ns())

Only :mod:`agent.sampler.nvml` imports ``pynvml``; importing this package does not.
"""
