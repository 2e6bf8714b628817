"""Event sequences: a hand-made event table read as one item per entity / per event-with-history (order,
window boundaries, unseen categories, one-event entities, missing timestamps, entities out of place), bad
options failing before any work, and the content key of a window."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from example_transactions import generate_transactions

from headstart.engine.embed.items import ReaderOptions, content_key
from headstart.engine.embed.sources import open_source
from headstart.engine.errors import ConfigError, ReaderError, SchemaError
from headstart.engine.sequences.options import Vocabulary, build_vocabulary, event_options, parse_window

T0 = dt.datetime(2024, 3, 1, 12, 0, 0)
H = dt.timedelta(hours=1)

#: (account, ts, amount, merchant, label) in file order: account a's rows are out of time order on purpose;
#: b has one event; c has a missing timestamp at data row 7; merchant 'mX' is not in the vocabulary.
ROWS = [
    ("a", T0 + 2 * H, 30.0, "m2", "0"),
    ("a", T0, 10.0, "m1", "0"),
    ("a", T0 + 5 * H, 50.0, "mX", "1"),
    ("a", T0 + 1 * H, 20.0, None, "0"),
    ("b", T0, 7.0, "m1", "0"),
    ("c", T0, 1.0, "m1", "0"),
    ("c", None, 2.0, "m2", "0"),
]


def _write(folder: Path, rows: list[tuple] = ROWS, fmt: str = "parquet", row_group_size: int = 2) -> Path:
    import pyarrow as pa
    import pyarrow.csv as pc
    import pyarrow.parquet as pq

    table = pa.table({"account": [r[0] for r in rows], "ts": pa.array([r[1] for r in rows], pa.timestamp("s")),
                      "amount": [r[2] for r in rows], "merchant": [r[3] for r in rows],
                      "label": [r[4] for r in rows]})
    path = folder / f"events.{fmt}"
    if fmt == "parquet":
        pq.write_table(table, path, row_group_size=row_group_size)  # entities straddle row groups
    elif fmt == "csv":
        pc.write_csv(table, path)
    else:
        with path.open("w") as fh:
            for r in table.to_pylist():
                fh.write(json.dumps({**r, "ts": r["ts"] and r["ts"].isoformat()}) + "\n")
    return path


@pytest.fixture()
def table(tmp_path: Path) -> Path:
    Vocabulary({"merchant": ("m1", "m2")}).save(tmp_path / "vocabulary.json")
    return _write(tmp_path)


def _items(path: Path, **options) -> list:
    options.setdefault("vocabulary", str(path.parent / "vocabulary.json"))
    ev = event_options("account", "ts", "amount", "merchant", **options)
    return list(open_source(str(path), ReaderOptions(events=ev)))


def _by_ref(items: list) -> dict[str, object]:
    return {it.ref.split(":", 1)[1]: it for it in items}


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_per_event_items_are_ordered_windows_with_unseen_and_missing_categories(tmp_path: Path, fmt: str):
    Vocabulary({"merchant": ("m1", "m2")}).save(tmp_path / "vocabulary.json")
    items = _by_ref(_items(_write(tmp_path, fmt=fmt), window="3", per="event"))
    # account a in time order: row 2 (10, m1=2), row 4 (20, missing=0), row 1 (30, m2=3), row 3 (50, mX unseen=1)
    a3 = items["row 3 (account='a')"]
    assert a3.payload.dtype == np.float32 and a3.label == "1"
    assert a3.payload.tolist() == [[20.0, 0.0], [30.0, 3.0], [50.0, 1.0]]  # the last 3 events, oldest first
    assert items["row 2 (account='a')"].payload.tolist() == [[10.0, 2.0]]  # the first event: no history
    assert items["row 1 (account='a')"].payload.tolist() == [[10.0, 2.0], [20.0, 0.0], [30.0, 3.0]]
    assert items["row 5 (account='b')"].payload.tolist() == [[7.0, 2.0]]  # an entity with one event


def test_a_time_span_window_includes_its_boundary(table: Path):
    items = _by_ref(_items(table, window="2h", per="event"))
    # at T0+2h the span [T0, T0+2h] holds all three earlier events (T0 exactly on the boundary)
    assert items["row 1 (account='a')"].payload[:, 0].tolist() == [10.0, 20.0, 30.0]
    # at T0+5h the span [T0+3h, T0+5h] holds only the event itself
    assert items["row 3 (account='a')"].payload[:, 0].tolist() == [50.0]
    assert _by_ref(_items(table, window="span:7200", per="event"))["row 1 (account='a')"].payload.shape == (3, 2)


def test_per_entity_items_take_the_last_window_and_the_entity_label(tmp_path: Path):
    rows = [r[:4] + ("fraud" if r[0] == "a" else "ok",) for r in ROWS if r[0] != "c"]
    Vocabulary({"merchant": ("m1", "m2")}).save(tmp_path / "vocabulary.json")
    items = _items(_write(tmp_path, rows), window="2")
    assert [it.ref.split(":", 1)[1] for it in items] == ["account='a' (rows 1-4)", "account='b' (rows 5-5)"]
    assert items[0].payload.tolist() == [[30.0, 3.0], [50.0, 1.0]] and items[0].label == "fraud"
    assert items[1].payload.tolist() == [[7.0, 2.0]] and items[1].label == "ok"


def test_an_entity_with_different_labels_per_row_fails_per_entity(table: Path):
    bad = _by_ref(_items(table))["account='a' (rows 1-4)"]
    assert bad.payload is None and "different labels (0, 1)" in bad.error


def test_a_missing_timestamp_fails_the_entity_naming_the_row(table: Path):
    items = _by_ref(_items(table, per="event"))
    for ref in ("row 6 (account='c')", "row 7 (account='c')"):
        assert items[ref].payload is None
        assert "events.parquet:row 7 (account='c'): --order-by column 'ts' is empty" in items[ref].error
    assert items["row 5 (account='b')"].error is None  # the other entities are read


def test_a_missing_numeric_value_fails_only_the_windows_that_hold_it(tmp_path: Path):
    rows = list(ROWS[:5])
    rows[1] = ("a", T0, None, "m1", "0")  # data row 2 is the first event of a
    Vocabulary({"merchant": ("m1", "m2")}).save(tmp_path / "vocabulary.json")
    items = _by_ref(_items(_write(tmp_path, rows), window="2", per="event"))
    assert "row 2 has no value in field(s) amount" in items["row 4 (account='a')"].error
    assert items["row 1 (account='a')"].error is None  # its window (rows 4, 1) does not hold row 2


def test_an_entity_out_of_place_is_an_error_naming_the_rows(tmp_path: Path):
    Vocabulary({"merchant": ("m1", "m2")}).save(tmp_path / "vocabulary.json")
    path = _write(tmp_path, [*ROWS[:5], ("a", T0 + 9 * H, 1.0, "m1", "0")])
    with pytest.raises(ReaderError, match=r"row 6 has account='a' again after other entities \(its earlier rows "
                                          r"end at row 4\)"):
        _items(path, per="event")


def test_equal_windows_share_a_content_key_and_keys_follow_the_window_bytes(tmp_path: Path):
    rows = [("a", T0, 5.0, "m1", "0"), ("a", T0 + H, 6.0, "m1", "0"),
            ("b", T0, 5.0, "m1", "0"), ("b", T0 + H, 6.0, "m1", "0"), ("b", T0 + 2 * H, 9.0, "m2", "1")]
    Vocabulary({"merchant": ("m1", "m2")}).save(tmp_path / "vocabulary.json")
    path = _write(tmp_path, rows)
    items = _by_ref(_items(path, window="2", per="event"))
    a2, b2, b3 = items["row 2 (account='a')"], items["row 4 (account='b')"], items["row 5 (account='b')"]
    assert a2.key == b2.key == content_key(np.array([[5, 2], [6, 2]], np.float32))  # the same two events
    assert b3.key != b2.key  # the next, overlapping window differs
    again = _by_ref(_items(path, window="2", per="event"))
    assert [it.key for it in again.values()] == [it.key for it in items.values()]  # a re-run: the same keys


def test_build_vocabulary_orders_values_by_count(table: Path):
    vocab = build_vocabulary(table, ["merchant"])
    assert vocab.values == {"merchant": ("m1", "m2", "mX")}
    assert vocab.ids("merchant") == {"m1": 2, "m2": 3, "mX": 4}


@pytest.mark.parametrize("kwargs, says", [
    ({"window": "0"}, "at least one event"), ({"window": "-3"}, "at least one event"),
    ({"window": "-2h"}, "must be positive"), ({"window": "soon"}, "neither a number of events nor a time span"),
    ({"per": "month"}, "--per 'month'"), ({"categorical": "merchant", "vocabulary": None}, "need a vocabulary"),
    ({"fields": "amount,amount"}, "more than once"), ({"categorical": "amount"}, "both --fields and --categorical"),
])
def test_bad_event_options_are_config_errors_before_reading(kwargs: dict, says: str):
    args = {"fields": "amount", "categorical": None, "vocabulary": None, **kwargs}
    with pytest.raises(ConfigError, match=says):
        event_options("account", "ts", args.pop("fields"), args.pop("categorical"), vocabulary=args.pop("vocabulary"),
                      **args)


def test_event_options_without_group_by_are_refused():
    with pytest.raises(ConfigError, match="--window needs --group-by"):
        event_options(window="5")
    assert event_options() is None
    assert parse_window("30d") == (None, 30 * 86400.0) and parse_window("12") == (12, None)


@pytest.mark.parametrize("kwargs, error, says", [
    (dict(fields="amout"), SchemaError, "--fields column 'amout' not found .*did you mean 'amount'"),
    (dict(fields="amount,merchant"), SchemaError, "--fields column 'merchant' of .* is not numeric"),
    (dict(group_by="acount"), SchemaError, "--group-by column 'acount' not found"),
])
def test_bad_columns_are_schema_errors_when_the_source_opens(table: Path, kwargs: dict, error: type, says: str):
    args = {"group_by": "account", "order_by": "ts", "fields": "amount", "categorical": None, **kwargs}
    with pytest.raises(error, match=says):
        open_source(str(table), ReaderOptions(events=event_options(**args)))


def _cli(*args: str, home: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HEADSTART_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "headstart", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


@pytest.mark.parametrize("extra, says", [
    (["--fields", "amout"], "error: --fields column 'amout' not found"),
    (["--fields", "merchant"], "error: --fields column 'merchant' of"),
    (["--fields", "amount", "--window", "0"], "error: --window 0: a window must hold at least one event"),
    (["--fields", "amount", "--per", "event", "--window", "-5m"], "error: --window -5m: a time span must be positive"),
])
def test_bad_event_options_are_one_line_cli_errors_before_any_work(table: Path, tmp_path: Path, extra: list,
                                                                   says: str):
    home = tmp_path / "home"
    result = _cli("embed", str(table), "-b", "onnx:nowhere.onnx", "--group-by", "account", "--order-by", "ts",
                  *extra, home=home, cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and lines[0].startswith(says) and lines[1].startswith("hint:") and len(lines) == 2
    assert not home.exists()


# -- pretraining -------------------------------------------------------------------------------------------------

TX_EVENTS = ["--group-by", "account_id", "--order-by", "ts", "--fields", "log_amount,log_gap", "--categorical",
             "category,country", "--window", "16"]
TX_PRETRAIN = [*TX_EVENTS, "--epochs", "3", "--hidden", "8", "--batch-size", "16", "--patience", "5"]


@pytest.fixture(scope="module")
def transactions(tmp_path_factory) -> Path:
    """A tiny run of the example generator: 80 pool accounts, 120 labelled (30 % fraud to have some)."""
    return generate_transactions(tmp_path_factory.mktemp("tx"), test=20)


def test_pretrain_killed_mid_run_resumes_to_the_same_result(transactions: Path, tmp_path: Path):
    from pause_control import env_with, pause_env, wait_paused

    home, pauses = tmp_path / "home", tmp_path / "pauses"
    pool = str(transactions / "pool.parquet")
    reference = _cli("pretrain", pool, *TX_PRETRAIN, "-o", str(tmp_path / "ref"), home=home, cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr
    assert "epoch 3/3" in reference.stderr and "validation loss" in reference.stderr

    env = env_with({"HEADSTART_HOME": str(home), **pause_env(pauses, "pretrain-epoch#2")})
    proc = subprocess.Popen([sys.executable, "-m", "headstart", "pretrain", pool, *TX_PRETRAIN, "-o",
                             str(tmp_path / "bb")], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        marker = wait_paused(pauses, "pretrain-epoch#2", proc)
        assert marker["pid"] == proc.pid
        os.kill(proc.pid, 9)  # SIGKILL right after epoch 2's checkpoint
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (tmp_path / "bb" / "checkpoint.safetensors").is_file() and not (tmp_path / "bb" / "encoder.onnx").exists()
    again = _cli("pretrain", pool, *TX_PRETRAIN, "-o", str(tmp_path / "bb"), home=home, cwd=tmp_path)
    assert again.returncode != 0 and "pass --resume" in again.stderr  # never silently over a run
    resumed = _cli("pretrain", pool, *TX_PRETRAIN, "-o", str(tmp_path / "bb"), "--resume", home=home, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch 2" in resumed.stderr and "epoch 1/3" not in resumed.stderr
    got = json.loads((tmp_path / "bb" / "pretrain.json").read_text())
    want = json.loads((tmp_path / "ref" / "pretrain.json").read_text())
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(got["history"]) == strip(want["history"]) and len(got["history"]) == 3
    assert (tmp_path / "bb" / "encoder.safetensors").read_bytes() == (tmp_path / "ref" / "encoder.safetensors").read_bytes()
    assert not (tmp_path / "bb" / "checkpoint.safetensors").exists()


@pytest.fixture(scope="module")
def pretrained(transactions: Path, tmp_path_factory) -> tuple[Path, Path]:
    home = tmp_path_factory.mktemp("home")
    out = tmp_path_factory.mktemp("pretrained") / "bb"
    result = _cli("pretrain", str(transactions / "pool.parquet"), *TX_PRETRAIN, "-o", str(out), home=home,
                  cwd=out.parent)
    assert result.returncode == 0, result.stderr
    return out, home


def test_a_pretrained_backbone_embeds_events_and_trains_heads(transactions: Path, pretrained: tuple[Path, Path],
                                                              tmp_path: Path):
    out, home = pretrained
    summary = json.loads((out / "pretrain.json").read_text())
    assert summary["parity"]["max_abs_diff"] < 1e-4 and summary["objective"] == "next-event prediction"
    assert set(json.loads((out / "vocabulary.json").read_text())["columns"]) == {"category", "country"}
    events = [*TX_EVENTS, "--vocabulary", str(out / "vocabulary.json")]
    train = _cli("train", str(transactions / "labelled.parquet"), "-b", f"onnx:{out / 'encoder.onnx'}", *events,
                 "--head", "linear(class_weight='balanced')", "-o", str(tmp_path / "model"), "--json", home=home,
                 cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    result = json.loads(train.stdout)
    # the surprise profile of 4 values per event: last, max + mean over the last 4 and 8, window mean; log length
    assert result["backbone"]["dim"] == 6 * 4 + 1 and result["training"]["n_labelled"] == 120
    assert result["metrics"]["binary"]["positive"] == "fraud"
    embed = _cli("embed", str(transactions / "labelled.parquet"), "-b", f"onnx:{out / 'encoder.onnx'}", *events,
                 "--json", home=home, cwd=tmp_path)
    assert embed.returncode == 0, embed.stderr
    assert json.loads(embed.stdout)["embedded"] == 0  # every window was cached by train: the keys are the bytes


@pytest.mark.parametrize("args, says", [
    ([], "error: pretrain reads events: --group-by is missing"),
    (["--fields", "log_amount"], "error: --fields needs --group-by"),
    ([*TX_EVENTS, "--per", "event"], "error: pretrain reads one sequence per entity"),
    ([*TX_EVENTS, "--resume"], "error: --resume: "),
    ([*TX_EVENTS, "--epochs", "-1"], "Error: Invalid value for '--epochs'"),
])
def test_bad_pretrain_options_fail_before_any_work(transactions: Path, tmp_path: Path, args: list, says: str):
    home = tmp_path / "home"
    result = _cli("pretrain", str(transactions / "pool.parquet"), *args, "-o", str(tmp_path / "bb"), home=home,
                  cwd=tmp_path)
    assert result.returncode != 0 and says in result.stderr
    assert not home.exists() and not (tmp_path / "bb").exists()
