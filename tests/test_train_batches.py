"""The data path: rendering, the loss mask, truncation, review, split, order, padding."""

from __future__ import annotations

import pytest
from train_support import workspace_with_collection

from kdstudio.distill.batches import (
    IGNORE,
    DataStream,
    build_dataset,
    collate,
    encode_example,
    epoch_batches,
    load_student_tokenizer,
    preview_example,
    split_rows,
)

WORDS = [
    "hi",
    "there",
    "hello",
    "you",
    "be",
    "brief",
    "###",
    "User:",
    "System:",
    "Assistant:",
    "a",
    "b",
    "c",
    "d",
    "e",
    "f",
    "g",
]
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@pytest.fixture(scope="module")
def word_tok(tmp_path_factory):
    """A word-level tokenizer: every word, space and newline is one token, so label
    positions can be written out by hand."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
    vocab = {t: i for i, t in enumerate(specials + ["\n", " ", "<unk>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\n| |[^\n ]+"), behavior="isolated")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="<|end|>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=specials[3:],
    )
    fast.chat_template = TEMPLATE
    path = tmp_path_factory.mktemp("wordtok")
    fast.save_pretrained(path)
    return path


def ids(tok, *tokens):
    return [tok.convert_tokens_to_ids(t) for t in tokens]


def test_loss_is_on_the_response_and_end_of_turn_only(word_tok):
    tok, fallback = load_student_tokenizer(str(word_tok))
    assert not fallback
    enc = encode_example(tok, [{"role": "user", "content": "hi there"}], "hello you", 64)
    # position: 0 <s> 1 <|user|> 2 \n 3 hi 4 ' ' 5 there 6 <|end|> 7 \n 8 <|assistant|> 9 \n
    #           10 hello 11 ' ' 12 you 13 <|end|> 14 \n
    assert enc.input_ids == ids(
        tok,
        "<s>",
        "<|user|>",
        "\n",
        "hi",
        " ",
        "there",
        "<|end|>",
        "\n",
        "<|assistant|>",
        "\n",
        "hello",
        " ",
        "you",
        "<|end|>",
        "\n",
    )
    assert enc.labels == [IGNORE] * 10 + ids(tok, "hello", " ", "you", "<|end|>") + [IGNORE]
    assert enc.prompt_len == 10
    assert enc.spans[:3] == [(0, 5), (5, 6), (6, 9)]  # offsets within the response text


def test_system_and_earlier_turns_carry_no_loss(word_tok):
    tok, _ = load_student_tokenizer(str(word_tok))
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "a b"},
        {"role": "user", "content": "there"},
    ]
    enc = encode_example(tok, messages, "c", 64)
    with_loss = [i for i, lab in enumerate(enc.labels) if lab != IGNORE]
    assert [tok.convert_ids_to_tokens(enc.input_ids[i]) for i in with_loss] == ["c", "<|end|>"]
    assert with_loss == [len(enc.input_ids) - 3, len(enc.input_ids) - 2]


def test_fallback_template_when_the_tokenizer_has_none(word_tok, tmp_path):
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(word_tok)
    plain.chat_template = None
    plain.save_pretrained(tmp_path / "plain")
    tok, fallback = load_student_tokenizer(str(tmp_path / "plain"), "auto")
    assert fallback
    enc = encode_example(tok, [{"role": "user", "content": "hi"}], "hello you", 64)
    text = "".join(tok.convert_ids_to_tokens(enc.input_ids))
    assert text == "<s>### User:\nhi\n\n### Assistant:\nhello you<|end|>\n\n"
    loss_tokens = [
        tok.convert_ids_to_tokens(i)
        for i, lab in zip(enc.input_ids, enc.labels, strict=True)
        if lab != IGNORE
    ]
    assert loss_tokens == ["hello", " ", "you", "<|end|>"]
    with pytest.raises(Exception, match="no chat template"):
        load_student_tokenizer(str(tmp_path / "plain"), "tokenizer")


def test_eos_is_appended_when_the_template_writes_no_end_of_turn(word_tok, tmp_path):
    from transformers import AutoTokenizer

    bare = AutoTokenizer.from_pretrained(word_tok)
    bare.chat_template = (
        "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}{% endif %}"
    )
    enc = encode_example(bare, [{"role": "user", "content": "hi"}], "hello", 64)
    assert enc.input_ids == ids(bare, "hi", "\n", "hello", "\n", "<|end|>")
    assert enc.labels == [IGNORE, IGNORE, *ids(bare, "hello", "\n", "<|end|>")]


def test_truncation_keeps_partial_responses_and_drops_empty_ones(word_tok):
    tok, _ = load_student_tokenizer(str(word_tok))
    msg = [{"role": "user", "content": "hi there"}]
    cut = encode_example(tok, msg, "hello you", 12)
    assert cut.truncated and len(cut.input_ids) == 12
    assert [lab for lab in cut.labels if lab != IGNORE] == ids(tok, "hello", " ")
    assert encode_example(tok, msg, "hello you", 10) is None
    pv = preview_example(tok, msg, "hello you", 10)
    assert pv.dropped and pv.n_loss == 4


def test_rejected_outputs_are_excluded_and_edits_are_used(tmp_path, word_tok):
    from kdstudio.collect.store import iter_examples, set_review

    ws = workspace_with_collection(tmp_path / "ws", n=6)
    rows = [r[0] for r in ws.query("SELECT id FROM dataset_rows ORDER BY idx")]
    set_review(ws, "tiny", rows[0], 0, "rejected")
    set_review(ws, "tiny", rows[1], 0, "accepted", edited_text="EDITED answer")
    tok, _ = load_student_tokenizer(str(word_tok))
    data = build_dataset(tok, iter_examples(ws, "tiny"), max_length=64, eval_fraction=0.0)
    assert data.n_examples == 5
    by_row = {e.example.row_id: e for e in data.train}
    assert rows[0] not in by_row
    assert by_row[rows[1]].example.response == "EDITED answer"
    ws.close()


def test_truncated_away_examples_are_counted(tmp_path, word_tok):
    from kdstudio.collect.store import iter_examples

    ws = workspace_with_collection(tmp_path / "ws", n=4)
    tok, _ = load_student_tokenizer(str(word_tok))
    data = build_dataset(tok, iter_examples(ws, "tiny"), max_length=6, eval_fraction=0.0)
    assert data.dropped == 4 and not data.train
    ws.close()


def test_split_is_by_row_deterministic_and_sized():
    train, held = split_rows(range(100), 0.1)
    assert len(held) == 10 and not train & held and train | held == set(range(100))
    assert split_rows(reversed(range(100)), 0.1) == (train, held)
    assert split_rows([5, 6], 0.01)[1] and not split_rows([5], 0.5)[1]


def test_all_samples_of_a_prompt_land_on_the_same_side(tmp_path, word_tok):
    from kdstudio.collect.store import iter_examples

    ws = workspace_with_collection(tmp_path / "ws", n=10, samples=2)
    tok, _ = load_student_tokenizer(str(word_tok))
    data = build_dataset(tok, iter_examples(ws, "tiny"), max_length=64, eval_fraction=0.3)
    assert len(data.eval) == 6 and len(data.train) == 14
    assert {e.example.row_id for e in data.eval} == set(data.eval_rows)
    assert not {e.example.row_id for e in data.train} & set(data.eval_rows)
    ws.close()


def test_epoch_order_is_a_function_of_seed_and_epoch_and_groups_lengths():
    lengths = [(i * 37) % 101 + 1 for i in range(400)]
    a = epoch_batches(lengths, 8, seed=1, epoch=0)
    assert a == epoch_batches(lengths, 8, seed=1, epoch=0)
    assert a != epoch_batches(lengths, 8, seed=1, epoch=1)
    assert sorted(i for b in a for i in b) == list(range(400))

    def padding(batches):
        return sum(
            max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches
        )

    plain = epoch_batches(lengths, 8, seed=1, epoch=0, group_by_length=False)
    assert padding(a) < padding(plain) / 5


def test_data_stream_resumes_at_the_exact_batch_and_shards_ranks():
    lengths = list(range(1, 23))
    stream = DataStream(lengths, 3, seed=7)
    for _ in range(9):  # past the end of epoch 0 (8 batches)
        stream.next()
    state = stream.state_dict()
    expected = [stream.next() for _ in range(5)]
    again = DataStream(lengths, 3, seed=7)
    again.load_state_dict(state)
    assert [again.next() for _ in range(5)] == expected
    ranks = [DataStream(lengths, 2, seed=7, rank=r, world_size=2) for r in (0, 1)]
    single = DataStream(lengths, 4, seed=7)
    for _ in range(6):
        r0, r1 = ranks[0].next(), ranks[1].next()
        assert sorted(r0 + r1) == sorted(single.next())
    with pytest.raises(Exception, match="same number"):
        ranks[0].load_state_dict({**state, "world": 1})


def test_collate_pads_right_and_counts_targets(word_tok):
    tok, _ = load_student_tokenizer(str(word_tok))
    a = encode_example(tok, [{"role": "user", "content": "hi"}], "hello you", 64)
    b = encode_example(tok, [{"role": "user", "content": "hi there"}], "a", 64)
    batch = collate([a, b], tok.pad_token_id)
    assert batch.input_ids.shape == (2, max(len(a), len(b)))
    assert batch.attention_mask.sum().item() == len(a) + len(b) == batch.n_tokens
    assert batch.n_target == 4 + 2
    assert (batch.labels[0, len(a) :] == IGNORE).all()
    assert (batch.input_ids[0, len(a) :] == tok.pad_token_id).all()
