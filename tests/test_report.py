"""`headstart report`, `eval --html`, `sweep --html`: one self-contained HTML page, parsed and rendered in Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from headstart.engine.testing.tiny_backbones import projection_backbone

WIDTH, CLASSES = 8, 4


class _Sections(HTMLParser):
    """Each <section id=...>: its data-classes, the ids (SVG gids) and data-plot figures inside it; every
    external reference (src/href to a URL) on the page."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, dict] = {}
        self.current: str | None = None
        self.external: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.current = a["id"]
            self.sections[self.current] = {"classes": a.get("data-classes"), "ids": [], "plots": []}
        elif self.current is not None:
            if "id" in a:
                self.sections[self.current]["ids"].append(a["id"])
            if tag == "figure":
                self.sections[self.current]["plots"].append(a.get("data-plot"))
        if tag == "script":
            self.scripts += 1
        for key in ("src", "href", "xlink:href"):
            value = a.get(key) or ""
            if "://" in value or value.startswith("//"):
                self.external.append(value)

    def handle_endtag(self, tag):
        if tag == "section":
            self.current = None


def _parse(path: Path) -> _Sections:
    parser = _Sections()
    parser.feed(path.read_text())
    return parser


def _ids(section: dict, prefix: str) -> list[str]:
    return [i for i in section["ids"] if i.startswith(prefix)]


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    run = subprocess.run([sys.executable, "-m", "headstart", *args], env=dict(os.environ, HEADSTART_HOME=str(home)),
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    return run


def _parquet(path: Path, rows: int, seed: int) -> Path:
    """Numeric items in 4 overlapping classes (some confusions to report)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).standard_normal((CLASSES, WIDTH)) * 1.2
    labels = rng.integers(0, CLASSES, rows)
    x = (centres[labels] + rng.standard_normal((rows, WIDTH))).astype(np.float32)
    pq.write_table(pa.table({"features": pa.array(list(x), type=pa.list_(pa.float32())),
                             "label": [f"kind-{i}" for i in labels]}), path)
    return path


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A swept model (--save-best --curve), its report without and with TEST, eval --html and sweep --html."""
    root = tmp_path_factory.mktemp("report")
    home = root / "home"
    backbone = f"onnx:{projection_backbone(root / 'bb', width=WIDTH, dim=32)}"
    train, test = _parquet(root / "train.parquet", 320, 1), _parquet(root / "test.parquet", 120, 2)
    out = {"root": root, "test": test}
    _cli(home, "sweep", str(train), "-b", backbone, "--heads", "linear,knn", "--curve", "--save-best",
         str(root / "model"), "--html", str(root / "sweep.html"))
    _cli(home, "report", str(root / "model"), "-o", str(root / "validation.html"))
    _cli(home, "report", str(root / "model"), str(test), "-o", str(root / "test.html"))
    _cli(home, "eval", str(root / "model"), str(test), "--html", str(root / "eval.html"))
    out.update(sweep=root / "sweep.html", validation=root / "validation.html", test_report=root / "test.html",
               eval=root / "eval.html")
    return out


@pytest.mark.parametrize("name", ["validation", "test_report", "eval"])
def test_model_report_has_every_section_with_a_plot_for_each_class(reports, name):
    page = _parse(reports[name])
    assert page.external == [] and page.scripts == 0  # opens offline, runs nothing
    s = page.sections
    assert list(s) == ["summary", "confusion", "per-class", "confused-pairs", "calibration", "learning-curve", "sweep",
                       "l2-path"]
    for name_, section in s.items():
        if name_ != "summary":
            assert section["classes"] == str(CLASSES)
    assert s["confusion"]["plots"] == ["confusion"]
    cells = _ids(s["confusion"], "cell-")
    assert sorted(cells) == sorted(f"cell-{i}-{j}" for i in range(CLASSES) for j in range(CLASSES))
    assert len(_ids(s["per-class"], "precision-")) == CLASSES == len(_ids(s["per-class"], "recall-"))
    assert "reliability-before" in s["calibration"]["ids"]
    assert len(_ids(s["learning-curve"], "curve-")) == 2  # linear and knn
    assert len(_ids(s["sweep"], "sweep-")) == 2
    assert "l2-path" in s["l2-path"]["ids"]


def test_report_on_test_data_lists_example_items_of_the_confused_pairs(reports):
    text = reports["test_report"].read_text()
    pairs = text[text.index('<section id="confused-pairs"'):text.index('<section id="calibration"')]
    assert "test.parquet" in pairs and "kind-" in pairs  # refs of real test items under their (true, predicted) pair
    assert "Pass a labelled TEST source" in reports["validation"].read_text()
    assert "test: " in text and "validation split recorded at training" in reports["validation"].read_text()


def test_sweep_html_holds_the_comparison_and_the_curves(reports):
    page = _parse(reports["sweep"])
    assert list(page.sections) == ["sweep", "learning-curve"] and page.external == []
    assert len(_ids(page.sections["sweep"], "sweep-")) == 2
    assert "advice" in reports["sweep"].read_text()


def test_report_refuses_a_name_that_is_not_html_before_any_work(reports, tmp_path):
    run = subprocess.run([sys.executable, "-m", "headstart", "report", str(reports["root"] / "model"), "-o",
                          str(tmp_path / "r.txt")], env=dict(os.environ, HEADSTART_HOME=str(tmp_path)),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "error: cannot write a report" in run.stderr and "hint:" in run.stderr
    assert not (tmp_path / "r.txt").exists()


def test_report_renders_in_headless_chromium_and_is_not_blank(reports, tmp_path):
    from PIL import Image

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium package is needed (.ci/run installs it)"
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1100,2400", f"--screenshot={shot}",
                    reports["test_report"].as_uri()], capture_output=True, timeout=180, check=True)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (2400, 1100)
    inked = pixels < 200
    assert pixels.std() > 20 and inked.mean() > 0.02  # text, heat map and bars drawn, not a white page
    rows = np.flatnonzero(inked.any(axis=1))
    assert rows.max() - rows.min() > 1500  # content runs down the page (the plots rendered, not only a title)
    # a blank page through the same path is flat: the check can fail
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--user-data-dir={tmp_path / 'profile2'}", "--window-size=1100,2400",
                    f"--screenshot={tmp_path / 'blank.png'}", blank.as_uri()], capture_output=True, timeout=180,
                   check=True)
    assert np.asarray(Image.open(tmp_path / "blank.png").convert("L"), dtype=np.float64).std() < 1


def test_model_json_records_the_sweep_and_curve_for_the_report(reports):
    manifest = json.loads((reports["root"] / "model" / "manifest.json").read_text())
    assert [r["head"] for r in manifest["training"]["sweep"]] == ["linear", "knn"]
    assert manifest["training"]["curve"]["advice"]["kind"] in ("more_labels", "plateau", "enough")
