"""Run ``headstart`` the way the contrastive fine-tune ran before (for bench_fewshot_cli.py).

    python benchmarks/_fewshot_cli_paths.py PATH finetune TRAIN.csv ...   (then the same arguments as ``headstart``)

PATH ``torch``: the PyTorch body (the plain-PyTorch BERT twin, torch's fused AdamW kernel), as before the numpy
body: the backbone's numpy twin is withheld. PATH ``before``: as it was before the fixed costs were cut as well:
the trainable body is Hugging Face's BertModel again (``transformers`` imported; no plain-PyTorch twin), the
optimiser ``torch.optim.AdamW(fused=True)`` (which imports ``torch._dynamo``), the labelled items are embedded
with the base backbone before the fine-tune, and an unfused graph is copied into place. Each a code path of an
earlier version, in a fresh process, for a side-by-side comparison on the same machine at the same time.
"""

from __future__ import annotations

import sys

PATHS = ("torch", "before")


def main() -> int:
    from headstart.engine.cli import main as cli_main
    from headstart.sdk import TorchBuilder

    path, args = sys.argv[1], sys.argv[2:]
    if path not in PATHS:
        raise SystemExit(f"PATH must be one of {PATHS}, not {path!r}")
    TorchBuilder.numpy = lambda self: None  # type: ignore[method-assign]
    if path == "before":
        from headstart.engine.backbones import export
        from headstart.engine.store.atomic import copy_file_atomic
        from headstart.engine.train import finetune
        from headstart.plugins.finetune import adamw

        TorchBuilder.plain = lambda self: None  # type: ignore[method-assign]
        finetune._labelled_items = lambda *args: None  # the items are embedded with the base backbone first
        export._move_durably = copy_file_atomic  # an unfused graph is copied into place

        def torch_adamw(groups):  # the optimiser before FusedAdamW
            import torch

            return torch.optim.AdamW(groups, fused=True)

        adamw.FusedAdamW = torch_adamw  # type: ignore[assignment, misc]
    return cli_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
