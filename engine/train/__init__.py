"""Training: fit heads on cached features, sweeps, metrics, and fine-tuning orchestration.

``engine.train`` is both this package and the public ``train`` function: importing a submodule
(``engine.train.api``) makes Python bind the package to ``engine.train``, so the package itself
is callable and forwards to :func:`engine.train.api.train`.
"""

import sys
import types
from typing import Any


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from .api import train

        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
