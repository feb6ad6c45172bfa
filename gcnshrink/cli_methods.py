"""Command-line flags made from the registered methods' option dataclasses.

``gcnshrink prune`` has the flags every method shares (rate, epochs, scope, ...) and one flag per
method option (``--schedule``, ``--score``, ``--budget-weight``, ...), generated from each method's
``Options`` dataclass when the command line is parsed, so a method added by a plug-in (entry point
``gcnshrink.methods``) or registered in a test gets its flags, help and validation with no edit
here. A flag given for a method that does not have it is refused by the registry, in one line.
"""

from __future__ import annotations

import inspect
import sys
from typing import Annotated

import typer

RESERVED = {
    "model", "data", "output", "method", "rate", "rates", "epochs", "seed", "scope", "exclude",
    "lr", "batch_size", "device", "allow_collapse", "arch", "layout", "json_out", "force",
    "state", "resume",
}  # fmt: skip


def method_option_parameters() -> list[inspect.Parameter]:
    """One keyword parameter per method option, typed and documented for Typer."""
    from gcnshrink.pruning import option_table

    parameters = []
    for opt in option_table():
        if opt.name in RESERVED:
            raise RuntimeError(
                f"method option {opt.name!r} ({', '.join(opt.methods)}) clashes with a flag of "
                "gcnshrink prune; rename it"
            )
        help_text = opt.help
        if opt.choices and "choices" not in help_text:
            help_text += f" One of: {', '.join(map(str, opt.choices))}."
        defaults = ", ".join(f"{m}: {d}" for m, d in zip(opt.methods, opt.defaults, strict=True))
        help_text += f" (default {defaults})"
        flag = f"{opt.flag}/--no-{opt.flag[2:]}" if opt.type is bool else opt.flag
        annotation = Annotated[opt.type | None, typer.Option(flag, help=help_text)]
        parameters.append(
            inspect.Parameter(
                opt.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation
            )
        )
    return parameters


class WithMethodOptions:
    """A command whose signature is ``function``'s plus every method option, computed each time
    Typer builds the command (so the registry is read when the command line is parsed).

    The function receives the method options as one dict, ``method_options``.
    """

    __annotations__: dict = {}

    def __init__(self, function, command: str):
        self.function, self.command = function, command
        self.__name__ = function.__name__
        self.__doc__ = function.__doc__
        self.__module__ = function.__module__
        self.names: set[str] = set()

    @property
    def __signature__(self) -> inspect.Signature:
        own = inspect.signature(self.function, eval_str=True)
        fixed = [p for p in own.parameters.values() if p.name != "method_options"]
        # Typer builds every command's options at start-up; the registry imports torch and the
        # plug-ins, which `gcnshrink --help` or `gcnshrink gate` should not wait for. The method
        # options are there whenever this command runs (or the registry is loaded anyway).
        wanted = self.command in sys.argv[1:] or "gcnshrink.pruning" in sys.modules
        extra = method_option_parameters() if wanted else []
        self.names = {p.name for p in extra}
        return own.replace(parameters=fixed + extra)

    def __call__(self, **kwargs):
        options = {name: kwargs.pop(name) for name in list(kwargs) if name in self.names}
        return self.function(**kwargs, method_options=options)
