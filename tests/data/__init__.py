"""Tests of :mod:`rkrepro.data`, one module per module."""
