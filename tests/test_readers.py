"""Built-in readers and open_source, on real files (faults.md Text rows, schema errors, odd folders)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import unicodedata
from pathlib import Path

import numpy as np
import pytest

import fixtures_faults as F
from headstart.engine.embed.items import ReaderOptions, content_key
from headstart.engine.embed.sources import open_source
from headstart.engine.errors import ConfigError, SchemaError, UnknownNameError


def write(path: Path, data: bytes | str) -> Path:
    return F.write(path, data.encode("utf-8") if isinstance(data, str) else data)


# -- choosing a reader ----------------------------------------------------------------

def test_builtin_readers_come_from_the_entry_point():
    from headstart.engine.plugins import get_engine

    engine = get_engine()
    assert {"csv", "folder", "jsonl", "npy", "parquet", "text"} <= set(engine.catalog.names("reader"))
    assert engine.catalog.get("reader", "csv").plugin == "readers"


def test_reader_chosen_by_extension_and_explicit_name_wins(tmp_path):
    data = "text,label\nhello,a\n"
    assert type(open_source(write(tmp_path / "a.CSV", data))).__name__ == "CsvSource"
    assert type(open_source(write(tmp_path / "a.txt", data))).__name__ == "TextFileSource"
    src = open_source(write(tmp_path / "a.dat", data), reader="csv")
    assert [i.payload for i in src] == ["hello"]
    assert type(open_source(tmp_path / "a.txt", reader="txt")).__name__ == "TextFileSource"  # alias
    with pytest.raises(UnknownNameError, match="did you mean 'csv'"):
        open_source(tmp_path / "a.dat", reader="cvs")


def test_unknown_and_missing_sources_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="no reader accepts") as err:
        open_source(write(tmp_path / "a.dat", "x"))
    assert "csv (.csv" in err.value.hint and "folder" in err.value.hint
    with pytest.raises(ConfigError, match="does not exist"):
        open_source(tmp_path / "missing.csv")


# -- CSV / TSV --------------------------------------------------------------------------

def test_bom_crlf_csv_with_odd_texts(tmp_path):
    rows = [(text, name) for name, text in F.ODD_TEXTS.items()] + [("multi\r\nline", "m"), ("dup", "a"),
                                                                    ("dup", "b")]
    src = open_source(write(tmp_path / "odd.csv", F.bom_crlf_csv(rows)))
    assert src.columns == ["text", "label"] and src.has_labels and src.modality == "text"
    items = list(src)
    assert [i.payload for i in items] == [r[0] for r in rows]  # verbatim: NUL, RTL, ZWJ, empty, CRLF in quotes
    assert [i.label for i in items] == [r[1] for r in rows]
    assert [i.ref for i in items][:2] == [f"{tmp_path / 'odd.csv'}:row 1", f"{tmp_path / 'odd.csv'}:row 2"]
    assert all(i.key == hashlib.sha256(i.payload.encode()).hexdigest() for i in items)
    assert items[-1].key == items[-2].key and items[-1].ref != items[-2].ref  # duplicates: one key
    assert src.stats == {"items": len(rows), "failed": 0, "replaced": 0, "skipped": 0}


def test_tsv_and_default_column_names(tmp_path):
    src = open_source(write(tmp_path / "a.tsv", "id\tSentence\tCategory\n1\tone, two\tx\n2\tthree\t\n"))
    assert (src.text_column, src.label_column) == ("Sentence", "Category")
    assert [(i.payload, i.label) for i in src] == [("one, two", "x"), ("three", None)]


def test_single_non_label_column_is_the_text(tmp_path):
    src = open_source(write(tmp_path / "a.csv", "review_text,y\ngood,1\n"))
    assert (src.text_column, src.label_column) == ("review_text", "y")


def test_misnamed_column_lists_columns_present(tmp_path):
    path = write(tmp_path / "a.csv", "body_text,summary,label\nx,y,z\n")
    with pytest.raises(SchemaError, match="no text column") as err:
        open_source(path)
    assert "'body_text', 'summary', 'label'" in err.value.message and "--text-column" in err.value.hint
    with pytest.raises(SchemaError, match="label column 'lable' not found.*did you mean 'label'"):
        open_source(path, ReaderOptions(text_column="summary", label_column="lable"))
    with pytest.raises(SchemaError, match="no label column"):
        open_source(write(tmp_path / "b.csv", "text\nx\n"), ReaderOptions(labelled=True))


def test_all_empty_label_column_fails_at_open(tmp_path):
    path = write(tmp_path / "a.csv", "text,label\n" + "".join(f"t{i}, \n" for i in range(5000)))
    with pytest.raises(SchemaError, match="label column 'label' of .* is empty in every row"):
        open_source(path)
    assert not open_source(path, ReaderOptions(labelled=False)).has_labels


def test_empty_csv_is_a_schema_error(tmp_path):
    with pytest.raises(SchemaError, match="no header row"):
        open_source(write(tmp_path / "a.csv", b""))


@pytest.mark.parametrize("suffix", [".csv", ".txt", ".jsonl"])
def test_non_utf8_strict_names_the_line_lenient_replaces_and_counts(tmp_path, suffix):
    body = F.non_utf8_lines()
    if suffix == ".csv":
        body = b"text\n" + body
    elif suffix == ".jsonl":
        body = b"".join(b'{"text": "' + line.rstrip(b"\n") + b'"}\n' for line in body.splitlines(keepends=True))
    path = write(tmp_path / f"f{suffix}", body)
    items = list(src := open_source(path))
    bad = [i for i in items if i.error]
    assert len(items) == 3 and len(bad) == 1 and src.stats["failed"] == 1
    where = "row 2 (line 3)" if suffix == ".csv" else "line 2"
    assert where in bad[0].error and "not valid UTF-8" in bad[0].error and bad[0].payload is None
    assert items[0].payload == "first line" and items[2].payload == "third line"
    lenient = open_source(path, ReaderOptions(encoding_errors="replace"))
    texts = [i.payload for i in lenient]
    assert "caf\ufffd latin-1" in texts and lenient.stats["replaced"] == 1 and lenient.stats["failed"] == 0


def test_one_megabyte_text_survives(tmp_path):
    big = F.big_text()
    src = open_source(write(tmp_path / "a.csv", F.bom_crlf_csv([(big, "x")])))
    (item,) = list(src)
    assert item.payload == big and len(item.payload) == 1 << 20


def test_short_row_is_a_failed_item(tmp_path):
    items = list(open_source(write(tmp_path / "a.csv", "label,text\na,ok\nb\nc,fine\n")))
    assert [i.error is None for i in items] == [True, False, True]
    assert "row 2 (line 3): has 1 fields" in items[1].error and items[1].label == "b"


def test_csv_streams_with_bounded_memory(tmp_path):
    path = tmp_path / "big.csv"
    with open(path, "w") as fh:
        fh.write("text,label\n")
        for i in range(300_000):
            fh.write(f"sentence number {i} with some padding text to make it longer than short,{i % 7}\n")
    code = textwrap.dedent(f"""
        import resource
        from headstart.engine.embed.sources import open_source
        src = open_source({str(path)!r})
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        n = sum(1 for _ in src)
        print(n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert int(out[0]) == 300_000
    assert int(out[1]) < 20 * 1024  # KiB; the file is ~26 MB


# -- JSONL -----------------------------------------------------------------------------

def test_jsonl_defaults_bad_lines_and_labels(tmp_path):
    body = F.jsonl([{"content": "a", "target": 1}, {"content": "b", "target": None}]) + b"\n  \n" + \
        b"not json\n[1, 2]\n" + F.jsonl([{"content": 5, "target": "x"}, {"target": "y"},
                                         {"content": "c", "target": ["m", "n"]}, {"content": "d", "target": True}])
    src = open_source(write(tmp_path / "a.jsonl", body))
    items = list(src)
    assert (src.text_column, src.label_column) == ("content", "target")
    assert [(i.payload, i.label) for i in items if not i.error] == [("a", "1"), ("b", None), ("d", "True")]
    errors = [i.error for i in items if i.error]
    assert "line 5: invalid JSON" in errors[0] and "line 6: expected a JSON object" in errors[1]
    assert "field 'content' is int" in errors[2] and "field 'content' is missing" in errors[3]
    assert "is a list" in errors[4]
    assert src.stats["skipped"] == 2 and src.stats["failed"] == 5 and src.stats["items"] == 8


def test_jsonl_all_empty_labels_and_no_objects(tmp_path):
    with pytest.raises(SchemaError, match="empty in every row"):
        open_source(write(tmp_path / "a.jsonl", F.jsonl([{"text": "a", "label": ""}, {"text": "b"}])))
    with pytest.raises(SchemaError, match="no JSON object"):
        open_source(write(tmp_path / "b.jsonl", "\n[1]\n"))


# -- plain text --------------------------------------------------------------------------

def test_text_file_bom_crlf_and_blank_lines(tmp_path):
    src = open_source(write(tmp_path / "a.txt", b"\xef\xbb\xbfone\r\n\r\n  \r\nfour\x00\r\nlast"))
    items = list(src)
    assert [i.payload for i in items] == ["one", "", "  ", "four\x00", "last"]
    assert items[1].ref.endswith("a.txt:line 2") and items[0].key == content_key("one")
    assert not src.has_labels and src.estimate_count() == 5


# -- Parquet -------------------------------------------------------------------------------

def test_parquet_text_streams_in_batches(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 2500
    texts = [f"t{i}" for i in range(n)]
    texts[7] = None
    table = pa.table({"id": list(range(n)), "text": texts, "label": [i % 3 for i in range(n)]})
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=1000)
    src = open_source(tmp_path / "a.parquet")
    items = list(src)
    assert src.modality == "text" and src.estimate_count() == n and len(items) == n
    assert items[2500 - 1].payload == "t2499" and items[2500 - 1].label == "0"
    assert items[7].error and "row 8" in items[7].error and src.stats["failed"] == 1


def test_parquet_numeric_list_and_scalar_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    vecs = np.arange(12, dtype=np.float32).reshape(4, 3)
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), 3)
    pq.write_table(pa.table({"emb": fixed, "label": ["a", "b", "a", "b"]}), tmp_path / "v.parquet")
    src = open_source(tmp_path / "v.parquet")
    items = list(src)
    assert src.modality == "numeric" and src.has_labels
    np.testing.assert_array_equal(np.stack([i.payload for i in items]), vecs)
    assert items[0].key == content_key(vecs[0])
    pq.write_table(pa.table({"f1": [1.0, 2.0], "f2": [3.0, None], "y": ["p", "q"]}), tmp_path / "s.parquet")
    items = list(open_source(tmp_path / "s.parquet"))
    np.testing.assert_array_equal(items[0].payload, [1.0, 3.0])
    assert items[1].error and "row 2" in items[1].error


def test_parquet_schema_errors_list_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"a": ["x"], "b": ["y"], "label": [None]}), tmp_path / "a.parquet")
    with pytest.raises(SchemaError, match=r"no text column .*a \(string\), b \(string\)"):
        open_source(tmp_path / "a.parquet")
    with pytest.raises(SchemaError, match="empty in every row"):
        open_source(tmp_path / "a.parquet", ReaderOptions(text_column="a"))


# -- .npy -------------------------------------------------------------------------------------

def test_npy_rows_memory_mapped(tmp_path):
    arr = np.random.default_rng(0).normal(size=(50, 4, 2)).astype(np.float32)
    np.save(tmp_path / "x.npy", arr)
    src = open_source(tmp_path / "x.npy")
    items = list(src)
    assert isinstance(src.array, np.memmap) and src.modality == "numeric" and src.estimate_count() == 50
    assert len(items) == 50 and items[3].ref.endswith("x.npy:row 4") and items[3].payload.shape == (4, 2)
    assert items[3].key == content_key(arr[3])
    np.save(tmp_path / "flat.npy", np.arange(3))
    with pytest.raises(SchemaError, match="at least 2-D"):
        open_source(tmp_path / "flat.npy")
    np.save(tmp_path / "obj.npy", np.array([[{"a": 1}]], dtype=object), allow_pickle=True)
    with pytest.raises(SchemaError, match="object arrays need pickle"):
        open_source(tmp_path / "obj.npy")


# -- folders of images ---------------------------------------------------------------------------

def test_odd_tree_labels_order_loops_and_keys(tmp_path):
    root = tmp_path / "imgs"
    files = F.odd_tree(root)
    src = open_source(root)
    items = list(src)
    nfc = unicodedata.normalize("NFC", "café")
    naive = unicodedata.normalize("NFC", "naïve")
    assert src.has_labels and src.classes == sorted(["cats", nfc, naive])
    by_ref = {i.ref: i for i in items}
    assert set(by_ref) == {str(p) for p in files.values()}  # no notes.txt, no .hidden.jpg, loop not followed
    assert by_ref[str(files["nested"])].label == "cats" and by_ref[str(files["nfd"])].label == naive
    assert all(i.key == hashlib.sha256(Path(i.ref).read_bytes()).hexdigest() for i in items)
    assert src.stats["symlink_loops"] == 1 and src.stats["skipped"] == 1
    assert [i.ref for i in open_source(root)] == [i.ref for i in items]  # deterministic
    assert src.estimate_count() == len(items) == 5


def test_flat_folder_unlabelled_and_mixed_layout_refused(tmp_path):
    F.write(tmp_path / "flat" / "b.png", F.png())
    F.write(tmp_path / "flat" / "a.jpg", F.jpeg())
    F.write(tmp_path / "flat" / "fake.jpg", F.HTML_BYTES)
    src = open_source(tmp_path / "flat")
    assert not src.has_labels
    assert [Path(i.ref).name for i in src] == ["a.jpg", "b.png", "fake.jpg"]  # content is judged by the decoder
    F.write(tmp_path / "flat" / "dogs" / "d.png", F.png())
    with pytest.raises(SchemaError, match="mixes 3 image"):
        open_source(tmp_path / "flat")
    assert len(list(open_source(tmp_path / "flat", ReaderOptions(labelled=False)))) == 4


def test_unreadable_image_is_a_failed_item(tmp_path):
    F.write(tmp_path / "f" / "ok.png", F.png())
    os.symlink(tmp_path / "gone.png", tmp_path / "f" / "broken.png")
    items = list(src := open_source(tmp_path / "f"))
    assert [i.error is None for i in items] == [False, True]
    assert "broken.png: cannot read the file" in items[0].error and src.stats["failed"] == 1
    small = open_source(tmp_path / "f", ReaderOptions(extra={"max_bytes": 10}))
    assert "ok.png: file is" in list(small)[1].error and "above max_bytes 10" in list(small)[1].error
