"""Tests of :mod:`rkrepro.estimate`, one module per module."""
