"""The README's code is the code: each script it shows is quoted whole and unchanged."""

from __future__ import annotations

import re

import pytest

from tests.conftest import ROOT


@pytest.mark.parametrize("script", ["durable_agent_minimal.py", "durable_agent_service.py", "durable_agent_tool.py"])
def test_the_readme_shows_the_script_as_it_is(script: str) -> None:
    readme = (ROOT / "README.md").read_text()
    quoted = re.search(rf"\[`{script}`\]\({script}\)[^\n]*\n\n```python\n(.*?)```\n", readme, re.S)

    assert quoted, f"README.md quotes no ```python block right after its link to {script}"
    assert quoted.group(1) == (ROOT / script).read_text()
