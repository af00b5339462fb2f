"""Tests of :mod:`rkrepro.report.render`, one module per format."""
