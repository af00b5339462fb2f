"""rkrepro: reproduce the tables of the RKNet paper (Zhu, Chang & Fu) and track the reproduction."""

__version__ = "0.1.0"
