"""ctl-lightning: similar and complementary fashion recommendations from product images alone."""

__version__ = "0.1.0"
