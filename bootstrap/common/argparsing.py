"""argparse as both command lines use it: did-you-mean for flags and commands, flags given anywhere.

argparse reports an unknown flag from the top-level parser, with the top-level
usage and no hint, because subcommands hand their leftovers up.  ``parse``
asks for the leftovers itself and reports them from the chosen subcommand,
with the closest flag of that subcommand, or the subcommands that do take it.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn


def command_name(default: str) -> str:
    """How the user ran us, for usage lines: ``imagenet-staging`` installed, ``default`` for ``python -m``."""
    name = Path(sys.argv[0]).name
    return default if name in ("__main__.py", "-c", "") else name


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose "invalid choice" errors suggest the closest choice.

    Abbreviated flags are refused: ``pack --bucket B`` must not become ``--bucket-mib B``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        found = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if found:
            choices = re.findall(r"'([^']*)'", found.group(2))
            close = difflib.get_close_matches(found.group(1), choices, n=1)
            if close:
                message = f"{message.split(' (choose from', maxsplit=1)[0]}; did you mean {close[0]!r}?"
        super().error(message)


def add_common(parser: argparse.ArgumentParser, *, json_output: bool = True, top: bool = False) -> None:
    """``--json`` and ``-v/--verbose``, on the top-level parser and on every subcommand.

    On subcommands their default is ``SUPPRESS``, so a flag given before the
    subcommand is not reset by the subcommand's own default.
    """
    default: object = False if top else argparse.SUPPRESS
    if json_output:
        parser.add_argument("--json", action="store_true", default=default, help="print the result as JSON")
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="debug logging, and the traceback of an unexpected error")  # fmt: skip


def parse(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """``parser.parse_args(argv)``, with unknown flags reported by the subcommand they were given to."""
    args, extras = parser.parse_known_args(argv)
    if not extras:
        return args
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    subcommands: dict[str, argparse.ArgumentParser] = dict(action.choices)
    chosen: argparse.ArgumentParser = subcommands[getattr(args, action.dest)]
    chosen.error(unrecognized(extras, chosen, subcommands))


def unrecognized(extras: Sequence[str], chosen: argparse.ArgumentParser,
                 subcommands: dict[str, argparse.ArgumentParser]) -> str:  # fmt: skip
    """What to say about ``extras``: which subcommands take the flag, else the closest flag of ``chosen``."""
    flag = next((word.split("=")[0] for word in extras if word.startswith("-")), None)
    if flag is None:
        return f"unrecognized arguments: {' '.join(extras)}"
    owners = [name for name, sub in subcommands.items() if flag in sub._option_string_actions]
    if owners:
        return f"{flag} is not a flag of {chosen.prog.split()[-1]} (it is a flag of: {', '.join(owners)})"
    close = difflib.get_close_matches(flag, [f for f in chosen._option_string_actions if f.startswith("--")], n=1)
    if close:
        return f"unrecognized argument {flag}; did you mean {close[0]}?"
    return f"unrecognized argument {flag}; {chosen.prog} --help lists its flags"


def number(kind: type[int] | type[float], *, low: float | None = None, high: float | None = None,
           above: float | None = None) -> Callable[[str], float]:  # fmt: skip
    """An argparse ``type`` that parses ``kind`` and names the range when the value is outside it."""
    span = (f"more than {above:g}" if above is not None else f"{low:g}-{high:g}" if high is not None and low is not None
            else f"at least {low:g}" if low is not None else "any value")  # fmt: skip

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'a whole number' if kind is int else 'a number'} ({span})"
            ) from None
        if (
            (low is not None and value < low)
            or (high is not None and value > high)
            or (above is not None and value <= above)
        ):
            raise argparse.ArgumentTypeError(f"{text} is out of range: it must be {span}")
        return value

    parse.__name__ = kind.__name__
    return parse
