"""Tests of :mod:`rkrepro.training`, one module per module."""
