"""Tests for utils.viz: heatmaps, curves, the attention explorer and the CDN-free bertviz views."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from torch import nn

from utils import viz

# --------------------------------------------------------------------------------------------------
# A tiny model honouring the book's contract: model(idx[B, L], return_attention=True) returns
# (logits, attentions) with one [B, H, L, L] tensor per layer, and a max_len attribute.
# --------------------------------------------------------------------------------------------------

ALPHABET = "abcdefghijklmnopqrstuvwxyz .<>"
VOCAB_SIZE = len(ALPHABET)


def encode(text: str) -> list[int]:
    return [ALPHABET.index(c) for c in text.lower() if c in ALPHABET]


def decode_tokens(ids: list[int]) -> list[str]:
    return [ALPHABET[i] for i in ids]


class TinyAttentionLM(nn.Module):
    def __init__(
        self, vocab_size=VOCAB_SIZE, d_model=8, n_heads=2, n_layers=3, max_len=12
    ):
        super().__init__()
        self.n_heads, self.max_len = n_heads, max_len
        self.embed = nn.Embedding(vocab_size, d_model)
        self.position = nn.Embedding(max_len, d_model)
        self.qkv = nn.ModuleList(
            nn.Linear(d_model, 3 * d_model) for _ in range(n_layers)
        )
        self.dropout = nn.Dropout(0.5)  # makes the weights random in train mode
        self.lm_head = nn.Linear(d_model, vocab_size)

    def forward(self, idx, return_attention=False):
        batch, length = idx.shape
        if length > self.max_len:
            raise ValueError("sequence longer than max_len")
        x = self.embed(idx) + self.position(torch.arange(length))
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        attentions = []
        for qkv in self.qkv:
            q, k, v = qkv(x).view(batch, length, 3, self.n_heads, -1).unbind(2)
            scores = torch.einsum("blhd,bmhd->bhlm", q, k) / math.sqrt(q.shape[-1])
            weights = self.dropout(
                scores.masked_fill(~causal, float("-inf")).softmax(-1)
            )
            attentions.append(weights)
            x = x + torch.einsum("bhlm,bmhd->blhd", weights, v).reshape(
                batch, length, -1
            )
        logits = self.lm_head(x)
        return (logits, attentions) if return_attention else logits


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return TinyAttentionLM()


@pytest.fixture(scope="module")
def tiny_bert(minilm_tokenizer, tiny_bert_config):
    """A randomly initialised 2-layer, 2-head BERT with MiniLM's tokenizer (no download)."""
    transformers = pytest.importorskip("transformers")
    config = tiny_bert_config(
        num_hidden_layers=2, max_position_embeddings=10, attn_implementation="eager"
    )
    torch.manual_seed(0)
    return transformers.BertModel(config).eval(), minilm_tokenizer


def random_attention(*shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator).softmax(-1)


# --------------------------------------------------------------------------------------------------
# attention_heatmap / attention_grid
# --------------------------------------------------------------------------------------------------


def test_heatmap_has_tokens_weights_and_hover():
    tokens = [
        "the",
        "cat",
        "saw",
        "the",
        "dog",
    ]  # "the" twice: must stay two rows / columns
    weights = random_attention(5, 5)
    fig = viz.attention_heatmap(weights, tokens, title="one head")

    assert isinstance(fig, go.Figure) and len(fig.data) == 1
    trace = fig.data[0]
    assert isinstance(trace, go.Heatmap)
    torch.testing.assert_close(
        torch.tensor(np.asarray(trace.z), dtype=torch.float32), weights
    )
    for axis in (fig.layout.xaxis, fig.layout.yaxis):
        assert list(axis.ticktext) == tokens
        assert list(axis.tickvals) == [0, 1, 2, 3, 4]
    assert fig.layout.yaxis.autorange == "reversed"  # first token at the top
    # colour scale from 0 to the largest weight shown (not 0..1: a long row is near 1/L)
    assert trace.zmin == 0.0 and trace.zmax == pytest.approx(float(weights.max()))
    fixed = viz.attention_heatmap(weights, tokens, zmax=1.0).data[0]
    assert (fixed.zmin, fixed.zmax) == (0.0, 1.0)
    with pytest.raises(ValueError, match="zmax"):
        viz.attention_heatmap(weights, tokens, zmax="max")
    assert fig.layout.title.text == "one head"
    # hover: query token, key token and weight of the hovered cell
    assert tuple(trace.customdata[3][1]) == ("the", "cat")
    for part in ("customdata[0]", "customdata[1]", "%{z"):
        assert part in trace.hovertemplate


def test_heatmap_rectangular_and_escaped_tokens():
    weights = np.full((2, 3), 1 / 3)
    fig = viz.attention_heatmap(weights, ["<s>", "a"], tokens_k=["x", "y", "&"])
    assert list(fig.layout.yaxis.ticktext) == [
        "&lt;s&gt;",
        "a",
    ]  # not read as strikethrough
    assert list(fig.layout.xaxis.ticktext) == ["x", "y", "&amp;"]
    np.testing.assert_allclose(np.asarray(fig.data[0].z), weights)


@pytest.mark.parametrize(
    ("weights", "tokens", "error", "match"),
    [
        (torch.ones(2, 2) / 2, ["a"], ValueError, "tokens_q has 1 tokens"),
        (torch.ones(2, 2, 2), ["a", "b"], ValueError, "2 dimensions"),
        (
            torch.tensor([[float("nan"), 1.0], [0.5, 0.5]]),
            ["a", "b"],
            ValueError,
            "NaN",
        ),
        (torch.ones(2, 2) / 2, "ab", TypeError, "list of token strings"),
        ("not numbers", ["a"], TypeError, "weights must be"),
    ],
)
def test_heatmap_rejects_bad_arguments(weights, tokens, error, match):
    with pytest.raises(error, match=match):
        viz.attention_heatmap(weights, tokens)


def test_grid_has_one_panel_per_head_on_a_shared_scale():
    n_heads, tokens = 6, ["a", "b", "c", "a"]
    weights = random_attention(n_heads, 4, 4, seed=1)
    fig = viz.attention_grid(weights, tokens, n_cols=4, title="layer 0")

    heatmaps = [t for t in fig.data if isinstance(t, go.Heatmap)]
    assert len(heatmaps) == n_heads
    assert (
        len({(t.xaxis, t.yaxis) for t in heatmaps}) == n_heads
    )  # each in its own subplot
    for h, trace in enumerate(heatmaps):
        torch.testing.assert_close(
            torch.tensor(np.asarray(trace.z), dtype=torch.float32), weights[h]
        )
        assert trace.coloraxis == "coloraxis"
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (0.0, 1.0)
    assert [a.text for a in fig.layout.annotations] == [
        f"head {h}" for h in range(n_heads)
    ]
    assert (
        list(fig.layout.xaxis.ticktext) == tokens
        and list(fig.layout.yaxis3.ticktext) == tokens
    )
    assert fig.layout.yaxis6.autorange == "reversed"
    assert (
        fig.layout.xaxis8.visible is False
    )  # 2 x 4 grid, 6 heads: two empty cells hidden


def test_grid_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_cols"):
        viz.attention_grid(random_attention(2, 3, 3), ["a", "b", "c"], n_cols=0)
    with pytest.raises(ValueError, match="3 dimensions"):
        viz.attention_grid(random_attention(3, 3), ["a", "b", "c"])


# --------------------------------------------------------------------------------------------------
# plot_curves
# --------------------------------------------------------------------------------------------------


class FakeHistory:
    def __init__(self, data):
        self.data = data

    def to_dict(self):
        return self.data


def test_curves_from_dict_and_history_object():
    data = {
        "step": [10, 20, 30, 40],
        "train_loss": [2.0, 1.5, 1.2, 1.0],
        "val_loss": [None, 1.7, float("nan"), 1.3],  # evaluated every other step
        "lr": [1e-3] * 4,
        "note": "metadata, not a curve",
    }
    for source in (data, FakeHistory(data)):
        fig = viz.plot_curves(source, title="loss")
        assert [t.name for t in fig.data] == ["train_loss", "val_loss"]
        assert all(isinstance(t, go.Scatter) for t in fig.data)
        assert list(fig.data[0].x) == [10, 20, 30, 40]
        assert list(fig.data[0].y) == [2.0, 1.5, 1.2, 1.0]
        assert list(fig.data[1].x) == [20, 40] and list(fig.data[1].y) == [1.7, 1.3]
        assert fig.layout.xaxis.title.text == "step"


def test_curves_options_and_errors():
    fig = viz.plot_curves({"loss": [4.0, 2.0, 1.0]}, keys="loss", log_y=True)
    assert list(fig.data[0].x) == [0, 1, 2]  # no "step" column: positions
    assert fig.layout.yaxis.type == "log"
    with pytest.raises(ValueError, match="none of keys"):
        viz.plot_curves({"loss": [1.0]})
    with pytest.raises(ValueError, match="has 2 values"):
        viz.plot_curves({"step": [1, 2, 3], "train_loss": [1.0, 0.5]})
    with pytest.raises(ValueError, match="positive"):
        viz.plot_curves({"train_loss": [1.0, 0.0]}, log_y=True)
    with pytest.raises(TypeError, match="dict of lists"):
        viz.plot_curves([1.0, 2.0])


# --------------------------------------------------------------------------------------------------
# attention_for_text
# --------------------------------------------------------------------------------------------------


def test_attention_for_text_matches_the_model(tiny_model):
    tiny_model.train()
    tokens, attentions, truncated = viz.attention_for_text(
        tiny_model, "a cat", encode=encode, decode_tokens=decode_tokens
    )
    assert tokens == ["a", " ", "c", "a", "t"] and truncated is False
    assert tiny_model.training  # mode restored
    tiny_model.eval()
    with torch.no_grad():
        _, expected = tiny_model(torch.tensor([encode("a cat")]), return_attention=True)
    torch.testing.assert_close(
        attentions, torch.stack(expected)[:, 0]
    )  # eval: no dropout
    assert attentions.shape == (3, 2, 5, 5)


def test_attention_for_text_truncates_to_max_len(tiny_model):
    text = "the quick brown fox"  # 19 characters, model.max_len = 12
    tokens, attentions, truncated = viz.attention_for_text(
        tiny_model, text, encode=encode, decode_tokens=decode_tokens
    )
    assert (
        truncated is True and tokens == list(text[:12]) and attentions.shape[-1] == 12
    )
    tokens, _, truncated = viz.attention_for_text(
        tiny_model, text, encode=encode, decode_tokens=decode_tokens, max_len=4
    )
    assert truncated is True and tokens == list("the ")


def test_attention_for_text_rejects_empty_and_bad_arguments(tiny_model):
    kwargs = {"encode": encode, "decode_tokens": decode_tokens}
    for text in ("", "   \n"):
        with pytest.raises(viz.EmptyTextError, match="empty"):
            viz.attention_for_text(tiny_model, text, **kwargs)
    with pytest.raises(viz.EmptyTextError, match="no tokens"):
        viz.attention_for_text(tiny_model, "123", **kwargs)  # nothing in the alphabet
    with pytest.raises(TypeError, match="encode"):
        viz.attention_for_text(tiny_model, "abc")
    with pytest.raises(ValueError, match="max_len"):
        viz.attention_for_text(tiny_model, "abc", max_len=0, **kwargs)
    with pytest.raises(TypeError, match="text must be a string"):
        viz.attention_for_text(tiny_model, None, **kwargs)


def test_attention_for_text_hugging_face(tiny_bert):
    model, tokenizer = tiny_bert
    tokens, attentions, truncated = viz.attention_for_text(
        model, "hello world", tokenizer=tokenizer
    )
    assert tokens == ["[CLS]", "hello", "world", "[SEP]"] and truncated is False
    with torch.no_grad():
        expected = model(
            **tokenizer("hello world", return_tensors="pt"), output_attentions=True
        )
    torch.testing.assert_close(attentions, torch.stack(expected.attentions)[:, 0])
    # max_position_embeddings = 10: a longer text keeps [CLS] + 8 tokens + [SEP]
    tokens, attentions, truncated = viz.attention_for_text(
        model, "one two three four five six seven eight nine ten", tokenizer=tokenizer
    )
    assert truncated is True and len(tokens) == 10 and tokens[-1] == "[SEP]"
    assert attentions.shape == (2, 2, 10, 10)


# --------------------------------------------------------------------------------------------------
# AttentionExplorer
# --------------------------------------------------------------------------------------------------


def _kinds(explorer):
    return [o["output_type"] for o in explorer.output.outputs]


def test_explorer_shows_selected_head(tiny_model, monkeypatch):
    explorer = viz.AttentionExplorer(
        tiny_model, encode=encode, decode_tokens=decode_tokens, text="a cat"
    )
    assert (explorer.layer_slider.max, explorer.head_slider.max) == (2, 1)
    assert _kinds(explorer) == ["display_data"]
    assert "text/html" in explorer.output.outputs[0]["data"]
    explorer.layer_slider.value, explorer.head_slider.value = 2, 1
    torch.testing.assert_close(
        torch.tensor(np.asarray(explorer.figure.data[0].z), dtype=torch.float32),
        explorer.attentions[2, 1],
    )
    assert list(explorer.figure.layout.xaxis.ticktext) == ["a", " ", "c", "a", "t"]
    shown = []
    monkeypatch.setattr("IPython.display.display", shown.append)
    explorer._ipython_display_()  # what a notebook does with an explorer on a cell's last line
    assert shown == [explorer.widget]
    assert (
        "application/vnd.jupyter.widget-view+json"
        in explorer.widget._repr_mimebundle_()
    )
    assert explorer.widget.children[-1] is explorer.output


def test_explorer_messages_for_empty_and_long_text(tiny_model):
    explorer = viz.AttentionExplorer(
        tiny_model, encode=encode, decode_tokens=decode_tokens
    )
    explorer.text_box.value = ""
    assert _kinds(explorer) == ["stream"] and explorer.figure is None
    assert "empty" in explorer.output.outputs[0]["text"]

    explorer.text_box.value = "a much longer text than twelve"
    assert _kinds(explorer) == ["stream", "display_data"]
    assert "first 12 tokens" in explorer.output.outputs[0]["text"]
    assert len(explorer.figure.data[0].z) == 12

    explorer.text_box.value = "short"
    assert _kinds(explorer) == ["display_data"]  # the truncation note is gone


def test_explorer_reports_model_errors_in_the_output(tiny_model):
    def broken_encode(text):
        raise KeyError("unknown character")

    explorer = viz.AttentionExplorer(
        tiny_model, encode=broken_encode, decode_tokens=decode_tokens
    )
    assert _kinds(explorer) == ["stream"]
    assert "Could not compute attention" in explorer.output.outputs[0]["text"]


def test_explorer_hugging_face(tiny_bert):
    model, tokenizer = tiny_bert
    explorer = viz.AttentionExplorer(model, tokenizer, text="hello world")
    assert (explorer.layer_slider.max, explorer.head_slider.max) == (1, 1)
    assert list(explorer.figure.layout.yaxis.ticktext) == [
        "[CLS]",
        "hello",
        "world",
        "[SEP]",
    ]


# --------------------------------------------------------------------------------------------------
# bertviz without a CDN
# --------------------------------------------------------------------------------------------------

SCRIPT_SRC = re.compile(r"<script[^>]*\ssrc\s*=", flags=re.IGNORECASE)


def _params(page: str) -> dict:
    """The JSON bertviz embeds as ``const params = {...};``."""
    match = re.search(r"const params = (\{.*?\}); //", page)
    assert match, "bertviz's params are missing"
    return json.loads(match.group(1))


def _check_offline_page(page: str, vendor: str = "../_static/vendor") -> None:
    assert not SCRIPT_SRC.search(page)  # nothing is fetched by a <script src> tag
    assert f'"{vendor}/require.js"' in page
    assert (
        f'["{vendor}/d3.min", "https://cdnjs.cloudflare.com/ajax/libs/d3/5.7.0/d3.min"]'
        in page
    )
    assert f'"{vendor}/jquery.min"' in page
    assert "require.config({" not in page  # bertviz's global CDN-only config is gone
    assert (
        "function renderVis" in page or "function render" in page
    )  # bertviz's own code


@pytest.mark.parametrize("view", [viz.head_view, viz.model_view])
def test_bertviz_views_from_book_model(view, tiny_model):
    tiny_model.eval()
    idx = torch.tensor([encode("a cat")])
    with torch.no_grad():
        _, attentions = tiny_model(idx, return_attention=True)
    tokens = decode_tokens(idx[0].tolist())
    shown = view(attentions, tokens)

    from IPython.display import HTML

    assert isinstance(shown, HTML)
    _check_offline_page(shown.data)
    params = _params(shown.data)
    sent = torch.tensor(params["attention"][0]["attn"])  # [layers, heads, L, L]
    torch.testing.assert_close(sent, torch.stack(attentions)[:, 0])
    assert params["attention"][0]["left_text"] == tokens
    assert params["root_div_id"] in shown.data
    assert (
        view(attentions, tokens).data == shown.data
    )  # content-derived id: reproducible output


def test_bertviz_from_hugging_face_and_custom_vendor(tiny_bert):
    model, tokenizer = tiny_bert
    batch = tokenizer("hello world", return_tensors="pt")
    with torch.no_grad():
        attentions = model(
            **batch, output_attentions=True
        ).attentions  # tuple of [1, H, L, L]
    tokens = tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    page = viz.head_view(attentions, tokens, vendor_url="/static/js/").data
    _check_offline_page(page, vendor="/static/js")
    torch.testing.assert_close(
        torch.tensor(_params(page)["attention"][0]["attn"]),
        torch.stack(attentions)[:, 0],
    )
    # the [n_layers, H, L, L] stack from attention_for_text is accepted too
    _, stacked, _ = viz.attention_for_text(model, "hello world", tokenizer=tokenizer)
    page = viz.model_view(stacked, tokens, display_mode="light").data
    torch.testing.assert_close(
        torch.tensor(_params(page)["attention"][0]["attn"]), stacked
    )


def test_bertviz_argument_checks():
    attention = [random_attention(2, 2, 3, 3)]  # batch of 2
    with pytest.raises(ValueError, match="batch_index"):
        viz.head_view(attention, ["a", "b", "c"])
    page = viz.head_view(attention, ["a", "b", "c"], batch_index=1).data
    torch.testing.assert_close(
        torch.tensor(_params(page)["attention"][0]["attn"]), attention[0][1:]
    )
    with pytest.raises(ValueError, match="tokens has 2 tokens"):
        viz.head_view([random_attention(1, 2, 3, 3)], ["a", "b"])
    with pytest.raises(TypeError, match="html_action"):
        viz.head_view(
            [random_attention(1, 2, 3, 3)], ["a", "b", "c"], html_action="view"
        )
    with pytest.raises(TypeError, match="list/tuple"):
        viz.head_view([], [])
    with pytest.raises(RuntimeError, match="bertviz"):
        viz.rewrite_bertviz_html("<div>not bertviz</div>")


NODE_HARNESS = r"""
const fs = require("fs");
const page = fs.readFileSync(process.argv[2], "utf8");
const js = page.slice(page.indexOf("<script"), page.lastIndexOf("</script>"))
  .replace(/^<script[^>]*>/, "");
const log = [];
function fakeRequirejs() {
  return {config: function (cfg) {
    log.push({config: cfg});
    return function (deps, callback) { log.push({deps: deps}); };
  }};
}
function run(hasRequire, failLocal) {
  log.length = 0;
  const created = [];
  global.window = global;
  delete global.requirejs;
  delete global.__llmbookRequireLoading;
  delete global.__llmbookRequireQueue;
  if (hasRequire) global.requirejs = fakeRequirejs();
  global.document = {
    head: {appendChild: function (s) { created.push(s); }},
    createElement: function () { return {remove: function () {}}; },
  };
  eval(js);
  const sources = [];
  while (created.length > sources.length) {
    const script = created[sources.length];
    sources.push(script.src);
    if (sources.length === 1 && failLocal) { script.onerror(); continue; }
    global.requirejs = fakeRequirejs();
    script.onload();
  }
  return {sources: sources, log: JSON.parse(JSON.stringify(log))};
}
console.log(JSON.stringify([run(true, false), run(false, false), run(false, true)]));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node.js is not installed")
def test_bertviz_loader_logic_runs_in_node(tmp_path):
    page = viz.head_view([random_attention(1, 2, 3, 3)], ["a", "b", "c"]).data
    (tmp_path / "page.html").write_text(page)
    (tmp_path / "harness.js").write_text(NODE_HARNESS)
    result = subprocess.run(
        ["node", str(tmp_path / "harness.js"), str(tmp_path / "page.html")],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    page_has_require, local_require, cdn_require = json.loads(result.stdout)
    cdn = "https://cdnjs.cloudflare.com/ajax/libs/require.js/2.3.6/require.min.js"
    assert page_has_require["sources"] == []  # the page's require.js is reused
    assert local_require["sources"] == ["../_static/vendor/require.js"]
    assert cdn_require["sources"] == ["../_static/vendor/require.js", cdn]
    for case in (page_has_require, local_require, cdn_require):
        config, call = case["log"]
        assert config["config"]["paths"]["d3"][0] == "../_static/vendor/d3.min"
        assert config["config"]["context"] == "llmbook-bertviz"
        assert call["deps"] == ["jquery", "d3"]


def test_bertviz_sources(monkeypatch):
    attention, tokens = [random_attention(1, 2, 3, 3)], ["a", "b", "c"]
    bertviz = pytest.importorskip("bertviz")
    raw = bertviz.head_view(attention, tokens, html_action="return").data
    cdn_only = viz.rewrite_bertviz_html(raw, source="cdn")
    assert "_static/vendor" not in cdn_only and "cdnjs.cloudflare.com" in cdn_only
    # inline without libraries (make vendor not run): the CDN loader, no local guesses
    assert viz.rewrite_bertviz_html(raw, source="inline") == cdn_only
    libraries = {"d3": "/* d3 */", "jquery": "/* jquery */"}
    first = viz.rewrite_bertviz_html(raw, source="inline", libraries=libraries)
    later = viz.rewrite_bertviz_html(raw, source="inline", libraries={})
    assert first.startswith(viz._inline_libraries_html(libraries)) and first.endswith(
        later
    )
    assert (
        not SCRIPT_SRC.search(first)
        and "require.js" not in first
        and "cdn" not in later
    )
    with pytest.raises(ValueError, match="source"):
        viz.rewrite_bertviz_html(raw, source="colab")
    # in a live session only the first view of the kernel carries the libraries
    if viz.vendored_libraries() is not None:
        monkeypatch.setenv("LLMBOOK_PLOTLY", "inline")
        monkeypatch.setattr(viz, "_bertviz_libraries_sent", False)
        pages = [viz.head_view(attention, tokens).data for _ in range(2)]
        assert len(pages[0]) > 100_000 > len(pages[1]) and pages[0].endswith(pages[1])


BERTVIZ_STATE = """() => ({
  views: [...document.querySelectorAll('div[id^="bertviz-"]')].map((d) =>
    ({svg: !!d.querySelector("svg"), text: d.textContent})),
  globals: [typeof window.d3, typeof window.jQuery],
})"""


def _render_offline(
    tmp_path, body: str, state_js: str = BERTVIZ_STATE
) -> tuple[dict, list[str]]:
    """Open ``body`` in headless Chromium with every request but file:// blocked.

    Returns what ``state_js`` evaluates to after 5 s (plus the blocked URLs under "external") and
    the console errors.
    """
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("Debian's chromium is not installed")
    page_file = tmp_path / "page.html"
    page_file.write_text(
        f"<!doctype html><html><head></head><body>{body}</body></html>"
    )
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium")
        page = browser.new_page()
        errors, external = [], []
        page.on(
            "console", lambda m: errors.append(m.text) if m.type == "error" else None
        )
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.route(
            lambda url: not url.startswith("file:"),
            lambda route: (external.append(route.request.url), route.abort())[1],
        )
        page.goto(page_file.as_uri())
        page.wait_for_timeout(5000)
        state = page.evaluate(state_js)
        browser.close()
    return state | {"external": external}, errors


DRAWN_HEATMAPS = """() => [...document.querySelectorAll(".js-plotly-plot")].flatMap((gd) =>
  gd._fullData.map((trace, i) => ({
    data: [trace.z.length, trace.z[0].length],
    drawn: [gd.calcdata[i][0].z.length, gd.calcdata[i][0].z[0].length],
  })))"""


@pytest.mark.slow
def test_heatmaps_with_repeated_tokens_draw_every_cell_in_chromium(tmp_path):
    """Repeated tokens ("the" twice, [PAD] three times) keep their own rows and columns."""
    from plotly.subplots import make_subplots

    from utils import plotting

    tokens = ["[CLS]", "the", "cat", "saw", "the", "dog", "[PAD]", "[PAD]", "[PAD]"]
    n = len(tokens)
    torch.manual_seed(0)
    weights = torch.softmax(torch.randn(2, n, n), dim=-1)
    grid = make_subplots(rows=1, cols=2)
    for col in (1, 2):
        grid.add_trace(viz.token_heatmap(weights[col - 1], tokens, tokens), 1, col)
    grid.update_xaxes(**viz.token_axis(tokens))
    figures = [
        viz.attention_heatmap(weights[0], tokens),
        viz.attention_grid(weights, tokens),
        grid,
    ]
    body = plotting.plotly_js_html() + "".join(
        plotting.figure_html(fig, source="site") for fig in figures
    )
    state, errors = _render_offline(
        tmp_path, body, f"() => ({{maps: ({DRAWN_HEATMAPS})()}})"
    )
    assert errors == [] and state["external"] == []
    assert len(state["maps"]) == 1 + 2 + 2
    assert all(m["drawn"] == m["data"] == [n, n] for m in state["maps"]), state["maps"]
    # the control: tokens as category values merge the repeats (what the helpers avoid)
    merged = go.Figure(go.Heatmap(z=weights[0].tolist(), x=tokens, y=tokens))
    body = plotting.plotly_js_html() + plotting.figure_html(merged, source="site")
    state, _ = _render_offline(
        tmp_path, body, f"() => ({{maps: ({DRAWN_HEATMAPS})()}})"
    )
    assert state["maps"][0]["drawn"] == [6, 6]


@pytest.mark.slow
def test_bertviz_live_views_draw_offline_in_chromium(tmp_path, monkeypatch):
    """The live-notebook output (libraries inlined) draws with no network and leaves no globals."""
    if viz.vendored_libraries() is None:
        pytest.skip("book/_vendor/vendor is empty: run make vendor")
    monkeypatch.setenv("LLMBOOK_PLOTLY", "inline")
    monkeypatch.setattr(viz, "_bertviz_libraries_sent", False)
    torch.manual_seed(0)
    tokens = ["the", "cat", "sat"]
    head = viz.head_view([random_attention(1, 2, 3, 3)], tokens).data
    model = viz.model_view([random_attention(1, 2, 3, 3)] * 2, tokens).data
    state, errors = _render_offline(tmp_path, head + model)
    assert errors == [] and state["external"] == []
    assert [v["svg"] for v in state["views"]] == [True, True]
    assert state["globals"] == ["undefined", "undefined"]


@pytest.mark.slow
def test_bertviz_view_says_why_when_nothing_loads(tmp_path, monkeypatch):
    monkeypatch.setenv(
        "LLMBOOK_PLOTLY", "cdn"
    )  # the CDN is unreachable in the test browser
    page = viz.head_view([random_attention(1, 2, 3, 3)], ["a", "b", "c"]).data
    state, errors = _render_offline(tmp_path, page)
    assert state["views"][0]["svg"] is False
    assert "make vendor" in state["views"][0]["text"]
    assert any("could not load require.js" in e for e in errors)


# --------------------------------------------------------------------------------------------------
# The real model from utils.models, once it exists
# --------------------------------------------------------------------------------------------------


def test_with_the_book_transformer_lm():
    models = pytest.importorskip("utils.models")
    torch.manual_seed(0)
    model = models.TransformerLM(
        vocab_size=len(ALPHABET), d_model=16, n_heads=2, n_layers=2
    )
    tokens, attentions, truncated = viz.attention_for_text(
        model, "a cat sat", encode=encode, decode_tokens=decode_tokens
    )
    assert attentions.shape == (2, 2, 9, 9) and not truncated
    torch.testing.assert_close(attentions.sum(-1), torch.ones(2, 2, 9))
    fig = viz.attention_heatmap(attentions[1, 0], tokens)
    assert list(fig.layout.xaxis.ticktext) == tokens
    _check_offline_page(viz.head_view(attentions, tokens).data)


def test_with_the_book_classifier_cls_position():
    models = pytest.importorskip("utils.models")
    torch.manual_seed(0)
    model = models.TransformerClassifier(
        vocab_size=VOCAB_SIZE,
        num_classes=2,
        d_model=16,
        n_heads=2,
        n_layers=1,
        max_len=8,
        pad_idx=VOCAB_SIZE - 1,
        pooling="cls",
    )
    tokens, attentions, truncated = viz.attention_for_text(
        model, "a long sentence", encode=encode, decode_tokens=decode_tokens
    )
    assert (
        truncated
        and tokens == ["[CLS]", *"a long s"]
        and attentions.shape == (1, 2, 9, 9)
    )
