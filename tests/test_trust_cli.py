"""Trust in commands, readers and output (issue 11, items 7, 9-12): real files, real CLI processes, real sockets."""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import click
import pytest

from headstart.engine.embed.items import ReaderOptions
from headstart.engine.embed.sources import open_source
from headstart.engine.errors import ConfigError, DistributedError, SchemaError

ROOT = Path(__file__).resolve().parents[1]
SOURCE_COMMANDS = ("embed", "train", "sweep", "eval", "predict", "finetune")
READER_OPTIONS = ("--text-column", "--label-column", "--reader", "--encoding-errors")


def _cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "headstart", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=300)


def _json(result: subprocess.CompletedProcess) -> dict:
    assert result.stdout.strip(), result.stderr
    return json.loads(result.stdout)


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _rows(n: int) -> list[list[str]]:
    topics = {"billing": "invoice refund payment charge", "login": "password account sign in locked"}
    return [[f"ticket {i} about {words.split()[i % 4]} and {words.split()[(i + 1) % 4]}", label]
            for i in range(n) for label, words in [list(topics.items())[i % 2]]]


@pytest.fixture(scope="module")
def model(tmp_path_factory, session_home) -> Path:
    """A linear head on MiniLM features of 40 labelled texts (the export is cached in the session root)."""
    from headstart.engine.train.api import train

    folder = tmp_path_factory.mktemp("trust-model")
    source = _write_csv(folder / "train.csv", ["text", "label"], _rows(40))
    out = folder / "model"
    with pytest.MonkeyPatch.context() as patch:  # module scope: restore the environment afterwards
        patch.setenv("HEADSTART_HOME", str(session_home))
        train(str(source), "linear", backbone="minilm-l6", out=out, progress=False)
    return out


# -- item 7: an output is never one of the inputs ---------------------------------------------------------


def test_predict_refuses_an_output_that_is_the_input_by_any_name(model: Path, tmp_path: Path):
    data = _write_csv(tmp_path / "data.csv", ["text", "label"], [[r[0], ""] for r in _rows(6)])
    before = data.read_bytes()
    (tmp_path / "link.csv").symlink_to(data)
    os.link(data, tmp_path / "hard.csv")
    for source, out in (("data.csv", "data.csv"), ("link.csv", "data.csv"), ("hard.csv", "data.csv"),
                        ("data.csv", "link.csv")):
        result = _cli("predict", str(model), source, "-o", out, cwd=tmp_path)
        assert result.returncode == 2, (source, out, result.stderr)
        assert f"is the input {source} (the same file)" in result.stderr and "Traceback" not in result.stderr
    assert data.read_bytes() == before
    # the model's own files are inputs too
    result = _cli("predict", str(model), "data.csv", "-o", str(model / "metrics.json"), cwd=tmp_path)
    assert result.returncode == 2
    # another path works
    ok = _cli("predict", str(model), "data.csv", "-o", "predictions.csv", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert data.read_bytes() == before and (tmp_path / "predictions.csv").is_file()


def test_train_and_sweep_refuse_to_write_over_their_source(tmp_path: Path):
    from headstart.engine.train.api import predict, sweep, train

    source = _write_csv(tmp_path / "train.csv", ["text", "label"], _rows(20))
    before = source.read_bytes()
    result = _cli("train", "train.csv", "-o", "train.csv", cwd=tmp_path)
    assert result.returncode == 2 and "-o train.csv is the input train.csv" in result.stderr
    folder = tmp_path / "model"
    folder.mkdir()
    inside = _write_csv(folder / "data.csv", ["text", "label"], _rows(20))
    result = _cli("train", str(inside), "-o", str(folder))
    assert result.returncode == 2 and "lies inside the output folder" in result.stderr
    with pytest.raises(ConfigError, match="is the input"):
        train(str(source), "linear", out=source)
    with pytest.raises(ConfigError, match="--save-best .*train.csv is the input"):
        sweep(str(source), ["linear", "knn"], save_best=source)
    with pytest.raises(ConfigError, match="is the input"):
        predict(str(folder), str(inside), out=inside)
    assert source.read_bytes() == before and inside.is_file()


# -- item 9: readers and commands agree --------------------------------------------------------------------


def test_every_source_command_takes_the_same_reader_and_device_options():
    from headstart.engine.cli import cli

    def params(command: str) -> dict[str, click.Parameter]:
        return {opt: p for p in cli.commands[command].params for opt in getattr(p, "opts", [])}

    reference = params("embed")
    for command in SOURCE_COMMANDS:
        found = params(command)
        for option in (*READER_OPTIONS, "--device", "--json"):
            assert option in found, (command, option)
            assert found[option].help == reference[option].help, (command, option)
            assert found[option].type.to_info_dict() == reference[option].type.to_info_dict(), (command, option)
    for command in ("train", "sweep", "embed", "finetune"):
        assert params(command)["--backbone"].help == reference["--backbone"].help
    assert params("export")["--device"].type.to_info_dict() == reference["--device"].type.to_info_dict()
    assert list(reference["--device"].type.choices) == ["auto", "cpu", "cuda"]
    result = _cli("train", "x.csv", "-o", "m", "--device", "gpu")
    assert result.returncode == 2 and "'gpu' is not one of 'auto', 'cpu', 'cuda'" in result.stderr


def test_reader_and_encoding_errors_reach_the_reader_in_eval(model: Path, tmp_path: Path):
    rows = _rows(6)
    data = tmp_path / "held_out.data"  # no reader claims this extension
    _write_csv(data, ["text", "label"], rows)
    with open(data, "ab") as fh:
        fh.write(b"bad \xe9 byte,billing\n")
    result = _cli("eval", str(model), str(data), "--json")
    assert result.returncode == 2 and _json(result)["error"] == "ConfigError"
    strict = _cli("eval", str(model), str(data), "--reader", "csv", "--json")
    assert strict.returncode == 0, strict.stdout + strict.stderr
    assert _json(strict)["n_errors"] == 1 and _json(strict)["n"] == 6
    replaced = _cli("eval", str(model), str(data), "--reader", "csv", "--encoding-errors", "replace", "--json")
    assert replaced.returncode == 0 and _json(replaced)["n_errors"] == 0 and _json(replaced)["n"] == 7


def test_predict_ignores_blank_labels_and_takes_a_label_column(model: Path, tmp_path: Path):
    blank = _write_csv(tmp_path / "new.csv", ["text", "label"], [[r[0], ""] for r in _rows(5)])
    result = _cli("predict", str(model), str(blank), "-o", str(tmp_path / "p.jsonl"), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _json(result)["predictions"] == 5
    # a label column that is not named by default: naming it keeps it from being taken for the input
    other = _write_csv(tmp_path / "other.csv", ["message", "intent"], [[r[0], ""] for r in _rows(4)])
    missing = _cli("predict", str(model), str(other), "-o", str(tmp_path / "q.csv"))
    assert missing.returncode == 1 and "--text-column" in missing.stderr
    named = _cli("predict", str(model), str(other), "-o", str(tmp_path / "q.csv"), "--label-column", "intent")
    assert named.returncode == 0, named.stderr
    with open(tmp_path / "q.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 4
    # training still needs labels; the hint names commands that exist
    train = _cli("train", str(blank), "-o", str(tmp_path / "m"))
    assert train.returncode == 1 and "empty in every row" in train.stderr
    assert "`headstart predict` and `headstart embed` ignore labels" in train.stderr


def test_a_named_label_column_is_never_the_input_even_when_labels_are_ignored(tmp_path: Path):
    path = _write_csv(tmp_path / "a.csv", ["message", "intent"], [["hi", ""]])
    source = open_source(path, ReaderOptions(label_column="intent", labelled=False))
    assert source.text_column == "message" and not source.has_labels
    assert [i.payload for i in source] == ["hi"]
    with pytest.raises(SchemaError):  # ReaderOptions.reader is honoured: the CSV is not JSON Lines
        open_source(path, ReaderOptions(reader="jsonl"))


def test_list_labels_are_refused_alike_by_parquet_and_jsonl(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a", "b", "c"], "label": [[1], [2, 3], [4]]}), tmp_path / "l.parquet")
    (tmp_path / "l.jsonl").write_text('{"text": "a", "label": [1]}\n{"text": "b", "label": "x"}\n')
    parquet = list(open_source(tmp_path / "l.parquet"))
    jsonl = list(open_source(tmp_path / "l.jsonl"))
    assert all(i.payload is None and i.label is None for i in parquet)
    assert parquet[0].error == f"{parquet[0].ref}: label 'label' is a list; one label per item is supported"
    assert jsonl[0].error == f"{jsonl[0].ref}: label 'label' is a list; one label per item is supported"
    assert jsonl[1].label == "x" and jsonl[1].error is None
    # numbers and booleans become the same strings in both readers
    pq.write_table(pa.table({"text": ["a", "b"], "label": [1.5, 2.0]}), tmp_path / "n.parquet")
    (tmp_path / "n.jsonl").write_text('{"text": "a", "label": 1.5}\n{"text": "b", "label": 2.0}\n')
    assert [i.label for i in open_source(tmp_path / "n.parquet")] == [i.label for i in open_source(tmp_path / "n.jsonl")]


def test_a_folder_without_images_fails_naming_what_it_skipped(tmp_path: Path):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub" / "report.pdf").write_bytes(b"%PDF-1.4")
    result = _cli("embed", str(folder), "--json")
    assert result.returncode == 1
    error = _json(result)
    assert error["error"] == "SchemaError" and error["exit_code"] == 1
    assert "holds no image files (2 other entries skipped" in error["message"]
    assert "notes.txt (not an image by its extension)" in error["message"] and "report.pdf" in error["message"]
    assert ".png" in error["hint"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(SchemaError, match="holds no image files \\(it is empty\\)"):
        open_source(tmp_path / "empty")


def test_skipped_entries_of_an_image_folder_are_counted_and_named(tmp_path: Path):
    for cls in ("cat", "dog"):
        (tmp_path / "pets" / cls).mkdir(parents=True)
        (tmp_path / "pets" / cls / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "pets" / "dog" / "notes.docx").write_bytes(b"PK")
    (tmp_path / "pets" / "README.md").write_text("about the pets")
    source = open_source(tmp_path / "pets")
    assert source.has_labels and len(list(source)) == 2
    assert source.stats["skipped"] == 2
    assert any("README.md (not an image by its extension)" in e for e in source.skipped_examples)
    assert any("notes.docx (not an image by its extension)" in e for e in source.skipped_examples)


def test_a_read_error_names_its_own_row_never_another_files(tmp_path: Path):
    from headstart.engine.embed.pipeline import embed

    (tmp_path / "a.csv").write_bytes(b"text\nbad \xe9 byte\nfine\nbad \xe9 byte\n")
    (tmp_path / "b.csv").write_bytes(b"text\nok one\nok two\nbad \xe9 byte\n")
    first = embed(tmp_path / "a.csv", progress=False)
    assert [e.ref.rsplit("/", 1)[-1] for e in first.errors] == ["a.csv:row 1", "a.csv:row 3"]
    for record in first.errors:  # duplicates in one file: each row its own reason
        assert record.reason.startswith(record.ref + " ("), record
    second = embed(tmp_path / "b.csv", progress=False)  # the same bad bytes are a stored error record now
    assert len(second.errors) == 1
    record = second.errors[0]
    assert record.ref.endswith("b.csv:row 3") and record.reason.startswith(record.ref + " (line 4)")
    assert "a.csv" not in record.reason


def test_a_missing_path_lists_the_readers(tmp_path: Path):
    with pytest.raises(ConfigError) as err:
        open_source(tmp_path / "nothere.csv")
    for reader in ("csv (.csv", "jsonl (.jsonl", "parquet (.parquet", "folder (", "text (.txt", "npy (.npy"):
        assert reader in err.value.hint


# -- item 10: machine-readable failures ----------------------------------------------------------------------


def test_json_failures_are_one_object_on_stdout_with_the_exit_code(tmp_path: Path):
    cases = [
        (("embed", str(tmp_path / "missing.csv"), "--json"), "ConfigError", 2),
        (("train", "x.csv", "-o", "m", "--device", "gpu", "--json"), "BadParameter", 2),
        (("sweep", "x.csv", "--heads", "linear,linear", "--json"), "ConfigError", 2),
        (("heads", "--show", "lineer", "--json"), "UnknownNameError", 2),
    ]
    for args, error, code in cases:
        result = _cli(*args)
        assert result.returncode == code, (args, result.stderr)
        data = _json(result)
        assert data["error"] == error and data["exit_code"] == code, data
        assert data["message"] and "hint" in data
        assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr  # people read stderr
    plain = _cli("embed", str(tmp_path / "missing.csv"))
    assert plain.stdout == "" and plain.stderr.startswith("error: source")


def test_embed_strict_json_prints_the_summary_with_the_failure(tmp_path: Path):
    (tmp_path / "s.csv").write_bytes(b"text\nok\nbad \xe9\n")
    result = _cli("embed", str(tmp_path / "s.csv"), "--strict", "--json")
    assert result.returncode == 1
    data = _json(result)
    assert data["error"] == "ItemError" and data["exit_code"] == 1 and "1 item(s) failed" in data["message"]
    assert data["summary"]["rows"] == 2 and data["summary"]["failed"] == 1
    assert data["summary"]["errors"][0]["ref"].endswith("s.csv:row 2")
    text = _cli("embed", str(tmp_path / "s.csv"), "--strict")
    assert text.returncode == 1 and "of 2 rows with minilm-l6" in text.stdout and "error: 1 item(s)" in text.stderr


def test_predict_json_prints_its_result(model: Path, tmp_path: Path):
    data = _write_csv(tmp_path / "n.csv", ["text"], [[r[0]] for r in _rows(3)])
    result = _cli("predict", str(model), str(data), "-o", str(tmp_path / "out.parquet"), "--json")
    assert result.returncode == 0, result.stderr
    assert _json(result) == {"out": str(tmp_path / "out.parquet"), "predictions": 3, "errors": 0,
                             "classes": ["billing", "login"]}


# -- item 11: progress that moves ------------------------------------------------------------------------------


def test_the_progress_bar_advances_per_batch_with_rate_and_eta(tmp_path: Path):
    texts = [f"progress text number {i} " + "word " * (i % 7) for i in range(300)]
    _write_csv(tmp_path / "p.csv", ["text"], [[t] for t in texts])
    # every update drawn (no time-based throttling), so what is counted is the updates the job made
    result = _cli("embed", str(tmp_path / "p.csv"), "--progress", "--batch-size", "16",
                  env={"TQDM_MININTERVAL": "0", "TQDM_MINITERS": "1"})
    assert result.returncode == 0, result.stderr
    frames = [f for f in re.split(r"[\r\n]", result.stderr) if "/300" in f]
    counts = [int(m.group(1)) for f in frames for m in [re.search(r"(\d+)/300", f)] if m]
    distinct = sorted(set(counts))
    assert len([c for c in distinct if 0 < c < 300]) >= 10, distinct  # per chunk it was 0 then 300
    assert counts == sorted(counts) and distinct[-1] == 300
    assert any("item/s" in f and "<" in f for f in frames if "/300" in f), frames[-3:]  # rate and ETA


# -- item 12: Ray address, sweep duplicates, --save-best validated first ---------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_ray_address_fails_at_once_naming_it(tmp_path: Path):
    port = _closed_port()
    _write_csv(tmp_path / "d.csv", ["text"], [["x"]])
    result = _cli("embed", str(tmp_path / "d.csv"), "--engine", "ray", "--address", f"127.0.0.1:{port}", "--json")
    assert result.returncode == 1
    data = _json(result)
    assert data["error"] == "DistributedError" and f"127.0.0.1:{port}" in data["message"]
    assert "ray start --head" in data["hint"]
    from headstart.engine.distributed.cluster import connect

    with pytest.raises(DistributedError, match=f"cannot reach the Ray cluster at ray://127.0.0.1:{port}"):
        connect(f"ray://127.0.0.1:{port}")


def test_sweep_refuses_duplicate_heads_and_a_file_save_best_before_any_work(tmp_path: Path):
    home = tmp_path / "fresh-home"  # nothing exported there: any embedding would create the feature store
    source = _write_csv(tmp_path / "t.csv", ["text", "label"], _rows(10))
    twice = _cli("sweep", str(source), "--heads", "linear,knn,linear", env={"HEADSTART_HOME": str(home)})
    assert twice.returncode == 2 and "the sweep lists 'linear' more than once" in twice.stderr
    target = tmp_path / "best.txt"
    target.write_text("keep me")
    to_file = _cli("sweep", str(source), "--heads", "linear,knn", "--save-best", str(target),
                   env={"HEADSTART_HOME": str(home)})
    assert to_file.returncode == 2 and "is a file, not a model folder" in to_file.stderr
    assert "Traceback" not in to_file.stderr and target.read_text() == "keep me"
    stranger = tmp_path / "photos"
    stranger.mkdir()
    (stranger / "holiday.jpg").write_bytes(b"x")
    to_folder = _cli("sweep", str(source), "--heads", "linear,knn", "--save-best", str(stranger),
                     env={"HEADSTART_HOME": str(home)})
    assert to_folder.returncode == 2 and "not empty and is not a headstart model" in to_folder.stderr
    assert not (home / "features").exists() and not (home / "exports").exists()


# -- docs ------------------------------------------------------------------------------------------------------


def test_readers_doc_links_resolve_and_documents_the_shared_options():
    text = (ROOT / "docs" / "readers.md").read_text()
    for link in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        assert (ROOT / "docs" / link).exists(), link
    for option in (*READER_OPTIONS, "--json", "--device"):
        assert option in text, option
