"""The installed commands (``[project.scripts]`` in pyproject.toml): ``imagenet-staging`` and its engine.

``pip install`` puts the project's packages in ``site-packages/imagenet_staging/``
rather than at the top level, where a ``bootstrap`` or ``scripts`` of another
distribution would clash.  Each command puts that folder first on its own
``sys.path`` and runs the CLI under the names the code uses, exactly as
``python -m scripts`` and ``python -m bootstrap`` do in a checkout.
"""

from __future__ import annotations

import sys
from pathlib import Path


def _use_installed_tree() -> None:
    home = str(Path(__file__).resolve().parents[1])
    if sys.path[:1] != [home]:
        sys.path.insert(0, home)


def operator() -> None:
    """``imagenet-staging``: plan, status, launch-fleet, teardown, copy-snapshot (``python -m scripts``)."""
    _use_installed_tree()
    from scripts.cli import main

    main()


def engine() -> None:
    """``imagenet-staging-engine``: the instances' stages (``python -m bootstrap``)."""
    _use_installed_tree()
    from bootstrap.cli import main

    main()
