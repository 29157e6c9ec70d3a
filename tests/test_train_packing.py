"""`data.packing`: several examples per row, each on its own positions and attention, the same
loss and gradient as unpacked; and the SFT loss on the fused LM head, equal to cross-entropy
over full logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from train_support import make_config, single_thread, student, train, workspace_with_collection

from kdstudio.distill.batches import (
    IGNORE,
    DataStream,
    Encoded,
    collate,
    collate_rows,
    pack_rows,
    packed_epoch_batches,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from single_thread()


def test_packing_places_every_example_once_within_the_length_deterministically():
    lengths = [(i * 37) % 120 + 5 for i in range(300)]
    order = list(range(300))
    rows = pack_rows(lengths, order, 128, window=64)
    assert sorted(i for r in rows for i in r) == order
    assert all(sum(lengths[i] for i in r) <= 128 for r in rows)
    assert rows == pack_rows(lengths, order, 128, window=64)
    # first fit, longest first: the rows come out nearly full
    assert sum(lengths) / (128 * len(rows)) > 0.9
    a = packed_epoch_batches(lengths, 4, seed=3, epoch=0, max_length=128)
    assert a == packed_epoch_batches(lengths, 4, seed=3, epoch=0, max_length=128)
    assert a != packed_epoch_batches(lengths, 4, seed=3, epoch=1, max_length=128)
    assert sorted(i for b in a for r in b for i in r) == order


def test_a_packed_stream_resumes_exactly_and_shards_rows_over_ranks():
    lengths = [(i * 13) % 40 + 3 for i in range(90)]
    stream = DataStream(lengths, 3, seed=1, pack_length=64)
    for _ in range(stream.batches_per_epoch + 2):  # into the next epoch
        stream.next()
    state = stream.state_dict()
    expected = [stream.next() for _ in range(4)]
    again = DataStream(lengths, 3, seed=1, pack_length=64)
    again.load_state_dict(state)
    assert [again.next() for _ in range(4)] == expected
    ranks = [DataStream(lengths, 2, seed=1, rank=r, world_size=2, pack_length=64) for r in (0, 1)]
    single = DataStream(lengths, 4, seed=1, pack_length=64)
    for _ in range(5):
        assert sorted(ranks[0].next() + ranks[1].next()) == sorted(single.next())


def _encoded(prompt: int, response: int, start: int) -> Encoded:
    ids = list(range(start, start + prompt + response))
    labels = [IGNORE] * prompt + ids[prompt:]
    return Encoded(ids, labels, prompt, [(0, 0)] * response)


def test_a_packed_batch_restarts_positions_and_keeps_each_examples_targets():
    a, b, c = _encoded(2, 3, 10), _encoded(3, 2, 30), _encoded(1, 4, 50)
    batch = collate_rows([[a, b], [c]], pad_id=0)
    assert batch.packed and batch.attention_mask is None
    assert batch.input_ids.shape == (2, 10)
    assert batch.position_ids[0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]
    assert batch.position_ids[1].tolist()[:5] == [0, 1, 2, 3, 4]
    assert batch.offsets == [(0, 0), (0, 5), (1, 0)]
    unpacked = collate([a, b, c], pad_id=0)
    assert (batch.n_target, batch.n_tokens) == (unpacked.n_target, unpacked.n_tokens)
    assert batch.labels[0, 5] == IGNORE  # nothing predicts b's first token from a's last
    got = batch.labels[:, 1:].reshape(-1)[batch.target_index].tolist()
    want = unpacked.labels[:, 1:].reshape(-1)[unpacked.target_index].tolist()
    assert got == want


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from kdstudio.distill.batches import build_dataset, load_student_tokenizer

    root = tmp_path_factory.mktemp("packing")
    path = student(root)
    ws = workspace_with_collection(root / "ws", n=12)
    tok, _ = load_student_tokenizer(str(path))
    from kdstudio.collect.store import iter_examples

    data = build_dataset(tok, iter_examples(ws, "tiny"), max_length=64, eval_fraction=0.0)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return path, tok, data.train, model


def test_a_packed_row_gives_every_example_the_logits_it_gets_alone(tiny):
    from kdstudio.distill.plan import check_packing

    _path, tok, train_set, model = tiny
    check_packing(model, torch.device("cpu"))  # passes: sdpa reads packed positions
    batch = collate_rows([train_set[:3]], tok.pad_token_id)
    with torch.no_grad():
        packed = model(**batch.model_inputs(), use_cache=False).logits[0]
        for (_row, start), e in zip(batch.offsets, batch.items, strict=True):
            alone = model(input_ids=torch.tensor([e.input_ids])).logits[0]
            assert torch.allclose(packed[start : start + len(e)], alone, atol=1e-5)


def test_packing_is_refused_for_a_model_whose_attention_mixes_examples():
    from kdstudio.distill.plan import check_packing
    from kdstudio.errors import UserError

    class Mixing(torch.nn.Module):  # every position sees the whole row (cumulative sum)
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(50, 8)
            self.config = type("C", (), {"_attn_implementation": "eager"})()

        def get_input_embeddings(self):
            return self.embed

        def forward(self, input_ids, position_ids=None, use_cache=False):
            out = type("O", (), {})()
            out.logits = self.embed(input_ids).cumsum(1)
            return out

    with pytest.raises(UserError, match="data.packing"):
        check_packing(Mixing(), torch.device("cpu"))


def _loss_and_grads(objective, model, batch):
    model.zero_grad()
    out = objective.loss(model, batch)
    out.loss_sum.backward()
    return out.loss_sum.item(), [p.grad.clone() for p in model.parameters()]


def test_sft_on_a_packed_batch_equals_the_unpacked_loss_and_gradient(tiny):
    from kdstudio.distill.objectives import SFT

    path, tok, train_set, model = tiny
    cfg = make_config(path, data={"packing": True})
    items = train_set[:6]
    packed, grads_p = _loss_and_grads(
        SFT(cfg), model, collate_rows([items[:3], items[3:]], tok.pad_token_id)
    )
    plain, grads_u = _loss_and_grads(SFT(cfg), model, collate(items, tok.pad_token_id))
    assert packed == pytest.approx(plain, rel=1e-5)
    for a, b in zip(grads_p, grads_u, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fused", [True, False])
def test_sft_loss_equals_cross_entropy_over_full_logits(tiny, fused):
    from kdstudio.distill.objectives import SFT

    path, tok, train_set, model = tiny
    batch = collate(train_set[:4], tok.pad_token_id)
    objective = SFT(make_config(path, distill={"chunk_size": 7}))
    objective.fused = fused
    got, grads = _loss_and_grads(objective, model, batch)
    model.zero_grad()
    logits = model(**batch.model_inputs(), use_cache=False).logits[:, :-1]
    ref = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), batch.labels[:, 1:].reshape(-1), reduction="sum"
    )
    ref.backward()
    assert got == pytest.approx(ref.item(), rel=1e-5)
    for a, p in zip(grads, model.parameters(), strict=True):
        assert torch.allclose(a, p.grad, rtol=1e-4, atol=1e-6)


def test_the_cross_entropy_chunk_gradient_is_softmax_minus_onehot():
    from kdstudio.distill.fused_head import cross_entropy_chunk, fused_head_loss

    torch.manual_seed(1)
    x = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(13, 6, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 13, (9,))
    total, stats = fused_head_loss(cross_entropy_chunk(y), x, w, None, chunk_size=4, n_stats=1)
    gx, gw = torch.autograd.grad(total, [x, w])
    ref = F.cross_entropy(F.linear(x, w), y, reduction="sum")
    rx, rw = torch.autograd.grad(ref, [x, w])
    assert total.item() == pytest.approx(ref.item(), rel=1e-12)
    assert stats.item() == pytest.approx(ref.item(), rel=1e-6)
    assert torch.allclose(gx, rx) and torch.allclose(gw, rw)


def test_a_packed_run_stops_and_resumes_to_the_uninterrupted_loss(tmp_path):
    from kdstudio.events import CancelToken, Metrics

    path = student(tmp_path)
    ws = workspace_with_collection(tmp_path / "ws", n=24)
    packed = {"data": {"packing": True, "max_length": 48}, "optim": {"max_steps": 6}}
    whole = make_config(path, run={"name": "whole"}, **packed)
    losses: dict[str, dict[int, float]] = {"whole": {}, "split": {}}

    class Record:
        def __init__(self, name, cancel=None, stop_at=None):
            self.name, self.cancel, self.stop_at = name, cancel, stop_at

        def emit(self, event):
            if isinstance(event, Metrics) and "loss" in event.values:
                losses[self.name][event.step] = event.values["loss"]
                if self.stop_at and event.step >= self.stop_at:
                    self.cancel.cancel("test")

    assert train(ws, whole, Record("whole")).status == "finished"
    split = make_config(path, run={"name": "split"}, **packed)
    cancel = CancelToken()
    assert train(ws, split, Record("split", cancel, 3), cancel).status == "stopped"
    assert train(ws, split, Record("split"), resume=True).status == "finished"
    assert sorted(losses["split"]) == sorted(losses["whole"]) == list(range(1, 7))
    for step, value in losses["whole"].items():
        assert losses["split"][step] == pytest.approx(value, abs=1e-5)
    # a packed step holds several examples a row: fewer rows than examples were trained on
    from kdstudio.distill import runs

    summary = runs.get_run(ws, "whole").summary
    assert summary["train_examples"] > 0
