"""quantbench: a reproducible benchmark and experiment harness for weight quantization."""

__version__ = "0.1.0"
