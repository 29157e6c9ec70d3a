"""The Collect panel's money and progress (issue 16): what the whole collection has cost so far
and the estimate for what is left are two labelled figures, never mixed; nothing of a previous
job or teacher stays on the card; a local teacher shows no cost."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")
pytestmark = pytest.mark.gui

KEY_ENV = "KDSTUDIO_GUI_TEST_KEY"


@pytest.fixture
def window(qtbot, ws, tmp_path):
    from support.gui import studio_window

    yield from studio_window(qtbot, ws, tmp_path / "settings", size=(1300, 850))


@pytest.fixture
def server():
    from support.gui import loopback_server

    models = ("model-of-loop", "model-of-other")  # another model: not the cached answers
    yield from loopback_server(KEY_ENV, latency=0.002, models=models)


@pytest.fixture
def arith(ws, tmp_path):
    from support.gui import write_prompts

    from kdstudio.data import import_dataset

    import_dataset(ws, write_prompts(tmp_path / "prompts.jsonl", 30), name="arith")
    return "arith"


def _remote(ws, server, name="loop", priced=True):
    from kdstudio.config import TeacherConfig

    prices = {"price_in": 1.0, "price_out": 2.0} if priced else {}
    ws.add_teacher(
        TeacherConfig(
            name=name,
            base_url=server.url,
            model=f"model-of-{name}",
            key_source="env",
            key_env=KEY_ENV,
            **prices,
        ),
        replace=True,
    )


def _form(panel, teacher, dataset="arith", **values):
    panel.refresh()
    panel.teacher_box.setCurrentText(teacher)
    panel.dataset_box.setCurrentText(dataset)
    panel.main_form.set_values({"max_tokens": 8, **values})


def _estimate(qtbot, panel):
    job = panel.request_estimate()
    qtbot.waitUntil(lambda: not job.running, timeout=30_000)
    qtbot.waitUntil(lambda: panel.estimate is not None, timeout=5000)
    return panel.estimate


def test_the_running_figures_say_spent_so_far_and_the_estimate_for_the_rest_apart():
    from kdstudio.events import Progress
    from kdstudio.gui.panels.collect import spend_text

    event = Progress(
        5, 20, unit="request", extra={"spent_usd": 0.5, "estimate_usd": 0.4, "retries": 0}
    )
    assert spend_text(event, None) == (
        "Spent so far on this collection: $0.5000; estimate for the 15 requests left: "
        "up to $0.3000."
    )
    assert spend_text(event, 2.0).startswith(
        "Spent so far on this collection: $0.5000 of its $2.00"
    )
    done = Progress(20, 20, unit="request", extra={"spent_usd": 0.9, "estimate_usd": 0.4})
    assert spend_text(done, None) == "Spent so far on this collection: $0.9000."
    local = Progress(5, 20, unit="request", extra={"retries": 0, "failed": 0})
    assert spend_text(local, None) == ""


def test_the_estimate_is_for_what_is_left_and_the_spend_for_the_whole_collection(
    qtbot, window, ws, arith, server
):
    from kdstudio.collect import CollectConfig, collect
    from kdstudio.collect import store as outputs
    from kdstudio.formatting import usd

    _remote(ws, server)
    collect(CollectConfig(teacher="loop", dataset="arith", max_tokens=8, limit=10), ws)
    spent = outputs.get_collection(ws, "arith.loop").spend
    assert spent > 0
    panel = window.show_panel("collect")
    _form(panel, "loop")
    assert panel.progress_title.text() == "Collection 'arith.loop'"
    assert panel.spend_label.text() == f"Spent so far on this collection: {usd(spent)}."
    assert panel.state_labels["done"].text() == "done: 10"
    estimate = _estimate(qtbot, panel)
    # the 20 rows left, less those whose answer is cached (the prompts repeat)
    assert 0 < estimate.requests <= 20 and estimate.spent == pytest.approx(spent)
    text = panel.estimate_label.text()
    assert text.startswith(f"Left to collect: {estimate.requests} requests")
    assert f"Estimate for these: up to {usd(estimate.usd)}." in text
    assert text.endswith(f"Spent so far on this collection: {usd(spent)}.")

    job = panel.start()  # a fresh estimate: it starts at once
    assert job is not None
    qtbot.waitUntil(lambda: not panel.running(), timeout=60_000)
    qtbot.waitUntil(lambda: panel.state_labels["done"].text() == "done: 30", timeout=5000)
    total = outputs.get_collection(ws, "arith.loop").spend
    assert panel.spend_label.text() == f"Spent so far on this collection: {usd(total)}."
    assert f"spent on it so far: {usd(total)}" in panel.message.text
    assert panel.estimate_label.text().startswith("Estimate the cost")  # the old one is gone


def test_no_figure_of_a_previous_job_or_teacher_stays_on_the_card(qtbot, window, ws, arith, server):
    _remote(ws, server)
    _remote(ws, server, name="other", priced=False)
    panel = window.show_panel("collect")
    _form(panel, "loop", limit=6)
    _estimate(qtbot, panel)
    job = panel.start()
    qtbot.waitUntil(lambda: not job.running, timeout=60_000)
    qtbot.waitUntil(lambda: panel.rate_label.text().startswith("This run:"), timeout=5000)
    # no longer "Collecting" once the job has ended (its `ended` comes after `finished`)
    qtbot.waitUntil(lambda: panel.progress_title.text() == "Collection 'arith.loop'", timeout=5000)
    assert "$" in panel.spend_label.text()

    panel.teacher_box.setCurrentText("other")  # another teacher: another collection
    assert panel.progress_title.text() == "Collection 'arith.other': not collected yet."
    assert panel.rate_label.text() == "" and panel.spend_label.text() == ""
    assert not panel.spend_bar.isVisible() and panel.failures.rowCount() == 0
    assert panel.state_labels["done"].text() == "done: 0"
    assert "$" not in panel.estimate_label.text()
    assert panel.progress.text() == "not started"
    estimate = _estimate(qtbot, panel)
    assert not estimate.priced and "cost is unknown" in panel.estimate_label.text()
    assert "Spent" not in panel.estimate_label.text()

    panel.teacher_box.setCurrentText("loop")  # back: what is stored, without the old rate
    assert panel.progress_title.text() == "Collection 'arith.loop'"
    assert panel.rate_label.text() == ""
    assert panel.spend_label.text().startswith("Spent so far on this collection: $")
    assert panel.progress.text().startswith("6 / 6 requests done or failed")


def test_an_estimate_made_for_other_settings_is_not_shown(qtbot, window, ws, arith, server):
    _remote(ws, server)
    _remote(ws, server, name="other", priced=False)
    panel = window.show_panel("collect")
    _form(panel, "loop")
    job = panel.request_estimate()
    panel.teacher_box.setCurrentText("other")  # changed while the estimate was being made
    qtbot.waitUntil(lambda: not job.running, timeout=30_000)
    qtbot.waitUntil(lambda: "estimate again" in panel.estimate_label.text(), timeout=5000)
    assert panel.estimate is None and "$" not in panel.estimate_label.text()


@pytest.fixture
def tiny_teacher(tmp_path_factory):
    from kdstudio.demo.tiny import make_model, make_tokenizer

    root = tmp_path_factory.mktemp("tiny")
    tok = make_tokenizer(root / "tok", ["What is 1 + 2? Reverse the string abc."], vocab_size=300)
    return make_model(root / "teacher", tok, layers=1, hidden=32)


def test_a_local_teacher_shows_no_cost(qtbot, window, ws, arith, tiny_teacher):
    from kdstudio.config import TeacherConfig

    ws.add_teacher(TeacherConfig(name="loc", kind="local", path=str(tiny_teacher)))
    panel = window.show_panel("collect")
    _form(panel, "loc", limit=4, max_tokens=4)
    _estimate(qtbot, panel)
    text = panel.estimate_label.text()
    assert text.endswith("by a local teacher: no cost.") and "$" not in text
    job = panel.start()
    assert job is not None
    qtbot.waitUntil(lambda: not panel.running(), timeout=120_000)
    qtbot.waitUntil(lambda: panel.rate_label.text().startswith("This run:"), timeout=5000)
    assert panel.spend_label.text() == "" and not panel.spend_bar.isVisible()
    assert "$" not in panel.message.text and "spent" not in panel.message.text
    assert panel.message.text.startswith("Collection 'arith.loc': 4 of 4 answers stored")
