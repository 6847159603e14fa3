"""The class-folder tree output: ``<root>/<wnid>/<name>`` for every packed image, as stored in its record."""

from __future__ import annotations

from pathlib import Path

from bootstrap.common.errors import ArchiveError
from bootstrap.dataset.safetar import SAFE_BASENAME
from bootstrap.dataset.streams import Item


class TreeWriter:
    """Writes each image under its class folder; a name that could leave the folder is refused."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __call__(self, item: Item) -> None:
        wnid, _, base = item.relpath.partition("/")
        if not SAFE_BASENAME.match(base) or not SAFE_BASENAME.match(wnid):
            raise ArchiveError(f"refusing to write {item.relpath!r} into the class tree")
        folder = self.root / wnid
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / base, "wb") as f:
            f.write(item.data)
