"""The training loop: `Trainer(config, ws, sink, cancel)` with setup / train / save_checkpoint /
close. The window runs it in a QThread; `kdstudio train` runs it headless, also under
`torchrun --nproc-per-node N -m kdstudio train ...` (DDP, or FSDP with `run.parallel`).

    trainer = Trainer(config, ws, sink, cancel)        # or Trainer.for_resume(ws, "run", ...)
    result = run_training(trainer)   # setup, train, close; result.status: finished |
                                     # stopped | diverged

    trainer.setup()       # run row, data, student, objective pre-flight, optimizer, resume
    trainer.train()       # the loop (sets up first when setup() was not called)
    trainer.close()       # always, also after a failure: releases the model and the run

What a step does: take `grad_accum` micro-batches from the data stream, count their target
tokens (all ranks together), and backpropagate each micro-batch's summed loss divided by
that count, so the step's gradient is the mean over every target token of the window no
matter how they are spread over micro-batches. Then clip, AdamW, schedule.

Metrics go to the sinks every `log_every` steps (one device sync per interval: the
accumulators stay on the device in between); rank 0 alone reports and writes. Stopping
(the CancelToken; the CLI maps Ctrl-C to it) finishes the current step, checkpoints, and
returns status `stopped`.

Divergence (`kdstudio.distill.divergence`): every report's loss is judged; a run whose loss
is not finite, explodes, or stays far above its best is marked `diverged`, with what
happened and what to change, and stops there by default (`run.stop_on_divergence`),
without a checkpoint of the ruined weights; checkpoints written after the divergence are
marked so, and the run's last good one is what resume, evaluation and export take.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from kdstudio.distill import checkpoint as ckpt
from kdstudio.distill import plan, runs
from kdstudio.distill.batches import (
    Batch,
    Dataset,
    collate,
    collate_rows,
    load_student_tokenizer,
)
from kdstudio.distill.config import TrainConfig
from kdstudio.distill.divergence import Divergence, DivergenceCheck, advice
from kdstudio.distill.hf import hf_model
from kdstudio.distill.losses import cross_entropy
from kdstudio.distill.objectives import ObjectiveContext, make_objective
from kdstudio.errors import UserError, disk_full
from kdstudio.events import (
    CancelToken,
    Failed,
    FanoutSink,
    Finished,
    Log,
    Metrics,
    NullSink,
    Progress,
    Sink,
    StoreSink,
    Warning,
)
from kdstudio.model_folder import check_model_folder
from kdstudio.trackers import TrackerSink
from kdstudio.workspace import Workspace

STATE_FILE = "trainer_state.pt"


@dataclass
class TrainResult:
    run: str
    status: str  # finished | stopped | diverged
    step: int
    total_steps: int
    loss: float | None
    eval_loss: float | None
    checkpoint: Path | None  # the last good one
    message: str = ""  # for a diverged run: what happened and what to change


def lr_factor(step: int, *, total: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Learning-rate multiplier for optimizer step `step` (0-based)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        decay = 1.0 - progress
    return min_ratio + (1.0 - min_ratio) * decay


def _rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, keys.tolist(), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _compile_blocks(model: Any) -> None:
    """torch.compile each transformer block (the modules a model names in `_no_split_modules`)
    rather than the whole model: identical blocks share one compiled graph, so compiling takes
    one block's time, and the hooks and the fused loss around the blocks stay eager."""
    blocks = set(getattr(hf_model(model), "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in blocks]
    for layer in layers:
        layer.compile()
    if not layers:
        model.compile()


class Trainer:
    """One training run with a visible lifecycle (see the module docstring)."""

    def __init__(
        self,
        config: TrainConfig,
        ws: Workspace,
        sink: Sink | None = None,
        cancel: CancelToken | None = None,
        *,
        resume: bool = False,
    ) -> None:
        if not config.run.name:
            config = config.resolved()
        self.config, self.ws = config, ws
        self.user_sink = sink or NullSink()
        self.sink: Sink = NullSink()
        self.cancel = cancel or CancelToken()
        self.resume = resume
        self.run: runs.Run | None = None
        self.step = 0
        self.total_steps = 0
        self.rank, self.world, self.local_rank = 0, 1, 0
        self.distributed = self.sharded = False
        self._owns_pg = False
        self._ready = False
        self._last_saved_step = -1
        self._last_eval: tuple[int, float] | None = None
        self._elapsed_before = 0.0
        self._t_start = 0.0
        self.divergence = DivergenceCheck()
        self._ending = False  # the run reached its last step healthy: its checkpoints are good

    @classmethod
    def for_resume(
        cls, ws: Workspace, name: str, sink: Sink | None = None, cancel: CancelToken | None = None
    ) -> Trainer:
        """A trainer that continues run `name` from its last checkpoint (`setup` claims the
        run first: another process training it is refused there, naming it)."""
        run = runs.get_run(ws, name)
        if run.status == "finished":
            raise UserError(f"run {name!r} has finished; start a new run to train further")
        return cls(run.train_config(), ws, sink, cancel, resume=True)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- setup ----------------------------------------------------------------------------
    def setup(self) -> None:
        """Everything before the first step; raises UserError for bad input, before any step."""
        check_model_folder(self.config.student.path, "student.path")  # at once, before imports
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # per-shard save/load bars would flood the console
        self._setup_distributed()
        self._setup_run()
        try:
            if self.is_main:  # loading a big student takes a while: the claim stays fresh
                with runs.lease(self.ws, self.run.id).beating():
                    self._setup_rest()
            else:
                self._setup_rest()
        except BaseException:
            if self.is_main and self._created:
                runs.delete_run(self.ws, self.run.id)  # nothing trained: leave no trace
            elif self.is_main:
                runs.release(self.ws, self.run.id)  # the run is as it was
            self.run = None
            raise
        self._ready = True

    def _setup_rest(self) -> None:
        import torch

        cfg = self.config
        # rank 0 alone reports and stores; metrics reach the table once a second (see flush)
        self.store = self.trackers = None
        self.sink = NullSink()
        if self.is_main:
            self.store = StoreSink(self.ws, "train", self.run.id, run_id=self.run.id)
            self.trackers = TrackerSink(cfg, self.ws, self.run)
            self.sink = FanoutSink([self.store, self.trackers, self.user_sink])
        self.device = plan.pick_device(cfg.run.device, index=self.local_rank)
        precision = plan.pick_precision(cfg.run.precision, self.device)
        self.amp_dtype, self.use_scaler = precision.amp_dtype, precision.use_scaler
        if cfg.run.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
        _seed_everything(cfg.run.seed)

        self.tokenizer, fallback = load_student_tokenizer(cfg.student.path, cfg.student.template)
        if fallback and self.is_main:
            self.sink.emit(
                Warning(
                    "the student's tokenizer has no chat template: using kdstudio's plain template "
                    "(saved with the checkpoints)",
                    where="student.template",
                )
            )
        if self.is_main and (lr_problem := plan.lr_problem(cfg)):
            self.sink.emit(Warning(lr_problem, where="optim.lr"))
        self.data = self._load_data()
        state = self._resume_state() if self.resume else None
        self.model = self._load_model(state)
        self.objective = make_objective(cfg)
        self.objective.setup(
            ObjectiveContext(
                config=cfg,
                ws=self.ws,
                tokenizer=self.tokenizer,
                device=self.device,
                autocast_dtype=self.amp_dtype,
                sink=self.sink,
                student_config=getattr(self._unwrapped(), "config", None),
                extra={"train": self.data.train},
            )
        )
        self.optimizer = self._make_optimizer()
        self.stream = plan.data_stream(cfg, self.data.train, rank=self.rank, world_size=self.world)
        self.total_steps = plan.total_steps(cfg.optim, self.stream.batches_per_epoch)
        warmup = plan.warmup_steps(cfg.optim, self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            partial(
                lr_factor,
                total=self.total_steps,
                warmup=warmup,
                schedule=cfg.optim.schedule,
                min_ratio=cfg.optim.min_lr_ratio,
            ),
        )
        self.scaler = torch.amp.GradScaler("cuda") if self.use_scaler else None
        if state is not None:
            self._load_state(state)
        if self.is_main:
            runs.set_status(self.ws, self.run.id, "running")
            summary = {**self.run.summary, **self._data_summary(), "total_steps": self.total_steps}
            runs.update_run(self.ws, self.run.id, world_size=self.world, summary=summary)
            self.trackers.start(self.step, warn=self.sink)  # a resume continues their runs
            self.sink.emit(Log(self._describe()))

    def _setup_distributed(self) -> None:
        import torch
        import torch.distributed as dist

        world = int(os.environ.get("WORLD_SIZE", "1"))
        # under torchrun even one process joins a process group, so DDP and FSDP run as they
        # would on several GPUs (and checkpoint the same way)
        launched = world > 1 or "TORCHELASTIC_RUN_ID" in os.environ
        if launched and not dist.is_initialized():
            use_cuda = self.config.run.device != "cpu" and torch.cuda.is_available()
            self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            if use_cuda:
                torch.cuda.set_device(self.local_rank)
            dist.init_process_group("nccl" if use_cuda else "gloo")
            self._owns_pg = True
        self.distributed = dist.is_initialized()
        self.sharded = self.distributed and self.config.run.parallel == "fsdp"
        if self.distributed:
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
            self.local_rank = int(os.environ.get("LOCAL_RANK", self.rank))
            # control flags (stop requests) travel on CPU: no device sync per step
            self._cpu_group = (
                dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
            )
        elif self.config.run.parallel == "fsdp":
            raise UserError(
                'run.parallel = "fsdp" needs several processes: launch with '
                "`torchrun --nproc-per-node N -m kdstudio train ...`"
            )

    def _barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier(group=self._cpu_group)

    def _setup_run(self) -> None:
        name = self.config.run.name
        self._created = False
        if self.is_main:
            # Claimed before anything is loaded or cleaned: a second process resuming the
            # same run stops here, and never touches the first one's files.
            if self.resume:
                run = runs.claim(self.ws, runs.get_run(self.ws, name).id)
                if run.status == "finished":  # by another process since for_resume looked
                    runs.release(self.ws, run.id)
                    raise UserError(f"run {name!r} has finished; start a new run to train further")
                self.run = run
            else:
                self.run = runs.create_run(self.ws, self.config, world_size=self.world)
                self._created = True
                runs.claim(self.ws, self.run.id)
            ckpt.clean_partial(self.ws, name)
        self._barrier()
        if not self.is_main:
            self.run = runs.get_run(self.ws, name)

    def _load_data(self) -> Dataset:
        cfg = self.config.data
        data = plan.load_dataset(self.config, self.ws, self.tokenizer)
        if not data.train:
            raise UserError(data.why_no_train(cfg.label(), cfg.max_length))
        digest = hashlib.sha256()
        several = len(cfg.names()) > 1  # one collection: the fingerprint of kdstudio 0.1
        for e in data.train:
            key = (e.example.row_id, e.example.sample, e.input_ids)
            if several:
                key = (e.example.collection, *key)
            digest.update(repr(key).encode())
        self._fingerprint = digest.hexdigest()
        if self.is_main:
            runs.update_run(self.ws, self.run.id, eval_rows=data.eval_rows)
            if data.dropped:
                self.sink.emit(
                    Warning(
                        f"{data.dropped} examples dropped: truncating them to {cfg.max_length} tokens "
                        "would cut away the whole response",
                        where="data.max_length",
                    )
                )
            if data.skipped.get("empty"):
                self.sink.emit(
                    Warning(f"{data.skipped['empty']} examples with an empty response skipped")
                )
            low = data.skipped.get("below min_score", 0) + data.skipped.get("unscored", 0)
            if low:
                self.sink.emit(
                    Log(
                        f"{low} examples left out by data.min_score = {cfg.min_score} "
                        f"({data.skipped.get('unscored', 0)} without a score)"
                    )
                )
        return data

    def _resume_state(self) -> dict[str, Any]:
        import torch

        name = self.config.run.name
        good = self._last_good()
        if good is None:
            if self.is_main:
                self.sink.emit(Log(f"run {name} has no good checkpoint: starting it over"))
            return None
        path = good.path
        if self.is_main and self.run.status == "diverged":
            self.sink.emit(
                Warning(
                    f"run {name} diverged before ({self.run.error}); it resumes from its last "
                    f"good checkpoint, {path.name}, with the same settings, so it may diverge "
                    "again: a new run with the changes above is the usual fix",
                    where="run.stop_on_divergence",
                )
            )
            self.run.summary.pop("diverged", None)  # setup stores the summary without it
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        state["path"] = path
        return state

    def _load_model(self, state: dict[str, Any] | None) -> Any:
        import torch
        from transformers import AutoModelForCausalLM

        cfg = self.config
        source = cfg.student.path
        if state is not None and cfg.lora is None:
            source = str(state["path"] / "model")
        try:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot load the student from {source}: {exc}") from None
        model.config.use_cache = False
        if cfg.run.gradient_checkpointing:
            enable = getattr(model, "activation_checkpointing_enable", None)
            if enable is not None:  # transformers >= 5
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": False}
                )
        if cfg.lora is not None:
            model = self._apply_lora(model, state)
        model.to(self.device)
        model.train()
        if cfg.data.packing:
            plan.check_packing(model, self.device)
        self._base = model
        if cfg.run.compile:
            _compile_blocks(model)
        return self._wrap(model)

    def _apply_lora(self, model: Any, state: dict[str, Any] | None) -> Any:
        try:
            from peft import LoraConfig, PeftModel, get_peft_model
        except ImportError:
            raise UserError("[lora] needs peft: pip install 'kdstudio[lora]'") from None
        if self.config.run.gradient_checkpointing:
            model.enable_input_require_grads()
        if state is not None:
            return PeftModel.from_pretrained(model, state["path"] / "model", is_trainable=True)
        lc = self.config.lora
        targets = "all-linear" if lc.target_modules == ["all-linear"] else lc.target_modules
        return get_peft_model(
            model,
            LoraConfig(
                r=lc.r,
                lora_alpha=lc.alpha,
                lora_dropout=lc.dropout,
                target_modules=targets,
                task_type="CAUSAL_LM",
            ),
        )

    def _wrap(self, model: Any) -> Any:
        if not self.distributed:
            return model
        if self.sharded:
            from torch.distributed.fsdp import fully_shard

            blocks = set(getattr(hf_model(model), "_no_split_modules", None) or [])
            for module in model.modules():
                if type(module).__name__ in blocks:
                    fully_shard(module)
            fully_shard(model)
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def _unwrapped(self) -> Any:
        return getattr(self.model, "module", self.model)

    def _make_optimizer(self) -> Any:
        import torch

        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
        groups = [
            {"params": decay, "weight_decay": self.config.optim.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        o = self.config.optim
        fused = self.device.type in ("cuda", "cpu")  # fused AdamW: one kernel for all tensors
        return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), fused=fused)

    def _load_state(self, state: dict[str, Any]) -> None:
        if state.get("world_size", 1) != self.world:
            raise UserError(
                f"run {self.run.name!r} was checkpointed with {state['world_size']} processes; "
                f"resume it with the same number (now {self.world})"
            )
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_optimizer_state_dict,
            )

            set_optimizer_state_dict(
                self.model,
                self.optimizer,
                state["optimizer"],
                options=StateDictOptions(full_state_dict=True),
            )
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.stream.load_state_dict(state["data"])
        if self.is_main and state.get("data_fingerprint") not in (None, self._fingerprint):
            self.sink.emit(
                Warning(
                    "the collection's training examples changed since this checkpoint (outputs "
                    "added, edited or rejected): training continues on the current examples, so "
                    "it will not match an uninterrupted run",
                    where=f"data: {self.config.data.label()}",
                )
            )
        self.step = self._last_saved_step = int(state["step"])
        self._elapsed_before = float(state.get("elapsed", 0.0))
        self.divergence = DivergenceCheck(self.step)  # a checkpoint older than the check
        self.divergence.load_state_dict(state.get("divergence") or {})
        _set_rng_state(state["rng"])

    def _data_summary(self) -> dict[str, Any]:
        d = self.data
        return {
            "train_examples": len(d.train),
            "eval_examples": len(d.eval),
            "dropped_too_long": d.dropped,
            "skipped": dict(d.skipped),
            "collections": {k: dict(v) for k, v in d.per_collection.items()},
        }

    def _describe(self) -> str:
        n_params = sum(p.numel() for p in self.model.parameters())
        n_train = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        verb = f"resuming at step {self.step}" if self.resume else "starting"
        return (
            f"run {self.run.name}: {verb} of {self.total_steps} steps; "
            f"{len(self.data.train)} train / {len(self.data.eval)} eval examples; "
            f"student {n_params / 1e6:.2f}M params ({n_train / 1e6:.2f}M trained) on "
            f"{self.device.type}{' x' + str(self.world) if self.world > 1 else ''}, "
            f"{self.amp_dtype or 'fp32'}; method {self.config.distill.method}"
        )

    # -- the loop ---------------------------------------------------------------------------
    def train(self) -> TrainResult:
        """Run until `total_steps`, or until stopped; returns how it ended."""
        if not self._ready:
            self.setup()
        try:
            return self._train()
        except (KeyboardInterrupt, SystemExit):
            self._outcome = "interrupted"  # the process dies: the run reads as interrupted
            raise
        except BaseException as exc:
            self._outcome = "failed"
            resume = f"continue the run with `kdstudio train --resume {self.config.run.name}`"
            full = disk_full(exc, then=resume)
            if full is not None:
                exc = full
            self._flush_metrics()
            if self.is_main and self.run is not None:
                runs.set_status(
                    self.ws, self.run.id, "failed", error=f"{type(exc).__name__}: {exc}"
                )
                self.sink.emit(Failed(str(exc), details=type(exc).__name__))
            if full is not None:
                raise full from None
            raise

    def _train(self) -> TrainResult:
        import torch

        cfg = self.config
        o = cfg.optim
        params = [p for p in self.model.parameters() if p.requires_grad]
        clip = o.clip if o.clip > 0 else float("inf")
        self._t_start = time.perf_counter()
        interval = self._new_interval()
        if self.is_main:
            self.sink.emit(Progress(self.step, self.total_steps, unit="step"))
        stopped = False
        last_beat = 0.0
        while self.step < self.total_steps:
            if self._stop_requested():
                stopped = True
                if interval.steps:  # the figures since the last report
                    self._judge(self._report(interval))
                break
            window = [self._next_batch() for _ in range(o.grad_accum)]
            n_target = self._global_sum(sum(b.n_target for b in window))
            scale = self.world / max(n_target, 1)  # DDP averages over ranks: undo, then per token
            self.model.train()
            for i, batch in enumerate(window):
                batch = batch.to(self.device)
                with self._sync_context(last=i == len(window) - 1), self._autocast():
                    out = self.objective.loss(self.model, batch)
                    loss = out.loss_sum * scale
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
                interval.add(out, batch)
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
            if hasattr(grad_norm, "full_tensor"):
                grad_norm = grad_norm.full_tensor()
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            interval.lr = self.scheduler.get_last_lr()[0]  # the rate this step used
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            interval.grad_norm = interval.grad_norm + grad_norm.detach().float()
            interval.steps += 1
            if self.divergence.needs_start and interval.first is None:
                # the loss of the weights the run starts from, read with the first report
                interval.first = (interval.loss, interval.n_target, self.step - 1)

            last = self.step >= self.total_steps
            if self.step % cfg.run.log_every == 0 or last:
                halt = self._judge(self._report(interval))
                interval = self._new_interval()
                if halt:
                    break
            if cfg.run.eval_every and self.step % cfg.run.eval_every == 0 and not last:
                self.evaluate()
            if cfg.run.checkpoint_every and self.step % cfg.run.checkpoint_every == 0 and not last:
                self.save_checkpoint()
            if self.is_main and time.monotonic() - last_beat > runs.HEARTBEAT_EVERY_S:
                last_beat = time.monotonic()
                runs.heartbeat(self.ws, self.run.id, self.step)
        return self._finish(stopped)

    def _finish(self, stopped: bool) -> TrainResult:
        found = self.divergence.found
        halted = found is not None and self.config.run.stop_on_divergence
        self._flush_metrics()
        if (
            not stopped
            and not halted
            and self.data.eval
            and (self._last_eval is None or self._last_eval[0] != self.step)
        ):
            self.evaluate()
        self._ending = not stopped and found is None
        # a run stopped by its divergence keeps no checkpoint of the ruined weights
        saving = self._last_saved_step != self.step and not halted
        path = self.save_checkpoint() if saving else None
        status = "diverged" if found else "stopped" if stopped else "finished"
        loss = self._last_loss
        eval_loss = self._last_eval[1] if self._last_eval else None
        message = ""
        if self.is_main and found is not None:
            good = self._last_good()
            path = good.path if good is not None else None
            message = self._divergence_message(found, good)
        if self.is_main:
            runs.update_run(self.ws, self.run.id, step=self.step)
            runs.merge_summary(  # keeps what others stored (the trackers' run ids)
                self.ws,
                self.run.id,
                **{
                    **self._data_summary(),
                    "loss": loss,
                    "eval_loss": eval_loss,
                    "steps": self.step,
                    "total_steps": self.total_steps,
                    "elapsed": self._elapsed(),
                },
            )
            runs.set_status(self.ws, self.run.id, status, error=message or None)
            if found is not None:
                self.sink.emit(Failed(message, details="diverged"))
            elif stopped:
                self.sink.emit(
                    Failed(
                        f"run {self.run.name} stopped at step {self.step} "
                        f"(resume with `kdstudio train --resume {self.run.name}`)",
                        cancelled=True,
                    )
                )
            else:
                self.sink.emit(
                    Finished(
                        f"run {self.run.name} finished: {self.step} steps",
                        summary={"loss": loss, "eval_loss": eval_loss},
                    )
                )
        if path is None and self.is_main and (good := self._last_good()) is not None:
            path = good.path
        self._barrier()  # every rank returns after rank 0 has recorded how the run ended
        self._outcome = status
        return TrainResult(
            self.run.name, status, self.step, self.total_steps, loss, eval_loss, path, message
        )

    # -- divergence -------------------------------------------------------------------------
    def _judge(self, loss: float) -> bool:
        """Give a report's loss to the divergence check; True when the run must stop now."""
        found = self.divergence.observe(self.step, loss)
        if found is None:
            return False
        if self.is_main:
            ckpt.mark_diverged(self.ws, self.run.name, found.good_until, run_id=self.run.id)
            runs.merge_summary(self.ws, self.run.id, diverged=found.to_dict())
            if not self.config.run.stop_on_divergence:
                self.sink.emit(
                    Warning(
                        f"run {self.run.name} diverged: {found.describe()}; it trains on "
                        "(run.stop_on_divergence = false), and its checkpoints from step "
                        f"{found.good_until} on are not used as last or best",
                        where="run.stop_on_divergence",
                    )
                )
        return self.config.run.stop_on_divergence

    def _last_good(self) -> ckpt.CheckpointInfo | None:
        good = [c for c in ckpt.list_checkpoints(self.ws, self.run.name) if not c.diverged]
        return good[-1] if good else None

    def _divergence_message(self, found: Divergence, last_good: ckpt.CheckpointInfo | None) -> str:
        """What happened, what is kept, what to change: the run's error and the Failed event."""
        if self.config.run.stop_on_divergence:
            outcome = "Stopped there"
        else:
            outcome = f"It trained on to step {self.step} (run.stop_on_divergence = false)"
        if last_good is not None:
            kept = (
                f"its last good checkpoint is step {last_good.step} "
                "(resume, evaluation and export use it)"
            )
        else:
            kept = "it has no good checkpoint (none was confirmed by a healthy loss before)"
        return (
            f"run {self.run.name} diverged: {found.describe()}. {outcome}; {kept}. "
            f"To avoid it: {advice(self.config)}."
        )

    _last_loss: float | None = None
    _outcome: str | None = None

    @property
    def packed(self) -> bool:
        return self.config.data.packing

    def _next_batch(self) -> Batch:
        rows = [[self.data.train[i] for i in row] for row in self.stream.next()]
        pin = self.device.type == "cuda"
        return collate_rows(rows, self.tokenizer.pad_token_id, pin=pin, packed=self.packed)

    def _sync_context(self, last: bool) -> Any:
        if not self.distributed or last:
            if self.sharded:
                self.model.set_requires_gradient_sync(True)
            return nullcontext()
        if self.sharded:
            self.model.set_requires_gradient_sync(False)
            return nullcontext()
        return self.model.no_sync()

    def _autocast(self) -> Any:
        return plan.autocast(self.device, self.amp_dtype)

    def _global_sum(self, value: int) -> int:
        if self.world == 1:
            return value
        import torch
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.long)
        dist.all_reduce(t, group=self._cpu_group)
        return int(t.item())

    def _stop_requested(self) -> bool:
        flag = self.cancel.cancelled
        if self.world == 1:
            return flag
        import torch
        import torch.distributed as dist

        t = torch.tensor([1 if flag else 0], dtype=torch.long)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self._cpu_group)
        return bool(t.item())

    def _elapsed(self) -> float:
        return self._elapsed_before + (
            time.perf_counter() - self._t_start if self._t_start else 0.0
        )

    # -- metrics ----------------------------------------------------------------------------
    def _flush_metrics(self) -> None:
        store = getattr(self, "store", None)
        if store is not None:
            store.flush()

    def _new_interval(self) -> _Interval:
        return _Interval(self.device, time.perf_counter())

    def _report(self, iv: _Interval) -> float:
        """Report the interval's metrics (its one device sync); returns its mean loss."""
        import torch

        names = [
            "grad_norm",
            "loss",
            *sorted(iv.sums),
            *(f"{k}:num" for k in sorted(iv.counts)),
            *(f"{k}:den" for k in sorted(iv.counts)),
        ]
        values = [
            iv.grad_norm,
            iv.loss,
            *(iv.sums[k] for k in sorted(iv.sums)),
            *(iv.counts[k][0] for k in sorted(iv.counts)),
            *(iv.counts[k][1] for k in sorted(iv.counts)),
        ]
        first_target = first_step = 0
        if iv.first is not None:  # the run's first step: the divergence check's baseline
            first_loss, first_target, first_step = iv.first
            names.append("first:loss")
            values.append(first_loss)
        local = torch.stack(
            [torch.as_tensor(v, device=self.device).float().reshape(()) for v in values]
        )
        counts = [iv.n_target, iv.n_tokens, iv.n_samples, first_target]
        if self.world > 1:
            import torch.distributed as dist

            host = torch.tensor(counts, dtype=torch.float64)
            dist.all_reduce(local)
            dist.all_reduce(host, group=self._cpu_group)
            counts = host.tolist()  # a CPU tensor: no device sync
        figures = dict(zip(names, local.tolist(), strict=True))  # the interval's one device sync
        # every rank holds the same (global) gradient norm: average it, do not sum it
        grad_norm = figures["grad_norm"] / self.world / max(iv.steps, 1)
        n_target, n_tokens, n_samples, first_target = counts
        if "first:loss" in figures:
            self.divergence.start(figures["first:loss"] / max(first_target, 1), first_step)
        seconds = max(time.perf_counter() - iv.t0, 1e-9)
        values_out = {"loss": figures["loss"] / max(n_target, 1)}
        for k in sorted(iv.sums):
            values_out[k] = figures[k] / max(n_target, 1)
        for k in sorted(iv.counts):
            values_out[k] = figures[f"{k}:num"] / max(figures[f"{k}:den"], 1e-12)
        values_out.update(
            {
                "lr": float(iv.lr),
                "grad_norm": grad_norm,
                "tokens_per_s": n_tokens / seconds,
                "samples_per_s": n_samples / seconds,
                "elapsed": self._elapsed(),
            }
        )
        if self.device.type == "cuda":
            values_out["gpu_mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        self._last_loss = values_out["loss"]
        if self.is_main:
            self.sink.emit(Metrics(self.step, values_out))
            self.sink.emit(
                Progress(
                    self.step,
                    self.total_steps,
                    unit="step",
                    extra={"loss": round(values_out["loss"], 4)},
                )
            )
        return values_out["loss"]

    # -- evaluation -------------------------------------------------------------------------
    def evaluate(self) -> float | None:
        """Mean CE and next-token accuracy on the held-out examples' response tokens."""
        import torch

        if not self.data.eval:
            return None
        model = self.model if self.sharded else self._unwrapped()
        was_training = model.training
        model.eval()
        bs = self.config.optim.batch_size
        total = torch.zeros(3, dtype=torch.float64, device=self.device)  # ce, correct, tokens
        items = self.data.eval
        order = sorted(range(len(items)), key=lambda i: len(items[i]))
        width = bs * self.world
        with torch.no_grad():
            for start in range(0, len(order), width):
                part = [items[i] for i in order[start : start + width]][self.rank :: self.world]
                weight = 1.0 if part else 0.0
                batch = collate(part or [items[order[start]]], self.tokenizer.pad_token_id).to(
                    self.device
                )
                with self._autocast():
                    logits = model(**batch.model_inputs(), use_cache=False).logits
                labels = batch.labels[:, 1:]
                ce = cross_entropy(logits[:, :-1], labels, reduction="sum")
                hit = ((logits[:, :-1].argmax(-1) == labels) & (labels != -100)).sum()
                total += weight * torch.stack(
                    [
                        ce.double(),
                        hit.double(),
                        torch.tensor(batch.n_target, dtype=torch.float64, device=self.device),
                    ]
                )
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(total)
        ce_sum, correct, n = total.tolist()
        model.train(was_training)
        eval_loss, acc = ce_sum / max(n, 1), correct / max(n, 1)
        self._last_eval = (self.step, eval_loss)
        if self.is_main:
            self.sink.emit(Metrics(self.step, {"eval_loss": eval_loss, "eval_token_acc": acc}))
        return eval_loss

    # -- checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0 writes; every rank takes part)."""
        self._flush_metrics()
        model_state, optim_state = self._gather_state()
        path = None
        if self.is_main:
            eval_loss = (
                self._last_eval[1] if self._last_eval and self._last_eval[0] == self.step else None
            )
            state = {
                "step": self.step,
                "optimizer": optim_state,
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "data": self.stream.state_dict(),
                "rng": _rng_state(),
                "elapsed": self._elapsed(),
                "world_size": self.world,
                "data_fingerprint": self._fingerprint,
                "divergence": self.divergence.state_dict(),
            }
            meta = {
                "eval_loss": eval_loss,
                "run": self.run.name,
                "lora": self.config.lora is not None,
                "world_size": self.world,
                "loss": self._last_loss,
            }
            if self.divergence.found is not None:
                meta["diverged"] = True
            path = ckpt.write_checkpoint(
                self.ws,
                self.run.name,
                self.step,
                partial(self._write_files, model_state, state),
                meta,
                run_id=self.run.id,
            )
            ckpt.prune_checkpoints(
                self.ws,
                self.run.name,
                self.config.run.keep_last,
                run_id=self.run.id,
                # while training, newer checkpoints are not yet confirmed by a healthy loss
                confirmed_before=None if self._ending else self.divergence.good_until,
            )
            runs.update_run(self.ws, self.run.id, step=self.step)
            self.sink.emit(Log(f"checkpoint saved: {path}"))
        self._last_saved_step = self.step
        self._barrier()
        return path

    def _gather_state(self) -> tuple[Any, Any]:
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
                get_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            return (
                get_model_state_dict(self.model, options=opts),
                get_optimizer_state_dict(self.model, self.optimizer, options=opts),
            )
        return None, self.optimizer.state_dict()

    def _write_files(self, model_state: Any, state: dict[str, Any], folder: Path) -> None:
        import torch

        model = self._unwrapped()
        model = getattr(model, "_orig_mod", model)
        kwargs = {"state_dict": model_state} if model_state is not None else {}
        model.save_pretrained(folder / "model", **kwargs)
        self.tokenizer.save_pretrained(folder / "tokenizer")
        torch.save(state, folder / STATE_FILE)

    # -- close ------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the objective, the model and the process group (when this trainer made it)."""
        self._flush_metrics()
        if getattr(self, "trackers", None) is not None:
            self.trackers.close()
        objective = getattr(self, "objective", None)
        if objective is not None:
            objective.close()
        if self.is_main and self.run is not None and self._ready and self._outcome is None:
            runs.set_status(self.ws, self.run.id, "stopped", error="closed before it finished")
        self.model = None
        if self._owns_pg:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self._owns_pg = False


def run_training(trainer: Trainer) -> TrainResult:
    """Set up, train and close `trainer`, closing it also when setup or training fails: how
    every front end (CLI, window, demo) runs a training, in a thread or not."""
    try:
        trainer.setup()
        return trainer.train()
    finally:
        trainer.close()


class _Interval:
    """Accumulators of one logging interval, on the device until it is reported."""

    def __init__(self, device: Any, t0: float) -> None:
        import torch

        self.t0 = t0
        self.loss = torch.zeros((), device=device)
        self.grad_norm = torch.zeros((), device=device)
        self.sums: dict[str, Any] = {}
        self.counts: dict[str, list[Any]] = {}
        self.n_target = self.n_tokens = self.n_samples = self.steps = 0
        self.lr = 0.0
        self.first: tuple[Any, int, int] | None = None  # (loss sum, target tokens, step)

    def add(self, out: Any, batch: Batch) -> None:
        self.loss = self.loss + out.loss_sum.detach().float()
        for k, v in out.sums.items():
            self.sums[k] = self.sums.get(k, 0) + v.detach().float()
        for k, (num, den) in out.counts.items():
            acc = self.counts.setdefault(k, [0, 0])
            acc[0] = acc[0] + num.detach().float()
            acc[1] = acc[1] + den.detach().float()
        self.n_target += batch.n_target
        self.n_tokens += batch.n_tokens
        self.n_samples += len(batch)
