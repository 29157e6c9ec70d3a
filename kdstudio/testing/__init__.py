"""Helpers for tests, benchmarks and the offline demo: tiny models, a loopback teacher.

Nothing here downloads anything: models are built from a config, tokenizers trained locally.
"""
