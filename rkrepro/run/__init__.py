"""Running cells: plans (what to train), the runner (skip, resume or train each), progress,
and the launchers that spread plans over GPUs, torchrun groups and SLURM.

Data flows one way: :mod:`~rkrepro.run.plans` (torch-free) -> :mod:`~rkrepro.run.launch` /
:mod:`~rkrepro.run.slurm` (jobs that rerun ``rkrepro run`` on one plan) or
:mod:`~rkrepro.run.runner` (trains in this process) -> :mod:`rkrepro.train` and
:mod:`rkrepro.tracking`.
"""
