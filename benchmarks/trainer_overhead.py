"""How much does ``utils.train.Trainer`` cost on top of a bare training loop?

Loops compared, each on its own copy of one ``utils.models.TransformerLM`` initialisation, with the
same optimizer (AdamW), schedule (warm-up + cosine), gradient clipping, autocast setting,
GradScaler (fp16), optional ``torch.compile``, and identical batches:

- ``bare``: the nanoGPT-style minimum (forward, cross-entropy, backward, clip, step, zero_grad),
  no bookkeeping at all;
- ``trainer``: ``Trainer.fit`` with ``lm_loss`` (which also computes next-token accuracy),
  recording its history as it does in the book;
- ``trainer_ce``: ``Trainer.fit`` with the bare loop's plain cross-entropy as its loss function,
  to separate the cost of the Trainer from that of the accuracy metric;
- ``bare_again``: a second bare loop, the A/A control: its ratio to ``bare`` shows how large a
  difference this machine's noise alone produces.

Honest measurement: an untimed warm-up for every loop; then timed segments of ``--steps``
optimizer steps, interleaved (A B C D, then D C B A, ...) so that drift in the machine's speed hits
every loop alike; each segment starts and ends with the device idle (synchronised); medians over
``--repeats`` segments; a fixed ``torch.set_num_threads``. On a CPU it also reports rates by the
process's CPU time, which other programs on a shared machine disturb less than the wall clock.
Result: tokens/s per loop and the ratio Trainer / bare (target: >= 0.95), printed and written as
JSON to ``results/trainer_overhead_<device>.json``.

    python benchmarks/trainer_overhead.py             # CPU here (fp32); on a GPU bf16 and fp16
    python benchmarks/trainer_overhead.py --quick     # a few seconds: a smoke run
    python benchmarks/trainer_overhead.py --device cuda --configs bf16,fp16,bf16+compile
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runs from a checkout without installing it
sys.path.insert(0, str(REPO / "benchmarks"))

from machine import machine_info, synchronize, write_report  # noqa: E402  (benchmarks/machine.py)

from utils import optim, train  # noqa: E402
from utils.models import TransformerLM  # noqa: E402

LOOPS = ("bare", "trainer", "trainer_ce", "bare_again")
TARGET_RATIO = 0.95
# Defaults per device: (vocab, d_model, heads, layers, seq_len, batch_size, steps, repeats, warmup)
DEFAULTS = {
    "cpu": dict(vocab=4096, d_model=128, heads=4, layers=2, seq_len=64, batch_size=16,
                steps=5, repeats=21, warmup=3),
    "cuda": dict(vocab=32768, d_model=512, heads=8, layers=8, seq_len=512, batch_size=16,
                 steps=50, repeats=9, warmup=20),
    "quick": dict(vocab=512, d_model=64, heads=4, layers=1, seq_len=32, batch_size=8,
                  steps=5, repeats=5, warmup=2),
}  # fmt: skip


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy: logits [B, T, V] (softmax in fp32), targets [B, T]."""
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1)
    )


def cross_entropy_loss(model, batch):
    """The bare loop's loss with the Trainer's signature: no metrics, n_tokens from the shape."""
    inputs, targets = batch
    return cross_entropy(model(inputs), targets), {}, targets.numel()


def make_batches(args) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed pool of batches (inputs [B, T], targets [B, T]) on the CPU, cycled by every loop."""
    generator = torch.Generator().manual_seed(0)
    shape = (args.batch_size, args.seq_len + 1)
    pool = []
    for _ in range(args.pool):
        tokens = torch.randint(0, args.vocab, shape, generator=generator)
        pool.append((tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()))
    return pool


def make_optimizer(model, args) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        optim.decay_groups(model, 0.1), lr=args.lr, fused=True if args.fused else None
    )


class BareLoop:
    """The minimum training loop (nanoGPT's shape), on its own copy of the model."""

    def __init__(self, model, args, device, precision, total_steps):
        self.model = model.to(device)
        self.forward_model = torch.compile(self.model) if args.compile else self.model
        self.optimizer = make_optimizer(self.model, args)
        self.scheduler = optim.warmup_cosine(self.optimizer, args.warmup, total_steps)
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        self.device, self.precision, self.args, self.index = device, precision, args, 0

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":  # as nanoGPT: pinned memory, asynchronous copy
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor

    def run(self, n_steps: int, batch_at) -> None:
        accum = self.args.grad_accum
        for _ in range(n_steps):
            for _ in range(accum):
                inputs, targets = (self.to_device(t) for t in batch_at(self.index))
                self.index += 1
                with train.autocast(self.device, self.precision):
                    loss = cross_entropy(self.forward_model(inputs), targets) / accum
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            if self.scaler:
                self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.clip)
            if self.scaler:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)


class TrainerLoop:
    """``Trainer.fit`` for ``n_steps`` more steps each time (its last step is a logging step)."""

    def __init__(self, model, args, device, precision, total_steps, loss_fn):
        optimizer = make_optimizer(model, args)
        scheduler = optim.warmup_cosine(optimizer, args.warmup, total_steps)
        config = train.TrainConfig(
            max_steps=total_steps,
            grad_accum_steps=args.grad_accum,
            clip_grad_norm=args.clip,
            precision=precision,
            compile=args.compile,
            seed=None,
            device=str(device),
            progress=False,
            sync_every=args.sync_every,
        )
        self.trainer = train.Trainer(model, optimizer, loss_fn, config, scheduler)

    def run(self, n_steps: int, batch_at) -> None:
        self.trainer.config.max_steps = self.trainer.step + n_steps
        self.trainer.fit(batch_at)


def measure(config_name: str, args, device: torch.device) -> dict:
    """Warm up, then time interleaved segments of every loop; tokens/s and ratios to ``bare``."""
    precision, _, compiled = config_name.partition("+")
    args = copy.copy(args)
    args.compile = compiled == "compile"
    torch.manual_seed(0)
    model = TransformerLM(
        args.vocab,
        args.d_model,
        args.heads,
        args.layers,
        max_len=args.seq_len,
        dropout=0.0,
    )
    total_steps = args.warmup + args.repeats * args.steps
    pool = make_batches(args)

    def batch_at(i: int):
        return pool[i % len(pool)]

    def make(name):
        if name.startswith("bare"):
            return BareLoop(copy.deepcopy(model), args, device, precision, total_steps)
        loss_fn = train.lm_loss if name == "trainer" else cross_entropy_loss
        return TrainerLoop(
            copy.deepcopy(model), args, device, precision, total_steps, loss_fn
        )

    loops = {name: make(name) for name in args.loops}
    for (
        loop
    ) in loops.values():  # warm-up: allocator, autotuning, compilation; not timed
        loop.run(args.warmup, batch_at)
        synchronize(device)
    tokens_per_segment = args.steps * args.grad_accum * args.batch_size * args.seq_len
    rates = {"wall": {name: [] for name in loops}, "cpu": {name: [] for name in loops}}
    for repeat in range(args.repeats):
        for name in (
            args.loops if repeat % 2 == 0 else args.loops[::-1]
        ):  # ABCD, DCBA, ...
            synchronize(device)
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            loops[name].run(args.steps, batch_at)
            synchronize(device)
            rates["wall"][name].append(
                tokens_per_segment / (time.perf_counter() - wall_start)
            )
            rates["cpu"][name].append(
                tokens_per_segment / (time.process_time() - cpu_start)
            )
    result = {
        "config": config_name,
        "precision": precision,
        "compile": args.compile,
        "n_params": sum(p.numel() for p in model.parameters()),
        "tokens_per_segment": tokens_per_segment,
    }
    clocks = (
        ("wall", "cpu") if device.type == "cpu" else ("wall",)
    )  # a GPU's work: wall only
    for clock in clocks:
        medians = {
            name: statistics.median(values) for name, values in rates[clock].items()
        }
        result[f"tokens_per_s_{clock}_median"] = medians
        result[f"ratio_over_bare_{clock}"] = {
            name: medians[name] / medians["bare"] for name in loops if name != "bare"
        }
        result[f"tokens_per_s_{clock}_segments"] = rates[clock]
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Throughput of utils.train.Trainer vs a bare training loop.",
        epilog="Sizes and step counts default per device: " + json.dumps(DEFAULTS),
    )
    parser.add_argument(
        "--device", default="auto", help="auto | cpu | cuda (default: auto)"
    )
    parser.add_argument(
        "--configs",
        help="comma-separated precision[+compile] list, e.g. bf16,fp16,bf16+compile "
        "(default: fp32 on a CPU, bf16,fp16 on a GPU)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny model, few steps: seconds"
    )
    for name in DEFAULTS["cpu"]:
        parser.add_argument(f"--{name.replace('_', '-')}", type=int)
    parser.add_argument(
        "--grad-accum", type=int, default=1, help="micro-batches per step"
    )
    parser.add_argument("--clip", type=float, default=1.0, help="gradient-norm clip")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument(
        "--fused", action="store_true", help="fused AdamW in every loop"
    )
    parser.add_argument("--pool", type=int, default=16, help="distinct batches, cycled")
    parser.add_argument(
        "--sync-every", type=int, help="the Trainer's sync_every (default: its own)"
    )
    parser.add_argument(
        "--threads", type=int, help="torch threads (default: 1 on a CPU)"
    )
    parser.add_argument(
        "--loops", default=",".join(LOOPS), help="subset of " + ",".join(LOOPS)
    )
    parser.add_argument(
        "--out", help="JSON path (default: results/trainer_overhead_<dev>.json)"
    )
    args = parser.parse_args(argv)
    args.loops = args.loops.split(",")
    if args.loops[0] != "bare" or not set(args.loops) <= set(LOOPS):
        parser.error(f"--loops must start with bare and name only {LOOPS}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = train.resolve_device(args.device)
    preset = DEFAULTS[
        "quick" if args.quick else "cpu" if device.type == "cpu" else "cuda"
    ]
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    torch.set_num_threads(
        args.threads or (1 if device.type == "cpu" else torch.get_num_threads())
    )
    configs = (args.configs or ("fp32" if device.type == "cpu" else "bf16,fp16")).split(
        ","
    )
    info = machine_info(device)
    results = []
    for config_name in configs:
        result = measure(config_name, args, device)
        results.append(result)
        for key, value in result.items():
            if key.startswith(("tokens_per_s_", "ratio_")) and not key.endswith(
                "_segments"
            ):
                style = ".3f" if key.startswith("ratio") else ",.0f"
                numbers = ", ".join(f"{name} {v:{style}}" for name, v in value.items())
                print(f"[{config_name}] {key}: {numbers}")
        ratio = result["ratio_over_bare_wall"].get("trainer")
        if ratio is not None:
            verdict = "meets" if ratio >= TARGET_RATIO else "MISSES"
            print(
                f"[{config_name}] Trainer / bare = {ratio:.3f} ({verdict} the {TARGET_RATIO})"
            )
    report = {
        "what": "tokens/s of utils.train.Trainer vs a bare loop: same model, optimizer, data",
        "command": " ".join(
            ["python", "benchmarks/trainer_overhead.py", *(argv or sys.argv[1:])]
        ),
        "machine": info,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "device")},
        "target_ratio": TARGET_RATIO,
        "results": results,
    }
    out = (
        Path(args.out)
        if args.out
        else REPO / "results" / f"trainer_overhead_{device.type}.json"
    )
    write_report(
        report, out
    )  # adds the load average at the end: other programs competing
    return 0


if __name__ == "__main__":
    sys.exit(main())
