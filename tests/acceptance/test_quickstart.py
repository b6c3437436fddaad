"""The quickstart, followed literally in a new project.

``docs/quickstart.md`` marks each code block with ``<!-- quickstart-test: ACTION -->``; this test reads
the blocks from the page and does what each marker says, in order, in a project that
``django-admin startproject`` creates in a temporary directory. So the page and the test cannot
drift: a changed command, setting, job or expected output changes what is run and checked, and a
block without a marker fails the test.

Actions:

- ``run``: run the block in bash, in the current directory (a ``cd`` carries over to later blocks),
  with this virtualenv's ``python`` and ``django-admin`` first on ``PATH``; no system check may
  report anything.
- ``output``: the output of the block run just before, where ``...`` stands for anything.
- ``add-apps``: add the apps the block lists to ``INSTALLED_APPS`` in the file its first line names.
- ``append`` / ``write``: append the block to / write it as the file its first line names.
- ``shell``: run the block's ``>>>`` examples as a doctest in ``python manage.py shell``.
- ``skip (why)``: nothing.
"""

from __future__ import annotations

import doctest
import os
import re
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.acceptance.processes import REPO_ROOT

pytestmark = pytest.mark.slow

QUICKSTART = REPO_ROOT / "docs" / "quickstart.md"
MARKER = re.compile(r"<!-- quickstart-test: (?P<action>[a-z-]+)(?: \((?P<why>[^)]+)\))? -->")
COMMAND_TIMEOUT = 120

# Runs a shell block's examples inside `manage.py shell`; a failed example exits with status 1.
DOCTEST_SCRIPT = """
import doctest, os, sys
text = open(os.environ["QUICKSTART_BLOCK"]).read()
test = doctest.DocTestParser().get_doctest(text, {}, "quickstart", os.environ["QUICKSTART_BLOCK"], 0)
runner = doctest.DocTestRunner(optionflags=doctest.REPORT_NDIFF)
runner.run(test)
sys.exit(1 if runner.failures else 0)
"""


@dataclass(frozen=True)
class Block:
    action: str
    why: str | None
    language: str
    text: str
    line: int

    def target(self) -> str:
        """The file named by the block's first line (``# greetings/jobs.py``)."""
        first = self.text.splitlines()[0]
        assert first.startswith("# "), f"line {self.line}: the first line must name a file"
        return first[2:].strip()


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of ``page``, each with the marker on the line above it."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found = []
    index = 0
    while index < len(lines):
        if not lines[index].startswith("```"):
            index += 1
            continue
        end = next(j for j in range(index + 1, len(lines)) if lines[j].startswith("```"))
        marker = MARKER.fullmatch(lines[index - 1]) if index else None
        assert marker is not None, (
            f"{page.name}:{index + 1}: a code block without a <!-- quickstart-test: ... --> "
            "marker on the line above it"
        )
        found.append(
            Block(
                action=marker["action"],
                why=marker["why"],
                language=lines[index][3:].strip(),
                text="\n".join(lines[index + 1 : end]) + "\n",
                line=index + 1,
            )
        )
        index = end + 1
    return found


class NewProject:
    """A temporary directory where the quickstart's commands run, one block after another."""

    def __init__(self, root: Path) -> None:
        self.cwd = root
        self.scratch = root / ".quickstart-test"
        self.scratch.mkdir()
        self.last_output = ""
        bin_dir = Path(sys.executable).parent
        assert (bin_dir / "django-admin").exists(), f"no django-admin beside {sys.executable}"
        self.env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("DJANGO_", "DURABLY_", "PYTHON"))
        }
        self.env["PATH"] = f"{bin_dir}{os.pathsep}{self.env.get('PATH', '')}"
        # The package under test is this checkout's, whatever the virtualenv has installed.
        self.env["PYTHONPATH"] = str(REPO_ROOT)

    def bash(self, block: Block) -> None:
        state = self.scratch / "cwd"
        result = self._run(["bash", "-euo", "pipefail", "-c", f"{block.text}pwd > '{state}'"])
        # The page's settings must satisfy the system checks (W002 warns about SQLite options).
        assert "System check identified" not in result, result
        self.last_output = result
        self.cwd = Path(state.read_text().strip())

    def shell(self, block: Block) -> None:
        assert block.text.startswith("$ python manage.py shell\n"), block.text
        path = self.scratch / f"block-{block.line}.txt"
        path.write_text(block.text)
        self.env["QUICKSTART_BLOCK"] = str(path)
        self._run(["python", "manage.py", "shell", "-c", DOCTEST_SCRIPT])

    def _run(self, args: list[str]) -> str:
        done = subprocess.run(
            args,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
        assert done.returncode == 0, f"{args[:3]} exited with {done.returncode}:\n{done.stdout}"
        return done.stdout


def follow(block: Block, project: NewProject) -> None:
    if block.action == "run":
        assert block.language == "bash", f"line {block.line}: only bash blocks are run"
        project.bash(block)
    elif block.action == "output":
        checker = doctest.OutputChecker()
        assert checker.check_output(block.text, project.last_output, doctest.ELLIPSIS), (
            f"line {block.line}: the output differs from the page's.\n"
            f"Expected:\n{block.text}\nGot:\n{project.last_output}"
        )
    elif block.action == "add-apps":
        listed: dict[str, list[str]] = {}
        exec(block.text, listed)  # noqa: S102 - our own page
        with (project.cwd / block.target()).open("a") as settings:
            settings.write(f"\nINSTALLED_APPS += {listed['INSTALLED_APPS']!r}\n")
    elif block.action == "append":
        with (project.cwd / block.target()).open("a") as target:
            target.write(f"\n{block.text}")
    elif block.action == "write":
        path = project.cwd / block.target()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(block.text)
    elif block.action == "shell":
        project.shell(block)
    else:
        assert block.action == "skip", f"line {block.line}: unknown action {block.action!r}"
        assert block.why, f"line {block.line}: say why the block is skipped"


def test_quickstart__followed_literally_in_a_new_project_completes_its_runs(tmp_path: Path):
    page = blocks(QUICKSTART)
    project = NewProject(tmp_path)

    for block in page:
        follow(block, project)

    ran = [block.text for block in page if block.action == "run"]
    assert any(text.startswith("django-admin startproject ") for text in ran)
    assert any("startapp" in text for text in ran)
    assert "python manage.py durably_worker --until-idle\n" in ran
    assert {"add-apps", "append", "write", "shell", "output"} <= {block.action for block in page}
    with sqlite3.connect(project.cwd / "db.sqlite3") as database:
        statuses = database.execute("SELECT status FROM durably_run").fetchall()
    assert statuses == [("completed",), ("completed",)]
