"""`make bench`: what durability costs, against the test LLM at a fixed latency.

Measures, in one run so the figures compare: the floor (the openai SDK calling the LLM directly),
the service (POST /run until COMPLETED, sequential and concurrent), the one-shot command, memory
and Redis storage per run. Writes RESULTS.md and latency.png into the output folder.
Needs the stack up (`make up`). `--smoke` runs a few iterations, for the tests.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import openai

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.conftest import (  # noqa: E402
    ONE_SHOT,
    SERVICE,
    SERVICE_URL,
    TASK,
    DaprRun,
    post_run,
    redis_batch,
    redis_cli,
    user_env,
    wait_for_outcome,
)
from tests.llm_server import LLMServer  # noqa: E402


@dataclass(frozen=True)
class Plan:
    latencies_s: tuple[float, ...]
    sequential_runs: int
    concurrency: tuple[int, ...]
    runs_per_slot: int  # each concurrency level runs this many runs per slot in flight, at least 16
    repeats: int
    one_shots: int
    storage_runs: int


FULL = Plan((0.0, 0.5), 30, (1, 8, 32), 4, 3, 3, 1000)
SMOKE = Plan((0.0,), 3, (1, 8), 1, 1, 1, 10)


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def spread(values: list[float]) -> str:
    """Median of repetitions, with min and max."""
    return f"{statistics.median(values):.3g} ({min(values):.3g}-{max(values):.3g})"


def runs_at(plan: Plan, level: int) -> int:
    return max(16, plan.runs_per_slot * level)


def floor_latencies(llm: LLMServer, runs: int) -> list[float]:
    client = openai.OpenAI(base_url=llm.base_url, api_key="sk-bench")
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": TASK}])
        samples.append(time.perf_counter() - started)
    return samples


def run_latency(task: str = TASK) -> float:
    started = time.perf_counter()
    outcome = wait_for_outcome(post_run(task)["status_url"], timeout=600, interval=0.01)
    assert outcome["runtime_status"] == "COMPLETED", outcome
    return time.perf_counter() - started


def completed_run() -> str:
    run = post_run(TASK)
    assert wait_for_outcome(run["status_url"], timeout=600, interval=0.01)["runtime_status"] == "COMPLETED"
    return run["instance_id"]


def stored_per_run(instance_ids: list[str]) -> dict[str, tuple[float, float]]:
    """Mean Redis keys and bytes (MEMORY USAGE) per run, for its workflow state and the agent's entries."""
    wanted = set(instance_ids)
    groups: dict[str, list[str]] = {"workflow state": [], "agent entries": []}
    for key in redis_cli("--scan").split():
        parts = key.split("||")
        if len(parts) == 4 and parts[2] in wanted:  # <app>||<workflow actor type>||<id>||<name>
            groups["workflow state"].append(key)
        elif len(parts) == 2 and ":_" in parts[1] and parts[1].rsplit("_", 1)[1] in wanted:  # assistant:_memory_<id>
            groups["agent entries"].append(key)
    stored = {}
    for name, keys in groups.items():
        sizes = redis_batch([f"MEMORY USAGE {key}" for key in keys]).split() if keys else []
        stored[name] = (len(keys) / len(wanted), sum(int(size) for size in sizes) / len(wanted))
    return stored


def throughput(level: int, runs: int) -> float:
    """Completed runs per second with `level` runs in flight at a time."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=level) as pool:
        list(pool.map(lambda _: wait_for_outcome(post_run(TASK)["status_url"], 600, 0.05), range(runs)))
    return runs / (time.perf_counter() - started)


def one_shot_phases(env: dict[str, str], llm: LLMServer) -> dict[str, float]:
    """Seconds from start to: sidecar ready, first LLM request, exit."""
    llm.state.requests.clear()
    started = time.monotonic()
    sidecar_ready = None
    with subprocess.Popen(
        shlex.split(ONE_SHOT), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        for line in process.stdout or []:
            if sidecar_ready is None and "Dapr sidecar is up and running" in line:
                sidecar_ready = time.monotonic() - started
    done = time.monotonic() - started
    assert process.returncode == 0, f"the one-shot exited with {process.returncode}"
    first_llm = min(r.received_at for r in llm.state.chat_requests()) - started
    return {"sidecar ready": sidecar_ready or 0.0, "first LLM request": first_llm, "exit": done}


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def redis_used_bytes() -> int:
    return int(redis_cli("info", "memory").split("used_memory:")[1].split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="a few iterations, to prove the benchmark runs")
    parser.add_argument("--out", type=Path, default=ROOT / "bench")
    args = parser.parse_args()
    plan = SMOKE if args.smoke else FULL
    args.out.mkdir(parents=True, exist_ok=True)
    llm = LLMServer().start()
    env = user_env(llm.base_url)
    service = DaprRun(SERVICE, env, "bench-service")
    rows: list[str] = []
    levels: dict[float, list[tuple[int, float]]] = {}
    try:
        service.wait_until_ready(SERVICE_URL)
        run_latency()  # warm-up: first run loads the agent's code paths
        for latency in plan.latencies_s:
            llm.state.latency_s = latency
            floor = floor_latencies(llm, plan.sequential_runs)
            runs = [run_latency() for _ in range(plan.sequential_runs)]
            overhead = statistics.median(runs) - statistics.median(floor)
            rows.append(
                f"| {latency * 1000:.0f} ms | {statistics.median(floor) * 1000:.1f} | "
                f"{percentile(runs, 50) * 1000:.0f} / {percentile(runs, 95) * 1000:.0f} / "
                f"{percentile(runs, 99) * 1000:.0f} | {overhead * 1000:.0f} | "
                f"{statistics.median(runs) / statistics.median(floor):.1f}x |"
            )
            levels[latency] = [
                (level, statistics.median([throughput(level, runs_at(plan, level)) for _ in range(plan.repeats)]))
                for level in plan.concurrency
            ]
        memory = {
            "agent (python)": peak_rss_mb(service.sidecar["appPid"]),
            "daprd": peak_rss_mb(service.sidecar["daprdPid"]),
        }
        llm.state.latency_s = 0.0
        used_before, keys_before = redis_used_bytes(), int(redis_cli("dbsize"))
        instance_ids = [completed_run() for _ in range(plan.storage_runs)]
        bytes_per_run = (redis_used_bytes() - used_before) / plan.storage_runs
        keys_per_run = (int(redis_cli("dbsize")) - keys_before) / plan.storage_runs
        stored = stored_per_run(instance_ids)
    finally:
        service.stop()
    phases = [one_shot_phases(env, llm) for _ in range(plan.one_shots)]
    llm.stop()
    write_results(args.out, plan, rows, levels, memory, bytes_per_run, keys_per_run, stored, phases)


def write_results(
    out: Path,
    plan: Plan,
    rows: list[str],
    levels: dict[float, list[tuple[int, float]]],
    memory: dict[str, float],
    bytes_per_run: float,
    keys_per_run: float,
    stored: dict[str, tuple[float, float]],
    phases: list[dict[str, float]],
) -> None:
    versions = dict(
        line.split("=", 1) for line in (ROOT / "versions.env").read_text().splitlines() if line[:1].isupper()
    )
    throughput_rows = [
        f"| {latency * 1000:.0f} ms | {level} | {rate:.1f} |"
        for latency, pairs in levels.items()
        for level, rate in pairs
    ]
    kept = {
        "workflow state": ("workflow state (history, metadata)", "24 h after it completes (`config/dapr-config.yaml`)"),
        "agent entries": ("the agent's conversation and memory summary", "until deleted"),
    }
    storage_rows = [
        f"| {kept[name][0]} | {keys:.1f} | {size / 1024:.1f} | {kept[name][1]} |"
        for name, (keys, size) in stored.items()
    ]
    phase_rows = [
        f"| {name} | {spread([p[name] for p in phases])} |" for name in ("sidecar ready", "first LLM request", "exit")
    ]
    (out / "RESULTS.md").write_text(
        f"""# What durability costs

Measured by `make bench`{" (smoke run)" if plan.storage_runs < 100 else ""} on {os.cpu_count()} cores,
{platform.machine()}, Python {platform.python_version()}, Dapr runtime {versions["DAPR_RUNTIME_VERSION"]},
dapr-agents 1.0.9, against the test LLM answering after a fixed latency. Every run of the agent makes two
LLM calls (the task, then a summary for memory), so at 500 ms the LLM alone takes 1 s of each run.

## One task, one at a time (ms)

{plan.sequential_runs} runs each. Floor: the openai SDK calling the same LLM directly, no Dapr.
Service: `POST /run`, then the status URL polled every 10 ms until COMPLETED.

| LLM latency | floor p50 | service p50 / p95 / p99 | overhead p50 | ratio |
| --- | --- | --- | --- | --- |
{chr(10).join(rows)}

## Completed runs per second

Runs at each level: {", ".join(f"{runs_at(plan, level)} with {level} in flight" for level in plan.concurrency)};
median of {plan.repeats} repetitions.

| LLM latency | runs in flight | runs/s |
| --- | --- | --- |
{chr(10).join(throughput_rows)}

## The one-shot, seconds from `dapr run` to...

Median of {plan.one_shots} (min-max).

| phase | seconds |
| --- | --- |
{chr(10).join(phase_rows)}

## Memory and storage

Peak RSS after the load above: {", ".join(f"{name} {mb:.0f} MB" for name, mb in memory.items())}.

Redis grows by {bytes_per_run / 1024:.1f} KiB and {keys_per_run:.1f} keys per completed run
({plan.storage_runs} runs, `used_memory` and `dbsize`). Per run, by `MEMORY USAGE`:

| what | keys | KiB | kept |
| --- | --- | --- | --- |
{chr(10).join(storage_rows)}

So once a day has passed, each completed run leaves {stored["agent entries"][1] / 1024:.1f} KiB for good: the
agent's entries are the part still unbounded. A `ttlInSeconds` on `agent-workflow` would bound them,
but it would also expire the workflow state of any run idle that long.

![latency and phases](latency.png)
"""
    )
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for latency, pairs in levels.items():
        left.plot(
            [lv for lv, _ in pairs], [rate for _, rate in pairs], marker="o", label=f"LLM {latency * 1000:.0f} ms"
        )
    left.set(xlabel="runs in flight", ylabel="completed runs/s", title="Throughput vs concurrency")
    left.set_xscale("log", base=2)
    left.set_xticks(list(plan.concurrency), labels=[str(level) for level in plan.concurrency])
    left.minorticks_off()
    left.legend()
    names = ("sidecar ready", "first LLM request", "exit")
    medians = [statistics.median(p[name] for p in phases) for name in names]
    right.barh(["one-shot"], [medians[0]], label="start to sidecar ready")
    right.barh(["one-shot"], [medians[1] - medians[0]], left=[medians[0]], label="sidecar ready to first LLM call")
    right.barh(["one-shot"], [medians[2] - medians[1]], left=[medians[1]], label="first LLM call to exit")
    right.set(xlabel="seconds", title="Where the one-shot's time goes")
    right.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(out / "latency.png", dpi=100)


if __name__ == "__main__":
    main()
