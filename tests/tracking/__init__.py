"""Tests of :mod:`rkrepro.tracking`, one module per module."""
