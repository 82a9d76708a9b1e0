"""A prepared GPU check: the model-free chapters' GPU code paths in one script, in minutes.

What it checks, at the ``gpu`` profile's per-step sizes but with few steps (``--scale gpu``, the
default on CUDA) or at tiny sizes on a CPU (``--scale cpu``, the default with ``--device cpu``):

- ``environment``: device, capability, memory, versions; the precision the book picks here
  (``utils.train.resolve_precision("auto")`` and ``utils.nb.autocast_dtype`` must agree: bf16
  where it is native, fp16 + GradScaler otherwise); no plotly / ipywidgets / IPython imported.
- ``trainer_lm``: ``utils.train.Trainer`` on a ``TransformerLM`` (chapters 03b, 04b, 06b) in
  that precision: the logits' dtype under autocast, the GradScaler and its skipped steps, the
  validation loss falling.
- ``classifier``: a ``TransformerClassifier`` with padded rows (chapter 05a) trained to tell
  WikiText-2 windows from random tokens; padding must not change its logits.
- ``adaptive_lm``: chapter 05b's book recipe (``utils.lm_recipes.book_recipe`` and
  ``train_for_budget`` with checkpoints, for a shrunken budget): the adaptive softmax equals the
  full softmax, sampling works, the checkpoint reloads to the same parameters.
- ``sdpa_backends``: every SDPA backend probed in the device's autocast dtype (chapter 03b,
  cell 11), checked against explicit attention, then timed with its peak memory.
- ``attention_memory``: chapter 03b's cost curves (cell 7) in fp32, with the chapter's memory
  asserts (explicit attention holds ~2 L x L matrices, fused ~ its output).
- ``resume``: a run checkpointed halfway and resumed reproduces the uninterrupted run (compared
  with how well the device reproduces the run itself).

Every check records its seconds and, on CUDA, its peak memory (``torch.cuda.max_memory_allocated``);
the training checks also record seconds per step and tokens per second. When ``utils.gpu_estimate``
is there, ``trainer_lm`` and ``classifier`` also record its estimate of their training step's
peak, and a ``memory_estimate`` line per mode fails if a measured peak is off by more than 1.5x
(on a CPU it is skipped: there is no CUDA peak). ``--only _selftest_error,_selftest_hang,
_selftest_crash`` exercises the isolation itself (a raised error, a hang, a dead process).

Modes (``--mode both`` runs the two in turn):

- ``native``: the machine as it is (bf16 on an H200).
- ``t4``: a Colab T4 emulated on a big GPU: ``torch.cuda.set_per_process_memory_fraction`` to
  ``--t4-memory-gib`` (14.34 GiB: the 15,828,320,256 bytes torch reports on a T4 less 0.4 GiB for
  its CUDA context, which the fraction does not count), no native bf16 (``torch.cuda.is_bf16_supported(including_emulation=False)`` answers False, so
  ``utils.precision`` and ``utils.nb`` choose fp16 + GradScaler), flash and cuDNN SDPA off. On a
  CPU the memory and SDPA settings are no-ops (noted in the report) and the fp16 path is forced
  instead: ``torch.autocast("cpu", dtype=torch.float16)`` with ``torch.amp.GradScaler("cpu")``.

Each mode runs in a child process; each check is isolated (an exception fails that check only; on
CUDA a new child continues after a failure, in case the CUDA context is broken) and time-boxed (a
check running past its box is killed and the rest continue). The JSON report goes to ``--out``;
a table is printed; the exit status is 1 if any check failed.

Only torch, numpy, tqdm (which comes with transformers) and the repository's ``utils`` are
imported, so the script runs on a machine without papermill, IPython, plotly or ipywidgets.

**GPU procedure** (a session lent a GPU machine; the device has no network):

1. Here, prepare the bundle and try it on the CPU::

       .venv/bin/python tools/gpu_check.py --prepare .gpu_check
       .venv/bin/python .gpu_check/gpu_check.py --device cpu --out .gpu_check/

   ``--prepare`` writes the git-ignored folder ``.gpu_check/``: this script, the ``utils``
   modules it imports (only those), the first 1 MB of WikiText-2's training text and 200 kB of
   its validation text (cut at line ends, from ``$LLMBOOK_DATA_DIR`` or ``../shared/data``) and a
   ``MANIFEST.json`` with sizes and SHA-256s; it refuses to write more than the 64 MiB a device
   run may carry.

2. On the device, one run (it takes at most ``--time-limit`` = 450 s)::

       run(command="python3 .gpu_check/gpu_check.py --device cuda --out $OUT/",
           carry=[".gpu_check"], timeout_s=540)

3. The report comes back as ``gpu_check_<device>.json`` (e.g. ``gpu_check_nvidia_h200.json``);
   copy it to ``results/gpu_check_<device>.json`` and commit it. The table is in the run's output.

The CPU mode is what ``make gpu-check-cpu`` runs (and ``tests/test_gpu_check.py`` tests).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
# From the repository (tools/gpu_check.py) or from a prepared bundle (gpu_check.py next to utils/).
ROOT = HERE if (HERE / "utils").is_dir() else HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_BUNDLE = ".gpu_check"
CARRY_LIMIT_BYTES = 64 * 2**20  # what a device run may carry, in all
TRAIN_SLICE_BYTES = 1_000_000
VALID_SLICE_BYTES = 200_000
# A T4 as torch reports it (total_memory; the same figure as utils.gpu_estimate.T4), less what its
# CUDA context and library workspaces take outside PyTorch's allocator: what tensors may use.
T4_TOTAL_BYTES = 15_828_320_256
T4_CONTEXT_BYTES = int(0.4 * 2**30)
T4_MEMORY_GIB = round((T4_TOTAL_BYTES - T4_CONTEXT_BYTES) / 2**30, 2)
WIKITEXT2_VOCAB = (
    33_278  # WikiText-2's vocabulary: the gpu profile's LM heads have this many rows
)
MODES = ("native", "t4")
MUST_NOT_IMPORT = ("plotly", "ipywidgets", "IPython")  # absent on the GPU machine

CHECKS = (
    "environment",
    "trainer_lm",
    "classifier",
    "adaptive_lm",
    "sdpa_backends",
    "attention_memory",
    "resume",
)

# Sizes per scale. "gpu": each chapter's gpu-profile step (model, batch, context), few steps.
# fmt: off
SCALES = {
    "gpu": {
        # 04b / 06b: d256 L4 H8, ctx 128, batch 32, the full WikiText-2 vocabulary
        "trainer_lm": dict(d_model=256, n_heads=8, n_layers=4, context=128, batch=32, steps=300,
                           lr=1e-3, vocab=WIKITEXT2_VOCAB, eval_batches=20, min_drop=1.0),
        # 05a: d256 L4 H4, 256 + 256 tokens, batch 64
        "classifier": dict(d_model=256, n_heads=4, n_layers=4, max_len=512, batch=64, steps=100,
                           lr=5e-4),
        # 05b: d512 L6 H8, ctx 256, batch 32, dropout 0.3; a budget of 20 s instead of 600 s
        "adaptive_lm": dict(d_model=512, n_heads=8, n_layers=6, context=256, batch=32, lr=1e-3,
                            dropout=0.3, budget_s=20.0, turn_s=5.0, vocab=WIKITEXT2_VOCAB,
                            eval_chunks=20),
        # 03b cell 11: a (1, 8, 256, 64) probe, then causal, batch 1, 16 heads x 64
        "sdpa_backends": dict(probe=(1, 8, 256, 64), lengths=[1024, 2048, 4096, 8192], heads=16,
                              head_dim=64, repeats=5),
        # 03b cell 7 at the gpu profile's cost_max_len 8192: 8 heads x 64, fp32
        "attention_memory": dict(lengths=[256, 512, 1024, 2048, 4096, 8192], heads=8,
                                 head_dim=64, repeats=3),
        "resume": dict(d_model=128, n_heads=4, n_layers=2, context=64, batch=16, steps=40,
                       lr=1e-3, dropout=0.1),
        "data": dict(train_chars=None, valid_chars=None),  # everything the bundle holds
        "time_box_s": dict(default=100.0, adaptive_lm=170.0, _selftest_hang=2.0),
        "time_limit_s": 450.0,
    },
    "cpu": {
        # 30 steps of a d32 model learn about one nat (0.99 on WikiText-2's slice, AMD EPYC)
        "trainer_lm": dict(d_model=32, n_heads=2, n_layers=1, context=32, batch=8, steps=30,
                           lr=3e-3, vocab=0, eval_batches=4, min_drop=0.5),
        "classifier": dict(d_model=32, n_heads=2, n_layers=1, max_len=32, batch=16, steps=40,
                           lr=3e-3),
        "adaptive_lm": dict(d_model=32, n_heads=2, n_layers=1, context=32, batch=8, lr=3e-3,
                            dropout=0.1, budget_s=2.0, turn_s=0.5, vocab=0, eval_chunks=4),
        "sdpa_backends": dict(probe=(1, 2, 64, 16), lengths=[64, 128], heads=2, head_dim=16,
                              repeats=2),
        # 03b's smoke profile: cost_max_len 512
        "attention_memory": dict(lengths=[256, 512], heads=8, head_dim=64, repeats=2),
        "resume": dict(d_model=32, n_heads=2, n_layers=1, context=16, batch=4, steps=8, lr=3e-3,
                       dropout=0.1),
        "data": dict(train_chars=60_000, valid_chars=20_000),
        "time_box_s": dict(default=120.0, _selftest_hang=2.0),
        "time_limit_s": 600.0,
    },
}
# fmt: on


# =================================================================================================
# Preparing the bundle (runs here, on the machine with the repository and the data)
# =================================================================================================


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _head_lines(path: Path, limit: int) -> bytes:
    """The first ``limit`` bytes of ``path``, cut after the last complete line."""
    with open(path, "rb") as f:
        data = f.read(limit)
        if len(data) == limit and f.read(1):  # more follows: drop the partial last line
            data = data[: data.rfind(b"\n") + 1]
    if data.count(b"\n") < 2:
        raise ValueError(f"{path}: fewer than 2 lines in its first {limit} bytes")
    return data


def bundle_modules() -> list[str]:
    """The ``utils`` modules this script imports, directly or through other utils modules."""
    from utils.provenance import utils_dependencies

    modules = utils_dependencies([Path(__file__).read_text()], ROOT / "utils")
    # Only this function needs provenance (it reads notebooks, with nbformat): not on the device.
    modules.pop("utils.provenance", None)
    return sorted(modules)


def _data_source(source: str | None) -> Path | None:
    candidates = [source] if source else [os.environ.get("LLMBOOK_DATA_DIR"), None]
    for candidate in candidates:
        path = Path(candidate) if candidate else ROOT.parent / "shared" / "data"
        if (path / "wikitext-2" / "train.txt").is_file():
            return path
        if source:
            raise FileNotFoundError(
                f"{path / 'wikitext-2' / 'train.txt'} does not exist"
            )
    return None


def _check_not_tracked(dest: Path) -> None:
    """Refuse a destination inside the repository that git would not ignore (data is never
    committed)."""
    try:
        dest.relative_to(ROOT)
    except ValueError:
        return  # outside the repository
    if not (ROOT / ".git").exists():
        return
    probe = subprocess.run(
        ["git", "check-ignore", "-q", str(dest / "MANIFEST.json")],
        cwd=ROOT,
        capture_output=True,
    )
    if probe.returncode != 0:
        raise ValueError(
            f"{dest} is inside the repository but not git-ignored; use {DEFAULT_BUNDLE}/ "
            "(ignored in .gitignore) so that the data slice is never committed"
        )


def prepare(
    dest: str | Path,
    source: str | None = None,
    train_bytes: int = TRAIN_SLICE_BYTES,
    valid_bytes: int = VALID_SLICE_BYTES,
    carry_limit: int = CARRY_LIMIT_BYTES,
) -> dict:
    """Write the bundle a GPU run carries into ``dest``; return its manifest.

    ``dest`` gets ``gpu_check.py``, ``utils/`` (the modules of :func:`bundle_modules`),
    ``data/wikitext-2/{train,valid}.txt`` (the first ``train_bytes`` / ``valid_bytes`` of the
    source files, cut at line ends) and ``MANIFEST.json``. Without a WikiText-2 copy (no
    ``source``, no ``$LLMBOOK_DATA_DIR``, no ``../shared/data``) the data is the repository's
    generated stand-in corpus, and the manifest says so. Raises ValueError, leaving nothing
    behind, when the bundle would exceed ``carry_limit`` bytes.
    """
    dest = Path(dest).resolve()
    _check_not_tracked(dest)
    if dest.exists():
        if any(dest.iterdir()) and not (dest / "MANIFEST.json").is_file():
            raise ValueError(f"{dest} exists and is not a bundle written by --prepare")
        shutil.rmtree(dest)
    src = _data_source(source)
    slices = {}
    if src is not None:
        for split, limit in (("train", train_bytes), ("valid", valid_bytes)):
            path = src / "wikitext-2" / f"{split}.txt"
            slices[split] = (_head_lines(path, limit), str(path), _sha256(path))
    else:
        from utils import corpus

        for split, seed in (("train", 1), ("valid", 2)):
            text = (
                "\n".join(corpus.wikitext_like(400 if split == "train" else 80, seed))
                + "\n"
            )
            slices[split] = (
                text.encode(),
                "generated: utils.corpus.wikitext_like",
                None,
            )
    modules = bundle_modules()
    files = {"gpu_check.py": Path(__file__).read_bytes()}
    for module in modules:
        parts = module.split(".")[1:]
        rel = (
            Path("utils", *parts).with_suffix(".py")
            if parts
            else Path("utils/__init__.py")
        )
        files[rel.as_posix()] = (ROOT / rel).read_bytes()
    for split, (data, _, _) in slices.items():
        files[f"data/wikitext-2/{split}.txt"] = data
    total = sum(len(b) for b in files.values())
    if total > carry_limit:
        raise ValueError(
            f"the bundle would hold {total / 2**20:.2f} MiB, more than the {carry_limit / 2**20:g}"
            " MiB a device run may carry; use smaller --train-bytes / --valid-bytes"
        )
    manifest = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "total_bytes": total,
        "carry_limit_bytes": carry_limit,
        "utils_modules": modules,
        "data": {
            split: {
                "source": origin,
                "source_sha256": digest,
                "bytes": len(data),
                "lines": data.count(b"\n"),
            }
            for split, (data, origin, digest) in slices.items()
        },
        "files": {
            rel: {"bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()}
            for rel, b in sorted(files.items())
        },
    }
    for rel, data in files.items():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (dest / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


# =================================================================================================
# The checks (run in a child process, one per mode)
# =================================================================================================


class CheckFailed(Exception):
    """A check's verdict: what went wrong (``str``) and what was measured (``details``)."""

    def __init__(self, message: str, details: dict | None = None):
        super().__init__(message)
        self.details = details or {}


def verdict(problems: list[str], summary: str, details: dict) -> tuple[str, dict]:
    if problems:
        raise CheckFailed("; ".join(problems), details)
    return summary, details


class Context:
    """What every check needs: the device, the mode, the sizes, the data, a scratch folder."""

    def __init__(
        self, device, mode: str, scale: str, data_dir: Path, tmp: Path, notes: list
    ):
        import torch

        self.device, self.mode, self.scale = device, mode, scale
        self.sizes = SCALES[scale]
        self.data_dir, self.tmp, self.notes = data_dir, tmp, notes
        self._data = None
        self.is_cuda = device.type == "cuda"
        if self.is_cuda:
            self.capability = torch.cuda.get_device_capability(device)
        else:
            self.capability = None

    def data(self):
        """``(vocab, {"train": ids, "valid": ids, "test": ids})`` from the bundle's WikiText-2."""
        if self._data is None:
            from utils import lm_recipes

            limits = self.sizes["data"]
            splits = {}
            for split, limit in (
                ("train", limits["train_chars"]),
                ("valid", limits["valid_chars"]),
            ):
                text = (self.data_dir / "wikitext-2" / f"{split}.txt").read_text(
                    encoding="utf-8"
                )
                if limit is not None and len(text) > limit:
                    text = text[: text.rfind("\n", 0, limit) + 1]
                splits[split] = text.split("\n")[:-1]
            splits["test"] = splits["valid"]
            self._data = lm_recipes.word_streams(splits)
        return self._data

    def expected_precision(self) -> str:
        import torch

        if self.mode == "t4":
            return "fp16"
        if not self.is_cuda:
            return "fp32"
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        return "bf16" if native else "fp16"

    def sync(self) -> None:
        import torch

        if self.is_cuda:
            torch.cuda.synchronize(self.device)


AUTOCAST_NAMES = {"fp32": None, "bf16": "torch.bfloat16", "fp16": "torch.float16"}


def _tolerance(dtype_name: str, fp32: float, fp16: float, bf16: float) -> float:
    return {"fp32": fp32, "fp16": fp16, "bf16": bf16}[dtype_name]


def _precision_of(dtype) -> str:
    import torch

    return {
        None: "fp32",
        torch.float32: "fp32",
        torch.float16: "fp16",
        torch.bfloat16: "bf16",
    }[dtype]


def apply_mode(device, mode: str, t4_memory_gib: float) -> list[str]:
    """Set the process up for ``mode``; return notes on what was (or could not be) done."""
    import torch

    notes = []
    if mode != "t4":
        return notes
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        fraction = min(1.0, t4_memory_gib * 2**30 / total)
        torch.cuda.set_per_process_memory_fraction(fraction, device)
        notes.append(
            f"memory capped at {t4_memory_gib:g} GiB (fraction {fraction:.4f} of "
            f"{total / 2**30:.1f} GiB; the CUDA context is not counted)"
        )
        torch.backends.cuda.enable_flash_sdp(False)
        if hasattr(torch.backends.cuda, "enable_cudnn_sdp"):
            torch.backends.cuda.enable_cudnn_sdp(False)
        notes.append("flash and cuDNN SDPA disabled")
        real = torch.cuda.is_bf16_supported

        def is_bf16_supported(including_emulation: bool = True) -> bool:
            # A T4 has no bf16 tensor cores: bf16 only "works" through emulation.
            return bool(including_emulation) and real(including_emulation=True)

        torch.cuda.is_bf16_supported = is_bf16_supported
        notes.append(
            "no native bf16: torch.cuda.is_bf16_supported(including_emulation=False) -> False"
        )
    else:
        notes.append(
            "CPU: the memory cap and the SDPA flags of the T4 emulation are no-ops"
        )
        # utils refuses fp16 on a CPU (its GradScaler path is CUDA's), so force the choice here:
        # the Trainer then runs torch.autocast("cpu", float16) with torch.amp.GradScaler("cpu").
        from utils import nb, precision, train

        real_resolve, real_dtype = precision.resolve_precision, nb.autocast_dtype

        def resolve_precision(choice, dev, bf16_supported=None):
            if torch.device(dev).type == "cpu" and choice == "auto":
                return "fp16"
            return real_resolve(choice, dev, bf16_supported)

        def autocast_dtype(dev):
            return torch.float16 if torch.device(dev).type == "cpu" else real_dtype(dev)

        precision.resolve_precision = train.resolve_precision = resolve_precision
        nb.autocast_dtype = autocast_dtype
        notes.append("CPU: fp16 forced (autocast('cpu', float16) + GradScaler('cpu'))")
    return notes


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_info(device) -> dict:
    import numpy
    import torch

    info = {
        "type": device.type,
        "name": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            name=props.name,
            capability=list(torch.cuda.get_device_capability(device)),
            total_memory_bytes=props.total_memory,
            multiprocessors=props.multi_processor_count,
        )
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version()
        if torch.backends.cudnn.is_available()
        else None,
        "numpy": numpy.__version__,
    }
    try:
        import tqdm

        versions["tqdm"] = tqdm.__version__
    except ImportError:  # pragma: no cover - utils.train needs it
        versions["tqdm"] = None
    return {"device": info, "versions": versions}


def check_environment(ctx: Context):
    import torch

    from utils import (  # noqa: F401  (everything the checks use, imported now)
        attention_cost,
        lm_recipes,
        models,
        nb,
        optim,
        precision,
        train,
    )

    problems = []
    details = device_info(ctx.device)
    chosen = train.resolve_precision("auto", ctx.device)
    dtype = nb.autocast_dtype(ctx.device)
    details.update(
        mode=ctx.mode,
        notes=ctx.notes,
        trainer_precision=chosen,
        autocast_dtype=str(dtype) if dtype is not None else None,
        expected_precision=ctx.expected_precision(),
    )
    if ctx.is_cuda:
        details["native_bf16"] = torch.cuda.is_bf16_supported(including_emulation=False)
        details["sdpa_enabled"] = {
            "flash": torch.backends.cuda.flash_sdp_enabled(),
            "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
            "math": torch.backends.cuda.math_sdp_enabled(),
            "cudnn": getattr(torch.backends.cuda, "cudnn_sdp_enabled", lambda: None)(),
        }
        if ctx.mode == "t4" and (
            details["sdpa_enabled"]["flash"] or details["sdpa_enabled"]["cudnn"]
        ):
            problems.append("T4 emulation: flash or cuDNN SDPA still enabled")
    if chosen != ctx.expected_precision():
        problems.append(
            f"the trainer picks {chosen}, expected {ctx.expected_precision()}"
        )
    if _precision_of(dtype) != chosen and not (chosen == "fp32" and dtype is None):
        problems.append(
            f"nb.autocast_dtype gives {dtype} but the trainer picks {chosen}"
        )
    imported = [m for m in MUST_NOT_IMPORT if m in sys.modules]
    details["imported_but_absent_on_gpu_machine"] = imported
    if imported:
        problems.append(
            f"importing the checks' utils modules imported {', '.join(imported)}"
        )
    details["utils_sha256"] = {
        f"utils/{Path(module.__file__).name}": _sha256(Path(module.__file__))[:16]
        for name, module in sorted(sys.modules.items())
        if (name == "utils" or name.startswith("utils."))
        and getattr(module, "__file__", None)
    }
    name = details["device"]["name"]
    summary = f"{name}: trainer precision {chosen}, autocast dtype {dtype}"
    return verdict(problems, summary, details)


def estimated_peak(precision: str, **spec) -> dict:
    """``utils.gpu_estimate``'s peak memory of a training step (AdamW) of the Transformer
    ``spec`` describes, when that module is there; ``{}`` when it is not."""
    try:
        from utils import gpu_estimate
    except ImportError:
        return {}
    try:  # an optional module: a change in it must not fail the check that asks
        model = gpu_estimate.Transformer(**spec)
        amp = "fp32" if precision == "fp32" else "amp"
        return {
            "estimated_peak_bytes": int(
                gpu_estimate.training_peak_bytes(model, amp, "adamw")
            )
        }
    except Exception as error:  # noqa: BLE001
        return {"estimate_error": f"{type(error).__name__}: {error}"}


def _skipped_steps(trainer) -> int:
    """Optimizer steps the fp16 GradScaler skipped (inf/NaN gradients): trainer steps minus the
    steps Adam(W) counted for its parameters."""
    counted = [int(s["step"]) for s in trainer.optimizer.state.values() if "step" in s]
    return trainer.step - (max(counted) if counted else 0)


def _training_numbers(trainer, history, wall_s: float) -> dict:
    import statistics

    steps = len(history)
    return {
        "steps": trainer.step,
        "wall_s": round(wall_s, 3),
        "train_s_per_step": history.time[-1] / steps if steps else None,
        "tokens_per_s_median": statistics.median(history.tokens_per_s)
        if steps
        else None,
        "first_loss": history.train_loss[0] if steps else None,
        "last_loss": history.train_loss[-1] if steps else None,
        "skipped_steps": _skipped_steps(trainer),
        "grad_scale": trainer.scaler.get_scale()
        if trainer.scaler is not None
        else None,
    }


def _precision_problems(ctx: Context, trainer) -> list[str]:
    problems = []
    expected = ctx.expected_precision()
    if trainer.precision != expected:
        problems.append(f"trainer precision {trainer.precision}, expected {expected}")
    if (trainer.scaler is not None) != (trainer.precision == "fp16"):
        problems.append(
            f"GradScaler {trainer.scaler!r} with precision {trainer.precision}"
        )
    return problems


def _skip_problems(details: dict) -> list[str]:
    allowed = max(3, details["steps"] // 10)
    if details["skipped_steps"] > allowed:
        return [
            f"the GradScaler skipped {details['skipped_steps']} of {details['steps']} steps"
        ]
    return []


def check_trainer_lm(ctx: Context):
    import torch

    from utils import lm_recipes
    from utils.models import TransformerLM
    from utils.optim import warmup_cosine
    from utils.train import TrainConfig, Trainer, lm_loss

    p = ctx.sizes["trainer_lm"]
    vocab, streams = ctx.data()
    V = max(len(vocab), p["vocab"])
    torch.manual_seed(0)
    model = TransformerLM(
        V, p["d_model"], p["n_heads"], p["n_layers"], max_len=p["context"]
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=p["lr"], weight_decay=0.1)
    schedule = warmup_cosine(optimizer, max(1, p["steps"] // 10), p["steps"])
    config = TrainConfig(
        max_steps=p["steps"],
        device=str(ctx.device),
        eval_every=max(1, p["steps"] // 2),
        eval_max_batches=p["eval_batches"],
        progress=False,
    )
    trainer = Trainer(model, optimizer, lm_loss, config, schedule)
    batches = lm_recipes.RandomWindows(streams["train"], p["batch"], p["context"])
    valid = lm_recipes.eval_chunks(
        lm_recipes.batchify(streams["valid"], p["batch"]), p["context"]
    )
    before = trainer.evaluate(valid)
    x, _ = batches(0)
    with torch.no_grad(), trainer.autocast():
        logits_dtype = model(x.to(ctx.device)).dtype
    start = time.perf_counter()
    history = trainer.fit(batches, eval_batches=valid)
    ctx.sync()
    details = _training_numbers(trainer, history, time.perf_counter() - start)
    after = history.eval[-1]
    details.update(
        estimated_peak(
            trainer.precision,
            vocab=V,
            d_model=p["d_model"],
            n_layers=p["n_layers"],
            n_heads=p["n_heads"],
            context=p["context"],
            batch=p["batch"],
            positions=p["context"],
        ),  # fmt: skip
        vocab_size=V,
        slice_vocab=len(vocab),
        precision=trainer.precision,
        logits_dtype=str(logits_dtype),
        eval_loss_before=before["loss"],
        eval_loss_after=after["loss"],
        eval_perplexity_after=after["perplexity"],
    )
    problems = _precision_problems(ctx, trainer) + _skip_problems(details)
    expected_dtype = AUTOCAST_NAMES[trainer.precision] or "torch.float32"
    if str(logits_dtype) != expected_dtype:
        problems.append(
            f"logits are {logits_dtype} under autocast, expected {expected_dtype}"
        )
    if not after["loss"] < before["loss"] - p["min_drop"]:
        problems.append(
            f"validation loss fell only from {before['loss']:.3f} to {after['loss']:.3f}"
        )
    summary = (
        f"{trainer.precision}: valid loss {before['loss']:.2f} -> {after['loss']:.2f} in "
        f"{trainer.step} steps, {1e3 * details['train_s_per_step']:.1f} ms/step"
    )
    return verdict(problems, summary, details)


class TextOrNoise:
    """Classification batches: a WikiText-2 window (label 1) or as many uniformly random token ids
    (label 0), ``max_len // 4 .. max_len`` tokens each, padded with ``pad`` to ``max_len``.
    ``batch_at(i)`` is a function of ``i`` (seeded with it)."""

    def __init__(self, stream, vocab_size, pad, batch, max_len, seed=0, lengths=None):
        self.stream, self.vocab_size, self.pad = stream, vocab_size, pad
        self.batch, self.max_len, self.seed = batch, max_len, seed
        self.lengths = lengths or (max_len // 4, max_len)

    def __call__(self, i):
        import torch

        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        lo, hi = self.lengths
        n = torch.randint(lo, hi + 1, (self.batch,), generator=g).tolist()
        starts = torch.randint(
            0, self.stream.numel() - hi, (self.batch,), generator=g
        ).tolist()
        labels = torch.randint(0, 2, (self.batch,), generator=g)
        x = torch.full((self.batch, self.max_len), self.pad, dtype=torch.long)
        for row, (length, start) in enumerate(zip(n, starts, strict=True)):
            if labels[row]:
                x[row, :length] = self.stream[start : start + length]
            else:
                x[row, :length] = torch.randint(
                    0, self.vocab_size, (length,), generator=g
                )
        return x, labels


def check_classifier(ctx: Context):
    import torch

    from utils.losses import classification_loss
    from utils.models import TransformerClassifier
    from utils.optim import warmup_cosine
    from utils.train import TrainConfig, Trainer

    p = ctx.sizes["classifier"]
    vocab, streams = ctx.data()
    V = len(vocab)
    pad = V  # one extra id, never a word
    torch.manual_seed(0)
    model = TransformerClassifier(
        V + 1, 2, p["d_model"], p["n_heads"], p["n_layers"], max_len=p["max_len"],
        dropout=0.1, pad_idx=pad, pooling="mean",
    )  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=p["lr"], weight_decay=0.01)
    schedule = warmup_cosine(optimizer, max(1, p["steps"] // 10), p["steps"])
    config = TrainConfig(max_steps=p["steps"], device=str(ctx.device), progress=False)
    trainer = Trainer(model, optimizer, classification_loss, config, schedule)
    batches = TextOrNoise(streams["train"], V, pad, p["batch"], p["max_len"])
    held_out = TextOrNoise(streams["valid"], V, pad, p["batch"], p["max_len"], seed=1)
    start = time.perf_counter()
    history = trainer.fit(batches)
    ctx.sync()
    details = _training_numbers(trainer, history, time.perf_counter() - start)
    result = trainer.evaluate([held_out(i) for i in range(4)])
    # Padding must not change the logits: the same rows padded to max_len and cut to their
    # longest row (at most half of max_len), in eval mode under the trainer's autocast.
    short = TextOrNoise(
        streams["valid"], V, pad, p["batch"], p["max_len"], seed=2,
        lengths=(p["max_len"] // 4, p["max_len"] // 2),
    )  # fmt: skip
    x, _ = short(0)
    width = int((x != pad).sum(dim=1).max())
    model.eval()
    with torch.no_grad(), trainer.autocast():
        padded = model(x.to(ctx.device)).float()
        trimmed = model(x[:, :width].to(ctx.device)).float()
    padding_diff = float((padded - trimmed).abs().max())
    tolerance = _tolerance(trainer.precision, 1e-4, 5e-2, 1.5e-1)
    details.update(
        estimated_peak(
            trainer.precision,
            vocab=V + 1,
            d_model=p["d_model"],
            n_layers=p["n_layers"],
            n_heads=p["n_heads"],
            context=p["max_len"],
            batch=p["batch"],
            output_rows=2,
            tied=False,
            positions=p["max_len"],
            dropout=True,
        ),  # fmt: skip
        precision=trainer.precision,
        held_out_loss=result["loss"],
        held_out_accuracy=result["accuracy"],
        padding_max_logit_diff=padding_diff,
        padding_tolerance=tolerance,
        padded_width=p["max_len"],
        trimmed_width=width,
    )
    problems = _precision_problems(ctx, trainer) + _skip_problems(details)
    if not result["accuracy"] >= 0.9:
        problems.append(
            f"held-out accuracy {result['accuracy']:.3f} < 0.9 (text vs noise)"
        )
    if not padding_diff <= tolerance:
        problems.append(
            f"padding changed the logits by {padding_diff:.2e} (> {tolerance:g})"
        )
    summary = (
        f"{trainer.precision}: held-out accuracy {result['accuracy']:.3f}, padding diff "
        f"{padding_diff:.1e}, {1e3 * details['train_s_per_step']:.1f} ms/step"
    )
    return verdict(problems, summary, details)


def check_adaptive_lm(ctx: Context):
    import torch

    from utils import lm_recipes as R

    p = ctx.sizes["adaptive_lm"]
    vocab, streams = ctx.data()
    V = max(len(vocab), p["vocab"])
    cutoffs = R.frequency_cutoffs(streams["train"], V)
    checkpoint = ctx.tmp / "adaptive_lm" / "book.pt"

    def build():
        torch.manual_seed(0)
        model = R.AdaptiveTransformerLM(
            V, cutoffs, p["d_model"], p["n_heads"], p["n_layers"], max_len=p["context"],
            dropout=p["dropout"],
        )  # fmt: skip
        run = R.book_recipe(
            model, streams["train"], p["budget_s"], p["batch"], p["context"], p["lr"],
            device=str(ctx.device), checkpoint_path=str(checkpoint),
        )  # fmt: skip
        return model, run

    model, run = build()
    trainer = run.trainer
    columns = R.batchify(streams["valid"], 8)
    chunks = R.eval_chunks(columns, p["context"])[: p["eval_chunks"]]
    before = trainer.evaluate(chunks)["loss"]
    start = time.perf_counter()
    R.train_for_budget({"book": run}, p["budget_s"], turn_s=p["turn_s"], progress=False)
    ctx.sync()
    details = _training_numbers(trainer, trainer.history, time.perf_counter() - start)
    after = trainer.evaluate(chunks)["loss"]
    model.eval()
    x, y = chunks[0]
    with torch.no_grad(), trainer.autocast():
        ce_diff = float(
            R.cross_entropy_check(model, x.to(ctx.device), y.to(ctx.device))
        )
        prompt = x[:1, :8].to(ctx.device)
        generator = torch.Generator(device=ctx.device).manual_seed(0)
        sampled = R.sample(model, prompt, 16, 1.0, p["context"], generator)
    # The checkpoint the last turn wrote reloads into a fresh model: same parameters.
    reloaded, rerun = build()
    rerun.trainer.config.max_steps = trainer.step
    rerun.trainer.fit(rerun.batch_at)  # loads the checkpoint; nothing left to train
    param_diff = max(
        float((a.detach().float() - b.detach().float()).abs().max())
        for a, b in zip(model.parameters(), reloaded.parameters(), strict=True)
    )
    tolerance = _tolerance(trainer.precision, 1e-4, 2e-2, 5e-2)
    details.update(
        vocab_size=V,
        cutoffs=cutoffs,
        planned_steps=run.planned_steps,
        train_seconds=run.seconds,
        precision=trainer.precision,
        eval_loss_before=before,
        eval_loss_after=after,
        cross_entropy_diff=ce_diff,
        cross_entropy_tolerance=tolerance,
        sampled_ids_in_range=bool(((sampled >= 0) & (sampled < V)).all()),
        resumed_step=rerun.trainer.step,
        reloaded_param_max_diff=param_diff,
    )
    problems = _precision_problems(ctx, trainer) + _skip_problems(details)
    if not after < before - 1.0:
        problems.append(f"validation loss fell only from {before:.3f} to {after:.3f}")
    if not ce_diff <= tolerance:
        problems.append(
            f"adaptive vs full softmax loss differ by {ce_diff:.2e} (> {tolerance:g})"
        )
    if not details["sampled_ids_in_range"] or sampled.shape != (1, 24):
        problems.append(f"sampling gave {tuple(sampled.shape)} ids, some out of range")
    if rerun.trainer.step != trainer.step or param_diff != 0.0:
        problems.append(
            f"the checkpoint reloaded at step {rerun.trainer.step} (expected {trainer.step}), "
            f"parameters differ by {param_diff:.2e}"
        )
    summary = (
        f"{trainer.precision}: {trainer.step}/{run.planned_steps} steps in {run.seconds:.1f} s, "
        f"valid loss {before:.2f} -> {after:.2f}, |fast - full| {ce_diff:.1e}"
    )
    return verdict(problems, summary, details)


SDPA_BACKENDS = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")


def _sdpa_plan(ctx: Context, available: list[str]) -> tuple[list[str], set[str], dict]:
    """The backends to probe, those that must run, and those left out (with the reason)."""
    if ctx.is_cuda and ctx.mode == "t4":
        # sdpa_kernel(backend) turns a backend back on that the global flags turned off, so the
        # emulation leaves out what a T4 (sm_75) lacks instead of probing it.
        why = "a T4 has no such kernel for these inputs: not probed under the emulation"
        left_out = {
            b: why for b in ("FLASH_ATTENTION", "CUDNN_ATTENTION") if b in available
        }
        probe = [b for b in available if b not in left_out]
        return probe, {"EFFICIENT_ATTENTION", "MATH"}, left_out
    if not ctx.is_cuda:
        must_run = {"MATH"}
    elif ctx.capability >= (
        8,
        0,
    ):  # bf16 on Ampere and later: flash and memory-efficient
        must_run = {"FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH"}
    else:  # a real T4: fp16, no flash
        must_run = {"EFFICIENT_ATTENTION", "MATH"}
    return list(available), must_run, {}


def check_sdpa_backends(ctx: Context):
    import torch
    from torch.nn.attention import SDPBackend

    from utils import attention_cost as A
    from utils import nb

    p = ctx.sizes["sdpa_backends"]
    dtype = nb.autocast_dtype(ctx.device) or torch.float32
    name = _precision_of(dtype)
    available = [n for n in SDPA_BACKENDS if hasattr(SDPBackend, n)]
    names, must_run, left_out = _sdpa_plan(ctx, available)
    functions = {**A.sdpa_backend_functions(names), "default": A.fused_attention}
    q, k, v = A.random_qkv(*p["probe"], dtype=dtype, device=ctx.device)
    reference = A.explicit_attention(q.float(), k.float(), v.float(), is_causal=True)
    tolerance = _tolerance(name, 1e-4, 1e-2, 5e-2)
    usable, refused, errors = {}, {}, {}
    for (
        backend,
        fn,
    ) in functions.items():  # "default": SDPA's own choice under the flags
        try:
            out = fn(q, k, v, is_causal=True)
            ctx.sync()
        except RuntimeError as error:
            refused[backend] = str(error).strip().splitlines()[0][:160]
            continue
        errors[backend] = float((out.float() - reference).abs().max())
        usable[backend] = fn
    problems = [
        f"{b} refused {name}: {refused[b]}"
        for b in sorted((must_run | {"default"}) & set(refused))
    ]
    problems += [
        f"{b} differs from explicit attention by {e:.2e} (> {tolerance:g})"
        for b, e in errors.items()
        if not e <= tolerance
    ]
    details = {
        "dtype": str(dtype),
        "probe_shape": list(p["probe"]),
        "usable": sorted(usable),
        "refused": refused,
        "not_probed": left_out,
        "max_abs_error_vs_explicit": errors,
        "tolerance": tolerance,
        "must_run": sorted(must_run),
        "shape": f"causal, batch 1, {p['heads']} heads x {p['head_dim']}",
    }
    if not usable:
        raise CheckFailed("no SDPA backend ran: " + "; ".join(problems), details)
    impls = {**usable, "explicit": A.explicit_attention}
    points = A.measure(
        impls, p["lengths"], heads=p["heads"], head_dim=p["head_dim"], dtype=dtype,
        device=ctx.device, repeats=p["repeats"], is_causal=True, progress=False,
        spin_up_s=0.2 if ctx.is_cuda else 0.05,
    )  # fmt: skip
    details["timings"] = table = {
        f"{pt.impl}@{pt.seq_len}": {
            "ms": 1e3 * pt.median_s,
            "MiB": pt.peak_bytes / 2**20,
        }
        for pt in points
    }
    longest = p["lengths"][-1]
    fastest = min(
        usable, key=lambda b: table[f"{b}@{longest}"]["ms"]
    )  # "default" included
    summary = (
        f"{name}: usable {', '.join(sorted(usable))}; fastest at L={longest}: {fastest} "
        f"{table[f'{fastest}@{longest}']['ms']:.2f} ms vs explicit "
        f"{table[f'explicit@{longest}']['ms']:.2f} ms"
    )
    return verdict(problems, summary, details)


def check_attention_memory(ctx: Context):
    from utils import attention_cost as A

    p = ctx.sizes["attention_memory"]
    impls = {"explicit": A.explicit_attention, "fused": A.fused_attention}
    points = A.measure(
        impls, p["lengths"], heads=p["heads"], head_dim=p["head_dim"], device=ctx.device,
        repeats=p["repeats"], progress=False, spin_up_s=0.2 if ctx.is_cuda else 0.05,
    )  # fmt: skip
    cost = {(pt.impl, pt.seq_len): pt for pt in points}
    problems, rows = [], {}
    for length in p["lengths"]:
        e, f = cost["explicit", length], cost["fused", length]
        output_bytes = p["heads"] * length * p["head_dim"] * 4
        rows[length] = {
            "explicit_ms": 1e3 * e.median_s,
            "fused_ms": 1e3 * f.median_s,
            "explicit_MiB": e.peak_bytes / 2**20,
            "fused_MiB": f.peak_bytes / 2**20,
            "score_MiB": e.score_bytes / 2**20,
        }
        if length >= 256:  # chapter 03b's asserts (cell 7)
            if not e.score_bytes <= e.peak_bytes < 1.25 * e.score_bytes:
                problems.append(
                    f"L={length}: explicit peak {e.peak_bytes / 2**20:.1f} MiB is not within "
                    f"[1, 1.25) x the score tensors' {e.score_bytes / 2**20:.1f} MiB"
                )
            if not f.peak_bytes < 4 * output_bytes:
                problems.append(
                    f"L={length}: fused peak {f.peak_bytes / 2**20:.1f} MiB >= 4 x its output"
                )
    longest = p["lengths"][-1]
    details = {
        "shape": f"fp32, batch 1, {p['heads']} heads x {p['head_dim']}",
        "rows": rows,
    }
    if len(p["lengths"]) >= 2:
        slope, _ = A.fit_power_law(
            p["lengths"], [cost["explicit", n].peak_bytes for n in p["lengths"]]
        )
        details["explicit_memory_slope"] = slope
    r = rows[longest]
    summary = (
        f"L={longest}: explicit {r['explicit_ms']:.2f} ms / {r['explicit_MiB']:.0f} MiB, fused "
        f"{r['fused_ms']:.2f} ms / {r['fused_MiB']:.1f} MiB"
    )
    return verdict(problems, summary, details)


def check_resume(ctx: Context):
    import torch

    from utils import lm_recipes
    from utils.models import TransformerLM
    from utils.optim import warmup_cosine
    from utils.train import TrainConfig, Trainer, lm_loss

    p = ctx.sizes["resume"]
    vocab, streams = ctx.data()
    batches = lm_recipes.RandomWindows(streams["train"], p["batch"], p["context"])
    steps = p["steps"]

    def run(max_steps: int, path: Path):
        torch.manual_seed(0)
        model = TransformerLM(
            len(vocab), p["d_model"], p["n_heads"], p["n_layers"], max_len=p["context"],
            dropout=p["dropout"],
        )  # fmt: skip
        optimizer = torch.optim.AdamW(model.parameters(), lr=p["lr"], weight_decay=0.1)
        schedule = warmup_cosine(optimizer, max(1, steps // 10), steps)
        config = TrainConfig(
            max_steps=max_steps,
            device=str(ctx.device),
            checkpoint_path=str(path),
            progress=False,
        )
        trainer = Trainer(model, optimizer, lm_loss, config, schedule)
        history = trainer.fit(batches)
        params = torch.cat(
            [q.detach().float().flatten().cpu() for q in model.parameters()]
        )
        return trainer, history.train_loss, params

    def differ(a, b):
        loss_diff = max(abs(x - y) for x, y in zip(a[1], b[1], strict=True))
        return max(loss_diff, float((a[2] - b[2]).abs().max()))

    folder = ctx.tmp / "resume"
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        whole = run(steps, folder / "whole.pt")
        again = run(steps, folder / "again.pt")
        run(steps // 2, folder / "split.pt")  # "interrupted" halfway ...
        resumed = run(
            steps, folder / "split.pt"
        )  # ... and continued from its checkpoint
    finally:
        torch.use_deterministic_algorithms(deterministic)
    if len(resumed[1]) != len(whole[1]):
        raise CheckFailed(
            f"the resumed run recorded {len(resumed[1])} steps, not {steps}"
        )
    baseline, diff = differ(whole, again), differ(whole, resumed)
    details = {
        "steps": steps,
        "halfway": steps // 2,
        "precision": whole[0].precision,
        "repeat_max_diff": baseline,
        "resumed_max_diff": diff,
        "grad_scaler": whole[0].scaler is not None,
    }
    problems = _precision_problems(ctx, whole[0])
    if baseline == 0.0 and diff != 0.0:
        problems.append(
            f"the resumed run differs by {diff:.2e}; two uninterrupted runs agree exactly"
        )
    elif diff > 2 * baseline:
        problems.append(
            f"the resumed run differs by {diff:.2e}, more than twice the run-to-run {baseline:.2e}"
        )
    summary = (
        f"{whole[0].precision}: resumed at step {steps // 2} of {steps}, max diff {diff:.1e} "
        f"(two uninterrupted runs: {baseline:.1e})"
    )
    return verdict(problems, summary, details)


def _selftest_error(ctx: Context):
    raise RuntimeError(
        "a deliberate error (tests that one failing check leaves the rest)"
    )


def _selftest_hang(ctx: Context):
    time.sleep(3600)  # killed by its time box


def _selftest_crash(ctx: Context):
    os._exit(7)  # the process dies mid-check, as a segfault would end it


SELFTESTS = {"_selftest_error": _selftest_error, "_selftest_hang": _selftest_hang,
             "_selftest_crash": _selftest_crash}  # fmt: skip

CHECK_FUNCTIONS = {
    "environment": check_environment,
    "trainer_lm": check_trainer_lm,
    "classifier": check_classifier,
    "adaptive_lm": check_adaptive_lm,
    "sdpa_backends": check_sdpa_backends,
    "attention_memory": check_attention_memory,
    "resume": check_resume,
    **SELFTESTS,
}


def run_one(name: str, ctx: Context) -> dict:
    """Run check ``name``; return its record (never raises for a failing check)."""
    import torch

    gc.collect()
    if ctx.is_cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(ctx.device)
    record = {"name": name, "mode": ctx.mode, "passed": False, "details": {}}
    start = time.perf_counter()
    try:
        with _seeded(0):
            message, details = CHECK_FUNCTIONS[name](ctx)
        ctx.sync()
        record.update(passed=True, message=message, details=details)
    except CheckFailed as failure:
        record.update(message=str(failure), details=failure.details)
    except Exception as error:  # noqa: BLE001 - one check's failure must not stop the rest
        lines = traceback.format_exception(type(error), error, error.__traceback__)
        record.update(
            message=f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300]}"
            if str(error).strip()
            else type(error).__name__,
            details={"traceback": "".join(lines)[-4000:]},
        )
    record["seconds"] = round(time.perf_counter() - start, 3)
    if ctx.is_cuda:
        record["peak_memory_bytes"] = peak = torch.cuda.max_memory_allocated(ctx.device)
        record["peak_reserved_bytes"] = torch.cuda.max_memory_reserved(ctx.device)
        if record["details"].get("estimated_peak_bytes"):
            record["details"]["peak_over_estimate"] = (
                peak / record["details"]["estimated_peak_bytes"]
            )
    else:
        record["peak_memory_bytes"] = record["peak_reserved_bytes"] = None
    return record


@contextlib.contextmanager
def _seeded(seed: int):
    from utils.nb import seed_everything

    seed_everything(seed)
    yield


def child_main(args) -> int:
    """One mode's checks in this process; each record is appended to ``args.events`` at once."""
    import torch

    from utils import nb

    if args.threads:
        torch.set_num_threads(args.threads)
    device = nb.pick_device(args.device)
    notes = apply_mode(device, args.mode, args.t4_memory_gib)

    def emit(event: dict) -> None:
        with open(args.events, "a") as f:
            f.write(json.dumps(event) + "\n")

    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        ctx = Context(device, args.mode, args.scale, Path(args.data), Path(tmp), notes)
        for name in args.checks.split(","):
            emit({"event": "start", "check": name})
            record = run_one(name, ctx)
            emit({"event": "result", **record})
            if not record["passed"] and ctx.is_cuda:
                return 3  # the parent starts a new process for the rest (a clean CUDA context)
    return 0


# =================================================================================================
# The parent: one child per mode, time boxes, the report
# =================================================================================================


def _read_events(path: Path, seen: int) -> tuple[list[dict], int]:
    if not path.exists():
        return [], seen
    lines = path.read_text().splitlines()
    complete = [line for line in lines[seen:] if line.endswith("}")]
    return [json.loads(line) for line in complete], seen + len(complete)


def _failure(name: str, mode: str, message: str, seconds: float | None = None) -> dict:
    return {
        "name": name,
        "mode": mode,
        "passed": False,
        "message": message,
        "seconds": None if seconds is None else round(seconds, 3),
        "peak_memory_bytes": None,
        "peak_reserved_bytes": None,
        "details": {},
    }


def _stop(proc: subprocess.Popen) -> None:
    """Kill the child we started (and what it started: it leads its own process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_mode(
    args, mode: str, checks: list[str], deadline: float, printer
) -> list[dict]:
    """Run ``checks`` in ``mode`` in child processes; return one record per check."""
    sizes = SCALES[args.scale]
    boxes = sizes["time_box_s"]
    records: list[dict] = []
    pending = list(checks)
    env = dict(os.environ)
    env.setdefault(
        "CUBLAS_WORKSPACE_CONFIG", ":4096:8"
    )  # lets cuBLAS be deterministic (resume)
    while pending:
        if time.monotonic() >= deadline:
            records += [
                _failure(n, mode, "not run: the overall time limit was reached")
                for n in pending
            ]
            break
        with tempfile.TemporaryDirectory(prefix="gpu_check_run_") as tmp:
            events, log = Path(tmp) / "events.jsonl", Path(tmp) / "child.log"
            command = [
                sys.executable, str(Path(__file__).resolve()), "--child", "--device", args.device,
                "--mode", mode, "--scale", args.scale, "--data", str(args.data), "--checks",
                ",".join(pending), "--events", str(events), "--t4-memory-gib",
                str(args.t4_memory_gib), "--threads", str(args.threads or 0),
            ]  # fmt: skip
            with open(log, "wb") as log_file:
                proc = subprocess.Popen(
                    command, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                    start_new_session=True,
                )  # fmt: skip
                seen, current, started = 0, None, time.monotonic()
                stopped = None
                while True:
                    exited = proc.poll() is not None  # then every event is in the file
                    new, seen = _read_events(events, seen)
                    for event in new:
                        if event.pop("event") == "start":
                            current, started = event["check"], time.monotonic()
                        else:
                            records.append(event)
                            pending.remove(event["name"])
                            printer(event)
                            current = None
                    if exited:
                        break
                    now = time.monotonic()
                    box = boxes.get(current, boxes["default"]) if current else None
                    if current and now - started > box:
                        stopped = f"timed out after {box:g} s (time box); the process was killed"
                    elif now > deadline:
                        stopped = "stopped: the overall time limit was reached"
                    if stopped:
                        _stop(proc)
                        break
                    time.sleep(0.1)
            tail = log.read_text(errors="replace")[-1500:].strip()
            if current is not None:  # the check that was running when the child ended
                message = (
                    stopped or f"the check process exited with status {proc.returncode}"
                )
                record = _failure(current, mode, message, time.monotonic() - started)
                record["details"]["log_tail"] = tail
                records.append(record)
                pending.remove(current)
                printer(record)
            elif pending and not stopped and proc.returncode != 3:
                # It ended without running them (e.g. it failed to start): do not loop forever.
                for name in pending:
                    record = _failure(
                        name,
                        mode,
                        f"the check process ended ({proc.returncode}) before this check",
                    )
                    record["details"]["log_tail"] = tail
                    records.append(record)
                    printer(record)
                pending = []
    return records


ESTIMATE_FACTOR = 1.5  # utils.gpu_estimate aims to be right within about this factor


def memory_estimate_record(
    mode: str, records: list[dict], on_cuda: bool
) -> dict | None:
    """Measured peaks against ``utils.gpu_estimate`` for the checks that recorded an estimate;
    None when no check did (the module is absent)."""
    mine = [r for r in records if r["mode"] == mode]
    with_estimate = [
        r
        for r in mine
        if {"estimated_peak_bytes", "estimate_error"} & set(r["details"])
    ]
    if not with_estimate:
        return None
    record = _failure("memory_estimate", mode, "")
    ratios = {
        r["name"]: r["details"]["peak_over_estimate"]
        for r in with_estimate
        if "peak_over_estimate" in r["details"]
    }
    errors = {
        r["name"]: r["details"]["estimate_error"]
        for r in with_estimate
        if "estimate_error" in r["details"]
    }
    record["details"] = {"peak_over_estimate": ratios, "estimate_errors": errors}
    if not on_cuda:
        record.update(passed=True, skipped=True, message="no CUDA peak memory on a CPU")
        return record
    outside = {
        n: q
        for n, q in ratios.items()
        if not 1 / ESTIMATE_FACTOR <= q <= ESTIMATE_FACTOR
    }
    text = ", ".join(f"{n} {q:.2f}" for n, q in ratios.items())
    if errors or outside or not ratios:
        problems = [f"{n}: estimate failed ({e})" for n, e in errors.items()]
        problems += [
            f"{n}: measured / estimated peak {q:.2f}" for n, q in outside.items()
        ]
        record["message"] = "; ".join(problems) or "no check measured a peak to compare"
    else:
        record.update(passed=True, message=f"measured / estimated peak: {text}")
    return record


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "device"


def format_table(records: list[dict]) -> str:
    lines = [
        f"{'mode':<7} {'check':<17} {'result':<6} {'seconds':>8} {'peak MiB':>9}  message"
    ]
    for r in records:
        peak = r.get("peak_memory_bytes")
        peak_text = f"{peak / 2**20:>9.1f}" if peak is not None else f"{'-':>9}"
        seconds = (
            f"{r['seconds']:>8.1f}" if r.get("seconds") is not None else f"{'-':>8}"
        )
        message = r.get("message") or ""
        message = message if len(message) <= 100 else message[:97] + "..."
        verdict_text = (
            ("skip" if r.get("skipped") else "pass") if r["passed"] else "FAIL"
        )
        lines.append(
            f"{r['mode']:<7} {r['name']:<17} {verdict_text:<6} {seconds} {peak_text}  {message}"
        )
    return "\n".join(lines)


def _default_data() -> Path | None:
    for path in (HERE / "data", ROOT / DEFAULT_BUNDLE / "data"):
        if (path / "wikitext-2" / "train.txt").is_file():
            return path
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--prepare", metavar="DIR", help="write the bundle a GPU run carries"
    )
    parser.add_argument(
        "--source", help="data folder holding wikitext-2/ (for --prepare)"
    )
    parser.add_argument("--train-bytes", type=int, default=TRAIN_SLICE_BYTES)
    parser.add_argument("--valid-bytes", type=int, default=VALID_SLICE_BYTES)
    parser.add_argument(
        "--carry-limit-mib", type=float, default=CARRY_LIMIT_BYTES / 2**20
    )
    parser.add_argument(
        "--device", default="cuda", help="cuda (default), cuda:N or cpu"
    )
    parser.add_argument("--mode", choices=(*MODES, "both"), default="both")
    parser.add_argument(
        "--scale", choices=tuple(SCALES), help="default: gpu on CUDA, else cpu"
    )
    parser.add_argument(
        "--data", type=Path, help="folder with wikitext-2/{train,valid}.txt"
    )
    parser.add_argument(
        "--out", help="report file, or a folder for gpu_check_<device>.json"
    )
    parser.add_argument("--only", help=f"comma-separated subset of {', '.join(CHECKS)}")
    parser.add_argument(
        "--time-limit", type=float, help="seconds for everything (default: scale's)"
    )
    parser.add_argument("--t4-memory-gib", type=float, default=T4_MEMORY_GIB)
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (default: 1 on a CPU)"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--checks", help=argparse.SUPPRESS)
    parser.add_argument("--events", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.prepare:
        try:
            manifest = prepare(
                args.prepare, args.source, args.train_bytes, args.valid_bytes,
                int(args.carry_limit_mib * 2**20),
            )  # fmt: skip
        except (ValueError, FileNotFoundError) as error:
            print(f"--prepare: {error}", file=sys.stderr)
            return 2
        print(
            f"wrote {args.prepare}: {len(manifest['files'])} files, "
            f"{manifest['total_bytes'] / 2**20:.2f} MiB (limit {manifest['carry_limit_bytes'] / 2**20:g} MiB)"
        )
        for split, info in manifest["data"].items():
            print(
                f"  data/wikitext-2/{split}.txt: {info['bytes']:,} bytes, {info['lines']:,} lines from {info['source']}"
            )
        print(
            f"  utils modules: {', '.join(m.removeprefix('utils.') for m in manifest['utils_modules'])}"
        )
        return 0

    is_cpu = args.device == "cpu"
    args.scale = args.scale or ("cpu" if is_cpu else "gpu")
    if args.threads is None and is_cpu:
        args.threads = 1
    if args.child:
        return child_main(args)

    args.data = args.data or _default_data()
    if args.data is None or not (args.data / "wikitext-2" / "train.txt").is_file():
        parser.error(f"no data: pass --data, or run --prepare {DEFAULT_BUNDLE} first")
    checks = list(CHECKS)
    if args.only:
        checks = [c.strip() for c in args.only.split(",")]
        unknown = [c for c in checks if c not in CHECK_FUNCTIONS]
        if unknown:
            parser.error(f"unknown checks {unknown}; choose from {', '.join(CHECKS)}")
    modes = list(MODES) if args.mode == "both" else [args.mode]
    limit = args.time_limit or SCALES[args.scale]["time_limit_s"]
    begin = time.monotonic()
    deadline = begin + limit
    print(
        f"gpu_check: device {args.device}, scale {args.scale}, modes {', '.join(modes)}, "
        f"time limit {limit:g} s, data {args.data}"
    )

    def printer(record: dict) -> None:
        print(format_table([record]).splitlines()[1], flush=True)

    records = []
    for mode in modes:
        records += run_mode(args, mode, checks, deadline, printer)
        estimate = memory_estimate_record(mode, records, not is_cpu)
        if estimate is not None:
            records.append(estimate)
            printer(estimate)
    environment = next(
        (r for r in records if r["name"] == "environment" and r["details"]), None
    )
    details = environment["details"] if environment else {}
    manifest_path = args.data.parent / "MANIFEST.json"
    report = {
        "tool": "tools/gpu_check.py",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "argv": sys.argv[1:] if argv is None else argv,
        "scale": args.scale,
        "modes": {
            r["mode"]: {
                "notes": r["details"].get("notes"),
                "precision": r["details"].get("trainer_precision"),
            }
            for r in records
            if r["name"] == "environment"
        },
        "device": details.get("device"),
        "versions": details.get("versions"),
        "bundle_manifest": json.loads(manifest_path.read_text())
        if manifest_path.is_file()
        else None,
        "wall_seconds": round(time.monotonic() - begin, 1),
        "passed": all(r["passed"] for r in records),
        "checks": records,
    }
    device_name = (details.get("device") or {}).get("name", args.device)
    slug = "cpu" if is_cpu else _slug(device_name)
    out = Path(args.out) if args.out else ROOT / "results"
    if args.out is None or args.out.endswith(("/", os.sep)) or out.is_dir():
        out = out / f"gpu_check_{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(format_table(records))
    n_failed = sum(not r["passed"] for r in records)
    print(
        f"\n{len(records) - n_failed}/{len(records)} checks passed in {report['wall_seconds']:g} s; "
        f"report: {out}"
    )
    return 1 if n_failed else 0


if __name__ == "__main__":
    sys.exit(main())
