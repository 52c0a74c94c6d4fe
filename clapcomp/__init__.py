"""clapcomp: composition-aware CLAP (CompA) audio-text dual encoders in JAX / Flax NNX.

`clapcomp.load(path)` returns a ready-to-use model with `embed_audio`, `embed_text` and
`embed_tokens`. Importing this package is cheap: heavy modules load on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"


def load(path, **kwargs):
    """Load an HF ClapModel dir, a clapcomp export, or a clapcomp training workdir for inference."""
    from clapcomp.inference import load as _load

    return _load(path, **kwargs)


def __getattr__(name):
    if name == "losses":
        import importlib

        return importlib.import_module("clapcomp.losses")
    raise AttributeError(f"module 'clapcomp' has no attribute {name!r}")
