"""What produced a notebook's stored outputs: profile, hashes of its code and of the modules it uses.

The executor (``tools/execute.py``) writes this record into ``metadata["llmbook"]`` of every notebook
it runs; ``tests/test_notebooks.py`` recomputes the hashes and fails when the notebook's code, or a
``utils/`` module the notebook imports (directly or through another module), changed after its
outputs were produced. Editing a module the notebook does not use leaves it fresh, so one fix in
``utils/`` re-executes only the chapters that depend on it.

Which modules a notebook uses is read from the code, not listed by hand: the ``import`` statements
of its code cells, then, transitively, those of each ``utils`` module (function-level imports
included, so a lazy ``from utils.nb import pick_device`` counts).

A module's hash is of its *code*: the syntax tree with docstrings dropped (comments and formatting
never reach the tree), so rewording a docstring or rewrapping lines does not stale every chapter
that imports the module; a change to what the code does always does.

Inputs that are not code are tracked too: a recorded benchmark result under ``results/`` that a
notebook reads (05b, 05e) is found by its file name in the notebook's code and hashed with the
outputs, so re-running a benchmark stales the chapters that quote it.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterable
from pathlib import Path

import nbformat

METADATA_KEY = "llmbook"
PACKAGE = "utils"
UTILS_DIR = Path(__file__).resolve().parent
# Packages whose versions are recorded with the outputs.
RECORDED_PACKAGES = (
    "torch",
    "numpy",
    "transformers",
    "tokenizers",
    "plotly",
    "ipywidgets",
    "papermill",
    "nbclient",
)


def _is_injected(cell) -> bool:
    return "injected-parameters" in cell.get("metadata", {}).get("tags", [])


def _code_sources(nb: nbformat.NotebookNode) -> list[str]:
    return [
        cell.source.replace("\r\n", "\n")
        for cell in nb.cells
        if cell.cell_type == "code" and not _is_injected(cell)
    ]


def code_hash(nb: nbformat.NotebookNode) -> str:
    """SHA-256 of the notebook's code cells (sources only; papermill's injected cell excluded)."""
    h = hashlib.sha256()
    for source in _code_sources(nb):
        h.update(source.encode())
        h.update(b"\x00")
    return h.hexdigest()


def _python_source(cell_source: str) -> str:
    """A code cell as plain Python: IPython magics (``%time``, ``!pip``) become function calls."""
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager().transform_cell(cell_source)


def _module_file(module: str, utils_dir: Path) -> Path | None:
    """``utils.models`` -> ``<utils_dir>/models.py`` (``utils`` -> ``__init__.py``); None if absent."""
    parts = module.split(".")[1:]
    path = utils_dir.joinpath(*parts) if parts else utils_dir
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def _imports(source: str, current: str | None, utils_dir: Path) -> set[str]:
    """The ``utils`` modules that ``source`` imports anywhere in its body.

    ``current`` is the dotted name of the module ``source`` belongs to (None for a notebook); it
    resolves relative imports such as ``from . import corpus``.
    """
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: only meaningful inside the package
                if current is None:
                    continue
                package = current.split(".")[: -node.level]
                base = ".".join(package + ([base] if base else []))
            # `from utils import nb` imports the submodule utils.nb when there is one.
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name == PACKAGE or name.startswith(PACKAGE + "."):
                # `import utils.models.x` names a module or an attribute; keep the longest module.
                parts = name.split(".")
                while parts and _module_file(".".join(parts), utils_dir) is None:
                    parts.pop()
                if parts:
                    found.add(".".join(parts))
    return found


def utils_dependencies(
    sources: Iterable[str], utils_dir: Path = UTILS_DIR
) -> dict[str, str | None]:
    """Every ``utils`` module the code in ``sources`` uses, directly or transitively.

    Returns ``{module: importer}``: ``importer`` is the module through which it was first reached
    (None when the notebook imports it directly), so a message can say *why* a chapter depends on it.
    The package's ``__init__`` is always included: importing any submodule runs it.
    """
    direct: set[str] = set()
    for source in sources:
        direct |= _imports(_python_source(source), None, utils_dir)
    if not direct:
        return {}
    reached: dict[str, str | None] = {m: None for m in sorted(direct)}
    reached.setdefault(PACKAGE, None)
    queue = list(reached)
    while queue:
        module = queue.pop(0)
        path = _module_file(module, utils_dir)
        for dep in sorted(_imports(path.read_text(), module, utils_dir)):
            if dep not in reached:
                reached[dep] = module
                queue.append(dep)
    return reached


def _without_docstrings(tree: ast.AST) -> ast.AST:
    """``tree`` with the docstring of the module, of each class and of each function removed."""
    for node in ast.walk(tree):
        if isinstance(
            node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
        ):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
            ):
                if isinstance(body[0].value.value, str):
                    node.body = body[1:] or [ast.Pass()]
    return tree


def code_digest(source: str) -> str:
    """SHA-256 of what ``source`` does: its syntax tree without docstrings (no comments, no
    formatting, no line numbers)."""
    tree = _without_docstrings(ast.parse(source))
    return hashlib.sha256(ast.dump(tree, include_attributes=False).encode()).hexdigest()


def module_hashes(
    modules: Iterable[str], utils_dir: Path = UTILS_DIR
) -> dict[str, str]:
    """``{"utils/models.py": code digest, ...}`` for the given dotted module names."""
    out = {}
    for module in sorted(modules):
        path = _module_file(module, utils_dir)
        key = (Path(PACKAGE) / path.relative_to(utils_dir)).as_posix()
        out[key] = code_digest(path.read_text())
    return out


def result_inputs(
    nb: nbformat.NotebookNode, results_dir: Path | None = None
) -> dict[str, str]:
    """``{"results/mfu_cpu.json": sha256}`` for every file of ``results/`` whose name a code cell
    of ``nb`` mentions as a string literal (how the chapters read a recorded benchmark)."""
    results_dir = results_dir or UTILS_DIR.parent / "results"
    if not results_dir.is_dir():
        return {}
    names = {p.name: p for p in results_dir.iterdir() if p.is_file()}
    out = {}
    for source in _code_sources(nb):
        for node in ast.walk(ast.parse(_python_source(source))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                path = names.get(node.value)
                if path is not None:
                    key = f"{results_dir.name}/{path.name}"
                    out[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return dict(sorted(out.items()))


def record(
    nb: nbformat.NotebookNode,
    profile: str,
    duration_s: float,
    utils_dir: Path = UTILS_DIR,
) -> dict:
    """The provenance record for a notebook that was just executed under ``profile``."""
    from utils.nb import versions

    deps = utils_dependencies(_code_sources(nb), utils_dir)
    return {
        "profile": profile,
        "code_sha256": code_hash(nb),
        "utils_modules": module_hashes(deps, utils_dir),
        "hash": "code",  # module hashes are code digests (code_digest), not file bytes
        "inputs": result_inputs(nb),
        "versions": versions(RECORDED_PACKAGES),
        "duration_s": round(duration_s, 1),
        "executed_by": "tools/execute.py",
    }


def staleness(nb: nbformat.NotebookNode, utils_dir: Path = UTILS_DIR) -> list[str]:
    """Reasons why ``nb``'s stored outputs are stale or unaccounted for (empty list: fresh)."""
    rec = nb.metadata.get(METADATA_KEY)
    if not rec:
        return [
            "no provenance record: the notebook was not executed with tools/execute.py"
        ]
    problems = []
    if rec.get("profile") != "book":
        problems.append(f"outputs come from profile {rec.get('profile')!r}, not 'book'")
    if rec.get("code_sha256") != code_hash(nb):
        problems.append("code cells changed since the outputs were produced")
    recorded = rec.get("utils_modules")
    if recorded is None or rec.get("hash") != "code":
        problems.append(
            "the record has no code digests of utils/ (made by an older executor)"
        )
        return problems
    for path, digest in result_inputs(nb).items():
        if rec.get("inputs", {}).get(path) != digest:
            problems.append(
                f"{path}, which the notebook reads, changed since the outputs were produced"
            )
    deps = utils_dependencies(_code_sources(nb), utils_dir)
    current = module_hashes(deps, utils_dir)
    for path, digest in current.items():
        if recorded.get(path) != digest:
            module = (
                path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
            )
            via = deps[module]
            how = (
                "imported by the notebook" if via is None else f"imported through {via}"
            )
            problems.append(
                f"{module} ({path}, {how}) changed since the outputs were produced"
            )
    return problems
