"""A model folder that is not there is said at once, naming the setting, wherever a model path
is read: the student (pre-flight, training), a local teacher (add-local, dense KD, collection),
and a run's starting weights (evaluation, a merged LoRA export). Before the shared check,
`from_pretrained` took the missing path for a Hub repo id and said "Repo id must be in the
form ..." after seconds of trying."""

from __future__ import annotations

import json

import pytest
from train_support import config_dict, python, write_toml

from kdstudio.config import TeacherConfig
from kdstudio.errors import UserError
from kdstudio.model_folder import check_model_folder, model_folder_problem


def _collection(ws, n=6):
    from support.train_data import make_collection, memorisable_pairs

    return make_collection(ws, "tiny", memorisable_pairs(n))


def test_the_problem_is_named_for_each_kind_of_wrong_folder(tmp_path):
    (tmp_path / "file.bin").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    assert model_folder_problem(tmp_path / "gone") == f"folder {tmp_path / 'gone'} does not exist"
    assert "is a file, not a model folder" in model_folder_problem(tmp_path / "file.bin")
    assert "has no config.json" in model_folder_problem(tmp_path / "empty")
    assert model_folder_problem(tmp_path / "model") is None
    assert check_model_folder(tmp_path / "model", "student.path") == tmp_path / "model"
    with pytest.raises(UserError, match=r"^student.path: folder .*gone does not exist$"):
        check_model_folder(tmp_path / "gone", "student.path")


def test_training_names_a_missing_student_before_loading_transformers(tmp_path):
    """The message comes before the heavy imports: that is what makes it immediate."""
    conf = write_toml(tmp_path / "c.toml", config_dict(tmp_path / "nowhere"))
    out = python(
        "import sys\n"
        "from kdstudio.distill.config import load_config\n"
        "from kdstudio.distill.trainer import Trainer\n"
        "from kdstudio.errors import UserError\n"
        "from kdstudio.workspace import Workspace\n"
        "ws = Workspace.open(sys.argv[2])\n"
        "try:\n"
        "    Trainer(load_config(sys.argv[1]), ws).setup()\n"
        "except UserError as exc:\n"
        "    print(exc)\n"
        "print('transformers' in sys.modules)\n",
        str(conf),
        str(tmp_path / "ws"),
    )
    assert out.returncode == 0, out.stderr
    message, loaded = out.stdout.strip().splitlines()
    assert message == f"student.path: folder {tmp_path / 'nowhere'} does not exist"
    assert loaded == "False"


def test_preflight_says_the_student_folder_does_not_exist(ws, tmp_path):
    from kdstudio.distill.config import TrainConfig
    from kdstudio.distill.preflight import preflight

    _collection(ws)
    cfg = TrainConfig.from_dict(config_dict(tmp_path / "nowhere")).resolved()
    report = preflight(cfg, ws)
    assert report.errors == [f"student.path: folder {tmp_path / 'nowhere'} does not exist"]
    assert "Repo id" not in report.describe()


def test_cli_train_exits_2_with_the_folder_message_before_loading_torch(tmp_path):
    conf = write_toml(tmp_path / "c.toml", config_dict(tmp_path / "nowhere"))
    out = python(
        "import sys\n"
        "from kdstudio.cli import main\n"
        "code = main(['--workspace', sys.argv[2], 'train', '--config', sys.argv[1]])\n"
        "print(code, 'torch' in sys.modules)\n",
        str(conf),
        str(tmp_path / "ws"),
    )
    assert out.stdout.split() == ["2", "False"], out.stderr
    assert f"student.path: folder {tmp_path / 'nowhere'} does not exist" in out.stderr
    assert "Repo id" not in out.stderr


def test_add_local_refuses_a_missing_folder_and_one_without_config(tmp_path, capsys):
    from kdstudio.cli import main

    (tmp_path / "empty").mkdir()
    ws_args = ["--workspace", str(tmp_path / "ws")]
    assert main([*ws_args, "teacher", "add-local", "t", "--path", str(tmp_path / "gone")]) == 2
    assert f"--path: folder {tmp_path / 'gone'} does not exist" in capsys.readouterr().err
    assert main([*ws_args, "teacher", "add-local", "t", "--path", str(tmp_path / "empty")]) == 2
    assert "has no config.json" in capsys.readouterr().err


def test_a_local_teacher_whose_folder_went_away_is_named(ws, tmp_path):
    from kdstudio.distill.config import TrainConfig
    from kdstudio.distill.objectives.dense import check_teacher
    from kdstudio.teachers.local import LocalTeacher

    gone = tmp_path / "moved-teacher"
    ws.add_teacher(TeacherConfig(name="big", kind="local", path=str(gone)))
    cfg = TrainConfig.from_dict(
        config_dict(tmp_path, distill={"method": "dense_kd", "teacher": "big"})
    )
    with pytest.raises(UserError, match=rf"^teacher 'big': folder {gone} does not exist$"):
        check_teacher(cfg, ws)
    with pytest.raises(UserError, match=rf"^teacher 'big': folder {gone} does not exist$"):
        LocalTeacher(gone, name="big")


def _run_with_a_moved_student(ws, tmp_path, *, lora: bool):
    """A run row with a checkpoint whose student folder is gone (moved since training)."""
    from kdstudio.distill import checkpoint as ckpt
    from kdstudio.distill import runs
    from kdstudio.distill.config import TrainConfig

    _collection(ws)
    sections = {"lora": {"r": 4}} if lora else {}
    cfg = TrainConfig.from_dict(config_dict(tmp_path / "moved", **sections)).resolved()
    run = runs.create_run(ws, cfg)
    rows = [r[0] for r in ws.query("SELECT id FROM dataset_rows ORDER BY id LIMIT 2")]
    runs.update_run(ws, run.id, eval_rows=rows, step=2)
    runs.set_status(ws, run.id, "finished")

    def files(folder):
        (folder / "model").mkdir()
        (folder / "tokenizer").mkdir()
        name = "adapter_config.json" if lora else "config.json"
        (folder / "model" / name).write_text(json.dumps({}))

    ckpt.write_checkpoint(ws, run.name, 2, files, {"eval_loss": 1.0}, run_id=run.id)
    return run


def test_evaluation_says_the_runs_student_folder_is_gone(ws, tmp_path):
    from kdstudio.evaluate import EvalConfig, evaluate
    from kdstudio.events import CancelToken, ListSink

    run = _run_with_a_moved_student(ws, tmp_path, lora=False)
    with pytest.raises(UserError) as err:
        evaluate(EvalConfig(run=run.name), ws, ListSink(), CancelToken())
    assert str(err.value) == (
        f"run 't': its student (student.path): folder {tmp_path / 'moved'} does not exist"
    )


def test_a_merged_lora_export_says_the_base_folder_is_gone_and_writes_nothing(ws, tmp_path):
    pytest.importorskip("peft")
    from kdstudio.events import CancelToken, ListSink
    from kdstudio.export import ExportConfig, export

    run = _run_with_a_moved_student(ws, tmp_path, lora=True)
    out = tmp_path / "export"
    config = ExportConfig(run=run.name, out=out, merge_lora=True)
    with pytest.raises(UserError, match=r"its student \(student.path\): folder .* does not exist"):
        export(config, ws, ListSink(), CancelToken())
    assert not out.exists() and not list(tmp_path.glob(".export.kdstudio-tmp-*"))


def test_a_tokenizer_folder_needs_no_model_config(tmp_path):
    """Reading only the student's tokenizer (runs preview, the batches) asks for a folder."""
    (tmp_path / "tok").mkdir()
    assert model_folder_problem(tmp_path / "tok", model=False) is None
    assert "does not exist" in model_folder_problem(tmp_path / "gone", model=False)
