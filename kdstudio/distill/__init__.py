"""Training a student on teacher outputs: config, batches, objectives, the loop, checkpoints.

Heavy libraries (torch, transformers, peft) are imported by the modules that need them;
`kdstudio.distill.config` and `kdstudio.distill.runs` import neither.
"""
