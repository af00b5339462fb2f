"""Tests of :mod:`rkrepro.paper`, one module per module."""
