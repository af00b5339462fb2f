"""Tests of :mod:`rkrepro.planning`, one module per module."""
