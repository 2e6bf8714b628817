"""GPU check for issue 3 (acceptance 5): CUDA provider really active, throughput and parity vs PyTorch.

Run on the GPU machine from the project root (see ../shared/gpu/README.md for bringing
onnxruntime-gpu over; put its site folder first on PYTHONPATH):

    PYTHONPATH=~/.hs-gpu/ortsite:. HEADSTART_HOME=$OUT/home python benchmarks/gpu_backbones.py --out $OUT/gpu_backbones.json

Prints, per backbone and precision: the providers the session got, items/s of the
headstart ONNX path and of PyTorch on the same prepared batches, and min cosine between them.
Exits non-zero if CUDA was not really used or parity misses.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def _texts(n: int) -> list[str]:
    import numpy as np

    rng = np.random.default_rng(0)
    vocab = ("refund card fraud payment login password delivery late broken screen bank transfer the a of to and "
             "is suspicious account locked thanks help urgent").split()
    return [" ".join(rng.choice(vocab, size=int(rng.integers(5, 40)))) for _ in range(n)]


def _images(n: int) -> list[bytes]:
    from headstart.engine.backbones.probes import probe_images

    base = probe_images()
    return [base[i % len(base)] for i in range(n)]


def check(name: str, precision: str, items: list, batch: int) -> dict:
    import numpy as np
    import torch

    from headstart.engine.backbones.export import export
    from headstart.engine.backbones.preprocess import make_preprocessor
    from headstart.engine.backbones.runtime import Encoder
    from headstart.engine.backbones.torch_export import build_module

    exported = export(name, precision)
    pre = make_preprocessor(exported.spec)
    prepared = pre.prepare_many(items)
    order = np.argsort([pre.length(p) for p in prepared], kind="stable")
    batches = [pre.collate([prepared[j] for j in order[i:i + batch]]) for i in range(0, len(items), batch)]
    enc = Encoder(exported, device="cuda")
    enc.run(batches[0])  # warm-up
    t = time.perf_counter()
    ours = np.concatenate([enc.run(b) for b in batches])
    ort_rate = len(items) / (time.perf_counter() - t)

    module = build_module(exported.spec).cuda()
    dtype = torch.float16 if precision == "fp16" else torch.float32
    module = module.to(dtype)
    with torch.inference_mode():
        def run(b):
            return module(**{k: (torch.from_numpy(v).cuda().to(dtype) if v.dtype == np.float32
                                 else torch.from_numpy(v).cuda()) for k, v in b.items()}).float()
        run(batches[0])
        torch.cuda.synchronize()
        t = time.perf_counter()
        theirs = torch.cat([run(b) for b in batches]).cpu().numpy()
        torch.cuda.synchronize()
    torch_rate = len(items) / (time.perf_counter() - t)
    cos = (ours * theirs).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1) + 1e-12)
    return {"backbone": name, "precision": precision, "providers": enc.providers, "device": enc.device,
            "items": len(items), "batch": batch, "onnxruntime_items_per_s": round(ort_rate, 1),
            "torch_items_per_s": round(torch_rate, 1), "min_cosine_vs_torch": float(cos.min()),
            "export_parity": exported.parity}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--n-texts", type=int, default=20000)
    parser.add_argument("--n-images", type=int, default=2048)
    args = parser.parse_args()
    import torch  # loads CUDA libraries for onnxruntime-gpu as well

    assert torch.cuda.is_available(), "no CUDA device visible to torch"
    results, ok = [], True
    for name, precision, items, batch, need in [
        ("minilm-l6", "fp32", _texts(args.n_texts), 512, 0.9999),
        ("minilm-l6", "fp16", _texts(args.n_texts), 512, 0.999),
        ("efficientnet-lite0", "fp32", _images(args.n_images), 256, 0.9999),
        ("efficientnet-lite0", "fp16", _images(args.n_images), 256, 0.999),
    ]:
        try:
            r = check(name, precision, items, batch)
            r["ok"] = r["device"] == "cuda" and r["min_cosine_vs_torch"] >= need
        except Exception as exc:  # noqa: BLE001 - report every row, then fail
            r = {"backbone": name, "precision": precision, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        ok &= r["ok"]
        results.append(r)
        print(json.dumps(r), flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
