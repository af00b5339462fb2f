"""Tests of ``rkrepro report``: one module per module of :mod:`rkrepro.report` (``test_build``,
and per format ``test_markdown``, ``test_csv``, ...), all reading one MLflow store
(:mod:`.helpers_report`, filled once for the package by ``conftest.store``).

A package, so its modules are imported as ``report.test_csv`` & co (no clash with a test module
of the same name elsewhere) and ``tests/`` is on the import path for the ``helpers_*`` modules.
"""
