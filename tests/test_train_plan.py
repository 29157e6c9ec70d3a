"""The run-planning rules the trainer, the pre-flight and evaluation share (distill.plan), and
which [distill] fields apply to a method (DistillConfig.fields_for)."""

from __future__ import annotations

import pytest
import torch

from kdstudio.distill import plan
from kdstudio.distill.config import DistillConfig, OptimConfig
from kdstudio.errors import UserError

needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only rules")


@needs_no_gpu
def test_auto_is_the_cpu_in_fp32_and_cuda_asked_for_names_the_setting():
    device = plan.pick_device("auto")
    assert device == torch.device("cpu") == plan.pick_device("cpu")
    assert plan.pick_precision("auto", device) == plan.Precision("fp32", None, False)
    with pytest.raises(UserError, match=r'run\.device = "cuda" but no CUDA GPU'):
        plan.pick_device("cuda")
    with pytest.raises(UserError, match=r'eval\.device = "cuda"'):
        plan.pick_device("cuda", setting="eval.device")
    for want in ("bf16", "fp16"):
        with pytest.raises(UserError, match=f'run.precision = "{want}" needs a CUDA GPU'):
            plan.pick_precision(want, device)


def test_fp16_needs_a_scaler_and_fp32_runs_without_autocast():
    cuda = torch.device("cuda", 0)
    assert plan.pick_precision("fp16", cuda) == plan.Precision("fp16", torch.float16, True)
    assert plan.pick_precision("fp32", cuda).amp_dtype is None
    with plan.autocast(torch.device("cpu"), None):
        assert not torch.is_autocast_enabled("cpu")
    with plan.autocast(torch.device("cpu"), torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")


def test_steps_come_from_max_steps_or_epochs_over_accumulated_batches():
    assert plan.total_steps(OptimConfig(max_steps=7, epochs=3), 100) == 7
    assert plan.total_steps(OptimConfig(epochs=2.5, grad_accum=4), 10) == 7  # ceil(25 / 4)
    assert plan.total_steps(OptimConfig(epochs=0.01), 3) == 1
    assert plan.warmup_steps(OptimConfig(warmup=5), 100) == 5
    assert plan.warmup_steps(OptimConfig(warmup=0.1), 75) == 8  # round(7.5), banker's: 8


def test_the_distill_fields_that_apply_to_each_method():
    kd = {"temperature", "kd_weight", "chunk_size"}
    assert DistillConfig.fields_for("sft") == {"method"}
    assert DistillConfig.fields_for("sparse_kd", "jsd") == {"method", "tail", "align"} | kd
    dense = {"method", "teacher", "divergence", "on_policy", "align"} | kd
    assert DistillConfig.fields_for("dense_kd", "fkl") == dense
    assert DistillConfig.fields_for("dense_kd", "jsd") == dense | {"beta"}
    every = set(DistillConfig.__dataclass_fields__) - {"_section"}
    covered = set().union(
        *(DistillConfig.fields_for(m, "jsd") for m in ("sft", "sparse_kd", "dense_kd"))
    )
    assert covered == every  # no [distill] key is shown for no method
