"""Test support, never shipped: a loopback OpenAI-protocol server (`openai_server`),
collections and trained runs written straight into a workspace (`train_data`, `runs`), and
GUI test helpers (`gui`).

Tests import it as `support` (pytest puts tests/ on sys.path); the benchmarks and
scripts/screenshots put tests/ on theirs. Nothing here downloads anything: models are built
from a config (`kdstudio.demo.tiny`), tokenizers trained locally.
"""
