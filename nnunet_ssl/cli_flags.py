"""One option vocabulary for every command and script of the plugin (the table is in docs/benchmarking.md).

Options nnU-Net has are spelled as nnU-Net spells them (``-d -c -p -f -tr -device -np --c --disable_tta
-step_size``); the plugin's own options have one spelling each, multi-word ones with underscores as nnU-Net writes
them (``--iterations_per_epoch``). Spellings used before are still accepted through :func:`deprecated_alias`: hidden
from ``-h``, they set the same value and print one line, ``<prog>: warning: --old is deprecated, use --new``.
"""
import argparse
import sys
from typing import Optional


def warn_deprecated(prog: str, old: str, new: str, note: str = "") -> None:
    """The one-line warning of a deprecated spelling (on stderr)."""
    print(f"{prog}: warning: {old} is deprecated, use {new}{note}", file=sys.stderr)


def deprecated_alias(parser: argparse.ArgumentParser, old: str, new: str, note: str = "") -> None:
    """Accept the option string ``old`` as a hidden, deprecated spelling of the existing option ``new``.

    The alias takes the same arguments (nargs, type, choices) and sets the same destination as ``new``; its first
    use prints the warning once. If ``new`` is required, giving ``old`` instead satisfies it (argparse's own check
    only sees ``new``, so the requirement is checked after parsing). ``note`` is appended to the warning.
    """
    target = parser._option_string_actions.get(new)
    if target is None:
        raise ValueError(f"{new} is not an option of {parser.prog}")

    class _Alias(argparse.Action):
        warned = False

        def __call__(self, parser_, namespace, values, option_string=None):
            if not _Alias.warned:
                _Alias.warned = True
                warn_deprecated(parser_.prog, option_string or old, new, note)
            target(parser_, namespace, values, new)

    kwargs = {"dest": target.dest, "nargs": target.nargs, "default": argparse.SUPPRESS, "help": argparse.SUPPRESS}
    if target.nargs != 0:
        kwargs.update(type=target.type, choices=target.choices, metavar=target.metavar)
    else:  # flags (store_true, store_const): no argument
        kwargs.update(const=target.const)
    parser.add_argument(old, action=_Alias, **kwargs)
    if target.required:
        _require_after_parsing(parser, target, new)


def _require_after_parsing(parser: argparse.ArgumentParser, target: argparse.Action, new: str) -> None:
    target.required = False
    if target.help and "(required)" not in target.help:
        target.help = "(required) " + target.help
    required = getattr(parser, "_required_with_alias", None)
    if required is None:
        required = parser._required_with_alias = []
        parse_known_args = parser.parse_known_args

        def checked(args=None, namespace=None):
            namespace, extras = parse_known_args(args, namespace)
            missing = [option for dest, option in required if getattr(namespace, dest, None) is None]
            if missing:
                parser.error(f"the following arguments are required: {', '.join(missing)}")
            return namespace, extras

        parser.parse_known_args = checked
    required.append((target.dest, new))


def deprecated_aliases(parser: argparse.ArgumentParser, aliases: dict) -> None:
    """:func:`deprecated_alias` for every ``{old: new}``."""
    for old, new in aliases.items():
        deprecated_alias(parser, old, new)


def one_spelling_each(parser: argparse.ArgumentParser) -> None:
    """Bring an existing parser to the vocabulary in one call: an option with a short form keeps only that form (as
    nnU-Net's ``-i``, ``-o``, ``-d``), a hyphenated long option gets its underscored spelling (``--train-list`` ->
    ``--train_list``); every dropped spelling stays accepted through :func:`deprecated_alias`."""
    for action in list(parser._actions):
        strings = list(action.option_strings)
        if not strings or "-h" in strings or action.help == argparse.SUPPRESS:
            continue
        short = [o for o in strings if not o.startswith("--")]
        keep = short[0] if short else "--" + strings[0][2:].replace("-", "_")
        dropped = [o for o in strings if o != keep]
        if not dropped:
            continue
        for option in dropped:
            del parser._option_string_actions[option]
        action.option_strings = [keep]
        parser._option_string_actions[keep] = action
        for option in dropped:
            deprecated_alias(parser, option, keep)


def nnunet_default_num_processes() -> int:
    """nnU-Net's default ``-np`` (8, or the ``nnUNet_def_n_proc`` environment variable)."""
    from nnunetv2.configuration import default_num_processes
    return default_num_processes


def elapsed(seconds: Optional[float]) -> str:
    """``1h02m``, ``12m05s``, ``40s``: a duration for progress lines."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
