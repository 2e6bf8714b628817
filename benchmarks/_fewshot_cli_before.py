"""Run ``headstart`` the way the contrastive fine-tune ran before its fixed costs were cut (for bench_fewshot_cli.py).

    python benchmarks/_fewshot_cli_before.py finetune TRAIN.csv ...   (same arguments as ``headstart``)

The trainable body is Hugging Face's BertModel again (``transformers`` imported; no plain-PyTorch twin) and the
optimiser is ``torch.optim.AdamW(fused=True)`` (which imports ``torch._dynamo``): the code path of the commit
before those changes, in a fresh process, for a side-by-side comparison on the same machine at the same time.
"""

from __future__ import annotations

import sys


def main() -> int:
    from headstart.engine.cli import main as cli_main
    from headstart.plugins.finetune import bert_body, contrastive

    bert_body.TorchBuilder.plain = lambda self: None  # type: ignore[method-assign]

    def torch_adamw(groups):  # the optimiser before FusedAdamW
        import torch

        return torch.optim.AdamW(groups, fused=True)

    contrastive._adamw = torch_adamw  # type: ignore[assignment]
    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
