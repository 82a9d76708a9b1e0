"""Attention and training-curve figures, an attention explorer widget, and bertviz without a CDN.

The figure functions *return* ``plotly.graph_objects.Figure`` objects; display them with
:func:`utils.plotting.show`.

- :func:`attention_heatmap`, :func:`attention_grid`: one head, or all heads of a layer.
- :func:`token_heatmap`, :func:`token_axis`: the pieces they are built from, for hand-made figures
  (a heatmap keyed by position, so repeated tokens cannot merge rows or columns).
- :func:`plot_curves`: loss / metric curves from a history (a dict of lists).
- :func:`attention_for_text` + :class:`AttentionExplorer`: type a text, pick layer and head.
- :func:`head_view`, :func:`model_view`: bertviz views rewritten so that they draw without a CDN.
  Where their JavaScript comes from follows :func:`utils.plotting.plotly_source`: in the built site
  require.js, d3 and jQuery come from its ``_static/vendor`` folder (a CDN only when that fails);
  in a live JupyterLab / Notebook / VS Code session the first view of a kernel carries d3 and
  jQuery from the folder ``make vendor`` fills (``book/_vendor/vendor``, offline too; the CDN when
  it is empty); on Colab they come from the CDN.

Attention tensors follow the book's model contract: ``model(idx[B, L], return_attention=True)``
returns ``(logits, attentions)`` with ``attentions`` a list (one per layer) of ``[B, H, L, L]``
tensors whose rows (last dimension) sum to one. Hugging Face models give the same layout in
``outputs.attentions`` when called with ``output_attentions=True``.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from .batches import eval_mode, model_device
from .plotting import plotly_source

DEFAULT_VENDOR_URL = "../_static/vendor"
# Filled by ``make vendor`` (tools/vendor_js.py); read here only for live notebooks.
VENDOR_DIR = Path(__file__).resolve().parents[1] / "book" / "_vendor" / "vendor"

# --------------------------------------------------------------------------------------------------
# Argument helpers
# --------------------------------------------------------------------------------------------------


def _to_numpy(name: str, value: Any, ndim: int) -> np.ndarray:
    """A float ndarray of exactly ``ndim`` dimensions, all finite, from a tensor / array / lists."""
    if isinstance(value, torch.Tensor):
        array = value.detach().to("cpu", torch.float32).numpy()
    else:
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"{name} must be a torch.Tensor or numpy array of numbers, "
                f"got {type(value).__name__}"
            ) from error
    if array.ndim != ndim:
        raise ValueError(
            f"{name} must have {ndim} dimensions, got shape {tuple(array.shape)}"
        )
    if array.size == 0:
        raise ValueError(f"{name} is empty (shape {tuple(array.shape)})")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def _check_tokens(name: str, tokens: Any, length: int, axis: str) -> list[str]:
    if isinstance(tokens, str) or not isinstance(tokens, Sequence):
        raise TypeError(
            f"{name} must be a list of token strings, got {type(tokens).__name__}"
        )
    if len(tokens) != length:
        raise ValueError(
            f"{name} has {len(tokens)} tokens but the weights have {length} {axis} positions"
        )
    return [str(token) for token in tokens]


def _display_text(token: str) -> str:
    """Escape a token for plotly's HTML-like labels, so that e.g. ``<s>`` is not strikethrough."""
    return html.escape(token, quote=False)


# --------------------------------------------------------------------------------------------------
# Heatmaps
# --------------------------------------------------------------------------------------------------


def token_heatmap(
    weights: Any, tokens_q: Sequence[str], tokens_k: Sequence[str], **trace_kwargs: Any
) -> go.Heatmap:
    """A ``[n_q, n_k]`` heatmap keyed by *position*, with the tokens in the hover text.

    Plotly merges equal category labels into one row or column (two "the" tokens, seven
    ``[PAD]``), so a heatmap with tokens as its x / y values draws fewer cells than its data.
    Positions cannot repeat; put the tokens on the axes with :func:`token_axis`. Keyword arguments
    go to ``go.Heatmap`` (a ``hovertemplate`` given there replaces the default).
    """
    weights = _to_numpy("weights", weights, ndim=2)
    n_q, n_k = weights.shape
    shown_q = _check_tokens("tokens_q", tokens_q, n_q, "query")
    shown_k = _check_tokens("tokens_k", tokens_k, n_k, "key")
    shown_q, shown_k = (
        [_display_text(t) for t in shown_q],
        [_display_text(t) for t in shown_k],
    )
    # customdata[i, j] = (query token, key token): hover names the tokens, not just positions.
    customdata = np.empty((n_q, n_k, 2), dtype=object)
    customdata[:, :, 0] = np.array(shown_q, dtype=object)[:, None]
    customdata[:, :, 1] = np.array(shown_k, dtype=object)[None, :]
    options = {
        "hovertemplate": (
            "query %{y}: %{customdata[0]}<br>key %{x}: %{customdata[1]}"
            "<br>weight: %{z:.3f}<extra></extra>"
        ),
        **trace_kwargs,
    }
    return go.Heatmap(
        z=weights,
        x=list(range(n_k)),
        y=list(range(n_q)),
        customdata=customdata,
        **options,
    )


def token_axis(tokens: Sequence[str]) -> dict[str, Any]:
    """Axis settings that label positions ``0..len(tokens)-1`` with the tokens (repeats kept)."""
    return {
        "tickmode": "array",
        "tickvals": list(range(len(tokens))),
        "ticktext": [_display_text(t) for t in tokens],
        "showgrid": False,
    }


def attention_heatmap(
    weights: torch.Tensor | np.ndarray,
    tokens_q: Sequence[str],
    tokens_k: Sequence[str] | None = None,
    title: str | None = None,
    *,
    colorscale: str = "Blues",
    zmin: float | None = 0.0,
    zmax: float | str | None = "data",
) -> go.Figure:
    """Heatmap of one head's attention weights ``[L_q, L_k]``: row i = query token i.

    Tokens label both axes (query on y, read top to bottom; key on x). Positions, not token
    strings, are the axis values, so repeated tokens keep separate rows and columns. The colour
    scale spans ``zmin..zmax``: from 0 to the largest weight shown by default (``"data"``), so a
    head over 30 tokens, whose weights are mostly near 1/30, is not drawn almost white; pass
    ``zmax=1.0`` to compare heads on the scale of probabilities, ``None`` for plotly's own range.
    """
    z = _to_numpy("weights", weights, ndim=2)
    if isinstance(zmax, str):
        if zmax != "data":
            raise ValueError(f"zmax must be a number, None or 'data', got {zmax!r}")
        finite = z[np.isfinite(z)]
        zmax = (
            float(finite.max())
            if finite.size and finite.max() > (zmin or 0.0)
            else None
        )
    tokens_q = _check_tokens("tokens_q", tokens_q, z.shape[0], "query")
    tokens_k = _check_tokens(
        "tokens_k", tokens_q if tokens_k is None else tokens_k, z.shape[1], "key"
    )
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title must be a string or None, got {type(title).__name__}")
    trace = token_heatmap(
        z,
        tokens_q,
        tokens_k,
        colorscale=colorscale,
        zmin=zmin,
        zmax=zmax,
        colorbar={"title": "w"},
    )
    fig = go.Figure(trace)
    cell = 28 if max(z.shape) <= 24 else 18
    fig.update_layout(
        title=title,
        xaxis={**token_axis(tokens_k), "title": "key", "tickangle": -45},
        yaxis={**token_axis(tokens_q), "title": "query", "autorange": "reversed"},
        height=int(min(900, max(320, 160 + cell * z.shape[0]))),
        margin={"l": 90, "r": 30, "t": 60 if title else 30, "b": 90},
    )
    return fig


def attention_grid(
    weights: torch.Tensor | np.ndarray,
    tokens: Sequence[str],
    n_cols: int = 4,
    title: str | None = None,
    *,
    tokens_k: Sequence[str] | None = None,
    colorscale: str = "Blues",
) -> go.Figure:
    """All heads of one layer, ``weights[H, L_q, L_k]``, as a grid of heatmaps (one per head).

    All panels share one colour axis fixed to 0..1, so equal colours mean equal weights.
    """
    w = _to_numpy("weights", weights, ndim=3)
    n_heads, n_q, n_k = w.shape
    tokens_q = _check_tokens("tokens", tokens, n_q, "query")
    tokens_k = _check_tokens(
        "tokens_k", tokens_q if tokens_k is None else tokens_k, n_k, "key"
    )
    if not isinstance(n_cols, int) or isinstance(n_cols, bool) or n_cols < 1:
        raise ValueError(f"n_cols must be a positive integer, got {n_cols!r}")
    n_cols = min(n_cols, n_heads)
    n_rows = math.ceil(n_heads / n_cols)
    fig = make_subplots(
        rows=n_rows,
        cols=n_cols,
        subplot_titles=[f"head {h}" for h in range(n_heads)],
        horizontal_spacing=0.06,
        vertical_spacing=min(0.12, 0.5 / n_rows),
    )
    for h in range(n_heads):
        row, col = divmod(h, n_cols)
        trace = token_heatmap(w[h], tokens_q, tokens_k, coloraxis="coloraxis")
        trace.hovertemplate = f"head {h}<br>" + trace.hovertemplate
        fig.add_trace(trace, row=row + 1, col=col + 1)
    fig.update_xaxes(**token_axis(tokens_k), tickangle=-45, tickfont={"size": 9})
    fig.update_yaxes(**token_axis(tokens_q), autorange="reversed", tickfont={"size": 9})
    # Hide the axes of the empty cells in an incomplete last row.
    for cell in range(n_heads, n_rows * n_cols):
        row, col = divmod(cell, n_cols)
        fig.update_xaxes(visible=False, row=row + 1, col=col + 1)
        fig.update_yaxes(visible=False, row=row + 1, col=col + 1)
    fig.update_layout(
        title=title,
        coloraxis={
            "colorscale": colorscale,
            "cmin": 0.0,
            "cmax": 1.0,
            "colorbar": {"title": "w"},
        },
        height=int(min(1600, 120 + n_rows * max(220, 14 * n_q))),
        margin={"l": 60, "r": 30, "t": 80 if title else 50, "b": 60},
    )
    return fig


# --------------------------------------------------------------------------------------------------
# Curves
# --------------------------------------------------------------------------------------------------


def _as_history_dict(history: Any) -> dict[str, list]:
    if hasattr(history, "to_dict") and callable(history.to_dict):
        history = history.to_dict()
    if not isinstance(history, Mapping):
        raise TypeError(
            "history_or_dict must be a dict of lists or an object with .to_dict(), "
            f"got {type(history).__name__}"
        )
    result = {}
    for key, values in history.items():
        if isinstance(
            values, Mapping
        ):  # e.g. pandas' DataFrame.to_dict(): {column: {row: value}}
            values = list(values.values())
        if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
            continue  # scalars / metadata next to the curves
        result[str(key)] = list(values)
    return result


def _as_float(value: Any) -> float:
    if value is None:
        return math.nan
    if isinstance(value, torch.Tensor):
        return float(value.detach().cpu().item())
    return float(value)


def plot_curves(
    history_or_dict: Any,
    keys: Sequence[str] = ("train_loss", "val_loss"),
    x: str = "step",
    title: str | None = None,
    log_y: bool = False,
) -> go.Figure:
    """Line plot of the curves ``history[key]`` for each key in ``keys`` against ``history[x]``.

    ``history_or_dict`` is a dict of equal-length lists or anything with ``.to_dict()``. Keys that
    are absent are skipped (at least one must be present); ``None`` / NaN entries are left out, so
    a validation loss recorded every few steps can share the ``x`` column of the training loss.
    Without an ``x`` column the x values are 0, 1, 2, ...
    """
    history = _as_history_dict(history_or_dict)
    if isinstance(keys, str):
        keys = (keys,)
    if not isinstance(x, str):
        raise TypeError(f"x must be the name of a column, got {type(x).__name__}")
    present = [key for key in keys if key in history]
    if not present:
        raise ValueError(
            f"none of keys={tuple(keys)!r} is in the history; available: {sorted(history)}"
        )
    fig = go.Figure()
    for key in present:
        ys = [_as_float(v) for v in history[key]]
        if x in history:
            xs = [_as_float(v) for v in history[x]]
            if len(xs) != len(ys):
                raise ValueError(
                    f"history[{key!r}] has {len(ys)} values but history[{x!r}] has {len(xs)}"
                )
        else:
            xs = list(range(len(ys)))
        pairs = [(a, b) for a, b in zip(xs, ys, strict=True) if math.isfinite(b)]
        if log_y and any(b <= 0 for _, b in pairs):
            raise ValueError(
                f"log_y=True needs positive values, but history[{key!r}] has some <= 0"
            )
        fig.add_trace(
            go.Scatter(
                x=[a for a, _ in pairs],
                y=[b for _, b in pairs],
                mode="lines+markers" if len(pairs) <= 30 else "lines",
                name=key,
            )
        )
    fig.update_layout(
        title=title,
        xaxis_title=x if x in history else "index",
        yaxis_title=present[0] if len(present) == 1 else "value",
        yaxis_type="log" if log_y else "linear",
        hovermode="x unified",
    )
    return fig


# --------------------------------------------------------------------------------------------------
# Attention for a text (compute part of the explorer)
# --------------------------------------------------------------------------------------------------


class EmptyTextError(ValueError):
    """The text to analyse is empty (or tokenizes to nothing)."""


def _hf_max_len(model: Any, tokenizer: Any) -> int | None:
    """:func:`utils.decoding.context_length`, or ``None`` when neither side has a limit."""
    from .decoding import context_length

    try:
        return context_length(model, tokenizer)
    except TypeError:
        return None


def _stack_attentions(attentions: Any) -> torch.Tensor:
    """``[n_layers, H, L, L]`` (float32, CPU) from a list of ``[1, H, L, L]`` tensors."""
    if attentions is None or len(attentions) == 0:
        raise RuntimeError(
            "The model returned no attention weights. Hugging Face models must be loaded with "
            "attn_implementation='eager' (or output_attentions=True) to return them."
        )
    stacked = torch.stack([a.detach().to("cpu", torch.float32) for a in attentions])
    if stacked.dim() != 5 or stacked.shape[1] != 1:
        raise RuntimeError(
            f"expected one [1, H, L, L] tensor per layer, got a stack of shape {tuple(stacked.shape)}"
        )
    return stacked[:, 0]


def attention_for_text(
    model: torch.nn.Module,
    text: str,
    *,
    tokenizer: Any = None,
    encode: Callable[[str], list[int]] | None = None,
    decode_tokens: Callable[[list[int]], list[str]] | None = None,
    max_len: int | None = None,
) -> tuple[list[str], torch.Tensor, bool]:
    """Run ``model`` on ``text`` and return ``(tokens, attentions[n_layers, H, L, L], truncated)``.

    Two kinds of model:

    - the book's models: pass ``encode(text) -> ids`` and ``decode_tokens(ids) -> strings``; the
      model is called as ``model(idx[1, L], return_attention=True)``. ``max_len`` defaults to
      ``model.max_len``. For a classifier with ``pooling="cls"`` the extra first position is
      labelled ``"[CLS]"``;
    - Hugging Face models: pass ``tokenizer``; the model is called with ``output_attentions=True``.
      ``max_len`` defaults to the smaller of the tokenizer's and the position table's limits.

    A text longer than ``max_len`` tokens is cut to ``max_len`` (``truncated=True``). An empty
    text raises :class:`EmptyTextError`. The model runs in eval mode under ``torch.no_grad()`` (its
    training flag is restored afterwards), so dropout does not perturb the weights.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    if max_len is not None and (
        not isinstance(max_len, int) or isinstance(max_len, bool)
    ):
        raise TypeError(f"max_len must be a positive integer or None, got {max_len!r}")
    if max_len is not None and max_len < 1:
        raise ValueError(f"max_len must be a positive integer or None, got {max_len!r}")
    hf_mode = tokenizer is not None
    if not hf_mode and (encode is None or decode_tokens is None):
        raise TypeError(
            "pass either tokenizer= (Hugging Face model) or both encode= and decode_tokens= "
            "(the book's models)"
        )
    if not text.strip():
        raise EmptyTextError(
            "The text is empty: type a sentence to see its attention weights."
        )

    with eval_mode(model), torch.no_grad():
        if hf_mode:
            return _hf_attention(model, tokenizer, text, max_len)
        return _book_attention(model, encode, decode_tokens, text, max_len)


def _book_attention(model, encode, decode_tokens, text, max_len):
    ids = list(encode(text))
    if not ids:
        raise EmptyTextError(f"The text {text!r} produced no tokens.")
    if max_len is None:
        model_max = getattr(model, "max_len", None)
        max_len = model_max if isinstance(model_max, int) and model_max > 0 else None
    truncated = max_len is not None and len(ids) > max_len
    if truncated:
        ids = ids[:max_len]
    idx = torch.tensor(
        [ids], dtype=torch.long, device=model_device(model, default="cpu")
    )
    output = model(idx, return_attention=True)
    if not isinstance(output, tuple) or len(output) != 2:
        raise RuntimeError(
            "model(idx, return_attention=True) must return (logits, attentions), "
            f"got {type(output).__name__}"
        )
    attentions = _stack_attentions(output[1])
    tokens = [str(t) for t in decode_tokens(ids)]
    if (
        attentions.shape[-1] == len(tokens) + 1
        and getattr(model, "pooling", None) == "cls"
    ):
        tokens = [
            "[CLS]",
            *tokens,
        ]  # TransformerClassifier(pooling="cls") prepends a CLS position
    if len(tokens) != attentions.shape[-1]:
        raise RuntimeError(
            f"decode_tokens returned {len(tokens)} tokens for {attentions.shape[-1]} positions"
        )
    return tokens, attentions, truncated


def _hf_attention(model, tokenizer, text, max_len):
    if max_len is None:
        max_len = _hf_max_len(model, tokenizer)
    full_length = len(tokenizer(text, verbose=False)["input_ids"])
    truncated = max_len is not None and full_length > max_len
    batch = tokenizer(
        text, return_tensors="pt", truncation=max_len is not None, max_length=max_len
    ).to(model_device(model, default="cpu"))
    output = model(**batch, output_attentions=True)
    attentions = _stack_attentions(getattr(output, "attentions", None))
    tokens = tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    return [str(t) for t in tokens], attentions, truncated


# --------------------------------------------------------------------------------------------------
# Explorer widget
# --------------------------------------------------------------------------------------------------


def _figure_output(fig: go.Figure) -> dict[str, Any]:
    """A ``display_data`` output for an Output widget, in the book's static-site-friendly HTML."""
    try:
        from utils.plotting import figure_html

        page = figure_html(fig)
    except (
        ImportError
    ):  # utils.plotting missing: plotly's own HTML, plotly.js from its CDN
        page = fig.to_html(include_plotlyjs="cdn", full_html=False)
    return {"output_type": "display_data", "data": {"text/html": page}, "metadata": {}}


def _message_output(text: str) -> dict[str, Any]:
    return {"output_type": "stream", "name": "stdout", "text": text + "\n"}


class AttentionExplorer:
    """Type a text, choose a layer and a head, see that head's attention as a heatmap.

    ``AttentionExplorer(model, encode=..., decode_tokens=...)`` for the book's models, or
    ``AttentionExplorer(hf_model, tokenizer)`` for Hugging Face BERT-family models. Display the
    object (last expression of a cell) or ``explorer.widget``. The text is re-analysed when the
    text box loses focus; moving a slider only redraws. Messages (empty text, truncation, errors)
    appear in the output area, never as exceptions.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any = None,
        *,
        encode: Callable[[str], list[int]] | None = None,
        decode_tokens: Callable[[list[int]], list[str]] | None = None,
        text: str = "The cat sat on the mat because it was tired.",
        max_len: int | None = None,
        layer: int = 0,
        head: int = 0,
    ) -> None:
        import ipywidgets as widgets

        if not isinstance(model, torch.nn.Module):
            raise TypeError(
                f"model must be a torch.nn.Module, got {type(model).__name__}"
            )
        if tokenizer is None and (encode is None or decode_tokens is None):
            raise TypeError(
                "pass either a Hugging Face tokenizer or both encode= and decode_tokens="
            )
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, got {type(text).__name__}")
        for name, value in (("layer", layer), ("head", head)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(
                    f"{name} must be a non-negative integer, got {value!r}"
                )
        self.model = model
        self._compute_kwargs = {
            "tokenizer": tokenizer,
            "encode": encode,
            "decode_tokens": decode_tokens,
            "max_len": max_len,
        }
        self.tokens: list[str] = []
        self.attentions: torch.Tensor | None = None  # [n_layers, H, L, L]
        self.figure: go.Figure | None = (
            None  # the heatmap on display, None while a message shows
        )
        self.message = ""
        self._updating = False  # True while _on_text adjusts the sliders

        self.text_box = widgets.Textarea(
            value=text,
            description="Text",
            continuous_update=False,
            layout=widgets.Layout(width="100%", height="4em"),
        )
        self.layer_slider = widgets.IntSlider(
            value=layer, min=0, max=max(layer, 0), description="Layer"
        )
        self.head_slider = widgets.IntSlider(
            value=head, min=0, max=max(head, 0), description="Head"
        )
        self.output = widgets.Output()
        self.widget = widgets.VBox(
            [
                self.text_box,
                widgets.HBox([self.layer_slider, self.head_slider]),
                self.output,
            ]
        )
        self.text_box.observe(self._on_text, names="value")
        self.layer_slider.observe(self._on_selection, names="value")
        self.head_slider.observe(self._on_selection, names="value")
        self._on_text()

    # -- callbacks ---------------------------------------------------------------------------------

    def _on_text(self, change: Any = None) -> None:
        self.message = ""
        try:
            tokens, attentions, truncated = attention_for_text(
                self.model, self.text_box.value, **self._compute_kwargs
            )
        except EmptyTextError as error:
            self.tokens, self.attentions, self.figure = [], None, None
            self._show([_message_output(str(error))])
            return
        except (
            Exception
        ) as error:  # a widget callback must not raise: say what went wrong
            self.tokens, self.attentions, self.figure = [], None, None
            self._show([_message_output(f"Could not compute attention: {error}")])
            return
        self.tokens, self.attentions = tokens, attentions
        if truncated:
            self.message = (
                f"The text is longer than the model's maximum of {len(tokens)} tokens; "
                f"showing its first {len(tokens)} tokens."
            )
        n_layers, n_heads = attentions.shape[0], attentions.shape[1]
        # Changing max/value fires _on_selection; hold redraws until both sliders are valid.
        self._updating = True
        try:
            self.layer_slider.max = n_layers - 1
            self.head_slider.max = n_heads - 1
        finally:
            self._updating = False
        self._redraw()

    def _on_selection(self, change: Any = None) -> None:
        if not self._updating and self.attentions is not None:
            self._redraw()

    def _redraw(self) -> None:
        layer, head = self.layer_slider.value, self.head_slider.value
        self.figure = attention_heatmap(
            self.attentions[layer, head],
            self.tokens,
            title=f"layer {layer}, head {head}",
        )
        outputs = [_message_output(self.message)] if self.message else []
        self._show(outputs + [_figure_output(self.figure)])

    def _show(self, outputs: list[dict[str, Any]]) -> None:
        # Setting the outputs trait (rather than printing inside `with output:`) works with and
        # without a running kernel, and replaces the previous content in one step (no flicker).
        self.output.outputs = tuple(outputs)

    # -- display -----------------------------------------------------------------------------------

    def _ipython_display_(self) -> None:
        # Displaying the widget itself works with ipywidgets 7 (Colab's) and 8, whose widgets
        # show themselves in different ways (_ipython_display_ vs _repr_mimebundle_).
        from IPython.display import display

        display(self.widget)


# --------------------------------------------------------------------------------------------------
# bertviz without a CDN
# --------------------------------------------------------------------------------------------------

_REQUIRE_TAG = re.compile(r'<script src="(?P<url>[^"]*require[^"]*\.js)"></script>')
_INLINE_SCRIPT = re.compile(
    r'<script type="text/javascript">\n(?P<js>.*)\n</script>\s*$', flags=re.DOTALL
)
_REQUIRE_CONFIG = re.compile(
    r"require\.config\(\{\s*paths:\s*\{(?P<paths>.*?)\}\s*\}\);\s*requirejs\(",
    flags=re.DOTALL,
)
_PATH_ENTRY = re.compile(r"(?P<name>\w+)\s*:\s*'(?P<url>[^']+)'")
_BERTVIZ_ID = re.compile(r"bertviz-[0-9a-f]{32}")

_BERTVIZ_MISSING_JS = (
    "This attention view needs d3 and jQuery, which this page could not load: run `make vendor` "
    "(it copies them into book/_vendor/vendor with npm) and restart the kernel, or connect to the "
    "internet."
)

# Runs bertviz's code once require.js exists: loads require.js if the page has none (the site's
# copy first, then the CDN). A private requirejs context keeps the page's own require configuration
# untouched, and enforceDefine makes requirejs move on to the next URL when one answers with
# something that is not the library. If nothing loads, the view's div says so.
_LOADER_TEMPLATE = """<script type="text/javascript">
(function () {
  var requireSources = __REQUIRE_SOURCES__;
  function giveUp(what) {
    console.error("bertviz: could not load " + what);
    var div = document.getElementById("__DIV_ID__");
    if (div) div.textContent = __MESSAGE__;
  }
  function runBertviz() {
    var bertvizRequire = window.requirejs.config({
      context: "llmbook-bertviz",
      enforceDefine: true,
      paths: __PATHS__
    });
    bertvizRequire.onError = function () { giveUp("d3 / jQuery"); };
    bertvizRequire(__BODY__
  }
  if (window.requirejs) { runBertviz(); return; }
  window.__llmbookRequireQueue = window.__llmbookRequireQueue || [];
  window.__llmbookRequireQueue.push(runBertviz);
  if (window.__llmbookRequireLoading) return;
  window.__llmbookRequireLoading = true;
  function loadRequire(i) {
    var script = document.createElement("script");
    function tryNext() {
      script.remove();
      if (i + 1 < requireSources.length) { loadRequire(i + 1); return; }
      window.__llmbookRequireLoading = false;
      giveUp("require.js from " + requireSources.join(" or "));
    }
    script.onerror = tryNext;
    script.onload = function () {
      if (!window.requirejs) { tryNext(); return; }
      var queue = window.__llmbookRequireQueue;
      window.__llmbookRequireQueue = [];
      queue.forEach(function (run) { run(); });
    };
    script.src = requireSources[i];
    document.head.appendChild(script);
  }
  loadRequire(0);
})();
</script>
"""

# Live notebooks: bertviz's ``requirejs(["jquery", "d3"], f)`` answered from libraries that the
# first view of the kernel put on the page. No require.js: a global AMD loader would change how
# other scripts of the page (plotly.js, JupyterLab's own) register themselves.
_INLINE_TEMPLATE = """<script type="text/javascript">
(function () {
  function requirejs(deps, body) {
    var libs = window.__llmbookBertvizLibs;
    body.apply(null, deps.map(function (name) { return libs[name]; }));
  }
  function run() { requirejs(__BODY__ }
  if (window.__llmbookBertvizLibs) { run(); return; }
  window.__llmbookBertvizQueue = window.__llmbookBertvizQueue || [];
  window.__llmbookBertvizQueue.push(run);
  setTimeout(function () {
    var div = document.getElementById("__DIV_ID__");
    if (!window.__llmbookBertvizLibs && div) div.textContent = __MESSAGE__;
  }, 4000);
})();
</script>
"""

# d3 and jQuery for the page, kept off the page's globals (``define``/``module`` hidden so that
# their UMD wrappers take the global branch; window.d3 restored, jQuery.noConflict(true)).
_INLINE_LIBRARIES = """<script type="text/javascript">
(function () {
  var define = undefined, module = undefined, exports = undefined;
  var pageD3 = window.d3;
__D3__
  var d3 = window.d3;
  window.d3 = pageD3;
__JQUERY__
  window.__llmbookBertvizLibs = {d3: d3, jquery: window.jQuery.noConflict(true)};
  (window.__llmbookBertvizQueue || []).forEach(function (run) { run(); });
  window.__llmbookBertvizQueue = [];
}).call(window);
</script>
"""

# True once this kernel has sent d3 and jQuery to the page (live notebooks only).
_bertviz_libraries_sent = False


def vendored_libraries(vendor_dir: Path = VENDOR_DIR) -> dict[str, str] | None:
    """d3 and jQuery sources from ``vendor_dir`` (``make vendor``), or None when either is missing."""
    files = {"d3": vendor_dir / "d3.min.js", "jquery": vendor_dir / "jquery.min.js"}
    if not all(path.is_file() for path in files.values()):
        return None
    return {name: path.read_text(encoding="utf-8") for name, path in files.items()}


def _inline_libraries_html(libraries: dict[str, str]) -> str:
    return _INLINE_LIBRARIES.replace("__D3__", libraries["d3"]).replace(
        "__JQUERY__", libraries["jquery"]
    )


def rewrite_bertviz_html(
    page: str,
    vendor_url: str = DEFAULT_VENDOR_URL,
    source: str | None = None,
    libraries: dict[str, str] | None = None,
) -> str:
    """Rewrite bertviz's ``html_action="return"`` HTML so that it draws without a CDN.

    bertviz emits ``<script src=CDN/require.min.js>``, its ``<div>``, then one inline script that
    starts with ``require.config({paths: {d3: CDN, jquery: CDN}})`` and ``requirejs([...], ...)``.
    The result has no ``<script src>`` at all. ``source`` (default
    :func:`utils.plotting.plotly_source`) picks how the libraries arrive:

    - ``"site"``: a small loader fetches require.js (``vendor_url`` first, then the CDN), and the
      d3 / jquery paths become ``[vendor_url, CDN]`` fallback lists.
    - ``"inline"`` with ``libraries`` (d3 and jQuery sources, see :func:`vendored_libraries`): the
      libraries are embedded and bertviz's code runs without require.js. An empty dict means
      the page already has them (a previous view of the same kernel brought them).
    - ``"cdn"``, or ``"inline"`` without libraries: the same loader as ``site`` with CDN URLs only.

    bertviz's random div id is replaced by one derived from the content, so re-running a notebook
    gives identical output.
    """
    if not isinstance(page, str):
        raise TypeError(
            f"page must be the HTML string from bertviz, got {type(page).__name__}"
        )
    if not isinstance(vendor_url, str) or not vendor_url:
        raise ValueError(
            f"vendor_url must be a non-empty URL string, got {vendor_url!r}"
        )
    source = source or plotly_source()
    if source not in ("site", "inline", "cdn"):
        raise ValueError(f"source={source!r} is not one of site, inline, cdn")
    vendor_url = vendor_url.rstrip("/")
    require_tag = _REQUIRE_TAG.search(page)
    inline = _INLINE_SCRIPT.search(page)
    config = _REQUIRE_CONFIG.search(inline.group("js")) if inline else None
    if require_tag is None or inline is None or config is None:
        raise RuntimeError(
            "bertviz's HTML no longer has the expected layout (require.js <script src> tag, then an "
            "inline script starting with require.config); utils.viz must be updated for this "
            "bertviz version."
        )
    div_html = page[require_tag.end() : inline.start()]
    js = inline.group("js")
    cdn_paths = {
        m.group("name"): m.group("url")
        for m in _PATH_ENTRY.finditer(config.group("paths"))
    }
    if set(cdn_paths) != {"d3", "jquery"}:
        raise RuntimeError(
            f"bertviz's require.config paths changed: found {sorted(cdn_paths)}"
        )
    body = js[config.end() :]  # "['jquery', 'd3'], function ($, d3) { ... });"
    div_id = _BERTVIZ_ID.search(div_html)
    if div_id is None:
        raise RuntimeError(
            "bertviz's HTML has no bertviz-<id> div; utils.viz must be updated"
        )
    if source == "inline" and libraries is not None:
        script = _INLINE_TEMPLATE.replace("__BODY__", body)
    else:
        local = source == "site"
        paths = {
            name: ([f"{vendor_url}/{name}.min"] if local else []) + [url]
            for name, url in cdn_paths.items()
        }
        requires = ([f"{vendor_url}/require.js"] if local else []) + [
            require_tag.group("url")
        ]
        script = (
            _LOADER_TEMPLATE.replace("__REQUIRE_SOURCES__", json.dumps(requires))
            .replace("__PATHS__", json.dumps(paths))
            .replace("__BODY__", body)
        )
    script = script.replace("__DIV_ID__", div_id.group(0)).replace(
        "__MESSAGE__", json.dumps(_BERTVIZ_MISSING_JS)
    )
    result = div_html.strip() + "\n" + script
    digest = hashlib.sha1(_BERTVIZ_ID.sub("bertviz-id", result).encode()).hexdigest()[
        :32
    ]
    result = _BERTVIZ_ID.sub(f"bertviz-{digest}", result)
    if source == "inline" and libraries:
        result = _inline_libraries_html(libraries) + result
    return result


def _bertviz_attention(attention: Any, batch_index: int | None) -> list[torch.Tensor]:
    """A list of ``[1, H, L, L]`` float32 CPU tensors, one per layer, from the accepted layouts.

    Accepted: a list/tuple (one per layer) of ``[B, H, L, L]`` tensors (the book's models, Hugging
    Face ``outputs.attentions``) or a single ``[n_layers, H, L, L]`` tensor (as returned by
    :func:`attention_for_text`).
    """
    if isinstance(attention, (torch.Tensor, np.ndarray)):
        stacked = torch.as_tensor(attention)
        if stacked.dim() != 4:
            raise ValueError(
                "attention as a single tensor must be [n_layers, H, L, L], got shape "
                f"{tuple(stacked.shape)}"
            )
        layers = [layer[None] for layer in stacked]
    elif isinstance(attention, (list, tuple)) and attention:
        layers = [torch.as_tensor(layer) for layer in attention]
    else:
        raise TypeError(
            "attention must be a non-empty list/tuple of [B, H, L, L] tensors or one "
            f"[n_layers, H, L, L] tensor, got {type(attention).__name__}"
        )
    result = []
    for i, layer in enumerate(layers):
        if layer.dim() != 4:
            raise ValueError(
                f"attention[{i}] must be [B, H, L, L], got shape {tuple(layer.shape)}"
            )
        if layer.shape[0] != 1:
            if batch_index is None:
                raise ValueError(
                    f"attention[{i}] has batch size {layer.shape[0]}; bertviz shows one sequence: "
                    "pass batch_index= to pick one"
                )
            if not 0 <= batch_index < layer.shape[0]:
                raise ValueError(
                    f"batch_index={batch_index} is out of range for batch size {layer.shape[0]}"
                )
            layer = layer[batch_index : batch_index + 1]
        layer = layer.detach().to("cpu", torch.float32)
        if not torch.isfinite(layer).all():
            raise ValueError(f"attention[{i}] contains NaN or infinite values")
        result.append(layer)
    return result


def _bertviz_view(view: Callable, attention, tokens, vendor_url, batch_index, kwargs):
    from IPython.display import HTML

    if "html_action" in kwargs:
        raise TypeError("html_action is fixed to 'return' by utils.viz; do not pass it")
    layers = _bertviz_attention(attention, batch_index)
    tokens = _check_tokens("tokens", tokens, layers[0].shape[-1], "sequence")
    returned = view(layers, tokens, html_action="return", **kwargs)
    global _bertviz_libraries_sent
    source = plotly_source()
    libraries = None
    if source == "inline":
        libraries = vendored_libraries()
        if libraries is not None and _bertviz_libraries_sent:
            libraries = {}  # already on the page: only the view itself
        elif libraries is not None:
            _bertviz_libraries_sent = True
    page = rewrite_bertviz_html(
        returned.data, vendor_url, source=source, libraries=libraries
    )
    return HTML(page)


def head_view(
    attention: Any,
    tokens: Sequence[str],
    *,
    vendor_url: str = DEFAULT_VENDOR_URL,
    batch_index: int | None = None,
    **kwargs: Any,
):
    """bertviz's head view as an ``IPython.display.HTML`` that needs no CDN in the built site.

    ``attention``: one ``[B, H, L, L]`` tensor per layer (list/tuple), or ``[n_layers, H, L, L]``.
    ``vendor_url`` is where require.js, d3.min.js and jquery.min.js live, relative to the page.
    Other keyword arguments go to ``bertviz.head_view`` (e.g. ``layer=``, ``heads=``).
    """
    import bertviz

    return _bertviz_view(
        bertviz.head_view, attention, tokens, vendor_url, batch_index, kwargs
    )


def model_view(
    attention: Any,
    tokens: Sequence[str],
    *,
    vendor_url: str = DEFAULT_VENDOR_URL,
    batch_index: int | None = None,
    **kwargs: Any,
):
    """bertviz's model view (all layers x heads) as CDN-free ``IPython.display.HTML``.

    Same arguments as :func:`head_view`; extra keywords go to ``bertviz.model_view`` (e.g.
    ``display_mode="light"``, ``include_layers=``).
    """
    import bertviz

    return _bertviz_view(
        bertviz.model_view, attention, tokens, vendor_url, batch_index, kwargs
    )
