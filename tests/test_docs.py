"""The code of README.md and docs/*.md runs as written, and their links lead somewhere.

Every fenced block of README.md and docs/*.md is a test case (docs/notes/ is left out: dated records of
what ran at their commit, not instructions):

- ``python``: run in a fresh interpreter (the checkout first on ``PYTHONPATH``), in a temp dir of its
  own, CPU only (``CUDA_VISIBLE_DEVICES=""``). Keep examples tiny: CI runs them on 2 cores.
- ``bash`` / ``sh``: the block's commands run in order in a temp dir of its own (backslash
  continuations joined, ``#`` comments dropped, leading ``VAR=value`` words set in the environment).
  ``mambaad ...`` (the CLI) runs as ``python -m mambaad.cli ...`` with :data:`TINY` flags appended
  (argparse keeps the last value of a flag), so the documented subcommands, flags and data layouts
  are checked at CI's size; ``python -m mambaad_kernels`` runs as is. Any other command must be in
  :data:`NOT_RUN` with the reason it cannot run here: each such line is a case of its own, skipped
  with that reason. A command in neither list fails.
- other languages must be in :data:`NOT_CODE` (data, not code); a block without a language fails.

Directives, an HTML comment on the line right before a block's opening fence (not shown on the
rendered page; several ``key=value`` pairs may share one comment)::

    <!-- docs-test: fixture=NAME[,NAME...] -->   prepare files in the block's temp dir (FIXTURES)
    <!-- docs-test: skip reason=TEXT -->          the block cannot run on a CPU-only CI machine

A skipped block is reported as skipped with its reason (``pytest -ra`` lists every one); no block is
left out silently. To add a fixture, decorate ``def name(where: Path, cache: FixtureCache) -> None``
with ``@docs_fixture("name")``: it writes what the block needs under ``where`` (the block's working
directory), building anything slow once per session through ``cache.build(key, builder)``.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINKED = [*PAGES, REPO / "BENCHMARKS.md", *sorted((REPO / "docs" / "notes").glob("*.md"))]
TIMEOUT_S = 900

# Flags appended to each CLI subcommand of a documented command line (the last value of a flag wins):
# the tiny test model at 64 px for one epoch on the CPU, whatever the page shows.
TINY = {
    "train": ["--model", "mambaad_test", "--image-size", "64", "--epochs", "1", "--batch-size", "4",
              "--workers", "0", "--device", "cpu"],
    "eval": ["--workers", "0", "--device", "cpu"],
    "predict": ["--device", "cpu"],
    "export": [],
}

# Commands the pages show that this test does not run (matched on the command's start, after any
# VAR=value words), with the reason; each line is reported as a skipped case with it.
NOT_RUN = {
    "make test": "builds .venv and runs the whole suite: that is CI itself (.ci/run)",
    "make bench": "a benchmark run of minutes; tests/test_bench.py runs scan_bench.py on a tiny shape",
    "make demo": "trains on the shared Magnetic Tile set for minutes; the CLI steps it runs are tested here",
    "make wheel": "builds the whole extension; CI's make test-oldtorch builds and installs a wheel",
    "make test-oldtorch": "CI runs it (.ci/run)",
    "make ext": "rebuilds the extension in place, which the running tests import",
    "pip install": "installs into the running environment; CI's make test installs the package so",
    "pip wheel": "builds the whole extension; CI's make test-oldtorch builds a wheel so",
    "torchrun": "several training processes; tests/test_resume.py runs two gloo processes under torchrun",
    "benchmarks/gpu_check.sh": "needs an NVIDIA GPU, nvcc and minutes",
    "python benchmarks/": "a timing run of minutes; tests/test_bench.py, test_mmad.py and test_vmamba.py "
                          "run the scripts on tiny shapes",
    "python -m pytest": "runs tests: this is the test suite",
}
RUN_CLI = ("mambaad", "python -m mambaad.cli")
RUN_AS_IS = ("python -m mambaad_kernels",)
NOT_CODE = {"text", "json", "yaml", "csv"}
SHELL = {"bash", "sh", "shell"}

_FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)")
_DIRECTIVE = re.compile(r"<!--\s*docs-test:(.*?)-->")


@dataclass
class Block:
    """One fenced block of a page."""

    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    fixtures: list[str] = field(default_factory=list)
    skip: str | None = None
    error: str | None = None  # a malformed directive

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def _directive(text: str) -> tuple[list[str], str | None, str | None]:
    """(fixtures, skip reason, error) of a ``docs-test:`` comment's body."""
    fixtures, skip, error = [], None, None
    body = text.strip()
    if body.startswith("skip"):
        m = re.match(r"skip\s+reason=(.+)$", body)
        if m is None:
            return fixtures, None, "skip needs reason=TEXT"
        return fixtures, m.group(1).strip(), None
    for part in body.split():
        key, _, value = part.partition("=")
        if key == "fixture" and value:
            fixtures += value.split(",")
        else:
            error = f"unknown directive {part!r} (known: fixture=NAME, skip reason=TEXT)"
    return fixtures, skip, error


def parse_blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page`` with the directive on the line before each."""
    lines = page.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.group(1), m.group(2), m.group(3).lower()
        start, body = i, []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1
        block = Block(page, start + 1, lang, "\n".join(body) + "\n")
        prev = lines[start - 1] if start > 0 else ""
        d = _DIRECTIVE.search(prev)
        if d:
            block.fixtures, block.skip, block.error = _directive(d.group(1))
        blocks.append(block)
    return blocks


# --- fixtures ------------------------------------------------------------------------------------


class FixtureCache:
    """Builds slow inputs once per session (``build``) under a session temp dir."""

    def __init__(self, root: Path):
        self.root = root

    def build(self, key: str, builder: Callable[[Path], None]) -> Path:
        """The folder of ``key``, made by ``builder(folder)`` on first use."""
        path = self.root / key
        if not (path / ".done").exists():
            if path.exists():
                shutil.rmtree(path)
            path.mkdir(parents=True)
            builder(path)
            (path / ".done").touch()
        return path


FIXTURES: dict[str, Callable[[Path, FixtureCache], None]] = {}


def docs_fixture(name: str) -> Callable:
    """Register ``fn(where, cache)`` as the docs fixture ``name``."""

    def register(fn: Callable[[Path, FixtureCache], None]) -> Callable[[Path, FixtureCache], None]:
        FIXTURES[name] = fn
        return fn

    return register


def _copy_into(src: Path, where: Path) -> None:
    for item in src.iterdir():
        if item.name == ".done":
            continue
        if item.is_dir():
            shutil.copytree(item, where / item.name, dirs_exist_ok=True)
        else:
            shutil.copy2(item, where / item.name)


def _env() -> dict[str, str]:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    env.pop("MAMBAAD_BACKEND", None)
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env or _env(), capture_output=True, text=True,
                          timeout=TIMEOUT_S)


def _check(proc: subprocess.CompletedProcess, what: str) -> None:
    assert proc.returncode == 0, (f"{what}: exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
                                  f"\n--- stderr\n{proc.stderr[-4000:]}")


def cli(args: list[str], cwd: Path) -> None:
    """``mambaad ARGS`` with the TINY flags of its subcommand, in ``cwd``."""
    cmd = [sys.executable, "-m", "mambaad.cli", *args, *TINY.get(args[0] if args else "", [])]
    _check(_run(cmd, cwd), " ".join(cmd[2:]))


@docs_fixture("mvtec")
def _mvtec(where: Path, cache: FixtureCache) -> None:
    """``data/mvtec``: the generated MVTec-layout set of tests/datagen.py, its two categories named
    ``bottle`` and ``cable`` as the pages' examples name MVTec's."""

    def build(path: Path) -> None:
        from tests.datagen import make_tiny_mvtec

        root = path / "data" / "mvtec"
        make_tiny_mvtec(str(root))
        (root / "stripes").rename(root / "bottle")
        (root / "disc").rename(root / "cable")

    _copy_into(cache.build("mvtec", build), where)


@docs_fixture("trained_run")
def _trained_run(where: Path, cache: FixtureCache) -> None:
    """``data/mvtec`` and ``runs/x``: ``mambaad train`` (TINY) and ``mambaad eval`` on it (thresholds
    stored in ``runs/x/last.pt``)."""

    def build(path: Path) -> None:
        _mvtec(path, cache)
        cli(["train", "--root", "data/mvtec", "--dataset", "mvtec", "--output", "runs/x"], path)
        cli(["eval", "--checkpoint", "runs/x/last.pt", "--output", "runs/x/eval"], path)

    _copy_into(cache.build("trained_run", build), where)


def _exported(where: Path, cache: FixtureCache, key: str, output: str) -> None:
    """``output`` in ``where``: ``mambaad export`` of the trained_run checkpoint (mambaad_test, 64 px),
    its format by the suffix; built once per ``key``."""

    def build(path: Path) -> None:
        _trained_run(path, cache)
        cli(["export", "--checkpoint", "runs/x/last.pt", "--output", output], path)
        shutil.rmtree(path / "runs")
        shutil.rmtree(path / "data")

    _copy_into(cache.build(key, build), where)


@docs_fixture("exported_model")
def _exported_model(where: Path, cache: FixtureCache) -> None:
    """``model.pt2``: the torch.export program."""
    _exported(where, cache, "exported_model", "model.pt2")


@docs_fixture("onnx_model")
def _onnx_model(where: Path, cache: FixtureCache) -> None:
    """``model.onnx``: the ONNX file (every scan in standard operators)."""
    _exported(where, cache, "onnx_model", "model.onnx")


@docs_fixture("openvino_model")
def _openvino_model(where: Path, cache: FixtureCache) -> None:
    """``model.xml`` and ``model.bin``: the OpenVINO IR."""
    _exported(where, cache, "openvino_model", "model.xml")


@docs_fixture("authors_checkpoint")
def _authors_checkpoint(where: Path, cache: FixtureCache) -> None:
    """``net.pth``: a ``mambaad`` state dict (random weights) in the authors' ADer naming under
    ``net``, with their stored scan indices and ADer's unused ``conv33``, as their trainer saves it."""

    def build(path: Path) -> None:
        import torch

        import mambaad
        from tests.test_checkpoint_load import _authors_state_dict

        torch.manual_seed(0)
        sd, _ = _authors_state_dict(mambaad.create_model("mambaad", pretrained=False), "ader")
        torch.save({"net": sd}, path / "net.pth")

    _copy_into(cache.build("authors_checkpoint", build), where)


@docs_fixture("vmamba_checkpoint")
def _vmamba_checkpoint(where: Path, cache: FixtureCache) -> None:
    """``vssm1_tiny_0230s_ckpt_epoch_264.pth``: a vmamba_tiny_s1l8 state dict (random weights) under
    ``model``, in the layout of VMamba's released file of that name."""

    def build(path: Path) -> None:
        import torch

        from mambaad_kernels.vmamba import vmamba_tiny_s1l8

        torch.manual_seed(0)
        torch.save({"model": vmamba_tiny_s1l8().state_dict()}, path / "vssm1_tiny_0230s_ckpt_epoch_264.pth")

    _copy_into(cache.build("vmamba_checkpoint", build), where)


@docs_fixture("tflite_weights")
def _tflite_weights(where: Path, cache: FixtureCache) -> None:
    """Nothing to write: the shared MobileNetV2 .tflite file must be where the encoder looks."""
    from mambaad.encoders.tflite_mobilenet import default_tflite_path

    try:
        default_tflite_path()
    except FileNotFoundError as exc:
        pytest.skip(f"the shared MobileNetV2 .tflite file is absent: {exc}")


@pytest.fixture(scope="session")
def docs_cache(tmp_path_factory) -> FixtureCache:
    return FixtureCache(tmp_path_factory.mktemp("docs_fixtures"))


# --- cases ---------------------------------------------------------------------------------------


@dataclass
class Case:
    """One test case: a Python block, a shell block's runnable commands, or one command not run."""

    block: Block
    kind: str  # "python", "shell", "not_run", "bad"
    commands: list[tuple[dict[str, str], list[str]]] = field(default_factory=list)
    reason: str = ""
    label: str = ""

    @property
    def id(self) -> str:
        return f"{self.block.where}{':' + self.label if self.label else ''}"


def shell_commands(code: str) -> list[tuple[dict[str, str], list[str]]]:
    """The (environment words, argv) of each command line of a shell block."""
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        env = {}
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
            key, _, value = words.pop(0).partition("=")
            env[key] = value
        if words:
            out.append((env, words))
    return out


def _starts(words: list[str], prefix: str) -> bool:
    text = " ".join(words)
    return text == prefix or text.startswith(prefix if prefix.endswith("/") else prefix + " ")


def cases() -> list[Case]:
    out = []
    for page in PAGES:
        for block in parse_blocks(page):
            if block.error:
                out.append(Case(block, "bad", reason=block.error))
            elif block.skip is not None:
                out.append(Case(block, "not_run", reason=f"docs-test skip: {block.skip}"))
            elif block.lang == "python":
                out.append(Case(block, "python"))
            elif block.lang in SHELL:
                run = Case(block, "shell")
                for env, words in shell_commands(block.code):
                    if any(_starts(words, p) for p in RUN_CLI + RUN_AS_IS):
                        run.commands.append((env, words))
                        continue
                    reason = next((r for p, r in sorted(NOT_RUN.items(), key=lambda kv: -len(kv[0]))
                                   if _starts(words, p)), None)
                    label = " ".join(words)[:60]
                    if reason is None:
                        out.append(Case(block, "bad", label=label, reason=f"command {' '.join(words)!r} is "
                                        "neither run (RUN_CLI, RUN_AS_IS) nor in NOT_RUN with a reason"))
                    else:
                        out.append(Case(block, "not_run", label=label, reason=reason))
                if run.commands:
                    out.append(run)
            elif block.lang not in NOT_CODE:
                out.append(Case(block, "bad", reason=f"block language {block.lang!r}: python, bash, or one "
                                f"of {sorted(NOT_CODE)}"))
    return out


CASES = cases()


def test_pages_have_blocks():
    """The parser sees the pages' blocks (a broken fence pattern would make every case vanish)."""
    assert (REPO / "README.md") in PAGES and len(PAGES) >= 6
    kinds = {c.kind for c in CASES}
    assert {"python", "shell", "not_run"} <= kinds


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_doc_block(case: Case, tmp_path, docs_cache):
    """The block runs as written (see the module docstring for what runs and how)."""
    if case.kind == "bad":
        pytest.fail(f"{case.id}: {case.reason}")
    if case.kind == "not_run":
        pytest.skip(f"{case.id}: {case.reason}")
    for name in case.block.fixtures:
        assert name in FIXTURES, f"{case.id}: unknown docs-test fixture {name!r} (known: {sorted(FIXTURES)})"
        FIXTURES[name](tmp_path, docs_cache)
    if case.kind == "python":
        _check(_run([sys.executable, "-c", case.block.code], tmp_path), case.id)
        return
    for env, words in case.commands:
        if any(_starts(words, p) for p in RUN_CLI):
            args = words[1:] if words[0] == "mambaad" else words[3:]
            cmd = [sys.executable, "-m", "mambaad.cli", *args, *TINY.get(args[0] if args else "", [])]
        else:
            cmd = [sys.executable, *words[1:]]
        _check(_run(cmd, tmp_path, dict(_env(), **env)), f"{case.id}: {' '.join(words)}")


# --- links ---------------------------------------------------------------------------------------


def heading_anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings (lower case, punctuation dropped, spaces to '-',
    repeats numbered)."""
    seen: dict[str, int] = {}
    out = set()
    in_fence = False
    for line in page.read_text().splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        if in_fence or not line.startswith("#"):
            continue
        text = line.lstrip("#").strip()
        text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", text)
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", LINKED, ids=[str(p.relative_to(REPO)) for p in LINKED])
def test_relative_links_resolve(page: Path):
    """Every relative link of the page names a file of the checkout, and a heading where it has #."""
    bad = []
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for target in _LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in heading_anchors(dest):
            bad.append(f"{target}: no heading #{anchor} in {dest.relative_to(REPO)}")
    assert not bad, bad
