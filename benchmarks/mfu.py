"""Model-FLOPs utilisation (MFU) of the book's training loop, against this machine's own peak.

MFU = model FLOPs per token x tokens per second / peak FLOP/s. Here:

- **model FLOPs per token** are ``utils.models.flops_per_token(N, n_layers, d_model, T,
  vocab_size=V)``: ``3 x (2·N + 2·n_layers·T·d_model + 2·d_model·V)``, i.e. the non-embedding
  weights (6·N), causal attention scores and weighted values (Kaplan et al.'s count: the causal
  half of the T x T matrix) and the output layer, forward plus backward (x 3). LayerNorm, GELU,
  softmax, AdamW and the other element-wise work are *not* model FLOPs: they cost time but count
  for nothing, which is exactly what MFU is meant to expose. The JSON also records the
  ``attention="dense"`` count (PaLM's convention: the whole T x T matrix), which is higher;
- **tokens per second** come from ``utils.train.Trainer.fit`` with ``lm_loss``, AdamW, warm-up +
  cosine and gradient clipping: the loop chapter 5.5 trains its ladder of models with, on
  the chapter's shapes (``utils.scaling.LADDER``) and a few larger ones, fed random token ids
  (the content of the tokens does not change the work);
- the **peak** is not a datasheet figure but what this machine does on the most favourable
  operation there is: large square fp32 matrix products (bf16 on a GPU), timed in the same run,
  with the same threads, *interleaved* with the training segments: each repeat measures the peak,
  then one segment of every size (in alternating order), so that a machine getting faster or
  slower (other programs, turbo, thermal limits) moves numerator and denominator together. The
  MFU of a size is the median over repeats of segment FLOP/s / that repeat's peak.

Also recorded: a torch.profiler breakdown of one training step of the chapter's largest size
(time in matrix products, fused attention, LayerNorm, GELU, softmax/cross-entropy, the optimizer,
and the rest, with the FLOP/s the matrix products themselves reach), which says what keeps MFU
below 1. Writes ``results/mfu_<device>.json``.

    python benchmarks/mfu.py                  # CPU: the chapter's settings, 1 and all threads
    python benchmarks/mfu.py --tiny           # seconds: a smoke run (numbers mean nothing)
    python benchmarks/mfu.py --device cuda    # bf16 + torch.compile, GPU-sized models (untested)
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runs from a checkout without installing it
sys.path.insert(0, str(REPO / "benchmarks"))

from machine import machine_info, synchronize, write_report  # noqa: E402  (benchmarks/machine.py)

from utils import optim, train  # noqa: E402
from utils.benchmark import interleaved_times  # noqa: E402
from utils.models import count_parameters, flops_breakdown  # noqa: E402
from utils.scaling import LADDER, ModelShape, ladder_model  # noqa: E402

TARGET_MFU = 0.40  # on a CPU, at the chapter's largest size
LARGEST = LADDER[-1]
EXTRA = {"d256-L4": ModelShape(256, 4, 8), "d384-L4": ModelShape(384, 4, 6)}
GPU_EXTRA = {"d512-L8": ModelShape(512, 8, 8), "d1024-L12": ModelShape(1024, 12, 16)}
SHAPES = {s.name: s for s in (*LADDER, *EXTRA.values(), *GPU_EXTRA.values())}
# Defaults per mode. CPU: the chapter's book-profile settings (97 characters, T=128, B=16).
DEFAULTS = {
    "cpu": dict(sizes="d64-L3,d128-L4,d192-L4,d256-L4,d384-L4", threads="1,all", vocab=97,
                context=128, batch_size=16, steps=3, repeats=7, warmup=2, peak_n=2048,
                peak_reps=4),
    "cuda": dict(sizes="d192-L4,d512-L8,d1024-L12", threads="all", vocab=32768, context=1024,
                 batch_size=16, steps=20, repeats=5, warmup=10, peak_n=8192, peak_reps=10),
    "tiny": dict(sizes="d32-L2,d48-L2", threads="1", vocab=64, context=32, batch_size=4,
                 steps=1, repeats=2, warmup=1, peak_n=256, peak_reps=2),
}  # fmt: skip


# --------------------------------------------------------------------------- measurements


def matmul_peak(
    n: int, reps: int, dtype: torch.dtype, device: torch.device
) -> list[float]:
    """FLOP/s of ``reps`` products of two n x n matrices (2·n³ FLOPs each), after one warm-up."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    out = torch.empty(n, n, dtype=dtype, device=device)
    seconds = interleaved_times(
        {"mm": lambda: torch.mm(a, b, out=out)}, repeats=reps, warmup=1, device=device
    )["mm"]
    return [2.0 * n**3 / s for s in seconds]


def model_flops(model, shape: ModelShape, args) -> dict[str, float]:
    """Training FLOPs per token, Kaplan's causal attention count and PaLM's dense one."""
    n_params = count_parameters(model, exclude="embedding")
    common = (n_params, shape.n_layers, shape.d_model, args.context)
    kaplan = flops_breakdown(*common, vocab_size=args.vocab, attention="kaplan")
    dense = flops_breakdown(*common, vocab_size=args.vocab, attention="dense")
    return {
        "non_embedding_params": n_params,
        "per_token": kaplan["total"],
        "per_token_dense_attention": dense["total"],
        "share_weights": kaplan["weights"] / kaplan["forward"],
        "share_attention": kaplan["attention"] / kaplan["forward"],
        "share_lm_head": kaplan["lm_head"] / kaplan["forward"],
    }


class TrainingLoop:
    """``Trainer.fit`` on one model, continued for ``n_steps`` more steps at each call."""

    def __init__(self, shape: ModelShape, args, device: torch.device, total_steps: int):
        torch.manual_seed(0)
        self.model = ladder_model(shape, args.vocab, args.context)
        self.flops = model_flops(self.model, shape, args)
        optimizer = torch.optim.AdamW(
            optim.decay_groups(self.model, 0.1), lr=1e-3, betas=(0.9, 0.95)
        )
        schedule = optim.warmup_cosine(optimizer, 1, total_steps, min_lr_ratio=0.1)
        config = train.TrainConfig(
            max_steps=total_steps,
            precision=args.precision,
            compile=args.compile,
            seed=None,
            device=str(device),
            progress=False,
        )
        self.trainer = train.Trainer(
            self.model, optimizer, train.lm_loss, config, schedule
        )
        generator = torch.Generator().manual_seed(0)
        shape_ids = (args.batch_size, args.context + 1)
        self.pool = [
            torch.randint(0, args.vocab, shape_ids, generator=generator)
            for _ in range(8)
        ]

    def batch_at(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.pool[i % len(self.pool)]
        return tokens[:, :-1], tokens[:, 1:]

    def run(self, n_steps: int) -> None:
        self.trainer.config.max_steps = self.trainer.step + n_steps
        self.trainer.fit(self.batch_at)


def measure(threads: int, args, device: torch.device) -> dict:
    """Interleaved peak bursts and training segments for every size, at one thread count."""
    if device.type == "cpu":
        torch.set_num_threads(threads)
    dtype = torch.float32 if args.precision == "fp32" else torch.bfloat16
    total_steps = args.warmup + args.repeats * args.steps + 1
    loops = {
        name: TrainingLoop(SHAPES[name], args, device, total_steps)
        for name in args.sizes
    }
    for (
        loop
    ) in loops.values():  # warm-up: allocator, autotuning, compilation; not timed
        loop.run(args.warmup)
        synchronize(device)
    matmul_peak(args.peak_n, 1, dtype, device)
    tokens = args.steps * args.batch_size * args.context
    peaks, rates = [], {name: [] for name in loops}
    for repeat in range(args.repeats):
        peaks.append(
            statistics.median(matmul_peak(args.peak_n, args.peak_reps, dtype, device))
        )
        for name in args.sizes if repeat % 2 == 0 else args.sizes[::-1]:
            synchronize(device)
            start = time.perf_counter()
            loops[name].run(args.steps)
            synchronize(device)
            rates[name].append(tokens / (time.perf_counter() - start))
    sizes = {}
    for name, loop in loops.items():
        per_token = loop.flops["per_token"]
        paired = [per_token * r / p for r, p in zip(rates[name], peaks, strict=True)]
        sizes[name] = {
            "shape": vars(SHAPES[name]) | {"name": name},
            "flops": loop.flops,
            "tokens_per_s_median": statistics.median(rates[name]),
            "model_flops_per_s_median": per_token * statistics.median(rates[name]),
            "mfu": statistics.median(paired),
            "mfu_dense_attention": statistics.median(paired)
            * loop.flops["per_token_dense_attention"]
            / per_token,
            "mfu_per_repeat": paired,
            "tokens_per_s_per_repeat": rates[name],
        }
    return {
        "threads": threads,
        "peak_flops_median": statistics.median(peaks),
        "peak_flops_per_repeat": peaks,
        "sizes": sizes,
    }


# --------------------------------------------------------------------------- where time goes

CATEGORIES = {  # aten op name -> category (self time); anything else is "other element-wise"
    "matrix products": (
        "aten::mm",
        "aten::addmm",
        "aten::bmm",
        "aten::baddbmm",
        "aten::matmul",
    ),
    "fused attention": ("scaled_dot_product", "flash_attention"),
    "LayerNorm": ("layer_norm",),
    "GELU": ("gelu",),
    "softmax and cross-entropy": ("log_softmax", "nll_loss", "cross_entropy"),
    "optimizer and clipping": ("_foreach", "_fused_adam", "clip_grad", "norm"),
    "embedding": ("embedding",),
}


def _category(op_name: str) -> str:
    for category, keys in CATEGORIES.items():
        if any(key in op_name for key in keys):
            return category
    return "other element-wise and copies"


def time_breakdown(name: str, args, device: torch.device, threads: int) -> dict:
    """Self-time shares of one profiled training step of ``name``, and the matmuls' FLOP/s."""
    from torch.profiler import ProfilerActivity, profile

    if device.type == "cpu":
        torch.set_num_threads(threads)
    loop = TrainingLoop(SHAPES[name], args, device, total_steps=args.warmup + 3)
    loop.run(args.warmup)
    activities = [ProfilerActivity.CPU] + (
        [ProfilerActivity.CUDA] if device.type == "cuda" else []
    )
    with profile(activities=activities, with_flops=True) as prof:
        loop.run(2)
        synchronize(device)
    by_category: dict[str, float] = collections.defaultdict(float)
    by_op: dict[str, float] = {}
    mm_time = mm_flops = 0.0
    for event in prof.key_averages():
        self_us = (
            event.self_device_time_total
            if device.type == "cuda"
            else event.self_cpu_time_total
        )
        category = _category(event.key)
        by_category[category] += self_us
        by_op[event.key] = self_us
        if category == "matrix products":
            mm_time += self_us
            mm_flops += event.flops or 0
    total = sum(by_category.values())
    shares = {
        k: v / total for k, v in sorted(by_category.items(), key=lambda kv: -kv[1])
    }
    return {
        "size": name,
        "threads": threads,
        "steps_profiled": 2,
        "time_share": shares,
        "top_ops_time_share": {
            k: v / total for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])[:12]
        },
        "matrix_products_flops_per_s": mm_flops / (mm_time * 1e-6) if mm_time else None,
    }


# --------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Model-FLOPs utilisation of the book's training loop vs a measured peak.",
        epilog="Defaults per mode: " + json.dumps(DEFAULTS),
    )
    parser.add_argument(
        "--device", default="auto", help="auto | cpu | cuda (default: auto)"
    )
    parser.add_argument(
        "--tiny", action="store_true", help="tiny models, few steps: seconds"
    )
    parser.add_argument(
        "--sizes", help="comma-separated shapes from: " + ",".join(SHAPES)
    )
    parser.add_argument(
        "--threads", help="comma-separated CPU thread counts; 'all' = cores"
    )
    for name in (
        "vocab",
        "context",
        "batch_size",
        "steps",
        "repeats",
        "warmup",
        "peak_n",
    ):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int)
    parser.add_argument(
        "--peak-reps", type=int, help="matrix products per peak measurement"
    )
    parser.add_argument(
        "--no-compile", action="store_true", help="CUDA: skip torch.compile"
    )
    parser.add_argument(
        "--no-profile", action="store_true", help="skip the time breakdown"
    )
    parser.add_argument("--out", help="JSON path (default: results/mfu_<device>.json)")
    return parser.parse_args(argv)


def resolve_settings(
    args: argparse.Namespace, device: torch.device
) -> argparse.Namespace:
    preset = DEFAULTS[
        "tiny" if args.tiny else device.type if device.type == "cuda" else "cpu"
    ]
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.sizes = args.sizes.split(",") if isinstance(args.sizes, str) else args.sizes
    unknown = [s for s in args.sizes if s not in SHAPES]
    if unknown:
        raise SystemExit(f"unknown sizes {unknown}; choose from {list(SHAPES)}")
    cores = os.cpu_count() or 1
    threads = str(args.threads).replace("all", str(cores)).split(",")
    args.threads = sorted({int(t) for t in threads})
    if any(t < 1 for t in args.threads):
        raise SystemExit(f"--threads must be >= 1, got {args.threads}")
    args.precision = "bf16" if device.type == "cuda" else "fp32"
    args.compile = device.type == "cuda" and not args.no_compile
    return args


def main(argv: list[str] | None = None) -> int:
    threads_before = torch.get_num_threads()
    try:
        return run_benchmark(argv)
    finally:
        torch.set_num_threads(
            threads_before
        )  # in-process callers (tests) keep their threads


def run_benchmark(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = train.resolve_device(args.device)
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"device {device} is not supported (cpu or cuda)")
    args = resolve_settings(args, device)
    info = machine_info(device)
    runs = []
    for threads in args.threads if device.type == "cpu" else [torch.get_num_threads()]:
        run = measure(threads, args, device)
        runs.append(run)
        print(
            f"threads {threads}: measured peak {run['peak_flops_median'] / 1e9:,.1f} GFLOP/s"
        )
        for name, size in run["sizes"].items():
            print(
                f"  {name:>10}: N = {size['flops']['non_embedding_params']:>10,}, "
                f"{size['tokens_per_s_median']:>9,.0f} tokens/s, "
                f"{size['model_flops_per_s_median'] / 1e9:>7,.1f} GFLOP/s, MFU {size['mfu']:.1%}"
            )
    best = max(runs, key=lambda r: r["sizes"].get(LARGEST.name, {}).get("mfu", -1))
    largest = best["sizes"].get(LARGEST.name)
    if largest is not None and device.type == "cpu" and not args.tiny:
        verdict = "meets" if largest["mfu"] >= TARGET_MFU else "MISSES"
        print(
            f"chapter's largest size {LARGEST.name}: MFU {largest['mfu']:.1%} with "
            f"{best['threads']} threads ({verdict} the {TARGET_MFU:.0%} target)"
        )
    breakdown = None
    if not args.no_profile:
        name = LARGEST.name if LARGEST.name in args.sizes else args.sizes[-1]
        breakdown = time_breakdown(name, args, device, best["threads"])
        shares = ", ".join(f"{k} {v:.0%}" for k, v in breakdown["time_share"].items())
        print(
            f"where the time of a {name} step goes ({best['threads']} threads): {shares}"
        )
        if breakdown["matrix_products_flops_per_s"]:
            rate = breakdown["matrix_products_flops_per_s"]
            print(
                f"  the matrix products alone run at {rate / 1e9:,.1f} GFLOP/s "
                f"({rate / best['peak_flops_median']:.0%} of the measured peak)"
            )
    if device.type == "cuda":
        info["datasheet_peak_flops"] = train.peak_flops_for(
            torch.cuda.get_device_name(device)
        )
    report = {
        "what": "model-FLOPs utilisation of utils.train.Trainer vs a measured matmul peak",
        "command": " ".join(["python", "benchmarks/mfu.py", *(argv or sys.argv[1:])]),
        "flops_convention": "utils.models.flops_per_token(N_non_embedding, n_layers, d_model, "
        "context, vocab_size): 3 x (2N + 2 n_layers T d + 2 d V)",
        "machine": info,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "device")},
        "target_mfu": TARGET_MFU,
        "largest_chapter_size": LARGEST.name,
        "runs": runs,
        "time_breakdown": breakdown,
    }
    write_report(
        report,
        Path(args.out) if args.out else REPO / "results" / f"mfu_{device.type}.json",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
