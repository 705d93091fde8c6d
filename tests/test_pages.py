"""The pages are the code: every command on them is run by a story, every script they quote is the file."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from tests.pages import PAGES, ROOT, TAKEN, blocks, page_command

# Run by CI (.ci/run), not by a story: the test command itself, and the Kubernetes stories' cluster.
RUN_BY_CI = [page_command(c) for c in ("make test", "make k8s-up", "make k8s-test", "make k8s-down")]
STORIES = sorted([*ROOT.glob("tests/test_*.py"), *ROOT.glob("k8s/tests/*.py")])


def test_every_command_on_every_page_is_run_by_a_story_or_says_why_not() -> None:
    for story in STORIES:  # each takes its commands from the pages as it is imported
        importlib.import_module(".".join(story.relative_to(ROOT).with_suffix("").parts))

    not_taken = [
        f"{block.page.relative_to(ROOT)}: {command}"
        for block in blocks()
        if block.not_run is None
        for command in block.commands
        if command not in TAKEN
    ]

    assert not not_taken, "no test runs these (run them in a story, or mark the block <!-- not run: why -->):\n" + (
        "\n".join(not_taken)
    )
    assert all(block.not_run.strip() for block in blocks() if block.not_run is not None)


def test_ci_runs_the_test_commands_the_pages_give() -> None:
    ci_lines = (ROOT / ".ci" / "run").read_text()

    for command in RUN_BY_CI:
        assert re.search(rf"(^|[{{&;]\s*){re.escape(command)}(\s|;|$)", ci_lines, re.M), command


def test_every_shell_block_on_the_pages_is_a_bash_block_the_tests_read() -> None:
    fences = [
        (page.relative_to(ROOT), fence)
        for page in PAGES
        for fence in re.findall(r"^ *```(\S*)", page.read_text(), re.M)
        if fence in ("sh", "shell", "console", "zsh", "bash ")
    ]

    assert not fences, fences


@pytest.mark.parametrize("script", ["durable_agent_minimal.py", "durable_agent_service.py", "durable_agent_tool.py"])
def test_a_page_shows_the_script_as_it_is(script: str) -> None:
    quotes = [
        quoted.group(1)
        for page in PAGES
        for quoted in re.finditer(
            rf"\[`{script}`\]\((?:\.\./)?{script}\)[^\n]*\n\n```python\n(.*?)```\n", page.read_text(), re.S
        )
    ]

    assert quotes, f"no page quotes a ```python block right after its link to {script}"
    assert all(quoted == (ROOT / script).read_text() for quoted in quotes)


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower-cased, punctuation dropped, spaces to dashes."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", page.read_text(), flags=re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_every_link_between_the_pages_and_the_tree_leads_somewhere() -> None:
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists() or (anchor and anchor not in anchors(linked)):
                broken.append(f"{page.relative_to(ROOT)}: {target}")

    assert not broken, broken
