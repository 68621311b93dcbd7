"""The networks: ResNet/FPN branches, GLNet with its sharing modes, losses.

:func:`fold_batch_norm` is re-exported here, imported lazily like the package's public API.
"""

from __future__ import annotations

from glmed._lazy import lazy_exports

_EXPORTS = {
    "fold_batch_norm": "glmed.models.folding",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
