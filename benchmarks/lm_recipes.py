"""The seed tutorial's WikiText-2 recipe against the book's, for the same wall-clock budget.

Both recipes (``utils.lm_recipes.seed_recipe`` and ``book_recipe``; chapter 5.2 explains them)
train side by side in one process, taking turns of about ten seconds, each until its own
training time reaches ``--budget-s`` (the book's schedule is planned to end there). Turns make a
slow patch of a shared machine cost both alike. Then both are evaluated on the **full**
validation split (every token scored once, each model in windows of its own training length),
and the script prints both perplexities and ``book_over_seed_valid_ppl``. JSON with the machine,
versions, settings and results goes to ``results/lm_recipes_<device>.json``.

    python benchmarks/lm_recipes.py                  # 300 s per recipe: ~12 minutes on 2 cores
    python benchmarks/lm_recipes.py --budget-s 600
    python benchmarks/lm_recipes.py --tiny           # seconds: tiny models, a slice of the data
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runs from a checkout without installing it
sys.path.insert(0, str(REPO / "benchmarks"))

from machine import machine_info, write_report  # noqa: E402  (benchmarks/machine.py)

from utils import data  # noqa: E402
from utils import lm_recipes as R  # noqa: E402
from utils.train import resolve_device  # noqa: E402

TARGET_RATIO = 0.7
# The book recipe's model and batches per device (the chapter's `book` and `gpu` profiles).
BOOK = {
    "cpu": dict(
        d_model=192,
        n_layers=2,
        n_heads=3,
        batch_size=16,
        context=64,
        lr=2e-3,
        dropout=0.1,
    ),
    "cuda": dict(
        d_model=512,
        n_layers=6,
        n_heads=8,
        batch_size=32,
        context=256,
        lr=1e-3,
        dropout=0.3,
    ),
    "tiny": dict(
        d_model=32,
        n_layers=1,
        n_heads=2,
        batch_size=4,
        context=16,
        lr=3e-3,
        dropout=0.0,
    ),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--budget-s", type=float, help="training seconds per recipe (300)"
    )
    parser.add_argument(
        "--tiny", action="store_true", help="tiny models, a data slice: seconds"
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument(
        "--threads", type=int, help="torch threads (default: 1 on a CPU)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", help="JSON path (default: results/lm_recipes_<device>.json)"
    )
    args = parser.parse_args(argv)
    if args.budget_s is None:
        args.budget_s = 2.0 if args.tiny else 300.0
    if not args.budget_s > 0:
        parser.error(f"--budget-s must be > 0, got {args.budget_s}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    return args


def load_streams(tiny: bool):
    dataset = data.load_wikitext2()
    splits = {split: dataset[split] for split in ("train", "valid", "test")}
    if tiny:  # a slice of every split: enough to exercise every code path
        splits = {split: lines[:300] for split, lines in splits.items()}
    vocab, streams = R.word_streams(splits)
    return dataset, vocab, streams


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    info = machine_info(device)
    dataset, vocab, streams = load_streams(args.tiny)
    V = len(vocab)
    cutoffs = R.frequency_cutoffs(streams["train"], V)
    book = BOOK["tiny" if args.tiny else device.type]

    seed_run = R.seed_recipe(V, streams["train"], device=str(device), seed=args.seed)
    torch.manual_seed(args.seed)
    model = R.AdaptiveTransformerLM(
        V,
        cutoffs,
        book["d_model"],
        book["n_heads"],
        book["n_layers"],
        book["context"],
        dropout=book["dropout"],
    )
    book_run = R.book_recipe(
        model,
        streams["train"],
        args.budget_s,
        book["batch_size"],
        book["context"],
        book["lr"],
        device=str(device),
        seed=args.seed,
    )
    runs = {"seed": seed_run, "book": book_run}
    start = time.perf_counter()
    R.train_for_budget(runs, args.budget_s, turn_s=min(10.0, args.budget_s / 4))
    wall = time.perf_counter() - start

    valid = R.batchify(streams["valid"], 10)
    results = {}
    for name, run in runs.items():
        chunks = R.eval_chunks(valid, run.context)
        scores = R.perplexity(run.trainer.model, run.loss_fn, chunks, device=device)
        results[name] = {
            "valid_perplexity": scores["perplexity"],
            "valid_tokens_scored": int(scores["n_tokens"]),
            "train_seconds": run.seconds,
            "steps": run.trainer.step,
            "planned_steps": run.planned_steps if name == "book" else None,
            "train_tokens": run.tokens,
            "tokens_per_s": run.tokens / run.seconds,
            "parameters": sum(p.numel() for p in run.trainer.model.parameters()),
        }
        print(
            f"{name:>4}: valid perplexity {scores['perplexity']:8.1f} over "
            f"{int(scores['n_tokens']):,} tokens | {run.trainer.step:,} steps in "
            f"{run.seconds:.0f} s of training"
        )
    ratio = results["book"]["valid_perplexity"] / results["seed"]["valid_perplexity"]
    verdict = "meets" if ratio <= TARGET_RATIO else "MISSES"
    print(
        f"book_over_seed_valid_ppl = {ratio:.3f} ({verdict} the target <= {TARGET_RATIO})"
    )
    report = {
        "what": "valid perplexity of the seed tutorial's vs the book's recipe, same budget",
        "command": " ".join(
            ["python", "benchmarks/lm_recipes.py", *(argv or sys.argv[1:])]
        ),
        "machine": info,
        "data": {
            "source": dataset.describe(),
            "generated_fallback": dataset.generated,
            "sliced_for_tiny": args.tiny,
            "vocab_size": V,
            "tokens": {split: int(s.numel()) for split, s in streams.items()},
            "cutoffs": cutoffs,
        },
        "settings": {
            "budget_s": args.budget_s,
            "tiny": args.tiny,
            "seed": args.seed,
            "book_recipe": book,
        },
        "wall_seconds": wall,
        "results": results,
        "book_over_seed_valid_ppl": ratio,
        "target_ratio": TARGET_RATIO,
    }
    default = (
        REPO
        / "results"
        / f"lm_recipes_{device.type}{'_tiny' if args.tiny else ''}.json"
    )
    write_report(report, Path(args.out) if args.out else default)
    return 0


if __name__ == "__main__":
    sys.exit(main())
