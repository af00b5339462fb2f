"""Tests of :mod:`rkrepro.models`, one module per module."""
