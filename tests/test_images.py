"""`make images`: screenshots of a real one-shot run and of its trace in Zipkin."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from matplotlib import image

from tests.conftest import ROOT, TASK, calls_for
from tests.llm_server import HAIKU, LLMServer


def test_make_images_photographs_the_one_shots_output_and_its_trace(
    llm: LLMServer, dapr_env: dict[str, str], tmp_path: Path
) -> None:
    if not shutil.which("chromium"):
        pytest.fail("chromium is missing: run `make setup`", pytrace=False)

    made = subprocess.run(
        ["make", "images"], cwd=ROOT, env={**dapr_env, "IMAGES_DIR": str(tmp_path)}, capture_output=True, text=True
    )

    assert made.returncode == 0, made.stdout[-3000:] + made.stderr
    assert calls_for(llm, TASK) == 1  # a real run, through the sidecar to the model
    for name in ("one-shot-terminal.png", "zipkin-trace.png"):
        pixels = image.imread(tmp_path / name)
        height, width = pixels.shape[:2]
        assert width == 1400 and height >= 400, (name, pixels.shape)
        assert pixels.std() > 0.05, f"{name} is blank"
    # The terminal picture is of this run's output, haiku included.
    terminal = (ROOT / ".run" / "images" / "one-shot.html").read_text()
    assert all(line in terminal for line in HAIKU.splitlines())
    # Zipkin's page, as Chromium rendered it for the screenshot, shows the app and its workflow.
    trace_url = re.search(r"^Its trace: +(\S+)$", made.stdout, re.MULTILINE)[1]
    chromium = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000"]
    page = subprocess.run([*chromium, "--dump-dom", trace_url], capture_output=True, text=True).stdout
    assert "durable-agent-minimal" in page
    assert "orchestration||dapr.agents.assistant.workflow" in page
