"""Tests of :mod:`rkrepro.launch`, one module per module."""
