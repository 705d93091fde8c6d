"""A streamed run's Redis stream, deleted once the run has ended.

dapr-agents sends a streamed run's chunks over pub/sub, on a topic of the run's own
(`agents.stream.<instance id>`), and Dapr's Redis pub/sub deletes no topic: each streamed run would
leave its stream, and the stream's consumer group, in Redis for good. The output binding
`agent-stream-keys` (resources/agent-stream-keys.yaml) reaches the same Redis, and its `delete`
runs DEL on the run's stream once no chunk can come: after the last one, or after the run has ended
when its caller left before that.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

from dapr.clients import DaprClient
from dapr.ext.workflow import DaprWorkflowClient
from dapr_agents.types.streaming import AgentStreamChunk, StreamChunkType

BINDING = "agent-stream-keys"
# The sidecar closes a stream's subscription a moment after its consumer stops reading; a DEL
# before that would leave the subscription reading a stream that is gone.
SETTLE_SECONDS = 2.0
# How long a run whose caller left may go on before its stream is left to Redis.
LONGEST_RUN_SECONDS = 7 * 24 * 3600
log = logging.getLogger("service_runner")


class StreamKeys:
    def __init__(self, workflows: DaprWorkflowClient, dapr: Callable[[], DaprClient]) -> None:
        self.workflows = workflows
        self.dapr = dapr
        self._deleting: set[asyncio.Task[None]] = set()

    async def deleted_after(
        self, chunks: AsyncIterator[AgentStreamChunk], instance_id: str, topic: str
    ) -> AsyncIterator[AgentStreamChunk]:
        """`chunks` as they come, then the run's stream deleted in the background."""
        ended = False
        try:
            async for chunk in chunks:
                ended = ended or (chunk.type is StreamChunkType.SESSION_COMPLETE and chunk.depth == 0)
                yield chunk
        finally:
            task = asyncio.get_running_loop().create_task(self._delete(instance_id, topic, ended))
            self._deleting.add(task)
            task.add_done_callback(self._deleting.discard)

    async def _delete(self, instance_id: str, topic: str, ended: bool) -> None:
        try:
            if not ended:  # the caller left early: the run still sends its chunks there
                await asyncio.to_thread(
                    self.workflows.wait_for_workflow_completion, instance_id, timeout_in_seconds=LONGEST_RUN_SECONDS
                )
            await asyncio.sleep(SETTLE_SECONDS)
            await asyncio.to_thread(self.dapr().invoke_binding, BINDING, "delete", binding_metadata={"key": topic})
        except Exception:  # the stream stays in Redis; the run and its caller are not affected
            log.exception("could not delete the stream %s of run %s", topic, instance_id)
