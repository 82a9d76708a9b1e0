"""Data-parallel training of the book's :class:`~utils.models.TransformerLM` with ``torch.distributed``.

The module is two things at once:

- **The worker** that ``torchrun`` starts once per process (each process is a *rank*)::

      torchrun --standalone --nproc-per-node=2 -m utils.ddp --steps 20 --out run.pt
      python -m torch.distributed.run --standalone --nproc-per-node=2 -m utils.ddp ...

  Every rank builds the same model from the same seed and reads the same token stream. Step
  ``s`` uses global batch ``s`` (``global_batch`` windows of ``seq_len + 1`` tokens of
  WikiText-2, in an order fixed by the seed); rank ``r`` of ``W`` takes rows
  ``[r * b, (r + 1) * b)`` of it, ``b = global_batch / W``. With ``--strategy ddp``,
  ``DistributedDataParallel`` averages the gradients over the ranks with an all-reduce during
  the backward pass, so every rank applies the same AdamW step; with ``--strategy fsdp``,
  ``fully_shard`` keeps only ``1/W`` of every parameter, gradient and optimizer state on each
  rank. The backend is chosen from the device: gloo on CPUs, NCCL on CUDA GPUs. Rank 0 writes
  one results file (``torch.save``; read it with :func:`load_results`): losses, throughput,
  the duration of every timed step, the CPU time of every rank, per-rank memory, DDP's
  gradient buckets, an all-reduce timing and, with ``--save-grads``, the first step's averaged
  gradients together with the initial weights and the global batch.

- **The launcher** the notebook and the tests call: :func:`launch` checks the arguments, runs
  ``python -m torch.distributed.run --standalone`` in a subprocess (the rendezvous binds port 0,
  so the system picks a free port and parallel runs do not collide) with a time limit (the whole
  process group is killed when it is exceeded), and returns the results;
  :func:`single_process_gradients` recomputes the first step's gradients in one process on the
  whole global batch, the reference the DDP gradients must equal.

Why a loop of its own and not :class:`utils.train.Trainer`: this chapter measures what data
parallelism costs and checks that it changes nothing, so the loop keeps only the parts that
concern every rank (the sharded batch, the all-reduce, the step) and times each step. It has
no gradient clipping, schedule, autocast, accumulation or resume, on purpose: each would add
work to time and state to shard without teaching anything about distribution. What it does
share with the rest of the book is the model, the loss (:func:`utils.losses.lm_loss`) and the
AdamW parameter groups (:func:`utils.optim.decay_groups`).

Shapes: B = global batch, b = B / W per rank, T = ``seq_len``, V = vocabulary size.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from utils.benchmark import synchronize as _sync  # the name ddp.train's listing shows
from utils.checkpoint import save_atomically
from utils.checks import check_min_int
from utils.compute import training_memory_bytes
from utils.losses import lm_loss
from utils.models import TransformerLM, count_parameters
from utils.optim import decay_groups

__all__ = [
    "RunConfig",
    "check_run",
    "make_tokens",
    "save_tokens",
    "window_order",
    "global_batch_at",
    "shard",
    "build_model",
    "command",
    "launch",
    "load_results",
    "single_process_gradients",
    "zero_bytes_per_device",
    "main",
]

STRATEGIES = ("ddp", "fsdp")
DEVICES = ("cpu", "cuda", "auto")
SPECIALS = ("<unk>", "<eos>")
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class RunConfig:
    """One training run; every field is also a command-line option (``global_batch`` ->
    ``--global-batch``).

    Attributes:
        out: results file rank 0 writes.
        tokens: a file from :func:`save_tokens`; ``None`` builds the WikiText-2 training tokens
            in every rank (:func:`make_tokens`, about a second).
        vocab_size: vocabulary cap when the tokens are built here (rarer words become ``<unk>``).
        global_batch: sequences per optimizer step, summed over all ranks (B).
        seq_len: tokens per sequence (T).
        d_model, n_heads, n_layers: the :class:`~utils.models.TransformerLM` (dropout 0, so the
            ranks' forward passes are deterministic).
        steps: optimizer steps.
        lr, weight_decay: AdamW.
        seed: model initialisation and the order of the training windows.
        threads: intra-op threads per rank (``torch.set_num_threads``).
        device: ``"cpu"`` (gloo), ``"cuda"`` (NCCL, one GPU per rank) or ``"auto"``.
        strategy: ``"ddp"`` (replicate, all-reduce gradients) or ``"fsdp"`` (shard everything).
        bucket_cap_mb: DDP's gradient bucket size in MiB (PyTorch's default is 25).
        timed_from: the first step counted in the throughput (earlier steps are warm-up).
        save_grads: store the first step's gradients, initial weights and global batch.
        allreduce_repeats: time this many all-reduces of a gradient-sized buffer (0: skip).
        timeout_s: limit for any collective (a dead peer fails the run instead of hanging it).
    """

    out: str = "ddp_results.pt"
    tokens: str | None = None
    vocab_size: int = 8000
    global_batch: int = 8
    seq_len: int = 32
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    steps: int = 10
    lr: float = 1e-3
    weight_decay: float = 0.01
    seed: int = 0
    threads: int = 1
    device: str = "cpu"
    strategy: str = "ddp"
    bucket_cap_mb: float = 25.0
    timed_from: int = 1
    save_grads: bool = False
    allreduce_repeats: int = 0
    timeout_s: float = 120.0


_POSITIVE_INTS = (
    "vocab_size",
    "global_batch",
    "seq_len",
    "d_model",
    "n_heads",
    "n_layers",
)
_POSITIVE_INTS += ("steps", "threads")


def check_run(config: RunConfig, world_size: int) -> None:
    """Raise ``ValueError`` (with what to change) unless ``config`` can run on ``world_size``
    ranks: positive sizes, a known device and strategy, and a global batch that splits into
    equal per-rank batches (global batch = per-rank batch × world size)."""
    if (
        isinstance(world_size, bool)
        or not isinstance(world_size, int)
        or world_size < 1
    ):
        raise ValueError(
            f"the number of processes must be an int >= 1, got {world_size!r}"
        )
    for name in _POSITIVE_INTS:
        check_min_int(name, getattr(config, name))
    for name in ("timed_from", "allreduce_repeats"):
        check_min_int(name, getattr(config, name), 0)
    if config.d_model % config.n_heads:
        raise ValueError(
            f"d_model={config.d_model} must be divisible by n_heads={config.n_heads}"
        )
    if config.device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {config.device!r}")
    if config.strategy not in STRATEGIES:
        raise ValueError(
            f"strategy must be one of {STRATEGIES}, got {config.strategy!r}"
        )
    for name in ("lr", "bucket_cap_mb", "timeout_s"):
        if not getattr(config, name) > 0:
            raise ValueError(f"{name} must be > 0, got {getattr(config, name)!r}")
    if config.global_batch % world_size:
        raise ValueError(
            f"global_batch={config.global_batch} is not divisible by the {world_size} processes: "
            "every rank must get the same number of sequences (global batch = per-rank batch x "
            "world size), otherwise the average of the ranks' gradients is not the gradient of "
            "the global batch. Choose a global batch that is a multiple of the process count."
        )


# --------------------------------------------------------------------------------------------
# Data: one token stream, fixed windows, one global batch per step, one shard per rank
# --------------------------------------------------------------------------------------------


def make_tokens(lines: list[str], vocab_size: int, source: str) -> dict[str, Any]:
    """WikiText-style lines -> ``{"ids": LongTensor [N], "vocab_size": V, "source": str}``.

    Words are split on spaces (WikiText-2 is tokenized already), the ``vocab_size`` most
    frequent ones are kept (``<unk>`` and ``<eos>`` included), and ``<eos>`` ends every line.
    """
    from utils import text

    tokenizer = text.get_tokenizer(None)
    vocab = text.build_vocab_from_iterator(
        (tokenizer(line) for line in lines),
        specials=list(SPECIALS),
        max_tokens=vocab_size,
    )
    vocab.set_default_index(vocab["<unk>"])
    ids = text.tokens_to_ids(lines, tokenizer, vocab, eos="<eos>")
    return {"ids": ids, "vocab_size": len(vocab), "source": source}


def save_tokens(path: str | os.PathLike, tokens: dict[str, Any]) -> str:
    """Write a :func:`make_tokens` result for the workers' ``--tokens``; returns the path."""
    save_atomically(tokens, path)
    return os.fspath(path)


def _wikitext2_tokens(vocab_size: int) -> dict[str, Any]:
    from utils import data

    wikitext = data.load_wikitext2()
    return make_tokens(wikitext["train"], vocab_size, wikitext.describe())


def window_order(n_tokens: int, seq_len: int, seed: int) -> torch.Tensor:
    """A seeded permutation of the ``(n_tokens - 1) // seq_len`` non-overlapping windows."""
    n_windows = (n_tokens - 1) // seq_len
    if n_windows < 1:
        raise ValueError(f"{n_tokens} tokens hold no window of {seq_len} + 1 tokens")
    return torch.randperm(n_windows, generator=torch.Generator().manual_seed(seed))


def global_batch_at(
    ids: torch.Tensor, order: torch.Tensor, step: int, global_batch: int, seq_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of step ``step``: inputs and next-token targets, both ``(B, T)``.

    Row ``i`` is window ``order[(step * B + i) % n_windows]``: tokens ``[w T, w T + T]`` as
    input, shifted by one as target. Every rank computes the same batch.
    """
    rows = order[(step * global_batch + torch.arange(global_batch)) % order.numel()]
    starts = rows * seq_len  # (B,)
    index = starts[:, None] + torch.arange(seq_len + 1)  # (B, T + 1)
    window = ids[index]
    return window[:, :-1], window[:, 1:]


def shard(batch: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank ``rank``'s rows of a ``(B, ...)`` batch: ``[rank * b, (rank + 1) * b)``, ``b = B/W``."""
    if batch.shape[0] % world_size:
        raise ValueError(
            f"batch of {batch.shape[0]} rows does not split into {world_size} ranks"
        )
    per_rank = batch.shape[0] // world_size
    return batch[rank * per_rank : (rank + 1) * per_rank]


def build_model(config: RunConfig, vocab_size: int) -> TransformerLM:
    """The run's model, initialised from ``config.seed`` (identical in every process)."""
    torch.manual_seed(config.seed)
    return TransformerLM(
        vocab_size,
        config.d_model,
        config.n_heads,
        config.n_layers,
        max_len=config.seq_len,
        dropout=0.0,
    )


# --------------------------------------------------------------------------------------------
# The worker (one per rank)
# --------------------------------------------------------------------------------------------


def _device(config: RunConfig, local_rank: int, local_world: int) -> torch.device:
    wants_cuda = config.device == "cuda" or (
        config.device == "auto" and torch.cuda.is_available()
    )
    if not wants_cuda:
        return torch.device("cpu")
    if torch.cuda.device_count() < local_world:
        raise ValueError(
            f"device='cuda' needs one GPU per process: {local_world} processes on this machine, "
            f"{torch.cuda.device_count()} GPUs visible. Use fewer processes or device='cpu'."
        )
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def _local_bytes(tensor: torch.Tensor) -> int:
    """Bytes this rank stores for ``tensor`` (its shard, for an FSDP ``DTensor``)."""
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    return local.numel() * local.element_size()


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor (an FSDP ``DTensor`` is all-gathered: every rank must call this)."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def _wrap(
    model: torch.nn.Module, config: RunConfig, device: torch.device
) -> torch.nn.Module:
    if config.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(
            model, device_ids=ids, bucket_cap_mb=config.bucket_cap_mb
        )
    from torch.distributed.fsdp import fully_shard

    for (
        block
    ) in model.blocks:  # one FSDP unit per block: gathered just before it is used
        fully_shard(block)
    fully_shard(
        model
    )  # the rest (embeddings, tied head, final LayerNorm) is the root unit
    return model


def _time_allreduce(
    n_floats: int, repeats: int, device: torch.device
) -> dict[str, float]:
    """Seconds per all-reduce of ``n_floats`` fp32 values, and the bus bandwidth it implies."""
    import torch.distributed as dist

    world = dist.get_world_size()
    buffer = torch.ones(n_floats, device=device)
    dist.all_reduce(buffer)  # warm-up: the first call sets up the communicator
    _sync(device)
    dist.barrier()
    start = time.perf_counter()
    for _ in range(repeats):
        dist.all_reduce(buffer)
    _sync(device)
    seconds = (time.perf_counter() - start) / repeats
    n_bytes = 4 * n_floats
    # A ring all-reduce moves 2 (W - 1) / W of the buffer through every link ("bus bandwidth").
    bus = 2 * (world - 1) / world * n_bytes / seconds
    return {"bytes": n_bytes, "seconds": seconds, "bus_bytes_per_s": bus}


def train(config: RunConfig, device: torch.device) -> dict[str, Any] | None:
    """Run ``config`` in this process (one rank of a started process group).

    A deliberately minimal loop (see the module docstring for why it is not the
    :class:`~utils.train.Trainer`): each step takes this rank's ``[b, T]`` shard of the
    global batch, computes the book's :func:`~utils.losses.lm_loss`, back-propagates
    (DDP averages the gradients over the ranks) and applies AdamW with
    :func:`~utils.optim.decay_groups`. Returns the results on rank 0 (None on the
    others); see the module docstring.
    """
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(config.threads)
    if config.tokens is None:
        tokens = _wikitext2_tokens(config.vocab_size)
    else:
        tokens = torch.load(config.tokens, weights_only=True)
    ids, vocab_size = tokens["ids"], tokens["vocab_size"]
    order = window_order(ids.numel(), config.seq_len, config.seed)

    model = build_model(config, vocab_size).to(device)
    n_params = count_parameters(model)  # the tied head counted once
    init_state = None
    if config.save_grads and rank == 0:
        init_state = {
            k: v.detach().cpu().clone() for k, v in model.state_dict().items()
        }
    wrapped = _wrap(model, config, device)
    # the book's AdamW groups: decay on matrices, none on biases and gains
    optimizer = torch.optim.AdamW(
        decay_groups(wrapped, config.weight_decay), lr=config.lr
    )

    losses, grads, batch0, ticks = [], None, None, []
    for step in range(config.steps):
        if step == config.timed_from:  # the clock starts after the warm-up steps
            _sync(device)
            dist.barrier()
            ticks.append(time.perf_counter())
            cpu_start = time.process_time()
        x, y = global_batch_at(ids, order, step, config.global_batch, config.seq_len)
        if step == 0 and config.save_grads:
            batch0 = (x.clone(), y.clone())
        x, y = shard(x, rank, world).to(device), shard(y, rank, world).to(device)
        loss = lm_loss(wrapped, (x, y))[0]  # mean over this rank's b x T targets
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # DDP: bucketed all-reduce (average) overlaps the backward pass
        if (
            step == 0 and config.save_grads
        ):  # what every rank holds after the all-reduce
            grads = {
                n: _full(p.grad).detach().cpu().clone()
                for n, p in model.named_parameters()
            }
        optimizer.step()
        losses.append(loss.detach())
        if ticks:  # the end of a timed step
            _sync(device)
            ticks.append(time.perf_counter())
    cpu_s = (
        time.process_time() - cpu_start if ticks else None
    )  # all threads of this rank
    dist.barrier()
    elapsed = ticks[-1] - ticks[0] if ticks else None

    # The global batch's loss: every rank has the same number of targets, so it is
    # the mean of the ranks' losses.
    loss_sum = torch.stack(losses)
    dist.all_reduce(loss_sum)
    global_losses = (loss_sum / world).cpu().tolist()

    own = {
        "params": sum(_local_bytes(p) for p in model.parameters()),
        "grads": sum(
            _local_bytes(p.grad) for p in model.parameters() if p.grad is not None
        ),
        "optimizer": sum(
            _local_bytes(v)
            for state in optimizer.state.values()
            for v in state.values()
            if torch.is_tensor(v)
            and v.dim() > 0  # Adam's two moments (not the step count)
        ),
    }
    gathered = [None] * world
    dist.all_gather_object(gathered, {"memory": own, "cpu_s": cpu_s})
    memory = [g["memory"] for g in gathered]

    buckets = None
    if config.strategy == "ddp":
        logged = wrapped._get_ddp_logging_data()  # bucket sizes in bytes, "s1, s2, ..."
        sizes = logged.get("rebuilt_bucket_sizes") or logged.get("bucket_sizes")
        if sizes:
            buckets = [int(s) for s in str(sizes).split(",") if s.strip()]
    allreduce = None
    if config.allreduce_repeats and world > 1:
        allreduce = _time_allreduce(n_params, config.allreduce_repeats, device)

    if rank != 0:
        return None
    timed_steps = len(ticks) - 1 if ticks else 0
    step_s = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
    tokens_per_step = config.global_batch * config.seq_len
    results = {
        "config": dataclasses.asdict(config),
        "world_size": world,
        "backend": dist.get_backend(),
        "device": device.type,
        "n_params": n_params,
        "vocab_size": vocab_size,
        "source": tokens["source"],
        "per_rank_batch": config.global_batch // world,
        "tokens_per_step": tokens_per_step,
        "losses": global_losses,
        "timed_steps": timed_steps,
        "elapsed_s": elapsed,
        "tokens_per_s": timed_steps * tokens_per_step / elapsed if elapsed else None,
        "step_s": step_s,  # rank 0's duration of each timed step
        "cpu_s": [
            g["cpu_s"] for g in gathered
        ],  # CPU time of each rank over the timed steps
        "memory": {key: [m[key] for m in memory] for key in own},
        "buckets": buckets,
        "allreduce": allreduce,
        "versions": {"torch": str(torch.__version__), "python": sys.version.split()[0]},
    }
    if config.save_grads:
        results.update(grads=grads, init_state=init_state, batch0=batch0)
    return results


def _local_world() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", 1)))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchrun --standalone --nproc-per-node=N -m utils.ddp",
        description="Data-parallel training of the book's TransformerLM (one process per rank).",
    )
    for field in dataclasses.fields(RunConfig):
        flag = "--" + field.name.replace("_", "-")
        if field.type in ("bool", bool):
            parser.add_argument(flag, action="store_true")
            continue
        kind = {"int": int, "float": float}.get(str(field.type), str)
        parser.add_argument(flag, type=kind, default=field.default)
    return parser


def _config_to_args(config: RunConfig) -> list[str]:
    """The command-line options of ``config``, leaving out those at their default value."""
    args = []
    for field in dataclasses.fields(RunConfig):
        value = getattr(config, field.name)
        if value == field.default:
            continue
        flag = "--" + field.name.replace("_", "-")
        args += [flag] if isinstance(value, bool) else [flag, str(value)]
    return args


def main(argv: list[str] | None = None) -> None:
    """Entry point of each rank: parse the options, join the process group, train, clean up.

    An exception in a rank is written to torchrun's error file, so that torchrun's failure
    report shows the worker's own traceback.
    """
    from torch.distributed.elastic.multiprocessing.errors import record

    record(_main)(argv)


def _main(argv: list[str] | None) -> None:
    import torch.distributed as dist

    config = RunConfig(**vars(_parser().parse_args(argv)))
    if "RANK" not in os.environ:
        raise SystemExit(
            "utils.ddp is a torchrun worker: start it with\n"
            "  torchrun --standalone --nproc-per-node=2 -m utils.ddp [options]\n"
            "or from Python with utils.ddp.launch(nproc, RunConfig(...))."
        )
    world = int(os.environ["WORLD_SIZE"])
    check_run(config, world)
    device = _device(config, int(os.environ.get("LOCAL_RANK", 0)), _local_world())
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend,
        timeout=timedelta(seconds=config.timeout_s),
        device_id=device if device.type == "cuda" else None,
    )
    try:
        results = train(config, device)
        if results is not None:
            save_atomically(results, config.out)
        # Why: the DDP/FSDP wrapper sits in reference cycles that keep gloo's pair threads
        # alive; if one rank tore its group down while rank 0 was still saving, those
        # threads saw the peer vanish at interpreter exit and aborted the rank (SIGABRT).
        # Collect the wrappers, then leave together.
        del results
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------------------------
# The launcher (notebook and tests)
# --------------------------------------------------------------------------------------------


def command(nproc: int, config: RunConfig) -> list[str]:
    """The torchrun command line for ``nproc`` processes on this machine (``--standalone``: a
    private rendezvous on ``localhost:0``, i.e. a free port chosen by the system)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "utils.ddp",
        *_config_to_args(config),
    ]


def launch(
    nproc: int, config: RunConfig, timeout_s: float | None = None
) -> dict[str, Any]:
    """Run ``config`` on ``nproc`` local processes with torchrun; return rank 0's results.

    Bad arguments raise ``ValueError`` before anything starts. Each rank gets
    ``OMP_NUM_THREADS = config.threads``. The run is killed (the whole process group) after
    ``timeout_s`` seconds (default: ``config.timeout_s`` + 60 for start-up), raising
    ``TimeoutError``; a failed run raises ``RuntimeError`` with the end of its output.
    """
    check_run(config, nproc)
    if config.tokens is not None and not Path(config.tokens).is_file():
        raise ValueError(
            f"tokens file {config.tokens!r} does not exist (see save_tokens)"
        )
    timeout_s = config.timeout_s + 60 if timeout_s is None else timeout_s
    out = Path(config.out)
    out.unlink(missing_ok=True)  # never read a previous run's results
    env = dict(os.environ, OMP_NUM_THREADS=str(config.threads))
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])
    )
    proc = subprocess.Popen(
        command(nproc, config),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,  # its own process group, so that _stop reaches all of it
    )
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _stop(proc)
        raise TimeoutError(
            f"torchrun with {nproc} processes did not finish within {timeout_s:.0f} s and was "
            "killed"
        ) from None
    if proc.returncode != 0 or not out.is_file():
        tail = "\n".join(output.strip().splitlines()[-30:])
        raise RuntimeError(
            f"torchrun with {nproc} processes failed (exit code {proc.returncode}); the end of "
            f"its output:\n{tail}"
        )
    return load_results(out)


def _stop(proc: subprocess.Popen, grace_s: float = 20.0) -> None:
    """Stop torchrun and its workers. SIGTERM first: torchrun then terminates the workers (each
    runs in a session of its own, out of reach of a signal to torchrun's group); SIGKILL to the
    group if that takes longer than ``grace_s``."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.communicate(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read a results file written by rank 0 (tensors, numbers and strings only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def single_process_gradients(
    results: dict[str, Any], device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """The first step's gradients computed in *this* process on the whole global batch.

    Rebuilds the run's model from its saved initial weights, takes the mean loss over all
    ``B × T`` targets of the saved global batch, and back-propagates: the reference the
    averaged DDP gradients (``results["grads"]``, saved with ``save_grads=True``) must equal.
    Returns ``{parameter name: gradient}`` on the CPU.
    """
    if "grads" not in results:
        raise ValueError("these results hold no gradients: run with save_grads=True")
    config = RunConfig(**results["config"])
    model = build_model(config, results["vocab_size"])
    model.load_state_dict(results["init_state"])
    model.to(device)
    x, y = (t.to(device) for t in results["batch0"])
    lm_loss(model, (x, y))[0].backward()
    return {n: p.grad.detach().cpu() for n, p in model.named_parameters()}


# --------------------------------------------------------------------------------------------
# Memory arithmetic (Rajbhandari et al. 2020)
# --------------------------------------------------------------------------------------------


def zero_bytes_per_device(
    n_params: float,
    n_devices: int,
    stage: int,
    weight_bytes: float = 2,
    grad_bytes: float = 2,
    optimizer_bytes: float = 12,
) -> float:
    """Bytes of weights + gradients + optimizer state per device under ZeRO ``stage``.

    :func:`utils.compute.training_memory_bytes` with ``stage`` and ``n_devices``: mixed-precision
    Adam keeps, per parameter, 2-byte weights and gradients and ``optimizer_bytes`` = 12 of fp32
    state (master weights, two moments). Stage 0 is plain data parallelism (everything
    replicated); stage 1 shards the optimizer state over the ``n_devices``; stage 2 also the
    gradients; stage 3 (FSDP's full sharding) also the weights. Activations are not included.
    """
    return training_memory_bytes(
        n_params,
        stage=stage,
        n_devices=n_devices,
        weight_bytes=weight_bytes,
        grad_bytes=grad_bytes,
        optimizer_bytes=optimizer_bytes,
    )


if __name__ == "__main__":
    main()
