"""The one exception type that grokfast raises for bad input."""
from __future__ import annotations

import difflib


class GrokfastError(ValueError):
    """Invalid configuration, argument or file.

    Raised at the boundary (Config, CLI, launchers, Result.load) with a message that says what was
    wrong and what to do instead. The CLI prints it without a traceback and exits with status 2.
    """


class Interrupted(GrokfastError):
    """A command stopped by Ctrl-C or SIGTERM, its work kept: the CLI prints the message on one
    line and exits with status 130."""


def closest(name: str, valid) -> str:
    """' (did you mean X?)' for the valid name closest to `name`, or '' when none is close."""
    match = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


def check_choice(field: str, value, valid) -> None:
    """Raise GrokfastError unless value is one of valid, naming the closest valid choice."""
    if value not in valid:
        raise GrokfastError(
            f"{field}={value!r} is not supported{closest(value, valid)}; "
            f"choose one of {', '.join(map(repr, valid))}"
        )
