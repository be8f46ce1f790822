"""vsr: video super-resolution batch pipeline (PyAV decode, Ray actors, GAN generators)."""

__version__ = "0.1.0"
