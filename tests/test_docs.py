"""The documented commands work as written.

Every fenced shell block (```bash / ```sh / ```shell) of README.md, docs/*.md and
bench/README.md is either

- **runnable**: the line just before its fence is ``<!-- runnable -->``. It runs in a
  temporary directory holding the project's demo inputs (``examples/``), with
  ``.venv/bin/X`` resolved to the running interpreter's environment and that environment
  first on ``PATH``; each block must exit 0. Keep them to seconds each; or
- listed in :data:`NOT_RUN` below with the reason it is not run, so that a new block, or
  a changed one, cannot drift unnoticed.

Whatever block they are in, the ``python -m fakecoord run`` and ``python -m conformance``
commands are parsed with the programs' own argument parsers: an option that does not exist
(or lost its value) fails here even in a block that is not run.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "bench" / "README.md"]
SHELL_LANGUAGES = {"bash", "sh", "shell"}
RUNNABLE_MARK = "<!-- runnable -->"

NOT_RUN: dict[tuple[str, str], str] = {
    (
        "README.md",
        "python3 -m venv .venv && .venv/bin/pip install -c constraints.txt -e .[sim]",
    ): (
        "creates the checkout's own venv and runs the full 10-round demo; the "
        "install line is the one CI runs for tests, the run is the runnable smoke block's "
        "command with the defaults"
    ),
    (
        "README.md",
        "python3 -m venv .venv && .venv/bin/pip install -c constraints.txt -e .[test]",
    ): ("the README's test command: it is what CI runs (.ci/run), verbatim"),
    ("README.md", ".venv/bin/python -m fakecoord run"): (
        "each line is a full-length demo run (several seconds to a minute each, with faults "
        "and timeouts), one needs the reader's own "
        "package; the flags are parsed below, the smoke block runs a one-round version"
    ),
    ("README.md", ".venv/bin/pip install -c constraints.txt -e .[conformance]"): (
        "installs into the checkout's venv and runs the suite on the reader's own package "
        "(my_pkg); the flags are parsed below, docs/workload-authors.md runs the suite on "
        "the example workload"
    ),
    ("docs/simulation.md", "python -m fakecoord run"): (
        "the full demo and the reader's own package (my_pkg); the flags are parsed below, the "
        "'Config files' block runs examples/run.toml"
    ),
    ("docs/simulation.md", "python -m fakecoord run --policy"): (
        "full demo runs; the second names the reader's policy file (revision-policy.json); "
        "the flags and the inline policy's quoting are parsed below"
    ),
    ("docs/workload-authors.md", "pip install path/to/checkout[conformance]"): (
        "installs from a placeholder path (path/to/checkout)"
    ),
    ("docs/workload-authors.md", "python -m conformance --factory my_pkg.train:make_workload"): (
        "the reader's own package (my_pkg) and batches file; the flags are parsed below"
    ),
    ("docs/workload-authors.md", "OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python -m conformance"): (
        "the reader's own package (my_pkg); the flags are parsed below"
    ),
    ("docs/workload-authors.md", "pytest --workload-factory my_pkg.train:make_workload"): (
        "the reader's own package (my_pkg), in the reader's own test run"
    ),
    ("bench/README.md", "python -m bench.run_all"): (
        "benchmarks take minutes and need the checkout (bench/ is not installed); "
        "tests/test_bench_smoke.py-style runs use --quick"
    ),
}
"""Shell blocks deliberately not run: (file relative to the repository, the start of the
block's first command) -> why."""


@dataclass(frozen=True)
class Block:
    file: str
    line: int
    runnable: bool
    commands: list[str]
    """The block's commands: continuation lines joined, blank and comment lines dropped."""

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"


def quotes_closed(text: str) -> bool:
    try:
        shlex.split(text, comments=True)
    except ValueError:
        return False
    return True


def shell_blocks() -> list[Block]:
    blocks = []
    for path in DOCS:
        lines = path.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            fence = re.match(r"^\s*```(\S*)", lines[i])
            if not fence:
                i += 1
                continue
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip().startswith("```"))
            if fence.group(1) in SHELL_LANGUAGES:
                before = next(
                    (lines[k].strip() for k in range(i - 1, -1, -1) if lines[k].strip()), ""
                )
                commands, pending = [], ""
                for raw in lines[i + 1 : end]:
                    text = pending + raw.strip()
                    if text.endswith("\\"):
                        pending = text[:-1] + " "
                        continue
                    if not quotes_closed(text):  # a quoted argument spans lines
                        pending = text + " "
                        continue
                    pending = ""
                    if text and not text.startswith("#"):
                        commands.append(text)
                blocks.append(
                    Block(str(path.relative_to(REPO)), i + 1, before == RUNNABLE_MARK, commands)
                )
            i = end + 1
    return blocks


BLOCKS = shell_blocks()


def not_run_key(block: Block) -> tuple[str, str] | None:
    """The :data:`NOT_RUN` entry of ``block``: the longest start its first command has."""
    first = " ".join(shlex.split(block.commands[0], comments=True)) if block.commands else ""
    keys = [
        (file, start)
        for (file, start) in NOT_RUN
        if file == block.file and (first == start or first.startswith(start + " "))
    ]
    return max(keys, key=lambda key: len(key[1]), default=None)


def not_run_reason(block: Block) -> str | None:
    key = not_run_key(block)
    return None if key is None else NOT_RUN[key]


def test_every_shell_block_is_run_or_listed_with_a_reason() -> None:
    unlisted = [b.id for b in BLOCKS if not b.runnable and not_run_reason(b) is None]
    assert not unlisted, f"shell blocks neither marked {RUNNABLE_MARK} nor in NOT_RUN: {unlisted}"
    used = {not_run_key(b) for b in BLOCKS if not b.runnable}
    assert set(NOT_RUN) == used, f"NOT_RUN entries that match no block: {set(NOT_RUN) - used}"
    assert any(b.runnable for b in BLOCKS)


# ---------------------------------------------------------------------------
# Every documented fakecoord / conformance command line parses


def simple_commands(command: str) -> list[list[str]]:
    """``command`` split at ``&&``, ``||``, ``|`` and ``;`` into argument lists (comments
    dropped, leading VAR=value assignments dropped)."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    out: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", "||", "|", ";"):
            out.append([])
        else:
            out[-1].append(token)
    cleaned = []
    for argv in out:
        while argv and re.match(r"^[A-Z_][A-Z0-9_]*=", argv[0]):
            argv = argv[1:]
        if argv:
            cleaned.append(argv)
    return cleaned


def module_invocations(program: str) -> list[tuple[str, list[str]]]:
    found = []
    for block in BLOCKS:
        for command in block.commands:
            for argv in simple_commands(command):
                if Path(argv[0]).name.startswith("python") and argv[1:3] == ["-m", program]:
                    found.append((f"{block.id}: {command}", argv[3:]))
    return found


@pytest.mark.parametrize(("where", "args"), module_invocations("fakecoord"))
def test_documented_fakecoord_commands_parse(where: str, args: list[str]) -> None:
    from fakecoord.sim.cli import argument_parser

    if args and args[0] == "run":
        args = args[1:]
    try:
        argument_parser().parse_args(args)
    except SystemExit as exc:
        pytest.fail(f"{where}: fakecoord refuses these arguments (exit {exc.code})")


@pytest.mark.parametrize(("where", "args"), module_invocations("conformance"))
def test_documented_conformance_commands_parse(where: str, args: list[str]) -> None:
    from conformance.__main__ import argument_parser

    try:
        argument_parser().parse_args(args)
    except (SystemExit, Exception) as exc:
        pytest.fail(f"{where}: conformance refuses these arguments ({exc!r})")


def test_the_command_parsers_here_catch_an_unknown_option() -> None:
    """The parse tests above can fail: an option that does not exist is refused."""
    from conformance.__main__ import argument_parser as conformance_parser
    from fakecoord.sim.cli import argument_parser as fakecoord_parser

    with pytest.raises(SystemExit):
        fakecoord_parser().parse_args(["--no-such-option"])
    with pytest.raises((SystemExit, Exception)):
        conformance_parser().parse_args(["--factory", "a:b", "..."])


# ---------------------------------------------------------------------------
# Runnable blocks


def resolved(command: str) -> str:
    """``.venv/bin/X`` made the running interpreter's environment's ``X``."""
    bindir = Path(sys.executable).parent

    def program(match: re.Match[str]) -> str:
        name = match.group(1)
        return shlex.quote(sys.executable if name == "python" else str(bindir / name))

    return re.sub(r"(?<![\w/.])\.venv/bin/([\w.-]+)", program, command)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("block", [b for b in BLOCKS if b.runnable], ids=lambda b: b.id)
def test_runnable_block(block: Block, tmp_path: Path) -> None:
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.pop("COLUMNS", None)
    for command in block.commands:
        done = subprocess.run(
            ["bash", "-e", "-c", resolved(command)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, (
            f"{block.id}: {command!r} exited {done.returncode}\n{done.stdout[-3000:]}\n"
            f"{done.stderr[-3000:]}"
        )


# ---------------------------------------------------------------------------
# The contract ships with the source, and the code cites it


def test_the_sdist_ships_the_docs_and_the_example_run_file(tmp_path: Path) -> None:
    """docs/ (the contract, docs/protocol.md, included) and examples/ are in the sdist; the
    wheel carries the importable packages only (README.md is its long description)."""
    import tarfile

    setuptools_build = pytest.importorskip("setuptools.build_meta")
    cwd = os.getcwd()
    try:
        os.chdir(REPO)
        name = setuptools_build.build_sdist(str(tmp_path))
    finally:
        os.chdir(cwd)
    with tarfile.open(tmp_path / name) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    assert {"docs/protocol.md", "docs/simulation.md", "docs/workload-authors.md"} <= names
    assert "examples/run.toml" in names


def test_protocol_citations_name_sections_that_exist() -> None:
    """Every ``docs/protocol.md §N`` (or ``protocol.md §N``) cited in the project names one of
    the document's numbered sections, and nothing cites the old summary file."""
    sections = set(
        re.findall(
            r"^## (\d+)\. ", (REPO / "docs" / "protocol.md").read_text(encoding="utf-8"), re.M
        )
    )
    assert sections == {str(n) for n in range(1, 8)}
    files = [p for p in REPO.rglob("*") if p.suffix in (".py", ".md") and ".venv" not in p.parts]
    cited: set[str] = set()
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        old = "PROTOCOL" + ".md"  # the summary outside the project that the code used to cite
        assert old not in text, f"{path.relative_to(REPO)} cites {old}"
        cited |= set(re.findall(r"protocol\.md\]?\(?[\w.#/-]*\)? §(\d+)", text))
        cited |= set(re.findall(r"protocol\.md §(\d+)", text))
    assert cited and cited <= sections, cited - sections
