"""rkrepro: reproduce the tables of "Convolutional Neural Networks combined with Runge-Kutta Methods"."""

__version__ = "0.1.0"
