"""The model-control calls as the front-ends see them, and the background work behind them.

`ControlPlane` joins one worker's `ModelControl` (lifecycle.py) with the mode and, when the
server has several workers, the `Coordinator` (coordination.py): a call is answered when
every worker serves its outcome. Its background tasks: the watch for other workers' changes,
and in poll mode the look at the repository every RNNSERVE_POLL_INTERVAL_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os

from service.engine.coordination import WATCH_S, Coordinator, default_directory
from service.engine.lifecycle import NOT_LOADED, READY, UNAVAILABLE, ModelControl, refused_control
from service.engine.pipeline import Pipelines
from service.errors import BadInput, LoadRefused, ServiceError
from service.model.repository import VersionPolicy

logger = logging.getLogger("bentoml.rnnserve")

# How long a control call waits for the other workers to switch: each verifies and warms up
# the version itself (a second or two for these models; a slow disk or a busy machine more).
SWITCH_TIMEOUT_S = 120.0


def load_policy(config: object) -> VersionPolicy | None:
    """The version policy a load call's `config` parameter brings (Triton's config override,
    a JSON string), or None. Only the version policy may be overridden: a version is served
    as exported and verified, so anything else in it is refused."""
    if config is None:
        return None
    if not isinstance(config, str):
        raise BadInput("parameter 'config' must be a string holding a JSON object")
    try:
        data = json.loads(config)
    except ValueError:
        raise BadInput("parameter 'config' is not JSON") from None
    if not isinstance(data, dict):
        raise BadInput("parameter 'config' must be a JSON object")
    other = sorted(set(data) - {"name", "version_policy"})
    if other:
        raise BadInput(
            f"config {other[:5]} not supported: a load may choose versions ('version_policy') "
            "and nothing else; a version is served as exported and verified"
        )
    if "version_policy" not in data:
        return None
    try:
        return VersionPolicy.from_triton(data["version_policy"])
    except ValueError as exc:
        raise BadInput(str(exc)) from None


class ControlPlane:
    def __init__(self, pipelines: Pipelines, worker: int | None) -> None:
        settings = pipelines.settings
        self.mode = settings.model_control
        self.control = ModelControl(pipelines)
        self.coordinator: Coordinator | None = None
        if worker is not None and settings.workers > 1 and self.mode != "none":
            directory = settings.control_dir or default_directory(os.getppid())
            self.coordinator = Coordinator(directory, worker, settings.workers)
        self.tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------ calls

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """The repository index; with several workers, a version that this worker never
        tried shows the reason the worker that tried it refused it for."""
        rows = self.control.index(ready_only)
        if self.coordinator is not None:
            refusals = self.coordinator.refusals()
            for row in rows:
                reason = refusals.get(f"{row['name']}/{row['version']}")
                if reason and row["state"] == UNAVAILABLE and row.get("reason") == NOT_LOADED:
                    row["reason"] = reason
        return rows

    async def load(self, name: str, policy: VersionPolicy | None = None) -> list[int]:
        if self.mode != "explicit":
            raise refused_control(self.mode, "loading a model")
        if self.coordinator is None:
            return await self.control.load(name, policy)
        async with self.coordinator.locked():
            await self._catch_up()
            try:
                versions = await self.control.load(name, policy)
            finally:
                self._share_refusals()
            await self._share()
            return versions

    def _share_refusals(self) -> None:
        assert self.coordinator is not None
        shared = self.coordinator.refusals()
        for (name, version), state in self.control.states.items():
            key = f"{name}/{version}"
            if state.state == UNAVAILABLE and state.reason != "unloaded":
                shared[key] = state.reason
            elif state.state == READY:
                shared.pop(key, None)
        self.coordinator.record_refusals(shared)

    async def unload(self, name: str) -> None:
        if self.mode != "explicit":
            raise refused_control(self.mode, "unloading a model")
        if self.coordinator is None:
            await self.control.unload(name)
            return
        async with self.coordinator.locked():
            await self._catch_up()
            await self.control.unload(name)
            await self._share()

    async def _share(self) -> None:
        """This worker's outcome to every other worker; wait until they serve it."""
        assert self.coordinator is not None
        generation = self.coordinator.publish(self.control.desired())
        problems = await self.coordinator.wait_for_all(generation, SWITCH_TIMEOUT_S)
        if problems:
            raise LoadRefused(
                "this worker switched, and not every other did: " + "; ".join(problems)
            )

    async def _catch_up(self) -> None:
        """Serve the newest generation before changing it (the watch may not have run yet)."""
        assert self.coordinator is not None
        found = self.coordinator.read()
        if found is not None and found[0] > self.coordinator.seen:
            await self._follow(*found)

    async def _follow(self, generation: int, models: dict[str, list[int]]) -> None:
        assert self.coordinator is not None
        try:
            await self.control.apply(models)
            self.coordinator.report(generation, "")
        except ServiceError as exc:
            logger.warning("model control: generation %d refused here: %s", generation, exc)
            self.coordinator.report(generation, exc.message)

    # ------------------------------------------------------------------ background

    async def start(self) -> None:
        """At worker start-up: join the workers' agreement, then watch (and poll)."""
        if self.coordinator is not None:
            await self._catch_up()
            if self.coordinator.seen == 0 and self.coordinator.read() is None:
                self.coordinator.report(0, "")
            self.tasks.append(asyncio.create_task(self._watch()))
        if self.mode == "poll":
            self.tasks.append(asyncio.create_task(self._poll()))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _watch(self) -> None:
        assert self.coordinator is not None
        while True:
            await asyncio.sleep(WATCH_S)
            try:
                found = self.coordinator.read()
                if found is not None and found[0] > self.coordinator.seen:
                    await self._follow(*found)
            except Exception:  # the watch must outlive any one failure
                logger.exception("model control: the watch failed once; it goes on")

    async def _poll(self) -> None:
        interval = self.control.settings.poll_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                await self.control.poll()
            except Exception:
                logger.exception("model control: a look at the repository failed; it goes on")
