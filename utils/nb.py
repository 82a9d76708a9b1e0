"""Notebook conventions shared by every chapter.

Every chapter notebook starts with a cell tagged ``parameters`` (papermill's convention) holding all
its knobs, ``None`` meaning "the profile's default". The next cell states, in one table, each knob's
default per profile and what values it allows, and hands both to :func:`configure`, which resolves,
checks, seeds, picks the device and prints the result::

    KNOBS = {  # name: (smoke, book, gpu, allowed)
        "steps": (5, 300, 3000, nb.Int(1)),
        "train_fraction": (0.05, 1.0, 1.0, nb.Float(0.001, 1.0)),
        "optimizer": ("adamw", "adamw", "adamw", nb.Choice("sgd", "adamw")),
    }
    nb.configure(globals(), KNOBS)   # replaces the None placeholders in the notebook

The lower-level pieces (:func:`resolve_profile`, :func:`check_int`, :func:`seed_everything`,
:func:`pick_device`) stay available for tools and tests.

Profiles (see CONTRIBUTING.md):

- ``smoke``: seconds per notebook; what ``pytest --nbval`` runs in CI.
- ``book``: a 2-core CPU in minutes; what the committed outputs and the published site show.
- ``gpu``: full-size runs; chosen automatically when CUDA is present.

The profile comes from, in order: the ``profile`` parameter (e.g. ``papermill -p profile smoke``),
the ``LLMBOOK_PROFILE`` environment variable (how ``pytest --nbval`` selects ``smoke`` without editing
notebooks), and finally ``gpu`` if CUDA is available, else ``book``.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Iterable, Sequence
from importlib import metadata
from typing import Any

PROFILES: tuple[str, ...] = ("smoke", "book", "gpu")
PROFILE_ENV = "LLMBOOK_PROFILE"


class ParameterError(ValueError):
    """A notebook parameter has an invalid value. The message says what is allowed."""


def resolve_profile(profile: str | None = None) -> str:
    """Return the profile to run under, validated.

    ``None`` or ``""`` means "not chosen in the notebook": the ``LLMBOOK_PROFILE`` environment
    variable decides, else ``gpu`` when CUDA is available, else ``book``.
    """
    source = "the 'profile' parameter"
    if profile is None or profile == "":
        profile = os.environ.get(PROFILE_ENV) or None
        source = f"the {PROFILE_ENV} environment variable"
    if profile is None:
        return "gpu" if _cuda_available() else "book"
    if not isinstance(profile, str) or profile.strip().lower() not in PROFILES:
        raise ParameterError(
            f"profile={profile!r} (from {source}) is not a known profile; choose one of "
            f"{', '.join(PROFILES)}: in the parameters cell, with `papermill -p profile smoke`, "
            f"or with `{PROFILE_ENV}=smoke`."
        )
    profile = profile.strip().lower()
    if profile == "gpu" and not _cuda_available():
        print(
            "WARNING: profile 'gpu' chosen but no CUDA device is visible; full-size runs on a CPU "
            "can take hours. Use profile 'book' on a CPU.",
            file=sys.stderr,
        )
    return profile


def by_profile(profile: str, **choices: Any) -> Any:
    """Pick the value for ``profile`` from keyword choices, e.g. ``by_profile(p, smoke=2, book=50, gpu=500)``."""
    if profile not in PROFILES:
        raise ParameterError(f"profile={profile!r} is not one of {', '.join(PROFILES)}")
    missing = [p for p in PROFILES if p not in choices]
    unknown = [k for k in choices if k not in PROFILES]
    if missing or unknown:
        raise ParameterError(
            f"by_profile needs exactly the keys {PROFILES}; missing {missing}, unknown {unknown}"
        )
    return choices[profile]


def _describe_range(min_value: Any, max_value: Any) -> str:
    if min_value is not None and max_value is not None:
        return f"between {min_value} and {max_value}"
    if min_value is not None:
        return f">= {min_value}"
    if max_value is not None:
        return f"<= {max_value}"
    return "any value"


def check_int(
    name: str,
    value: Any,
    *,
    min_value: int | None = None,
    max_value: int | None = None,
    allow_none: bool = False,
) -> int | None:
    """Return ``value`` if it is an int in ``[min_value, max_value]``, else raise ParameterError."""
    if value is None and allow_none:
        return None
    # bool is a subclass of int; `steps=True` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParameterError(
            f"{name}={value!r} must be an integer {_describe_range(min_value, max_value)}"
        )
    if (min_value is not None and value < min_value) or (
        max_value is not None and value > max_value
    ):
        raise ParameterError(
            f"{name}={value!r} is out of range: it must be an integer "
            f"{_describe_range(min_value, max_value)}"
        )
    return value


def check_float(
    name: str,
    value: Any,
    *,
    min_value: float | None = None,
    max_value: float | None = None,
    allow_none: bool = False,
) -> float | None:
    """Return ``float(value)`` if it is a finite real in ``[min_value, max_value]``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParameterError(
            f"{name}={value!r} must be a number {_describe_range(min_value, max_value)}"
        )
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ParameterError(f"{name}={value!r} must be finite")
    if (min_value is not None and value < min_value) or (
        max_value is not None and value > max_value
    ):
        raise ParameterError(
            f"{name}={value!r} is out of range: it must be {_describe_range(min_value, max_value)}"
        )
    return value


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``, else raise ParameterError listing them."""
    choices = tuple(choices)
    if value not in choices:
        raise ParameterError(
            f"{name}={value!r} is not allowed; choose one of {choices}"
        )
    return value


def seed_everything(seed: int) -> int:
    """Seed Python's ``random``, NumPy and torch (CPU and every CUDA device). Returns the seed.

    The notebooks' front end: checks that ``seed`` is an int in ``0..2**32 - 1`` (a
    :class:`ParameterError` otherwise), then calls :func:`utils.checkpoint.seed_rngs`, the
    one seeding implementation.
    """
    seed = check_int("seed", seed, min_value=0, max_value=2**32 - 1)
    # imported here: it imports torch, and `import utils.nb` stays cheap
    from utils.checkpoint import seed_rngs

    seed_rngs(seed)
    return seed


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pick_device(device: str | None = "auto"):
    """Return a ``torch.device``: ``"auto"``/``None`` picks CUDA, then Apple MPS, then CPU.

    An explicit ``"cuda"`` without a GPU is an error, not a silent fallback.
    """
    import torch

    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if (
            getattr(torch.backends, "mps", None) is not None
            and torch.backends.mps.is_available()
        ):
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ParameterError(
            f"device={device!r} is not a valid torch device; use 'auto', 'cpu', 'cuda' or 'cuda:N'"
        ) from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError(
            f"device={device!r} was requested but CUDA is not available here; use 'auto' or 'cpu'"
        )
    return dev


def autocast_dtype(device) -> Any:
    """The mixed-precision dtype for ``device``: bf16 where supported, fp16 on older GPUs, else None.

    Colab's T4 has no bf16 tensor cores, so it gets fp16 (pair it with ``torch.amp.GradScaler``).
    On the CPU we train in fp32: bf16 autocast there is slower on most laptops. The rule lives
    in :func:`utils.precision.autocast_dtype` (``precision="auto"``).
    """
    from utils.precision import autocast_dtype as _autocast_dtype  # imports torch

    return _autocast_dtype(device)


def in_colab() -> bool:
    """True when running inside Google Colab."""
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def versions(
    packages: Sequence[str] = ("torch", "numpy", "transformers", "plotly"),
) -> dict:
    """Installed versions of ``packages`` (plus Python), for reports and notebook metadata."""
    out = {"python": platform.python_version()}
    out.update({p: _version(p) for p in packages})
    return out


def environment_report(device=None) -> str:
    """A short multi-line description of the machine: Python, torch, device, threads, GPU name."""
    import torch

    device = pick_device("auto") if device is None else torch.device(device)
    lines = [
        f"python {platform.python_version()} on {platform.system()} {platform.machine()}",
        f"torch {torch.__version__}; CUDA available: {torch.cuda.is_available()}",
        f"device: {device}; CPU threads: {torch.get_num_threads()} of {os.cpu_count()} cores",
    ]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        lines.append(
            f"GPU: {props.name}, {props.total_memory / 2**30:.1f} GiB, "
            f"bf16: {torch.cuda.is_bf16_supported(including_emulation=False)}"
        )
    if in_colab():
        lines.append("running in Google Colab")
    return "\n".join(lines)


# --- Declarative knobs -------------------------------------------------------------------------


class Int:
    """Allowed values of an integer knob: ``Int(1)`` means >= 1, ``Int(1, 6)`` means 1..6."""

    def __init__(self, min_value: int | None = None, max_value: int | None = None):
        self.min_value, self.max_value = min_value, max_value

    def __call__(self, name: str, value: Any) -> int:
        return check_int(
            name, value, min_value=self.min_value, max_value=self.max_value
        )

    def __repr__(self) -> str:
        return f"integer {_describe_range(self.min_value, self.max_value)}"


class Float:
    """Allowed values of a real knob: ``Float(0, 1)`` means a finite number in [0, 1]."""

    def __init__(self, min_value: float | None = None, max_value: float | None = None):
        self.min_value, self.max_value = min_value, max_value

    def __call__(self, name: str, value: Any) -> float:
        return check_float(
            name, value, min_value=self.min_value, max_value=self.max_value
        )

    def __repr__(self) -> str:
        return f"number {_describe_range(self.min_value, self.max_value)}"


class Choice:
    """Allowed values of a knob that takes one of a few values: ``Choice("sgd", "adamw")``."""

    def __init__(self, *options: Any):
        if not options:
            raise ValueError("Choice needs at least one option")
        self.options = options

    def __call__(self, name: str, value: Any) -> Any:
        return check_choice(name, value, self.options)

    def __repr__(self) -> str:
        return "one of " + ", ".join(map(repr, self.options))


# Knobs every chapter has; configure() handles them itself.
COMMON_KNOBS = ("profile", "seed", "device")


class Config(dict):
    """The resolved knobs of a notebook; also readable as attributes (``cfg.steps``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as err:
            raise AttributeError(name) from err


def configure(
    namespace: dict,
    knobs: dict[str, tuple],
    *,
    report: bool = True,
    file=None,
) -> Config:
    """Resolve, check and apply a notebook's knobs; return them as a :class:`Config`.

    ``namespace`` is the notebook's ``globals()``: it holds the parameters cell's values (``profile``,
    ``seed``, ``device`` and every knob of ``knobs``, ``None`` meaning "the profile's default").
    ``knobs`` maps each knob name to ``(smoke, book, gpu, allowed)``: its default under each profile
    and a checker (:class:`Int`, :class:`Float`, :class:`Choice`, or any callable
    ``check(name, value) -> value`` that raises :class:`ParameterError`).

    The resolved values are written back into ``namespace`` (so later cells use plain names), the
    random generators are seeded, ``device`` becomes a ``torch.device``, and a short report is
    printed: the machine, then one line per knob saying whether the value is the profile's default
    or was set by a parameter. Anything invalid raises :class:`ParameterError` naming the knob and
    what is allowed.
    """
    for name in knobs:
        if name in COMMON_KNOBS:
            raise ParameterError(
                f"{name!r} is handled by configure(); remove it from the table"
            )
        row = knobs[name]
        if not isinstance(row, tuple) or len(row) != 4 or not callable(row[3]):
            raise ParameterError(
                f"knob {name!r}: expected (smoke, book, gpu, allowed), got {row!r}"
            )
    missing = [n for n in (*COMMON_KNOBS, *knobs) if n not in namespace]
    if missing:
        raise ParameterError(
            f"the parameters cell defines no {', '.join(missing)}: add a line `name = None` "
            "for each knob of the table"
        )
    profile = resolve_profile(namespace["profile"])
    cfg = Config(profile=profile)
    cfg["seed"] = seed_everything(namespace["seed"])
    cfg["device"] = pick_device(namespace["device"])
    origins = {}
    for name, (smoke, book, gpu, check) in knobs.items():
        given = namespace[name]
        value = (
            by_profile(profile, smoke=smoke, book=book, gpu=gpu)
            if given is None
            else given
        )
        cfg[name] = check(name, value)
        origins[name] = f"{profile} default" if given is None else "set by parameter"
    namespace.update(cfg)
    if report:
        width = max(map(len, knobs), default=0)
        lines = [
            environment_report(cfg.device),
            f"profile {profile!r}, seed {cfg.seed}",
        ]
        lines += [f"  {n:<{width}} = {cfg[n]!r:<12} ({origins[n]})" for n in knobs]
        print("\n".join(lines), file=file)
    return cfg


def require(condition: bool, message: str) -> None:
    """Raise :class:`ParameterError` with ``message`` unless ``condition`` holds (cross-knob checks)."""
    if not condition:
        raise ParameterError(message)


# --- The gpu profile's dry run -----------------------------------------------------------------

DRY_RUN_ENV = "LLMBOOK_DRY_RUN"
DRY_RUN_MIME = "application/vnd.llmbook.dry-run+json"


class DryRunStop(Exception):
    """Raised by :func:`dry_run_stop` in a dry run: every check before it passed; stop here.

    ``tools/gpu_dry_run.py`` counts a notebook that stops with it as a success, and any other
    exception before it as a failure. IPython shows the one-line message, not a traceback.
    """

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


def dry_run() -> bool:
    """True when ``LLMBOOK_DRY_RUN`` is set (to anything but ``""`` or ``"0"``)."""
    return os.environ.get(DRY_RUN_ENV, "") not in ("", "0")


def dry_run_stop(plan=None) -> None:
    """The end of a chapter's configuration and data checks, before its first expensive step.

    Outside a dry run this does nothing. With ``LLMBOOK_DRY_RUN=1`` (``tools/gpu_dry_run.py``
    runs every chapter so under ``-p profile gpu``) it prints ``plan``'s estimate (a
    :class:`utils.gpu_estimate.Plan`, or None), publishes it as JSON under
    :data:`DRY_RUN_MIME` for the tool, and raises :class:`DryRunStop`, which ends the run.
    """
    if not dry_run():
        return
    data = {"chapter": None, "estimates": []} if plan is None else plan.to_dict()
    text = "no estimate" if plan is None else plan.report()
    print(text)
    try:
        from IPython.display import display
    except ImportError:  # plain Python: the printed report is all there is
        pass
    else:
        display({DRY_RUN_MIME: data, "text/plain": "(dry-run estimate)"}, raw=True)
    raise DryRunStop(
        f"{DRY_RUN_ENV} is set: configuration and data checks passed, stopped here"
    )


# --- Numbers in prose --------------------------------------------------------------------------

GLUE_MIME_PREFIX = "application/papermill.record/"


def glue(name: str, value: Any, fmt: str | None = None) -> None:
    """Make ``value`` available to the chapter's prose as ``{glue:text}`name```.

    ``fmt`` is a format spec applied here (``glue("ppl", 249.83, ".1f")`` stores ``249.8``), so the
    prose shows exactly what the code computed, rounded as the code says. The output is the one
    myst-nb's own ``glue(name, value, display=False)`` writes for a string (a display-data bundle
    under the ``application/papermill.record/`` prefix; ``tests/test_nb.py`` checks they agree); it
    is written here so that the notebooks do not need myst-nb installed on Colab. Nothing is shown
    in Jupyter. Glue only values the code computed; facts from papers stay literal, with a citation.
    The text stored is ``format(value, fmt)`` (``str(value)`` without ``fmt``).
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"glue name {name!r} must be a Python identifier")
    text = format(value, fmt) if fmt else str(value)
    from IPython.display import display

    # repr(), as IPython formats a str: myst-nb's role literal_eval()s it back, so "1,203.8" stays
    # a string instead of becoming the tuple (1, 203.8).
    display(
        {GLUE_MIME_PREFIX + "text/plain": repr(text)},
        raw=True,
        metadata={"scrapbook": {"name": name, "mime_prefix": GLUE_MIME_PREFIX}},
    )
    # Nothing is returned: a glue call on a cell's last line must not print an Out[] value.
