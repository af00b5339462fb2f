"""Planning ``rkrepro run``: the options, the seeds, and one plan per (cell, seed) with every
decision about how it trains (device type, precision, fast path, batch per process) taken once.

Torch-free, so the CLI, the launchers and the estimates use it without loading torch.
"""
