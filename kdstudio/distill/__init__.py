"""Training a student on teacher outputs, one concern a module:

    config.py       TrainConfig: [student] [data] [distill] [optim] [run] [lora], from TOML
    plan.py         what a run will use: device, precision, dataset, steps, memory estimate
    batches.py      teacher outputs -> rendered, tokenized, masked, split, batched examples
    align.py        a teacher's tokens and top-k -> targets on the student's tokens, by bytes
    losses.py       pure per-token losses (fp32) and the references tests hold them to
    fused_head.py   the LM head fused with the loss, chunk by chunk (custom autograd)
    hf.py           Hugging Face model introspection (wrappers, LM head, hidden states)
    objectives/     the loss of a micro-batch per [distill] method: sft, sparse, dense
    trainer.py      the loop: Trainer (setup / train / save_checkpoint / close), run_training
    checkpoint.py   checkpoint folders: atomic writes, pruning, loading a student
    runs.py         runs in the workspace: create, look up, status, metrics read back
    preflight.py    every check before the first step, as one report

Heavy libraries (torch, transformers, peft) are imported by the modules that need them;
`config`, `runs` and `plan` import neither at module level (the window imports them).
"""
