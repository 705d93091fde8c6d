"""Tasks the agent runs on a schedule: the file AGENT_SCHEDULES names, kept as jobs of Dapr's Jobs API.

At start the runner makes each schedule a job of the app id; the scheduler keeps it, whatever happens
to the replicas, and sends each tick to one of them as `POST /job/<name>`, at least once. The tick's
time is not sent, so a run's instance id is made from the schedule and the tick its call arrived in
(the latest tick at most GRACE_SECONDS after it): however often a tick is delivered, and to whichever
replica, it starts one run. Ticks missed while no replica was up arrive back to back once one is: they
fall in one tick, the latest, and start one run. An `@every` schedule ticks on multiples of its period
since the Unix epoch, so that every replica, and every restart, agrees on the ticks.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import yaml
from croniter import croniter
from dapr.clients import DaprClient
from dapr.clients.grpc._jobs import Job
from fastapi import HTTPException, Request
from google.protobuf import any_pb2, json_format, struct_pb2

from service_runner.once_only import run_id
from service_runner.task_checks import BadTaskError, check_payload

# The same names as the Jobs API's and an instance id's: letters, digits, - and _.
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
EVERY = re.compile(r"@every (?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s)?")
# Dapr's scheduler takes these, and croniter reads them alike.
DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
# A tick reaches the app a moment after the scheduler fires it: up to this early it still counts as that tick.
GRACE_SECONDS = 1
# Ticks closer than this could not be told apart from a delivery retried by the scheduler.
SHORTEST_GAP_SECONDS = 5
RECENT_TICKS = 10
log = logging.getLogger("service_runner")

StartRun = Callable[[str, str], Awaitable[tuple[str, bool]]]
ReadRun = Callable[[str], Awaitable[Any]]


class ScheduleFileError(ValueError):
    pass


@dataclass(frozen=True)
class Schedule:
    name: str
    schedule: str
    task: str

    @property
    def period_s(self) -> int | None:
        """The period of an `@every` schedule, in seconds; None for a cron one."""
        every = EVERY.fullmatch(self.schedule)
        if every is None:
            return None
        return int(every["h"] or 0) * 3600 + int(every["m"] or 0) * 60 + int(every["s"] or 0)

    @property
    def data(self) -> dict[str, str]:
        """What the job carries, and what its tick must bring back."""
        return {"schedule": self.schedule, "task": self.task}

    def tick_of(self, arrival: datetime) -> datetime:
        """The tick a call arriving at `arrival` is for: the latest one at most GRACE_SECONDS after it."""
        latest = arrival.replace(microsecond=0) + timedelta(seconds=GRACE_SECONDS)
        if period := self.period_s:
            return datetime.fromtimestamp(int(latest.timestamp()) // period * period, UTC)
        # croniter's get_prev is strictly before its start: a tick at `latest` itself is the one.
        previous = croniter(self.schedule, latest, second_at_beginning=True).get_prev(datetime)
        following = croniter(self.schedule, previous, second_at_beginning=True).get_next(datetime)
        return following if following <= latest else previous

    def ticks_before(self, tick: datetime, count: int) -> list[datetime]:
        """`tick` and the `count - 1` ticks before it, newest first."""
        if period := self.period_s:
            return [tick - timedelta(seconds=period * n) for n in range(count)]
        earlier = croniter(self.schedule, tick, second_at_beginning=True)
        return [tick, *(earlier.get_prev(datetime) for _ in range(count - 1))]

    def run_id(self, tick: datetime) -> str:
        return run_id("schedule", self.name, self.schedule, self.task, tick.isoformat())

    def job(self) -> Job:
        """The job that sends this schedule's ticks; an `@every` one starts on a multiple of its period."""
        data = any_pb2.Any()
        data.Pack(json_format.ParseDict(self.data, struct_pb2.Value()))
        due_time = None
        if period := self.period_s:
            first = (int(time.time()) + GRACE_SECONDS) // period * period + period
            due_time = datetime.fromtimestamp(first, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return Job(name=self.name, schedule=self.schedule, due_time=due_time, data=data)


def load(path: Path) -> list[Schedule]:
    """The schedules in `path`, each checked: a file with a mistake stops the service at start."""
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ScheduleFileError(f"{path}: cannot read it ({error})") from None
    if document is None:  # an empty file: no schedules
        document = {"schedules": []}
    entries = document.get("schedules", ()) if isinstance(document, dict) and set(document) == {"schedules"} else ()
    if not isinstance(entries, list | None):
        raise ScheduleFileError(f"{path}: expected only `schedules:`, a list of name, schedule and task")
    schedules = [_checked(path, n, entry) for n, entry in enumerate(entries or [], 1)]
    names = [s.name for s in schedules]
    if duplicate := next((name for name in names if names.count(name) > 1), None):
        raise ScheduleFileError(f"{path}: two schedules are named {duplicate!r}")
    return schedules


def _checked(path: Path, number: int, entry: Any) -> Schedule:
    where = f"{path}, schedule {number}"
    if not isinstance(entry, dict) or set(entry) != {"name", "schedule", "task"}:
        raise ScheduleFileError(f"{where}: give exactly name, schedule and task")
    name, schedule, task = entry["name"], entry["schedule"], entry["task"]
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ScheduleFileError(f"{where}: name must be 1 to 64 letters, digits, - and _")
    try:
        check_payload({"task": task})
    except BadTaskError as bad:
        raise ScheduleFileError(f"{where} ({name}): {bad.detail}") from None
    if not isinstance(schedule, str):
        raise ScheduleFileError(f"{where} ({name}): schedule must be a string")
    checked = Schedule(name, schedule, task)
    period = checked.period_s
    six_fields = len(schedule.split()) == 6 or schedule in DESCRIPTORS
    if period is None and not (six_fields and croniter.is_valid(schedule, second_at_beginning=True)):
        raise ScheduleFileError(
            f"{where} ({name}): {schedule!r} is neither `@every <h/m/s>` (e.g. @every 1h30m) nor a cron"
            " of six fields, seconds first (e.g. `0 30 9 * * *`), nor @hourly, @daily, @weekly, @monthly"
        )
    if period is None:
        following = croniter(schedule, datetime.now(UTC), second_at_beginning=True)
        ticks = [following.get_next(datetime) for _ in range(61)]
        period = min(int((later - tick).total_seconds()) for tick, later in itertools.pairwise(ticks))
    if period < SHORTEST_GAP_SECONDS:
        raise ScheduleFileError(f"{where} ({name}): ticks must be at least {SHORTEST_GAP_SECONDS} s apart")
    return checked


class Schedules:
    """The file's schedules, kept in the scheduler, and the two routes that serve them."""

    def __init__(self, schedules: list[Schedule], dapr: Callable[[], DaprClient]) -> None:
        self.by_name = {schedule.name: schedule for schedule in schedules}
        self.dapr = dapr

    @classmethod
    def from_env(cls, dapr: Callable[[], DaprClient]) -> Schedules:
        path = os.getenv("AGENT_SCHEDULES")
        return cls(load(Path(path)) if path else [], dapr)

    def keep_in_scheduler(self) -> None:
        """Make each schedule a job, or make its job match the file; one that matches is left alone,
        so that a restart or a second replica does not move its ticks."""
        for schedule in self.by_name.values():
            if self._job_data(schedule.name) == schedule.data:
                continue
            self.dapr().schedule_job(schedule.job(), overwrite=True)
            log.warning("Schedule %s is new or changed: its job now ticks %s", schedule.name, schedule.schedule)

    def _job_data(self, name: str) -> Any:
        """The data of the job `name` as the scheduler has it; None when there is none."""
        try:
            job = self.dapr().get_job(name)
        except grpc.RpcError as error:
            if "not found" in str(error).lower():
                return None
            raise
        value = struct_pb2.Value()
        return json_format.MessageToDict(value) if job.data and job.data.Unpack(value) else None

    def tick_route(self, start_run: StartRun) -> Callable[..., Awaitable[dict[str, Any]]]:
        async def tick(name: str, request: Request) -> dict[str, Any]:
            """A tick of the schedule `name`, sent by Dapr's scheduler: starts the tick's run, once."""
            arrival = datetime.now(UTC)
            schedule = self.by_name.get(name)
            if schedule is None:  # a schedule taken out of the file: its job goes too
                await asyncio.to_thread(self._forget, name)
                raise HTTPException(404, f"no schedule is named {name!r}; its job, if any, is deleted")
            if await request.json() != schedule.data:  # JSON, as HttpDoor checked
                raise HTTPException(422, f"the body is not the data of the job {name!r}")
            tick = schedule.tick_of(arrival)
            instance_id, _ = await start_run(schedule.task, schedule.run_id(tick))
            status_url = f"/agent/instances/{instance_id}"
            return {"instance_id": instance_id, "status_url": status_url, "tick": tick.isoformat()}

        return tick

    def _forget(self, name: str) -> None:
        try:
            self.dapr().delete_job(name)
            log.warning("Deleted the job %s: no schedule in the file has that name", name)
        except grpc.RpcError as error:
            log.warning("The job %s is in no schedule, and could not be deleted: %s", name, error)

    def list_route(self, read_run: ReadRun) -> Callable[..., Awaitable[list[dict[str, Any]]]]:
        async def schedules() -> list[dict[str, Any]]:
            """Each schedule, and the runs its last ticks started, newest first."""
            listed = []
            for schedule in self.by_name.values():
                ticks = schedule.ticks_before(schedule.tick_of(datetime.now(UTC)), RECENT_TICKS)
                states = await asyncio.gather(*(read_run(schedule.run_id(tick)) for tick in ticks))
                runs = [
                    {
                        "tick": tick.isoformat(),
                        "instance_id": schedule.run_id(tick),
                        "runtime_status": state.runtime_status.name,
                        "status_url": f"/agent/instances/{schedule.run_id(tick)}",
                    }
                    for tick, state in zip(ticks, states, strict=True)
                    if state is not None
                ]
                listed.append({**vars(schedule), "runs": runs})
            return listed

        return schedules
