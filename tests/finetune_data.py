"""Tiny models and data for the fine-tuning tests and benchmark.

``tiny_bert_blind``: a 2-layer random BERT whose token embeddings for ``fraud`` and ``payment`` are
identical, so its frozen features cannot tell the two words apart, and a word-level tokenizer.
``blind_task``: sentences of filler words holding exactly one of the two; the label says which.
Frozen features + any head score at chance; fine-tuning can separate the two embedding rows.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

FILLERS = ("the a cat dog sat on mat is card late refund bank sent my was to for it and of new old red blue "
           "big small fast slow went came back home today").split()
KEYWORDS = ("fraud", "payment")


def tiny_bert_blind(folder: Path) -> Path:
    """Save the blind tiny BERT (hub folder layout) into ``folder``; returns it."""
    import torch
    from transformers import BertConfig, BertModel

    from tiny_tokenizer import save_word_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = save_word_tokenizer(folder, [*FILLERS, *KEYWORDS])
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    model = BertModel(config)
    with torch.no_grad():
        emb = model.embeddings.word_embeddings.weight
        emb[vocab["payment"]] = emb[vocab["fraud"]]
    model.save_pretrained(folder)
    return folder


def blind_task(path: Path, n: int, seed: int) -> Path:
    """Write ``n`` rows (text,label) to a CSV: label ``fraud`` or ``payment`` = the keyword in the text."""
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for i in range(n):
            words = list(rng.choice(FILLERS, size=int(rng.integers(4, 9))))
            keyword = KEYWORDS[i % 2]
            words.insert(int(rng.integers(0, len(words) + 1)), keyword)
            writer.writerow([" ".join(words), keyword])
    return path


def easy_task(path: Path, n: int, seed: int) -> Path:
    """Labels given by which of two disjoint word sets the text uses: any head separates them."""
    rng = np.random.default_rng(seed)
    groups = {"pets": FILLERS[2:8], "money": ["card", "refund", "bank", "sent", "late", "new"]}
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for i in range(n):
            label = ("pets", "money")[i % 2]
            writer.writerow([" ".join(rng.choice(groups[label], size=6)), label])
    return path


def distinct_tiny_bert(folder: Path) -> Path:
    """The blind tiny BERT with noise on every weight: freshly initialised biases and norms are all zeros and
    ones, which the graph fusions merge into shared constants (no parameter could be placed then)."""
    import torch
    from transformers import BertModel

    tiny_bert_blind(folder)
    model = BertModel.from_pretrained(folder)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name != "embeddings.word_embeddings.weight":  # its keyword rows stay equal: the task stays blind
                param.add_(0.02 * torch.randn_like(param))
    model.save_pretrained(folder)
    return folder


def onnx_initializers(path: Path) -> dict[str, np.ndarray]:
    """Every initializer of the ONNX file at ``path``, by name."""
    import onnx
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def identity_graph(path: Path, initializers: dict[str, np.ndarray]) -> Path:
    """An ONNX file at ``path`` whose outputs are its ``initializers`` (name -> array), one Identity each."""
    import onnx
    from onnx import helper, numpy_helper

    nodes = [helper.make_node("Identity", [name], [f"out{i}"]) for i, name in enumerate(initializers)]
    graph = helper.make_graph(nodes, "g", [], [helper.make_tensor_value_info(f"out{i}", onnx.TensorProto.FLOAT, None)
                                               for i in range(len(initializers))],
                              [numpy_helper.from_array(v, n) for n, v in initializers.items()])
    onnx.save(helper.make_model(graph), str(path))
    return path


def predict_in_fresh_process(model: Path, source: Path, home: Path, timeout: float = 180) -> dict:
    """``headstart``'s ``predict(model, source)`` in a new Python process with ``HEADSTART_HOME=home``:
    ``{"torch": whether torch got imported, "labels": the predicted labels}``."""
    code = ("import json, sys\nfrom headstart.engine.train.api import predict\n"
            f"p = predict({str(model)!r}, {str(source)!r})\n"
            "print(json.dumps({'torch': 'torch' in sys.modules, 'labels': p.labels}))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "HEADSTART_HOME": str(home)})
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def csv_labels(path: Path) -> list[str]:
    """The last column of every data row of a task CSV written by this module."""
    return [line.rsplit(",", 1)[1] for line in path.read_text().splitlines()[1:]]
