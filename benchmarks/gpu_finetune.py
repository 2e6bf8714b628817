"""GPU check for issue 6: mixed-precision fine-tuning throughput and the fine-tuned export's parity.

Run on the GPU machine from the project root (onnxruntime-gpu site first on PYTHONPATH, as for
benchmarks/gpu_backbones.py):

    PYTHONPATH=~/.hs-gpu/ortsite:. HEADSTART_HOME=$OUT/home python benchmarks/gpu_finetune.py --out $OUT/gpu_finetune.json

1. Training-step throughput of minilm-l6 + linear head on CUDA in fp32, bf16 and fp16 (autocast;
   fp16 with a grad scaler), the same step code the ``torch`` finetuner runs: items/s over timed steps
   after warm-up, and whether the loss stayed finite.
2. ``finetune(..., device="cuda", precision="bf16")`` for one epoch on the benchmark task, then the
   parity figures of its export (against the fine-tuned PyTorch model) and ``evaluate`` on onnxruntime.
Exits non-zero if CUDA is missing, a loss is not finite, or parity misses the fp32 gate.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path


def step_throughput(precision: str, batch: int, steps: int, seq: int) -> dict:
    import torch

    from headstart.engine.backbones.preprocess import make_preprocessor
    from headstart.engine.backbones.resolve import resolve_backbone
    from headstart.engine.backbones.torch_export import build_module

    spec = resolve_backbone("minilm-l6")
    backbone = build_module(spec).cuda().train()
    head = torch.nn.Linear(spec.dim, 2).cuda()
    pre = make_preprocessor(spec)
    texts = [" ".join(["payment refund card fraud"] * (seq // 4))] * batch
    inputs = {k: torch.from_numpy(v).cuda() for k, v in pre.collate(pre.prepare_many(texts)).items()}
    y = torch.randint(0, 2, (batch,), device="cuda")
    params = list(backbone.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-5)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    losses = []

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(head(backbone(**inputs)).float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(float(loss.detach()))

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"precision": precision, "batch": batch, "tokens": int(inputs["input_ids"].shape[1]), "steps": steps,
            "items_per_second": round(batch * steps / seconds, 1), "finite": all(math.isfinite(v) for v in losses),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}


def finetune_check(work: Path) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_finetune import write_task

    from headstart.engine.train.api import evaluate
    from headstart.engine.train.finetune import FinetuneOptions, finetune

    train = write_task(work / "train.csv", 2000, 0)
    test = write_task(work / "test.csv", 500, 1)
    start = time.perf_counter()
    result = finetune(str(train), "minilm-l6", "linear", out=work / "model",
                      options=FinetuneOptions(epochs=1, lr=1e-4, batch_size=64, device="cuda", precision="bf16"))
    seconds = time.perf_counter() - start
    summary = result.summary()
    return {"seconds": round(seconds, 1), "frozen": summary["frozen"], "finetuned": summary["finetuned"],
            "test_accuracy": evaluate(result.path, str(test))["accuracy"], "parity": summary["export"]["parity"],
            "train_items_per_second": summary["info"]["train_items_per_second"], "device": summary["info"]["device"]}


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/gpu_finetune.json")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seq", type=int, default=128)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU visible to torch", file=sys.stderr)
        return 1
    report: dict = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "steps": []}
    for precision in ("fp32", "bf16", "fp16"):
        row = step_throughput(precision, args.batch, args.steps, args.seq)
        report["steps"].append(row)
        print(json.dumps(row))
    with tempfile.TemporaryDirectory() as work:
        report["finetune"] = finetune_check(Path(work))
    print(json.dumps(report["finetune"]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    parity = report["finetune"]["parity"]
    ok = all(r["finite"] for r in report["steps"]) and parity["min_cosine"] >= 0.9999 and parity["max_abs_diff"] <= 1e-4
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
