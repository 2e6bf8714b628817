"""Issue 16, the contrastive recipe as a function of the labelled set (docs/finetune.md): ``--unfreeze auto``
(the default) trains the top 2 blocks below ``DEEP_MIN_ITEMS`` labelled items, every block above the stem from
there on, the top 3 from ``LONG_RULE_PER_CLASS`` per class on; an explicit ``--unfreeze`` is kept as given.
Below ``LONG_RULE_PER_CLASS`` items in the smallest class the k-fold curve's best epoch is chosen (``--patience``
ends a fold early); from there on every fold runs all ``--epochs`` and the most-trained epoch within one
standard error of the best is chosen.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from finetune_data import blind_task, tiny_bert_blind


def test_schedule_trains_every_layer_of_multi_class_sets_and_waits_longer_from_sixteen_per_class() -> None:
    from headstart.plugins.finetune.contrastive import DEEP_MIN_CLASSES, DEEP_MIN_ITEMS, LONG_RULE_PER_CLASS, schedule

    assert (DEEP_MIN_ITEMS, DEEP_MIN_CLASSES, LONG_RULE_PER_CLASS) == (32, 3, 16)
    assert schedule([8, 8], "auto") == ("last:2", "best")  # binary x 8
    assert schedule([10, 21], "auto") == ("last:2", "best")
    assert schedule([8] * 4, "auto") == ("all-but-stem", "best")  # 4 classes x 8
    assert schedule([8] * 6, "auto") == ("all-but-stem", "best")  # 6 classes x 8
    assert schedule([16, 16], "auto") == ("last:3", "longest-within-se")  # binary x 16
    assert schedule([32, 32], "auto") == ("last:3", "longest-within-se")  # binary x 32
    assert schedule([16] * 3, "auto") == ("all-but-stem", "longest-within-se")  # 3 classes x 16
    assert schedule([32] * 6, "auto") == ("all-but-stem", "longest-within-se")  # 6 classes x 32
    assert schedule([8, 8], "last:1") == ("last:1", "best")  # an explicit choice is the user's
    assert schedule([32, 32], "all-but-stem") == ("all-but-stem", "longest-within-se")
    assert schedule([32, 32], "all") == ("all", "longest-within-se")


def test_unfreeze_spellings_name_the_lowest_block_that_trains() -> None:
    from headstart.engine.train.finetune import FinetuneOptions
    from headstart.sdk import ConfigError, first_trained_block

    assert [first_trained_block(t, 7) for t in ("all", "all-but-stem", "last:2", "last:9")] == [0, 1, 5, 0]
    assert first_trained_block("all-but-stem", 1) == 0  # a backbone whose stem is its only block
    with pytest.raises(ConfigError, match="contrastive"):
        FinetuneOptions(unfreeze="auto").check()  # cross-entropy has no schedule to ask
    with pytest.raises(ConfigError, match="all-but-stem"):
        FinetuneOptions(unfreeze="lowest:2").check()
    FinetuneOptions.for_objective("contrastive").check()
    FinetuneOptions(unfreeze="all-but-stem").check()


def test_longest_within_se_takes_the_last_epoch_the_folds_cannot_tell_from_the_best() -> None:
    from headstart.plugins.finetune.contrastive import _choose_epoch

    y = np.array([0, 1] * 16)  # 32 pooled held-out items: one standard error at 0.875 is about 0.058
    folds = [(np.arange(16, 32), np.arange(16)), (np.arange(16), np.arange(16, 32))]

    def curve(accs: list[float]) -> list[dict]:
        return [{"acc": a, "loss": 1.0 - a, "pred": [0, 1] * 8} for a in accs]

    flat = [curve([0.75, 0.875, 0.84375, 0.84375, 0.75])] * 2  # best at 1; 2 and 3 within 0.058, 4 not
    assert _choose_epoch(flat, y, folds, np.array(["a", "b"]), "best")[0] == 1
    assert _choose_epoch(flat, y, folds, np.array(["a", "b"]), "longest-within-se")[0] == 3
    falling = [curve([0.875, 0.75, 0.6875])] * 2  # more training clearly hurts: the frozen body stays
    assert _choose_epoch(falling, y, folds, np.array(["a", "b"]), "longest-within-se")[0] == 0


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fewshot-recipe")
    return {"bert": tiny_bert_blind(root / "bert"), "small": blind_task(root / "small.csv", 12, 40),
            "large": blind_task(root / "large.csv", 32, 41), "root": root, "home": root / "home"}


def _run(data: dict[str, Path], name: str, unfreeze: str | None) -> dict:
    from headstart.engine.train.finetune import FinetuneOptions, finetune

    # patience 1: a run whose epochs the folds choose stops a fold after one epoch without a better score
    options = FinetuneOptions.for_objective("contrastive", unfreeze=unfreeze, epochs=6, lr=3e-3, patience=1)
    return finetune(str(data[name]), f"hf:{data['bert']}", "linear", out=data["root"] / name,
                    options=options).summary()


def test_a_set_with_sixteen_per_class_runs_every_epoch_of_the_folds(data: dict[str, Path], env_home: Path) -> None:
    summary = _run(data, "large", "all-but-stem")  # 16 items per class
    info = summary["info"]
    assert info["schedule"] == {"unfreeze": "all-but-stem", "epoch_rule": "longest-within-se"}
    assert info["trainable_blocks"] == ["model.encoder.layer.0", "model.encoder.layer.1"]
    assert info["cached_split"]  # the stem (token embeddings) stays frozen: its output is replayed
    # every fold runs all 6 epochs (patience 1 stops nothing), then the final run trains the chosen ones
    assert [h["epoch"] for h in summary["history"]] == list(range(7))
    assert summary["epochs_run"] == 2 * 6 + summary["best_epoch"]
    accs = [h["val_accuracy"] for h in summary["history"]]
    top = max(accs)
    se = np.sqrt(max(top * (1 - top), 1 / 32) / 32)
    assert summary["best_epoch"] == max(e for e, a in enumerate(accs) if a >= top - se - 1e-9)
    # the reported score is the pooled held-out score of the folds at the chosen epoch
    assert summary["finetuned"]["split"] == "cross-validation" and summary["finetuned"]["n"] == 32
    assert summary["finetuned"]["accuracy"] == pytest.approx(accs[summary["best_epoch"]], abs=1e-6)


def test_a_set_with_six_per_class_keeps_the_asked_blocks_and_lets_the_folds_choose(
        data: dict[str, Path], env_home: Path) -> None:
    summary = _run(data, "small", "last:1")  # 6 items per class
    info = summary["info"]
    assert info["schedule"] == {"unfreeze": "last:1", "epoch_rule": "best"}
    assert len(info["trainable_blocks"]) == 1
    assert summary["best_epoch"] == max(range(len(summary["history"])),
                                        key=lambda e: (summary["history"][e]["val_accuracy"],
                                                       -summary["history"][e]["val_loss"], -e))
