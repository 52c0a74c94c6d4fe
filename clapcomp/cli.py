"""`clapcomp <command> ...`: a thin dispatcher; each command lives in the module of its stage.

Every handler is `main(argv: list[str]) -> int` (or the function a "module:function" entry names) and
parses its own flags, so importing the CLI costs nothing and `clapcomp data synth --help` only loads the
data code.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": ("clapcomp.train.loop", "train a model from an ml_collections config"),
    "eval": ("clapcomp.evaluate.run", "evaluate a model on CompA / retrieval / zero-shot data"),
    "export": ("clapcomp.export", "export a model as an HF ClapModel dir, safetensors, StableHLO or ONNX"),
    "embed": ("clapcomp.inference", "embed audio files and texts, print similarities"),
    "classify": ("clapcomp.use.classify", "label audio files: zero-shot prompt ensembles or a linear probe"),
    "search index": ("clapcomp.use.search:index_main", "build or update a FAISS search index over audio files"),
    "search query": ("clapcomp.use.search:query_main", "rank indexed files by a text or an audio query"),
    "search serve": ("clapcomp.use.serve", "a local search page over an index (127.0.0.1)"),
    "probe": ("clapcomp.use.probe", "fit a linear probe on frozen embeddings (for classify --probe)"),
    "demo": ("clapcomp.demo", "train plain CLAP vs CompA on synthetic data and compare"),
    "tower-cache": ("clapcomp.train.locked_tower", "a locked audio tower's outputs per clip, for training"),
    "data build": ("clapcomp.data.build", "manifests / CompA CSV / webdataset -> ArrayRecord"),
    "data synth": ("clapcomp.data.synth", "generate the synthetic compositional dataset"),
    "data compose": ("clapcomp.data.compose", "compose single-event clips into CompA stage-3 data"),
    "data negatives": ("clapcomp.data.llm_negatives", "write composition-aware negatives into a manifest"),
}


def _usage() -> str:
    rows = "\n".join(f"  clapcomp {name:<15} {doc}" for name, (_, doc) in COMMANDS.items())
    return f"usage: clapcomp <command> [flags]\n\ncommands:\n{rows}\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for words in (2, 1):
        name = " ".join(argv[:words])
        if len(argv) >= words and name in COMMANDS:
            module, _, function = COMMANDS[name][0].partition(":")
            return int(getattr(importlib.import_module(module), function or "main")(argv[words:]) or 0)
    sys.stderr.write(_usage())
    return 0 if argv[:1] in (["-h"], ["--help"]) else 2


if __name__ == "__main__":
    sys.exit(main())
