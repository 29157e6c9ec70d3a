"""kdstudio: a desktop studio for knowledge distillation of language models."""

__version__ = "0.1.0"
