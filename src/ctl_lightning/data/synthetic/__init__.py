"""The embedded synthetic dataset: real file formats, planted styles, generated offline."""

from ctl_lightning.data.synthetic.generate import SynthConfig, generate, is_complete

__all__ = ["SynthConfig", "generate", "is_complete"]
