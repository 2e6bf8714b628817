"""Run ``headstart`` the way the contrastive fine-tune ran before its fixed costs were cut (for bench_fewshot_cli.py).

    python benchmarks/_fewshot_cli_before.py finetune TRAIN.csv ...   (same arguments as ``headstart``)

The trainable body is Hugging Face's BertModel again (``transformers`` imported; no plain-PyTorch twin), the
optimiser ``torch.optim.AdamW(fused=True)`` (which imports ``torch._dynamo``), the labelled items are embedded
with the base backbone before the fine-tune, and an unfused graph is copied into place: the code path before
those changes, in a fresh process, for a side-by-side comparison on the same machine at the same time.
"""

from __future__ import annotations

import sys


def main() -> int:
    from headstart.engine.backbones import export
    from headstart.engine.cli import main as cli_main
    from headstart.engine.store.atomic import copy_file_atomic
    from headstart.engine.train import finetune
    from headstart.plugins.finetune import contrastive
    from headstart.sdk import TorchBuilder

    TorchBuilder.plain = lambda self: None  # type: ignore[method-assign]
    finetune._labelled_items = lambda *args: None  # the items are embedded with the base backbone first
    export._move_durably = copy_file_atomic  # an unfused graph is copied into place

    def torch_adamw(groups):  # the optimiser before FusedAdamW
        import torch

        return torch.optim.AdamW(groups, fused=True)

    contrastive._adamw = torch_adamw  # type: ignore[assignment]
    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
