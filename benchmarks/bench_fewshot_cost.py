"""The fixed cost of a contrastive fine-tune, old way vs new way, measured side by side (A/B, alternating).

    python benchmarks/bench_fewshot_cost.py [--repeats 3]

On the shipped MiniLM with its top two blocks changed (as ``--objective contrastive`` leaves them):

* ``export``: the tuned backbone's fp32 export, traced with torch.onnx + the transformer fusions (old) vs
  the base export's graph with the tuned weights written into its initializers (new); both include the
  parity gate against the tuned PyTorch model;
* ``parity reference``: the tuned PyTorch model on the 18 probe texts as one batch padded to the longest
  (old) vs length-sorted batches of 4 (new);
* ``checkpoint``: what one final-run epoch's checkpoint blocks training: write + fsync (old) vs taking the
  snapshot only, the write overlapping the next epoch (new);
* ``weights file``: the tuned backbone written to ``<home>/finetuned/``: the full state dict (old) vs only the
  trained tensors, a delta over the base weights (new);
* ``graph patch``: the tuned initializers written into the base export: protobuf load + rewrite + save of the
  whole model (old) vs a byte copy with the recorded spans rewritten (new);
* ``patch plan``: where the tuned weights go in the base graph: read the graph and hash the parameters (old)
  vs read the plan kept for this base export (new);
* ``AdamW step``: one optimiser step on the top two blocks: the per-tensor loop (old) vs the fused kernel (new).

Writes benchmarks/results/fewshot_cost.json and prints the table. 1 torch thread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, WORK, loadavg, machine  # noqa: E402


def _tuned(engine: Any, base: Any) -> dict[str, Any]:
    """A state dict of the base module with its top two blocks changed (noise)."""
    import torch

    from headstart.sdk import build_module

    module = build_module(base)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if ".layer.4." in name or ".layer.5." in name:
                p.add_(1e-3 * torch.randn_like(p))
    return module.state_dict()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(RESULTS / "fewshot_cost.json"))
    args = p.parse_args(argv)
    os.environ["HEADSTART_HOME"] = str(WORK / "fewshot-cost" / "home")
    import dataclasses

    import torch

    torch.set_num_threads(1)
    from headstart.engine.backbones.export import export
    from headstart.engine.backbones.parity import PARITY_BATCH, merge_singles, probe_batches
    from headstart.engine.backbones.torch_export import run_module
    from headstart.engine.plugins import get_engine
    from headstart.plugins.finetune.checkpoint import BackgroundWriter, checkpoint_bytes, save_checkpoint
    from headstart.plugins.finetune.finetuned import finetuned_spec, write_finetuned
    from headstart.plugins.finetune.graph_patch import plan_for, write_patched, write_spliced
    from headstart.sdk import build_module, make_preprocessor, resolve_backbone

    engine = get_engine()
    base = resolve_backbone("minilm", engine)
    export(base, "fp32", engine=engine)
    tuned = _tuned(engine, base)
    base_state = {n: v.numpy() for n, v in build_module(base).state_dict().items()}
    patch = plan_for(base, base_state, {n: v.numpy() for n, v in tuned.items()})
    assert patch is not None and patch["plan"], "the MiniLM top blocks could not be placed in the base graph"
    ref, _ = write_finetuned(engine.settings.home / "finetuned", base.name, tuned, {"graph_patch": patch})
    patched = finetuned_spec(ref, engine)
    traced = dataclasses.replace(patched, name=ref + "-traced", export_onnx=None,
                                 extra=tuple(e for e in patched.extra if e[0] not in ("exporter", "graph_optimizer"))
                                 + tuple(e for e in base.extra if e[0] == "graph_optimizer") + (("traced", True),))
    module = build_module(patched)
    singles = probe_batches(patched, make_preprocessor(patched))
    order = sorted(range(len(singles)), key=lambda i: tuple(a.shape for a in singles[i].values()))

    def timed(fn: Callable[[], Any]) -> float:
        started = time.perf_counter()
        fn()
        return time.perf_counter() - started

    optimizer = torch.optim.AdamW([p for n, p in module.named_parameters() if ".layer.4." in n or ".layer.5." in n])
    top = [p for n, p in module.named_parameters() if ".layer.4." in n or ".layer.5." in n]
    adam_old, adam_new = torch.optim.AdamW(top), torch.optim.AdamW(top, fused=True)
    trainable = torch.nn.ParameterDict({n.replace(".", "__"): p for n, p in module.named_parameters()
                                        if ".layer.4." in n or ".layer.5." in n})
    loss = sum(p.sum() for p in trainable.values())
    loss.backward()
    optimizer.step()  # AdamW moments exist, as after a training epoch
    ckpt = Path(tempfile.mkdtemp(dir=WORK))
    writer = BackgroundWriter(ckpt / "bg.safetensors")

    def snapshot() -> bytes:
        return checkpoint_bytes(model=trainable, best={}, optimizer=optimizer, scaler=None, state={"epoch": 1})

    tuned_np = {n: v.numpy() for n, v in tuned.items()}
    delta = {n: v for n, v in tuned.items() if ".layer.4." in n or ".layer.5." in n}
    base_graph = export(base, "fp32", engine=engine).path
    plans = Path(tempfile.mkdtemp(dir=WORK))
    plan_for(base, base_state, tuned_np, cache=plans)  # the kept plan the new way reads
    scratch = Path(tempfile.mkdtemp(dir=WORK))
    for p_ in top:
        p_.grad = torch.zeros_like(p_)
    adam_old.step()
    adam_new.step()
    cases = {
        "export": (lambda: export(traced, "fp32", engine=engine, force=True),
                   lambda: export(patched, "fp32", engine=engine, force=True)),
        "parity reference": (lambda: run_module(module, merge_singles(singles, len(singles))),
                             lambda: run_module(module, merge_singles([singles[i] for i in order], PARITY_BATCH))),
        "checkpoint": (lambda: save_checkpoint(ckpt, model=trainable, best={}, optimizer=optimizer, scaler=None,
                                               state={"epoch": 1}),
                       lambda: writer.submit(snapshot())),
        "weights file": (lambda: write_finetuned(scratch / "full", base.name, tuned, {}),
                         lambda: write_finetuned(scratch / "delta", base.name, delta, {}, delta=True)),
        "graph patch": (lambda: write_patched(base_graph, patch["plan"], tuned_np, scratch / "rewritten.onnx"),
                        lambda: write_spliced(base_graph, patch["plan"], patch["offsets"], tuned_np,
                                              scratch / "spliced.onnx")),
        "patch plan": (lambda: plan_for(base, base_state, tuned_np),
                       lambda: plan_for(base, base_state, tuned_np, cache=plans)),
        "AdamW step": (adam_old.step, adam_new.step),
    }
    rows = []
    for name, (old, new) in cases.items():
        times: dict[str, list[float]] = {"old": [], "new": []}
        for _ in range(args.repeats):
            writer.wait()
            times["old"].append(timed(old))
            writer.wait()
            times["new"].append(timed(new))
        writer.wait()
        rows.append({"step": name, "old_s": round(statistics.median(times["old"]), 3),
                     "new_s": round(statistics.median(times["new"]), 3), "runs": times, "load": loadavg()})
        print(json.dumps(rows[-1]), flush=True)
    data = {"benchmark": "fewshot_cost", "machine": {**machine(), "loadavg_end": loadavg()}, "repeats": args.repeats,
            "rows": rows}
    Path(args.out).write_text(json.dumps(data, indent=1) + "\n")
    import shutil

    for folder in (ckpt, plans, scratch):
        shutil.rmtree(folder, ignore_errors=True)
    print(f"{'step':<18} {'old s':>8} {'new s':>8}")
    for r in rows:
        print(f"{r['step']:<18} {r['old_s']:>8.3f} {r['new_s']:>8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
