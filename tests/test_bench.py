"""`make bench` cannot rot: a smoke run of it writes the results table and the plot."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.conftest import ROOT


def test_a_smoke_run_of_the_benchmark_writes_results_and_a_plot(dapr_env: dict[str, str], tmp_path: Path) -> None:
    bench = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), "bench/bench.py", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        env=dapr_env,
        capture_output=True,
        text=True,
        timeout=420,
    )

    assert bench.returncode == 0, bench.stdout + bench.stderr
    results = (tmp_path / "RESULTS.md").read_text()
    assert re.search(r"\| 0 ms \| [\d.]+ \| \d+ / \d+ / \d+ \| -?\d+ \| [\d.]+x \|", results), results
    assert re.search(r"\| 0 ms \| 8 \| [\d.]+ \|", results)
    assert re.search(r"\| first LLM request \| [\d.]+ ", results)
    assert re.search(r"\| agent ready \| [\d.]+ ", results)
    assert re.search(r"\| overhead ≤ 50 ms p50 per run, 0 ms LLM \| -?\d+ ms \| (yes|no) \|", results), results
    assert re.search(r"\| activity call_llm \| \d+ \|", results)
    assert re.search(r"\| workflow turns between activities \| \d+ \|", results)
    parts = ("agent", "daprd", "scheduler", "placement", "PostgreSQL", "Redis", "Zipkin")
    by_process = ", ".join(rf"{part} \d+ ms" for part in parts) + ", kernel"
    assert re.search(by_process + r" -?\d+ ms;\n\d+ ms in all on the machine", results), results
    assert re.search(
        r"\| untuned: `dapr init` config, no resiliency.yaml \| \d+ \([\d.]+x\) \| [\d.]+ \([\d.]+x\) \|", results
    )
    # The workflows' store, each measured: the same figures for PostgreSQL and for Redis.
    cpu, grown = " / ".join([r"-?\d+"] * 6), r"-?[\d.]+ / -?[\d.]+"
    for store in ("PostgreSQL (this repository)", "Redis, as before"):
        assert re.search(rf"\| {re.escape(store)} \| \d+ \| [\d.]+ \| [\d.]+ \| {cpu} \| {grown} \|", results), results
    assert len(re.findall(r"\| runs/s on PostgreSQL within 10% of Redis, .* \| \d+% \| (yes|no) \|", results)) == 2
    assert re.search(r"Peak RSS after the load above: agent \(python\) \d+ MB, daprd \d+ MB", results)
    workflow_state = re.search(r"\| workflow state \(history, metadata\) \| ([\d.]+) \| ([\d.]+) \|", results)
    agent_entries = re.search(r"\| the run's conversation \(agent entry\) \| ([\d.]+) \| ([\d.]+) \|", results)
    assert workflow_state and float(workflow_state[1]) >= 10 and float(workflow_state[2]) > 0, results
    assert agent_entries and float(agent_entries[1]) == 1 and float(agent_entries[2]) > 0, results
    # Once the shortened retention and TTLs have passed, the runs have left nothing.
    after = re.search(r"Once those \d+ s\nhad passed \(checked every 2 s, \d+ s after the last run\): (.*)\.", results)
    assert after and after[1] == "workflow state 0.0 rows, 0 bytes, agent entries 0.0 keys, 0 bytes", results
    # One LLM call and four activities per task; five and two with the agent summarizing for memory.
    assert re.search(r"\| before: summarizing each run for memory \| 2\.0 \| 5 \| \d+ \| [\d.]+ \|", results), results
    assert re.search(r"\| after: this repository \| 1\.0 \| 4 \| \d+ \| [\d.]+ \|", results), results
    for service in ("before: the SDK's worker, a Dapr client per call", "after: this repository"):
        for level in (1, 4):
            cpu = r"\d+ / \d+ / \d+ / \d+ \| \d+%"
            row = rf"\| {re.escape(service)} \| {level} \| [\d.]+ \| [\d.]+ / [\d.]+ \| (\d+) \| {cpu} \| agent \d+"
            assert re.search(row, results), (row, results)
    # The local model: its own time and speed, and the agent's runs on it, one and two at a time.
    assert re.search(r"\| the model alone \(a chat completion\) \| [\d.]+ \| [\d.]+ \|", results), results
    assert re.search(r"\| a run through the service \| [\d.]+ \| [\d.]+ \|", results)
    assert re.search(r"median of \d+ tokens per answer, \d+\s+tokens/s", results), results
    plot = (tmp_path / "latency.png").read_bytes()
    assert plot.startswith(b"\x89PNG") and len(plot) > 20_000
