"""Tests of :mod:`rkrepro.campaign`, one module per module."""
