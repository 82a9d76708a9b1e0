"""Tests for utils.optim: the teaching optimizers against torch.optim, and the schedules."""

import io
import math

import pytest
import torch

from utils import optim

N_STEPS = 25


class TinyMLP(torch.nn.Module):
    """Two linear layers; the second is used as a separate parameter group in some tests."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(4, 8)
        self.out = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(x)))


def _make_data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(N_STEPS, 16, 4, generator=generator), torch.randint(
        0, 3, (N_STEPS, 16), generator=generator
    )


def _groups(model: TinyMLP, grouped: bool, group_options: dict) -> list | object:
    if not grouped:
        return model.parameters()
    return [
        {"params": model.hidden.parameters()},
        {"params": model.out.parameters(), **group_options},
    ]


def _train(optimizer_class, kwargs, grouped=False, group_options=None, steps=N_STEPS):
    """Train a freshly seeded TinyMLP; the gradients depend on the parameters, so any deviation
    in one step would feed into the next ones."""
    torch.manual_seed(0)
    model = TinyMLP()
    optimizer = optimizer_class(_groups(model, grouped, group_options or {}), **kwargs)
    xs, ys = _make_data()
    for step in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xs[step]), ys[step])
        loss.backward()
        optimizer.step()
    return model


def _assert_same_parameters(model_a, model_b):
    for (name, a), (_, b) in zip(
        model_a.named_parameters(), model_b.named_parameters(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=lambda m, name=name: f"{name}: {m}")


SGD_CASES = [
    {"lr": 0.1},
    {"lr": 0.1, "weight_decay": 0.05},
    {"lr": 0.05, "momentum": 0.9},
    {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.01},
    {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
    {"lr": 0.05, "momentum": 0.5, "maximize": True},
]


@pytest.mark.parametrize("kwargs", SGD_CASES)
def test_sgd_matches_torch(kwargs):
    ours = _train(optim.SGD, kwargs)
    reference = _train(torch.optim.SGD, kwargs)
    _assert_same_parameters(ours, reference)


def test_sgd_param_groups_match_torch():
    group_options = {"lr": 0.02, "momentum": 0.8, "nesterov": True, "weight_decay": 0.1}
    kwargs = {"lr": 0.1, "momentum": 0.9}
    ours = _train(optim.SGD, kwargs, grouped=True, group_options=group_options)
    reference = _train(
        torch.optim.SGD, kwargs, grouped=True, group_options=group_options
    )
    _assert_same_parameters(ours, reference)


ADAM_CASES = [
    {"lr": 0.01},
    {"lr": 0.01, "weight_decay": 0.1},
    {"lr": 0.01, "betas": (0.8, 0.95), "eps": 1e-6, "amsgrad": True},
    {"lr": 0.02, "weight_decay": 0.05, "amsgrad": True},
]


@pytest.mark.parametrize("kwargs", ADAM_CASES)
@pytest.mark.parametrize(
    ("ours_class", "torch_class"),
    [(optim.Adam, torch.optim.Adam), (optim.AdamW, torch.optim.AdamW)],
)
def test_adam_family_matches_torch(ours_class, torch_class, kwargs):
    ours = _train(ours_class, kwargs)
    reference = _train(torch_class, kwargs)
    _assert_same_parameters(ours, reference)


@pytest.mark.parametrize(
    ("ours_class", "torch_class"),
    [(optim.Adam, torch.optim.Adam), (optim.AdamW, torch.optim.AdamW)],
)
def test_adam_family_param_groups_match_torch(ours_class, torch_class):
    group_options = {
        "lr": 0.003,
        "betas": (0.5, 0.9),
        "weight_decay": 0.0,
        "amsgrad": True,
    }
    kwargs = {"lr": 0.01, "weight_decay": 0.2}
    ours = _train(ours_class, kwargs, grouped=True, group_options=group_options)
    reference = _train(torch_class, kwargs, grouped=True, group_options=group_options)
    _assert_same_parameters(ours, reference)


def test_adamw_default_weight_decay_matches_torch():
    assert optim.AdamW([torch.zeros(1)]).defaults["weight_decay"] == 1e-2
    _assert_same_parameters(_train(optim.AdamW, {}), _train(torch.optim.AdamW, {}))


def test_adam_and_adamw_differ_only_by_weight_decay():
    # Without decay they are the same algorithm; with decay, L2 and decoupled decay differ.
    _assert_same_parameters(
        _train(optim.Adam, {"lr": 0.01}),
        _train(optim.AdamW, {"lr": 0.01, "weight_decay": 0.0}),
    )
    adam = _train(optim.Adam, {"lr": 0.01, "weight_decay": 0.1})
    adamw = _train(optim.AdamW, {"lr": 0.01, "weight_decay": 0.1})
    assert not torch.allclose(adam.hidden.weight, adamw.hidden.weight, atol=1e-4)


def test_first_adam_step_is_sign_of_gradient_times_lr():
    # Hand derivation: after one step m_hat = g and v_hat = g^2, so the step is lr * g / (|g| + eps).
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    param.grad = torch.tensor([0.5, -4.0, 1e-3])
    optim.Adam([param], lr=0.1, eps=0.0).step()
    torch.testing.assert_close(param.detach(), torch.tensor([0.9, -1.9, 2.9]))


def test_parameters_without_gradient_are_skipped():
    used = torch.nn.Parameter(torch.ones(2))
    unused = torch.nn.Parameter(torch.ones(2))
    optimizer = optim.AdamW([used, unused], lr=0.1, weight_decay=0.5)
    used.sum().backward()
    optimizer.step()
    assert torch.equal(unused.detach(), torch.ones(2))
    assert unused not in optimizer.state


def test_closure_is_evaluated_and_returned():
    param = torch.nn.Parameter(torch.tensor([2.0]))
    optimizer = optim.SGD([param], lr=0.25)

    def closure():
        optimizer.zero_grad()
        loss = (param**2).sum()
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    assert loss.item() == 4.0
    torch.testing.assert_close(param.detach(), torch.tensor([1.0]))  # 2 - 0.25 * 4


@pytest.mark.parametrize(
    ("optimizer_class", "kwargs"),
    [
        (optim.SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
        (optim.Adam, {"lr": 0.01, "amsgrad": True}),
        (optim.AdamW, {"lr": 0.01, "weight_decay": 0.1}),
    ],
)
def test_state_dict_round_trip_resumes_exactly(optimizer_class, kwargs):
    xs, ys = _make_data()

    def run(model, optimizer, steps):
        for step in steps:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(xs[step]), ys[step]).backward()
            optimizer.step()

    torch.manual_seed(0)
    straight = TinyMLP()
    run(straight, optimizer_class(straight.parameters(), **kwargs), range(10))

    torch.manual_seed(0)
    first = TinyMLP()
    first_optimizer = optimizer_class(first.parameters(), **kwargs)
    run(first, first_optimizer, range(5))
    buffer = io.BytesIO()
    torch.save(
        {"model": first.state_dict(), "optimizer": first_optimizer.state_dict()}, buffer
    )
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # how utils.train loads checkpoints

    resumed = TinyMLP()
    resumed.load_state_dict(saved["model"])
    resumed_optimizer = optimizer_class(resumed.parameters(), **kwargs)
    resumed_optimizer.load_state_dict(saved["optimizer"])
    run(resumed, resumed_optimizer, range(5, 10))
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("optimizer_class", "kwargs", "message"),
    [
        (optim.SGD, {"lr": -0.1}, "learning rate"),
        (optim.SGD, {"lr": 0.1, "momentum": -0.5}, "momentum"),
        (optim.SGD, {"lr": 0.1, "weight_decay": -1.0}, "weight_decay"),
        (optim.SGD, {"lr": 0.1, "nesterov": True}, "Nesterov"),
        (
            optim.SGD,
            {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "nesterov": True},
            "Nesterov",
        ),
        (optim.Adam, {"lr": -1e-3}, "learning rate"),
        (optim.Adam, {"lr": float("nan")}, "learning rate"),
        (optim.Adam, {"betas": (1.0, 0.999)}, "index 0"),
        (optim.Adam, {"betas": (0.9, -0.1)}, "index 1"),
        (optim.Adam, {"eps": -1e-8}, "epsilon"),
        (optim.AdamW, {"weight_decay": -0.01}, "weight_decay"),
        (optim.AdamW, {"betas": (0.9,)}, "pair"),
    ],
)
def test_invalid_hyper_parameters_raise(optimizer_class, kwargs, message):
    with pytest.raises(ValueError, match=message):
        optimizer_class([torch.nn.Parameter(torch.zeros(2))], **kwargs)
    # torch.optim rejects the same values (the pair check aside, where torch fails differently)
    if message != "pair":
        torch_class = getattr(torch.optim, optimizer_class.__name__)
        with pytest.raises(ValueError):
            torch_class([torch.nn.Parameter(torch.zeros(2))], **kwargs)


def test_non_numeric_learning_rate_is_a_type_error():
    with pytest.raises(TypeError, match="learning rate"):
        optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr="0.1")


# --------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------


def _rates(scheduler, optimizer, steps):
    """The lr used at each of ``steps`` optimizer steps (read before scheduler.step())."""
    rates = []
    for _ in range(steps):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return rates


def _sgd(lr=0.5):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_warmup_cosine_values_at_chosen_steps():
    optimizer = _sgd(lr=0.5)
    rates = _rates(
        optim.warmup_cosine(optimizer, 4, 14, min_lr_ratio=0.2), optimizer, 20
    )
    base, r = 0.5, 0.2
    expected = {
        0: base * 1 / 4,  # warm-up starts at 1/warmup
        3: base,  # ... and ends at the full rate
        4: base,  # cosine starts at the full rate
        9: base
        * (r + (1 - r) / 2),  # half-way through the cosine: the mean of the two ends
        14: base * r,  # end of the cosine
        19: base * r,  # stays at the floor afterwards
    }
    for step, value in expected.items():
        assert rates[step] == pytest.approx(value, rel=1e-12), step
    assert all(a <= b for a, b in zip(rates[:3], rates[1:4], strict=True))
    assert all(a >= b for a, b in zip(rates[4:14], rates[5:15], strict=True))


def test_warmup_cosine_without_warmup_matches_torch_cosine_annealing():
    ours_optimizer, torch_optimizer = _sgd(lr=0.3), _sgd(lr=0.3)
    ours = _rates(optim.warmup_cosine(ours_optimizer, 0, 12, 0.1), ours_optimizer, 13)
    reference = torch.optim.lr_scheduler.CosineAnnealingLR(
        torch_optimizer, T_max=12, eta_min=0.03
    )
    torch.testing.assert_close(
        torch.tensor(ours, dtype=torch.float64),
        torch.tensor(_rates(reference, torch_optimizer, 13), dtype=torch.float64),
    )


def test_step_decay_matches_torch_step_lr():
    ours_optimizer, torch_optimizer = _sgd(), _sgd()
    ours = _rates(optim.step_decay(ours_optimizer, 3, 0.5), ours_optimizer, 10)
    reference = _rates(
        torch.optim.lr_scheduler.StepLR(torch_optimizer, 3, 0.5), torch_optimizer, 10
    )
    assert ours == pytest.approx(reference, rel=1e-12)
    assert ours[2] == 0.5 and ours[3] == 0.25 and ours[9] == 0.0625


def test_inverse_sqrt_follows_vaswani_formula():
    optimizer = _sgd(lr=1.0)  # base lr 1: the paper's rates exactly
    scheduler = optim.inverse_sqrt(optimizer, d_model=512, warmup_steps=40)
    rates = _rates(
        scheduler, optimizer, 160
    )  # rates[s] is the paper's step_num n = s + 1
    assert rates[0] == pytest.approx(1 / (math.sqrt(512) * 40**1.5))
    assert rates[19] == pytest.approx(20 / (math.sqrt(512) * 40**1.5))  # linear warm-up
    assert rates[39] == pytest.approx(1 / math.sqrt(512 * 40))  # the peak
    assert max(rates) == rates[39]
    assert rates[159] == pytest.approx(rates[39] / 2)  # 4x the steps: half the rate
    # The paper's setting (d_model 512, 4000 warm-up steps) peaks at about 7.0e-4.
    paper = optim.inverse_sqrt(_sgd(lr=1.0), d_model=512, warmup_steps=4000)
    assert paper.lr_lambdas[0](3999) == pytest.approx(6.9877e-4, rel=1e-4)


def test_inverse_sqrt_base_lr_is_a_multiplier():
    optimizer = _sgd(lr=2.0)
    scheduler = optim.inverse_sqrt(optimizer, d_model=64, warmup_steps=10)
    assert scheduler.get_last_lr()[0] == pytest.approx(2.0 * 64**-0.5 * 10**-1.5)


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda o: optim.warmup_cosine(o, 10, 5), ValueError),
        (lambda o: optim.warmup_cosine(o, -1, 5), ValueError),
        (lambda o: optim.warmup_cosine(o, 0, 0), ValueError),
        (lambda o: optim.warmup_cosine(o, 1, 5, min_lr_ratio=1.5), ValueError),
        (lambda o: optim.warmup_cosine(o, 1.5, 5), TypeError),
        (lambda o: optim.step_decay(o, 0, 0.5), ValueError),
        (lambda o: optim.step_decay(o, 2, 0.0), ValueError),
        (lambda o: optim.inverse_sqrt(o, 0, 10), ValueError),
        (lambda o: optim.inverse_sqrt(o, 512, 0), ValueError),
        (lambda o: optim.inverse_sqrt("not an optimizer", 512, 10), TypeError),
    ],
)
def test_schedule_arguments_are_validated(make, error):
    with pytest.raises(error):
        make(_sgd())


# ----------------------------------------------------------------------------- decay groups


def test_decay_groups_decay_matrices_and_embeddings_not_biases_or_gains():
    from utils import lm_recipes
    from utils.models import TransformerLM

    model = TransformerLM(vocab_size=11, d_model=8, n_heads=2, n_layers=1, max_len=6)
    model.blocks[0].ln1.weight.requires_grad_(False)  # a frozen tensor is left out
    decay, no_decay = optim.decay_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert "token_embedding.weight" in decayed  # embeddings are matrices: decayed
    assert all(model.get_parameter(n).dim() >= 2 for n in decayed)
    assert all(n.endswith("bias") or ".ln" in n or n.startswith("ln") for n in kept)
    assert "blocks.0.ln1.weight" not in decayed | kept
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert (
        decayed | kept == trainable and not decayed & kept
    )  # each parameter once (tied head)
    # AdamW takes them as they are, and lm_recipes imports this one function
    torch.optim.AdamW(optim.decay_groups(model, 0.1), lr=1e-3)
    assert lm_recipes.decay_groups is optim.decay_groups


def test_decay_groups_check_their_arguments():
    with pytest.raises(TypeError, match="nn.Module"):
        optim.decay_groups([torch.zeros(2, 2)], 0.1)
    with pytest.raises(ValueError, match="weight_decay"):
        optim.decay_groups(torch.nn.Linear(2, 2), -0.1)
    with pytest.raises(TypeError, match="weight_decay"):
        optim.decay_groups(torch.nn.Linear(2, 2), "0.1")
    # a model with no bias gets a single group
    assert len(optim.decay_groups(torch.nn.Linear(2, 2, bias=False), 0.1)) == 1
