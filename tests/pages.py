"""The pages a user reads (README.md and docs/) and the commands in their ```bash blocks.

The stories take their commands from here, so a page that drifts fails the tests; each command a
story takes is counted, and tests/test_pages.py fails for a command no story takes, unless its
block says why not, on the line before it: `<!-- not run: <reason> -->`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUN = re.compile(r"<!-- not run: (.+?) -->\n$")
TAKEN: set[str] = set()


@dataclass(frozen=True)
class Block:
    page: Path
    commands: list[str]
    not_run: str | None  # why no test runs it


def blocks() -> list[Block]:
    """Every ```bash block of every page, with the commands a reader would type, in order."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in re.finditer(r"^ *```bash\n(.*?)^ *```", text, re.DOTALL | re.MULTILINE):
            lines = (line.strip() for line in match.group(1).replace("\\\n", " ").splitlines())
            commands = [re.sub(r"\s+# .*$", "", line) for line in lines if line and not line.startswith("#")]
            reason = NOT_RUN.search(text[: match.start()].rstrip(" "))
            found.append(Block(page, commands, reason.group(1) if reason else None))
    return found


def page_commands(prefix: str, containing: str = "") -> list[str]:
    """The commands on the pages that start with `prefix` and contain `containing`; each is taken."""
    matches = list(dict.fromkeys(c for b in blocks() for c in b.commands if c.startswith(prefix) and containing in c))
    TAKEN.update(matches)
    return matches


def page_command(prefix: str, containing: str = "") -> str:
    """The one command on the pages that starts with `prefix` (and contains `containing`)."""
    matches = page_commands(prefix, containing)
    assert len(matches) == 1, f"expected one command on the pages starting {prefix!r}, found {matches}"
    return matches[0]
