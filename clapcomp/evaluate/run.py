"""`clapcomp eval`: evaluate one or more models on CompA / retrieval / zero-shot data.

    clapcomp eval --model ckpt/ --benchmark compa --data order.csv --data attribute.csv --out report/
    clapcomp eval --model plain=runs/plain --model CompA=runs/compa --benchmark compa --data order.csv

`--model [NAME=]PATH` (repeatable; NAME defaults to the folder name) is loaded with
`clapcomp.load`; each `--data` file is one benchmark named after its file stem. Prints a table
(CompA: text / audio / group and their chance level; retrieval: R@1/5/10 and mAP@10 per
direction; zero-shot: top-1 and mAP); with `--out` writes results.json and PNG plots
(`report.write_report`).

`EVALUATORS[name](embedder, **kwargs)` is what the trainer calls for each entry of
`config.evaluators`, e.g. `[dict(name="compa", label="order", kwargs=dict(data="order.csv"))]`;
`headline(result)` gives the numbers it logs as `eval/<label>/<metric>`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clapcomp.evaluate.compa import evaluate_compa
from clapcomp.evaluate.retrieval import evaluate_retrieval
from clapcomp.evaluate.zeroshot import DEFAULT_TEMPLATE, evaluate_zeroshot

EVALUATORS = {"compa": evaluate_compa, "retrieval": evaluate_retrieval, "zeroshot": evaluate_zeroshot}


def headline(result: dict) -> dict[str, float]:
    """The few numbers worth a table column, from any evaluator's result."""
    kind = result["benchmark"]
    if kind == "compa":
        out = {f"{k}": result["pairs"][k] for k in ("text", "audio", "group")}
        if "triplets" in result:
            out.update({f"3way_{k}": result["triplets"]["three_way"][k] for k in ("text", "audio", "group")})
        return out
    if kind == "retrieval":
        return {
            f"{short}_{m}": result[d][m]
            for short, d in (("t2a", "text_to_audio"), ("a2t", "audio_to_text"))
            for m in ("R@1", "R@5", "R@10", "mAP@10")
        }
    return {"top1": result["top1"], "mAP": result["mAP"]}


def format_table(results: dict[str, dict[str, dict]]) -> str:
    """Plain-text table: one line per (model, benchmark)."""
    lines = []
    for model, benches in results.items():
        for bench, res in benches.items():
            cells = "  ".join(f"{k}={v:5.1f}" for k, v in headline(res).items())
            lines.append(f"{model:<16} {bench:<16} {cells}")
    chance = next(
        (
            res["pairs"]["chance"]
            for benches in results.values()
            for res in benches.values()
            if res["benchmark"] == "compa"
        ),
        None,
    )
    if chance:
        lines.append(
            f"{'chance':<33} "
            + "  ".join(f"{k}={v:5.1f}" for k, v in chance.items())
            + "  (random similarities; a tie counts as a failure, so a model that cannot tell the"
            " captions apart scores near 0, not at chance)"
        )
    return "\n".join(lines)


def _parse_model(spec: str) -> tuple[str, str]:
    name, sep, path = spec.partition("=")
    if not sep:
        path = spec
        name = Path(spec.rstrip("/")).name or spec
    if not name or not path:
        raise SystemExit(f"--model {spec!r}: expected PATH or NAME=PATH")
    return name, path


def _bench_names(paths: list[str]) -> list[str]:
    stems = [Path(p).stem for p in paths]
    return [s if stems.count(s) == 1 else f"{s}_{i}" for i, s in enumerate(stems)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clapcomp eval", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="[NAME=]PATH",
        help="model to evaluate (HF dir, clapcomp export or workdir); repeat to compare",
    )
    parser.add_argument("--benchmark", required=True, choices=sorted(EVALUATORS))
    parser.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="FILE",
        help="compa: CompA CSV; retrieval: CSV audio,caption or JSONL; zeroshot: CSV audio,label",
    )
    parser.add_argument("--out", help="write results.json and PNG plots here")
    parser.add_argument("--template", default=DEFAULT_TEMPLATE, help="zero-shot prompt, must contain {label}")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--max-seconds", type=float, default=600.0, help="refuse longer audio files (checked from the header)"
    )
    parser.add_argument("--step", type=int, help="for a training workdir: this checkpoint step (default: the newest)")
    args = parser.parse_args(argv)

    import clapcomp

    for d in args.data:
        if not Path(d).is_file():
            parser.error(f"--data {d!r} does not exist")
    models = [_parse_model(m) for m in args.model]
    if len({n for n, _ in models}) != len(models):
        parser.error("two --model entries have the same name; name them NAME=PATH")
    kwargs = {"batch_size": args.batch_size, "max_seconds": args.max_seconds}
    if args.benchmark == "zeroshot":
        kwargs["template"] = args.template
    evaluate = EVALUATORS[args.benchmark]
    results: dict[str, dict[str, dict]] = {}
    for name, path in models:
        embedder = clapcomp.load(path, step=args.step)
        try:
            results[name] = {
                b: evaluate(embedder, data=d, **kwargs) for b, d in zip(_bench_names(args.data), args.data, strict=True)
            }
        except (ValueError, FileNotFoundError) as e:  # a bad benchmark file or an audio file refused by its header
            print(f"clapcomp eval: {e}", file=sys.stderr)
            return 1

    print(format_table(results))
    if args.out:
        from clapcomp.evaluate.report import write_report

        paths = write_report([results], args.out)
        print(f"wrote {len(paths)} files to {args.out}: " + ", ".join(p.name for p in paths))
    return 0
