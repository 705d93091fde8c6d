"""Reads of a run's state that ride over the instant its next step is being written.

Dapr 1.18.2 stores a workflow's metadata and its inbox under separate keys and reads them one by
one, so a read that lands between the two writes fails with "inbox key ... missing from state
store" (dapr/dapr #10242, fixed in Dapr 1.18.3). Reading again a moment later succeeds; the
status URL, the approval list and a keyed `POST /run` all read so.

The workflow SDK (dapr-ext-workflow 1.18) logs every failed read as an ERROR before it raises, so each
of these reads, handled here, printed "DaprWorkflowClient ERROR: Unhandled RPC error ...": the filter
below drops those lines, and only those.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import grpc
from dapr.ext.workflow import DaprWorkflowClient, WorkflowState

PAUSES_S = (0.05, 0.1, 0.2, 0.4)  # then the error goes to the caller: a 503 with Retry-After
TORN_READ = "missing from state store"
SDK_LOGGER = "DaprWorkflowClient"  # dapr.ext.workflow.DaprWorkflowClient's logger


def _not_a_torn_read(record: logging.LogRecord) -> bool:
    return TORN_READ not in record.getMessage()


logging.getLogger(SDK_LOGGER).addFilter(_not_a_torn_read)


class SteadyReadsClient(DaprWorkflowClient):
    def get_workflow_state(self, instance_id: str, **options: Any) -> WorkflowState | None:
        for pause in PAUSES_S:
            try:
                return super().get_workflow_state(instance_id, **options)
            except grpc.RpcError as error:
                # Any other failure (Redis down, say) has had resiliency.yaml's retries already.
                if not (isinstance(error, grpc.Call) and TORN_READ in (error.details() or "")):
                    raise
                time.sleep(pause)
        return super().get_workflow_state(instance_id, **options)
