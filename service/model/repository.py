"""The model repository: Triton's layout, `<root>/<name>/<version>/card.json`, and which
versions a version policy serves.

Standard library only, like cards.py: training (export, summary) and the service read the
folder the same way. A version is a folder named by a positive integer (Triton's rule); other
folders and files inside a model folder are ignored, as Triton ignores them. The card inside
must name the same model and version as its folders, so that the path, the card and every
answer agree on which model computed what.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from service.model.cards import CARD_FILE, CardError, ModelCard, load_card

# Triton: "version directories must be named with a positive integer". Nine digits keep the
# number an int32 (Triton's model_version is an int64 string; ours stay small).
_VERSION = re.compile(r"^[1-9][0-9]{0,8}$")
# Model names: what a URL path segment and a metrics label can hold without escaping.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def version_of(folder: Path) -> int | None:
    """The version a folder's name stands for, or None when it is not a version folder."""
    return int(folder.name) if _VERSION.match(folder.name) else None


def valid_name(name: str) -> bool:
    return bool(_NAME.match(name))


@dataclass(frozen=True)
class VersionPolicy:
    """Which of a model's versions are served: Triton's `latest` (the newest N), `all`, or
    `specific` (the versions listed). Written in RNNSERVE_VERSION_POLICY as `latest`,
    `latest:N`, `all` or `specific:1,3`."""

    kind: str  # "latest" | "all" | "specific"
    count: int = 1  # latest: how many of the newest
    versions: tuple[int, ...] = ()  # specific: which

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        word, _, rest = text.strip().lower().partition(":")
        try:
            if word == "latest":
                count = int(rest) if rest else 1
                if count >= 1:
                    return cls("latest", count=count)
            elif word == "all" and not rest:
                return cls("all")
            elif word == "specific" and rest:
                versions = tuple(sorted({int(v) for v in rest.split(",")}))
                if all(v >= 1 for v in versions):
                    return cls("specific", versions=versions)
        except ValueError:
            pass
        raise ValueError(
            f"{text!r} is not a version policy: use latest, latest:N (the newest N), all, or "
            "specific:1,3 (those versions)"
        )

    @classmethod
    def from_triton(cls, policy: object) -> VersionPolicy:
        """Triton's model-configuration form: {"latest": {"num_versions": N}}, {"all": {}}
        or {"specific": {"versions": [...]}} (what a load call's config may carry)."""
        usage = (
            'a version_policy is {"latest": {"num_versions": N}}, {"all": {}} or '
            '{"specific": {"versions": [1, 3]}}'
        )
        if not isinstance(policy, dict) or len(policy) != 1:
            raise ValueError(usage)
        ((kind, body),) = policy.items()
        body = body if isinstance(body, dict) else None
        if kind == "all" and body == {}:
            return cls("all")
        if kind == "latest" and body is not None and set(body) <= {"num_versions"}:
            count = body.get("num_versions", 1)
            if isinstance(count, int) and not isinstance(count, bool) and count >= 1:
                return cls("latest", count=count)
        if kind == "specific" and body is not None and set(body) == {"versions"}:
            versions = body["versions"]
            if (
                isinstance(versions, list)
                and versions
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in versions)
            ):
                return cls("specific", versions=tuple(sorted(set(versions))))
        raise ValueError(usage)

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve among `available`, newest first."""
        newest_first = sorted(available, reverse=True)
        if self.kind == "latest":
            return newest_first[: self.count]
        if self.kind == "specific":
            return [v for v in newest_first if v in self.versions]
        return newest_first

    def triton(self) -> dict[str, object]:
        """Triton's model-configuration form of this policy."""
        if self.kind == "latest":
            return {"latest": {"num_versions": self.count}}
        if self.kind == "specific":
            return {"specific": {"versions": list(self.versions)}}
        return {"all": {}}

    def __str__(self) -> str:
        if self.kind == "latest":
            return "latest" if self.count == 1 else f"latest:{self.count}"
        if self.kind == "specific":
            return "specific:" + ",".join(map(str, self.versions))
        return "all"


def model_folders(root: Path) -> list[Path]:
    """Every model folder under the repository `root`, sorted by name. A folder holding a
    card.json itself is the old flat layout: refused with the move that fixes it."""
    if not root.is_dir():
        raise CardError(f"model repository {root} does not exist")
    folders = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (folder / CARD_FILE).is_file():
            raise CardError(
                f"{folder / CARD_FILE}: a card directly in a model folder is the old layout; "
                f"the repository holds <name>/<version>/card.json: move the files into "
                f"{folder / '1'}/ and set the card's version to 1"
            )
        if any(version_of(p) is not None for p in folder.iterdir() if p.is_dir()):
            folders.append(folder)
    return folders


def versions_on_disk(model_folder: Path) -> list[int]:
    """The version folders of one model that hold a card, oldest first."""
    if not model_folder.is_dir():
        return []
    found = [
        v
        for p in model_folder.iterdir()
        if p.is_dir() and (v := version_of(p)) is not None and (p / CARD_FILE).is_file()
    ]
    return sorted(found)


def load_version(root: Path, name: str, version: int, verify: bool = True) -> ModelCard:
    """The card of `name` version `version`, checked against its place in the repository."""
    if not valid_name(name):
        raise CardError(f"{name[:64]!r} is not a model name (letters, digits, . _ -)")
    folder = root / name / str(version)
    card = load_card(folder, verify=verify)
    if card.name != name:
        raise CardError(
            f"{folder / CARD_FILE}: the card names model {card.name!r}, its folder {name!r}"
        )
    if card.data["version"] != version:
        raise CardError(
            f"{folder / CARD_FILE}: the card says version {card.data['version']!r}, its folder "
            f"{version}: a version is the folder's integer"
        )
    return card


def next_version(model_folder: Path) -> int:
    """The version an export into `model_folder` creates: one above the newest there."""
    existing = [v for p in model_folder.glob("*") if (v := version_of(p)) is not None]
    return max(existing, default=0) + 1


LATEST = VersionPolicy("latest")


def discover_cards(
    root: Path, verify: bool = True, policy: VersionPolicy = LATEST
) -> list[ModelCard]:
    """The cards the policy serves from the repository (by default each model's newest), by
    name then newest version first; a card among them that fails its checks is a CardError."""
    cards = []
    for folder in model_folders(root):
        for version in policy.select(versions_on_disk(folder)):
            cards.append(load_version(root, folder.name, version, verify=verify))
    return cards
