"""Tests of ``rkrepro report``."""
