"""Model control: loading and unloading model versions while the service serves.

Triton's three modes (RNNSERVE_MODEL_CONTROL): `none` (what start-up loaded is fixed), `explicit`
(the repository API: index, load, unload) and `poll` (the repository folder is watched).
Whatever the mode, a version serves only after every check of `open_model` passed (files
against their sha256, the contract, the recorded examples, a warm-up), and then through one
swap of the registry's snapshot together with the queues (`Pipelines.sync`), with no await in
between: a request holds the model it looked up and finishes on that version, and a batch
never mixes versions. A load that fails anything changes nothing that serves: the last good
versions keep answering, and the index shows the refused version with its reason.

With several workers, one control call reaches one worker; `Coordinator` (coordination.py)
carries the outcome to the others before the call answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.engine.pipeline import Pipelines
from service.errors import ControlRefused, LoadRefused, UnknownModel, short
from service.metrics import MODEL_INFO, MODEL_LOADS
from service.model.cards import CARD_FILE, CardError, ModelCard
from service.model.inference import LoadedModel, Served, open_model
from service.model.repository import (
    VersionPolicy,
    load_version,
    model_folders,
    valid_name,
    versions_on_disk,
)

logger = logging.getLogger("bentoml.rnnserve")

READY, LOADING, UNAVAILABLE = "READY", "LOADING", "UNAVAILABLE"
NOT_LOADED = "not loaded"  # the index's reason for a version on disk this worker never tried


@dataclass
class VersionState:
    """One version as the index shows it (Triton's states and reason)."""

    state: str
    reason: str = ""
    since: float = field(default_factory=time.time)


# name -> version -> the versions each model should serve: what the workers agree on
Desired = dict[str, list[int]]


def card_digest(folder: Path) -> str:
    """The card file's sha256: it names every file's sha256, so a changed version (re-export
    in place) has a new digest."""
    try:
        return hashlib.sha256((folder / CARD_FILE).read_bytes()).hexdigest()
    except OSError:
        return ""


class ModelControl:
    """Loads, unloads and reports the versions one worker serves."""

    def __init__(self, pipelines: Pipelines) -> None:
        self.pipelines = pipelines
        self.registry = pipelines.registry
        self.settings = pipelines.settings
        self.root = self.settings.model_dir
        self.policy = VersionPolicy.parse(self.settings.version_policy)
        self.states: dict[tuple[str, int], VersionState] = {
            (m.name, m.version): VersionState(READY) for m in self.registry.served.models()
        }
        self.digests = {  # what each served version was loaded from
            (m.name, m.version): card_digest(m.card.directory)
            for m in self.registry.served.models()
        }
        for model in self.registry.served.models():  # rnnserve_model_info: 1 while served
            self._labels(model).set(1)
        self.lock = asyncio.Lock()  # one change at a time in this worker
        self.refused: dict[str, dict[int, str]] = {}  # poll mode: name -> version -> card digest
        self.on_change: Callable[[], None] = lambda: None

    # ------------------------------------------------------------------ what is wanted

    def desired(self) -> Desired:
        """What this worker serves now, as the versions of each model."""
        return {name: sorted(v) for name, v in self.registry.served.versions.items()}

    def selected(self, name: str, policy: VersionPolicy | None = None) -> list[int]:
        """The versions `policy` (by default the server's) serves of `name` from what is on
        disk."""
        policy = policy or self.policy
        if not valid_name(name):
            raise UnknownModel(f"{short(name)} is not a model name (letters, digits, . _ -)")
        folder = self.root / name
        if not folder.is_dir():
            raise UnknownModel(f"the repository {self.root} has no model {short(name)}")
        chosen = policy.select(versions_on_disk(folder))
        if not chosen:
            raise LoadRefused(
                f"model {name}: no version folder ({folder}/<N>/card.json) that the version "
                f"policy {policy} selects; on disk: {versions_on_disk(folder)}"
            )
        return chosen

    # ------------------------------------------------------------------ changes

    async def load(self, name: str, policy: VersionPolicy | None = None) -> list[int]:
        """Triton's load: the versions the policy selects of `name` (a load call may bring
        its own, as Triton's config override: how a rollback names the previous version),
        verified and swapped in; versions it no longer selects are unloaded. All or
        nothing."""
        async with self.lock:
            wanted = {**self.desired(), name: self.selected(name, policy)}
            await self._apply(wanted)
            return wanted[name]

    async def unload(self, name: str) -> None:
        async with self.lock:
            if name not in self.registry.served.versions:
                raise UnknownModel(f"model {short(name)} is not loaded")
            wanted = self.desired()
            wanted.pop(name)
            await self._apply(wanted)

    async def apply(self, wanted: Desired) -> None:
        """Bring this worker to `wanted` (another worker's change, or a look at the repository
        in poll mode): versions loaded and verified here, then one swap."""
        async with self.lock:
            await self._apply(wanted)

    async def _apply(self, wanted: Desired) -> None:
        """Open what `wanted` adds or changed on disk (an unchanged served version stays as
        it is), check the whole, swap it in; LoadRefused, with nothing changed, otherwise."""
        served = self.registry.served
        opened: dict[tuple[str, int], LoadedModel] = {}
        try:
            for name, versions in wanted.items():
                for version in versions:
                    current = served.find(name, version)
                    folder = self.root / name / str(version)
                    unchanged = self.digests.get((name, version)) == card_digest(folder)
                    if current is not None and unchanged:
                        continue
                    opened[(name, version)] = await self._open(name, version)
        except LoadRefused as exc:  # the versions opened for this change do not serve either
            for key in opened:
                if served.find(*key) is None:
                    self.states[key] = VersionState(UNAVAILABLE, f"not loaded: {exc.message}")
            raise
        new = Served(
            {
                name: {v: opened.get((name, v)) or served.versions[name][v] for v in versions}
                for name, versions in wanted.items()
                if versions
            }
        )
        try:
            self.registry.check(new)
        except CardError as exc:
            for key in opened:
                self.states[key] = VersionState(UNAVAILABLE, str(exc))
            raise LoadRefused(str(exc)) from None
        self._swap(served, new)

    async def _open(self, name: str, version: int) -> LoadedModel:
        """One version loaded and verified off the event loop; LoadRefused with the reason."""
        key = (name, version)
        previous = self.states.get(key)
        self.states[key] = VersionState(LOADING)
        self.on_change()
        try:
            card: ModelCard = await asyncio.to_thread(load_version, self.root, name, version)
            model = await asyncio.to_thread(
                open_model,
                card,
                self.settings,
                self.registry.device,
                self.registry.observe,
            )
        except Exception as exc:  # any failure to load is a refusal: the last good one serves
            detail = str(exc)[:1000]
            reason = f"version {version} of {name} refused: {detail}"
            logger.warning("model control: %s", reason)
            MODEL_LOADS.labels(model=name, version=str(version), outcome="refused").inc()
            served = self.registry.served.find(name, version) is not None
            self.states[key] = (
                VersionState(READY, f"a reload was refused: {detail}")
                if served and previous is not None
                else VersionState(UNAVAILABLE, detail)
            )
            raise LoadRefused(reason) from None
        self.digests[key] = card_digest(card.directory)
        return model

    def _swap(self, old: Served, new: Served) -> None:
        """The one switch: snapshot and queues together, no await in between."""
        self.registry.served = new
        self.pipelines.sync()
        for model in old.models():
            if new.find(model.name, model.version) is not model:
                self._labels(model).set(0)
                if new.find(model.name, model.version) is None:
                    self.states[(model.name, model.version)] = VersionState(UNAVAILABLE, "unloaded")
                    MODEL_LOADS.labels(
                        model=model.name, version=str(model.version), outcome="unloaded"
                    ).inc()
        for model in new.models():
            if old.find(model.name, model.version) is not model:
                self._labels(model).set(1)
                self.states[(model.name, model.version)] = VersionState(READY)
                MODEL_LOADS.labels(
                    model=model.name, version=str(model.version), outcome="loaded"
                ).inc()
                logger.info("model control: %s serving", model.key)
        self.on_change()

    def _labels(self, model: LoadedModel) -> Any:
        """The model's rnnserve_model_info series (prometheus_client's child gauge)."""
        return MODEL_INFO.labels(
            model=model.name,
            version=str(model.version),
            backend=model.backend_name,
            provider=model.backend.provider,
            device=self.registry.device.device,
        )

    # ------------------------------------------------------------------ the index

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Triton's repository index: every model version on disk or known here, with its
        state and reason; `ready_only`: the serving ones."""
        known: dict[tuple[str, int], VersionState] = dict(self.states)
        try:
            for folder in model_folders(self.root):
                for version in versions_on_disk(folder):
                    known.setdefault((folder.name, version), VersionState(UNAVAILABLE, NOT_LOADED))
        except CardError:
            pass  # a repository that cannot be read lists what this worker knows
        rows = []
        for (name, version), st in sorted(known.items()):
            if ready_only and st.state != READY:
                continue
            row = {"name": name, "version": str(version), "state": st.state}
            if st.reason:
                row["reason"] = st.reason
            rows.append(row)
        return rows

    def version_state(self, name: str, version: int) -> VersionState | None:
        return self.states.get((name, version))

    # ------------------------------------------------------------------ poll mode

    async def poll(self) -> None:
        """Poll mode: each model brought to what the repository and the policy say, one model
        at a time (one refused version does not hold up the others). A version refused once
        is not tried again until its card changes; meanwhile its model keeps what it serves."""
        try:
            on_disk = {
                f.name: self.policy.select(versions_on_disk(f)) for f in model_folders(self.root)
            }
        except CardError as exc:
            logger.warning("model control (poll): the repository cannot be read: %s", exc)
            return
        for name in sorted(set(on_disk) | set(self.registry.served.versions)):
            versions = on_disk.get(name, [])
            if any(self._refused_unchanged(name, v) for v in versions):
                continue
            wanted = {**self.desired(), name: versions}
            if not versions:
                wanted.pop(name)
            if wanted == self.desired() and not self._changed_on_disk(name):
                continue
            try:
                await self.apply(wanted)
            except (LoadRefused, UnknownModel) as exc:
                self.refused[name] = {v: card_digest(self.root / name / str(v)) for v in versions}
                logger.warning("model control (poll): %s", exc.message)

    def _refused_unchanged(self, name: str, version: int) -> bool:
        digest = self.refused.get(name, {}).get(version)
        return digest is not None and digest == card_digest(self.root / name / str(version))

    def _changed_on_disk(self, name: str) -> bool:
        """A served version of `name` whose card changed since it was loaded (re-exported)."""
        return any(
            self.digests.get((name, v)) != card_digest(self.root / name / str(v))
            for v in self.registry.served.versions.get(name, {})
        )


def refused_control(settings_mode: str, wanted: str) -> ControlRefused:
    return ControlRefused(
        f"model control is {settings_mode!r} on this server (RNNSERVE_MODEL_CONTROL); "
        f"{wanted} needs 'explicit'"
    )
