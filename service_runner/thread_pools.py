"""The two thread pools a run in flight needs a thread of, sized so the sidecar's bound is the only one.

The bound a user sets is the sidecar's, in the Dapr Configuration's `workflow` section
(`maxConcurrentActivityInvocations`, config/dapr-config.yaml and deploy/dapr/agent-config.yaml): the
sidecar sends the agent no more work than that at once and holds the rest until a slot frees. Both
pools below default to `os.cpu_count() + 4` threads (6 on 2 cores; on Kubernetes the node's cores,
not the pod's), and a run holds a thread of each for as long as an LLM call takes:

- the workflow worker runs every sync activity on its pool, dapr-agents' LLM call and tools among them;
- the HTTP server's event loop runs blocking calls on its default executor, and dapr-agents parks
  one there per streamed run for the stream's life, and one per published run until it ends.

So one replica ran 6 runs at once, however many it held. Here both take up to MOST_AT_ONCE.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from dapr.ext.workflow import WorkflowRuntime

# Far above any bound one replica can use (its CPU tops out first): a pool starts a thread only when
# work arrives and none is idle, so the ceiling costs nothing until the sidecar sends that much.
MOST_AT_ONCE = 4096


def workflow_runtime() -> WorkflowRuntime:
    return WorkflowRuntime(
        maximum_concurrent_activity_work_items=MOST_AT_ONCE,
        maximum_concurrent_orchestration_work_items=MOST_AT_ONCE,
        # Activities and the workflows' own steps share the pool: room for both at their most.
        maximum_thread_pool_workers=2 * MOST_AT_ONCE,
    )


def event_loop_executor() -> ThreadPoolExecutor:
    """For `loop.set_default_executor`: where `asyncio.to_thread` runs the routes' blocking calls."""
    return ThreadPoolExecutor(max_workers=MOST_AT_ONCE, thread_name_prefix="service")
