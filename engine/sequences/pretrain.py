"""``headstart pretrain``: a sequence encoder trained self-supervised on unlabelled events, exported to ONNX
through the parity gate and written as a backbone folder (``-b FOLDER``, a ``--name``, or
``onnx:FOLDER/encoder.onnx``).

Objective: **next-event prediction** (the causal form of masked-event modelling): from the encoder's state after
step ``t`` it predicts step ``t+1``: the standardised numeric fields (squared error) and each categorical id
(cross-entropy). Or ``objective="contrastive"``: two random stretches (50-100 %) of each account's window are its
two views, and an InfoNCE loss (temperature 0.1, the other accounts of the batch as negatives) on a projection of
the pooled GRU states pulls them together. One item per entity (its last ``window`` events) from the events reader;
a seeded share of the entities is held out and their loss is the validation loss that says when to stop (the best
epoch is kept; ``patience`` epochs without improvement end the run).

The output folder::

    OUT/encoder.onnx, encoder.headstart.json   the graph and its onnx: sidecar (names the vocabulary)
    OUT/vocabulary.json                         categorical ids (the backbone carries it)
    OUT/encoder.safetensors, pretrain.json      best weights + config, options, per-epoch losses
    OUT/checkpoint.safetensors                  while training: every epoch (atomic); removed at the end

A run killed at any moment resumes with ``--resume`` from the last finished epoch, and ends with the same
weights an uninterrupted run would have (the data order of epoch ``e`` is seeded by ``seed + e``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError, DataError, HeadstartError
from ..faultpoints import pause_point
from ..torch_threads import one_torch_thread
from .encoder import EncoderConfig, build_encoder
from .options import EventOptions, Vocabulary, build_vocabulary

CHECKPOINT = "checkpoint.safetensors"
SUMMARY = "pretrain.json"
VOCABULARY = "vocabulary.json"
WEIGHTS = "encoder.safetensors"
GRAPH = "encoder.onnx"
FORMAT = "headstart-pretrain-1"
OBJECTIVES = ("next-event", "contrastive")
TEMPERATURE = 0.1  # of the contrastive loss


@dataclass(frozen=True)
class PretrainOptions:
    epochs: int = 20
    batch_size: int = 64
    lr: float = 2e-3
    hidden: int = 32
    val_fraction: float = 0.1
    patience: int = 3
    seed: int = 0
    objective: str = "next-event"  # or "contrastive"

    def check(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"--objective '{self.objective}' is not one of {', '.join(OBJECTIVES)}",
                              hint="pass --objective next-event or --objective contrastive")
        for name in ("batch_size", "hidden", "patience"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1", hint="pass a positive number")
        if self.epochs < 0:
            raise ConfigError("--epochs must be 0 or more", hint="0 exports the randomly initialised encoder")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError("--val-fraction must be between 0 and 1", hint="e.g. 0.1")
        if not self.lr > 0:
            raise ConfigError("--lr must be positive", hint="e.g. 0.002")


@dataclass
class PretrainResult:
    folder: Path
    backbone: str  # the ref to embed with: onnx:<folder>/encoder.onnx
    summary: dict[str, Any]


def pretrain(source: str, events: EventOptions, out: str | Path, options: PretrainOptions = PretrainOptions(), *,
             resume: bool = False, engine: Any = None, log: Callable[[str], None] = lambda m: None) -> PretrainResult:
    """Pretrain an encoder on the events of ``source`` (labels ignored) and write the backbone folder ``out``."""
    from ..embed.sources import refuse_output_over_inputs

    options.check()
    out = Path(out)
    refuse_output_over_inputs(out, [source])
    _check_folder(out, resume)
    out.mkdir(parents=True, exist_ok=True)
    events = _with_vocabulary(source, events, out, resume)
    arrays, n_failed = _read(source, events, engine)
    if len(arrays) < 4:
        raise DataError(f"{source} gives {len(arrays)} readable sequences; pretraining needs more",
                        hint="check --group-by and the failed items with `headstart embed`")
    config = _config(events, arrays, options)
    log(f"{len(arrays)} sequences of up to {events.window or 'a span of'} events ({n_failed} could not be read); "
        f"{config.width} values per event")
    with one_torch_thread():  # a small GRU: 15-30x slower per epoch on two threads of a busy 2-core machine
        history, best_state, best_epoch = _train(arrays, config, options, out, resume, log)
        config = _with_output_statistics(config, best_state, arrays, options)
    return _finish(source, events, out, options, config, best_state, best_epoch, history, arrays, n_failed, engine,
                   log)


def _check_folder(out: Path, resume: bool) -> None:
    hint = "choose a new folder, or pass --resume to continue the run in it"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"the output {out} is a file", hint="choose a folder name")
    has_checkpoint = (out / CHECKPOINT).is_file()
    if resume and not has_checkpoint:
        raise ConfigError(f"--resume: {out} holds no unfinished pretraining run", hint="drop --resume to start one")
    if not resume and out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"the output {out} is not empty" + (" (an unfinished run is in it)" if has_checkpoint else ""),
                          hint=hint)


def _with_vocabulary(source: str, events: EventOptions, out: Path, resume: bool) -> EventOptions:
    """The events options reading per entity, unlabelled, with the run's vocabulary (built from ``source``
    into OUT/vocabulary.json unless one was given)."""
    path = out / VOCABULARY
    if events.categorical:
        if events.vocabulary is not None and not resume:
            Vocabulary.load(events.vocabulary, events.categorical).save(path)
        elif not path.is_file():
            build_vocabulary(source, events.categorical).save(path)
    return dataclasses.replace(events, per="entity", vocabulary=str(path) if events.categorical else None)


def _read(source: str, events: EventOptions, engine: Any) -> tuple[list[Any], int]:
    from ..embed.items import ReaderOptions
    from ..embed.sources import open_source

    src = open_source(source, ReaderOptions(events=events, labelled=False), engine=engine)
    arrays, failed = [], 0
    for item in src:
        if item.payload is None:
            failed += 1
        else:
            arrays.append(item.payload)
    return arrays, failed


def _config(events: EventOptions, arrays: list[Any], options: PretrainOptions) -> EncoderConfig:
    import numpy as np

    n = len(events.fields)
    steps = np.concatenate([a[:, :n] for a in arrays]).astype(np.float64) if n else np.zeros((1, 0))
    sizes = ()
    if events.categorical:
        vocab = Vocabulary.load(events.vocabulary, events.categorical)
        sizes = tuple(len(vocab.values[c]) + 2 for c in events.categorical)
    return EncoderConfig(n, sizes, options.hidden, 8, tuple(steps.mean(0).tolist()),
                         tuple(np.maximum(steps.std(0), 1e-6).tolist()), options.objective)




def _with_output_statistics(config: EncoderConfig, state: dict[str, Any], arrays: list[Any],
                            options: PretrainOptions) -> EncoderConfig:
    """``config`` with the mean and standard deviation of each embedding value over the pool's sequences (the
    best weights): the graph outputs the embedding standardised (see :mod:`.encoder`)."""
    import numpy as np
    import torch

    model = build_encoder(config)
    model.load_state_dict(state)
    model.eval()
    rows = np.arange(len(arrays))
    with torch.no_grad():
        raw = torch.cat([model.raw_embedding(*_batch(arrays, rows[b: b + 256])) for b in range(0, len(rows), 256)])
    raw = raw.double()
    std = raw.std(0)
    std = torch.where(std > 1e-4, std, torch.ones_like(std))  # a value constant on the pool is left unscaled
    return dataclasses.replace(config, out_mean=tuple(raw.mean(0).tolist()), out_std=tuple(std.tolist()))


def _split(n: int, options: PretrainOptions) -> tuple[Any, Any]:
    import numpy as np

    order = np.random.default_rng(options.seed).permutation(n)
    n_val = max(1, int(round(n * options.val_fraction)))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _pad(items: list[Any]) -> tuple[Any, Any]:
    import numpy as np
    import torch

    length = max(a.shape[0] for a in items)
    x = np.zeros((len(items), length, items[0].shape[1]), np.float32)
    mask = np.zeros((len(items), length), np.int64)
    for r, a in enumerate(items):
        x[r, : len(a)] = a
        mask[r, : len(a)] = 1
    return torch.from_numpy(x), torch.from_numpy(mask)


def _batch(arrays: list[Any], rows: Any) -> tuple[Any, Any]:
    return _pad([arrays[i] for i in rows])


def _views(arrays: list[Any], rows: Any, rng: Any) -> tuple[list[Any], list[Any]]:
    """Two views of each account: random contiguous stretches of 50-100 % of its window."""
    first, second = [], []
    for i in rows:
        seq = arrays[i]
        for views in (first, second):
            k = max(1, int(round(len(seq) * rng.uniform(0.5, 1.0))))
            start = int(rng.integers(0, len(seq) - k + 1))
            views.append(seq[start: start + k])
    return first, second


def contrastive_loss(model: Any, first: list[Any], second: list[Any]) -> Any:
    """InfoNCE both ways: each view must pick the other view of its account among the batch's accounts."""
    import torch
    from torch.nn import functional as F

    za = F.normalize(model.projection(model.pooled_states(*_pad(first))), dim=-1)
    zb = F.normalize(model.projection(model.pooled_states(*_pad(second))), dim=-1)
    logits = za @ zb.T / TEMPERATURE
    target = torch.arange(len(first))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def batch_loss(model: Any, config: EncoderConfig, arrays: list[Any], rows: Any, rng: Any) -> Any:
    """The objective's loss on the accounts ``rows`` (``rng`` draws the contrastive views)."""
    if config.objective == "contrastive":
        return contrastive_loss(model, *_views(arrays, rows, rng))
    return next_event_loss(model, config, *_batch(arrays, rows))


def next_event_loss(model: Any, config: EncoderConfig, x: Any, mask: Any) -> Any:
    """Mean surprise (:mod:`.encoder`) over the steps of a padded batch that follow another step."""
    surprise = model.surprise(model.states(x), x)[:, 1:]
    valid = mask[:, 1:].to(surprise.dtype)
    return (surprise * valid).sum() / valid.sum().clamp(min=1.0)


def _train(arrays: list[Any], config: EncoderConfig, options: PretrainOptions, out: Path, resume: bool,
           log: Callable[[str], None]) -> tuple[list[dict[str, Any]], dict[str, Any], int]:
    import numpy as np
    import torch

    model = build_encoder(config, options.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr)
    train_rows, val_rows = _split(len(arrays), options)
    history: list[dict[str, Any]] = []
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    best_epoch, best_loss, start = 0, _val_loss(model, config, arrays, val_rows, options), 1
    if resume:
        history, best_state, best_epoch, best_loss, start = _load_checkpoint(out, model, optimizer, config, options)
        log(f"resuming after epoch {start - 1} (best validation loss {best_loss:.4f} at epoch {best_epoch})")
    else:
        log(f"epoch 0: validation loss {best_loss:.4f} (the random encoder)")
    for epoch in range(start, options.epochs + 1):
        if epoch - best_epoch > options.patience:
            break
        started = time.perf_counter()
        model.train()
        rng = np.random.default_rng(options.seed + epoch)
        order = rng.permutation(train_rows)
        total = 0.0
        for b in range(0, len(order), options.batch_size):
            rows = order[b: b + options.batch_size]
            loss = batch_loss(model, config, arrays, rows, rng)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            total += float(loss.detach()) * len(rows)
        val = _val_loss(model, config, arrays, val_rows, options)
        better = val < best_loss
        if better:
            best_loss, best_epoch = val, epoch
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        history.append({"epoch": epoch, "train_loss": round(total / len(order), 6), "val_loss": round(val, 6),
                        "seconds": round(time.perf_counter() - started, 2)})
        log(f"epoch {epoch}/{options.epochs}: train loss {total / len(order):.4f}  validation loss {val:.4f}"
            + ("  (best)" if better else f"  (best {best_loss:.4f} at epoch {best_epoch})"))
        _save_checkpoint(out, model, optimizer, best_state, config, options,
                         {"epoch": epoch, "history": history, "best_epoch": best_epoch, "best_loss": best_loss})
        pause_point("pretrain-epoch", epoch=epoch)
    return history, best_state, best_epoch


def _val_loss(model: Any, config: EncoderConfig, arrays: list[Any], rows: Any, options: PretrainOptions) -> float:
    import numpy as np
    import torch

    model.eval()
    rng = np.random.default_rng(options.seed)  # the same validation views every epoch
    total = 0.0
    with torch.no_grad():
        for b in range(0, len(rows), options.batch_size):
            part = rows[b: b + options.batch_size]
            total += float(batch_loss(model, config, arrays, part, rng)) * len(part)
    return total / len(rows)


def _run_identity(config: EncoderConfig, options: PretrainOptions) -> str:
    kept = {k: v for k, v in dataclasses.asdict(options).items() if k not in ("epochs", "patience")}  # may change
    data = json.dumps({"config": config.to_json(), "options": kept}, sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()


def _save_checkpoint(out: Path, model: Any, optimizer: Any, best: dict[str, Any], config: EncoderConfig,
                     options: PretrainOptions, state: dict[str, Any]) -> None:
    import torch
    from safetensors.torch import save

    from ..store.atomic import write_bytes_atomic

    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"best.{k}": v for k, v in best.items()})
    opt = optimizer.state_dict()
    for index, entry in opt["state"].items():
        for key, value in entry.items():
            tensors[f"optim.{index}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    meta = {**state, "format": FORMAT, "run": _run_identity(config, options), "config": config.to_json(),
            "param_groups": opt["param_groups"]}
    write_bytes_atomic(out / CHECKPOINT, save(tensors, metadata={"headstart": json.dumps(meta)}))


def _load_checkpoint(out: Path, model: Any, optimizer: Any, config: EncoderConfig,
                     options: PretrainOptions) -> tuple[list[dict[str, Any]], dict[str, Any], int, float, int]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = out / CHECKPOINT
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})["headstart"])
        tensors = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file
        raise DataError(f"checkpoint {path} cannot be read: {type(exc).__name__}: {exc}",
                        hint="delete the folder to start over") from None
    if meta.get("format") != FORMAT or meta.get("run") != _run_identity(config, options):
        raise ConfigError(f"{path} is a run with other data or options",
                          hint="resume with the same source and options, or start a new folder")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    return meta["history"], best, int(meta["best_epoch"]), float(meta["best_loss"]), int(meta["epoch"]) + 1


def _finish(source: str, events: EventOptions, out: Path, options: PretrainOptions, config: EncoderConfig,
            best_state: dict[str, Any], best_epoch: int, history: list[dict[str, Any]], arrays: list[Any],
            n_failed: int, engine: Any, log: Callable[[str], None]) -> PretrainResult:
    from safetensors.torch import save

    from ..store.atomic import write_bytes_atomic, write_json_atomic

    write_bytes_atomic(out / WEIGHTS, save({k: v.contiguous() for k, v in best_state.items()},
                                           metadata={"headstart": json.dumps({"config": config.to_json()})}))
    probe = [arrays[i] for i in range(0, len(arrays), max(1, len(arrays) // 24))][:24]
    probe += [arrays[0][:1], arrays[0][:2]]  # the shortest items too (one event: no surprise yet)
    parity = export_encoder(out, config, probe=probe, engine=engine)
    summary = {"format": FORMAT, "source": str(source),
               "objective": "next-event prediction" if config.objective == "next-event" else "contrastive views",
               "events": {k: v for k, v in dataclasses.asdict(events).items() if k != "vocabulary"},
               "vocabulary": VOCABULARY if events.categorical else None, "options": dataclasses.asdict(options),
               "config": config.to_json(), "n_sequences": len(arrays), "n_failed": n_failed, "best_epoch": best_epoch,
               "history": history, "parity": parity, "backbone": f"onnx:{out / GRAPH}"}
    write_json_atomic(out / SUMMARY, summary)
    (out / CHECKPOINT).unlink(missing_ok=True)
    log(f"best epoch {best_epoch}; encoder exported (parity max |diff| {parity.get('max_abs_diff', 0):.2e}) "
        f"to {out / GRAPH}")
    return PretrainResult(out, f"onnx:{out / GRAPH}", summary)


def load_encoder(folder: str | Path) -> tuple[Any, EncoderConfig]:
    """The pretrained encoder module (eval mode) and its config from a pretrain folder."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(folder) / WEIGHTS
    with safe_open(str(path), framework="pt") as fh:
        config = EncoderConfig.from_json(json.loads((fh.metadata() or {})["headstart"])["config"])
    model = build_encoder(config)
    model.load_state_dict(load_file(str(path)))
    return model.eval(), config


def export_encoder(out: Path, config: EncoderConfig, probe: list[Any], engine: Any = None) -> dict[str, Any]:
    """Export ``out/encoder.safetensors`` through the parity gate (PyTorch vs the ONNX graph, items padded in
    batches) and write ``out/encoder.onnx`` with its ``onnx:`` sidecar. Returns the parity figures."""
    from ..backbones.export import export
    from ..backbones.spec import BackboneSpec, NumericPreprocessing
    from ..plugins import get_engine
    from ..store.atomic import copy_file_atomic, write_json_atomic

    engine = engine or get_engine()
    prep = NumericPreprocessing(input_name="x", shape=(None, config.width), dtype="float32", mask_name="mask")
    spec = BackboneSpec(name=f"pretrained-events-{hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:8]}",
                        modality="numeric", source=str(out), preprocessing=prep, dim=config.dim, pooling="mean",
                        normalize=False, weights=(str(out / WEIGHTS),), build_torch=lambda: load_encoder(out)[0],
                        probe=lambda: list(probe), description="event-sequence encoder (headstart pretrain)")
    try:
        exported = export(spec, "fp32", settings=engine.settings, engine=engine)
    except HeadstartError:
        raise
    copy_file_atomic(exported.path, out / GRAPH)
    write_json_atomic(out / "encoder.headstart.json", {
        "modality": "numeric", "dim": config.dim, "normalize": False,
        "description": f"event-sequence encoder pretrained by headstart pretrain ({config.objective})",
        "preprocessing": {"input_name": "x", "shape": [None, config.width], "dtype": "float32", "mask_name": "mask",
                          **({"vocabulary": VOCABULARY} if (out / VOCABULARY).is_file() else {})}})
    return dict(exported.parity or {})
