"""One error style for every command of the plugin.

A user error (a missing file, a wrong setting, input that cannot be used) ends a command with one line on stderr,
``<command>: error: <message>``, and exit code 2, without a traceback: the same format and code as argparse's own
usage errors. The message names the file or setting and says how to fix it. Programming errors keep their
traceback.
"""
import functools
import sys
from typing import Callable, NoReturn

EXIT_USER_ERROR = 2  # argparse's exit code for usage errors


class UserError(ValueError):
    """A mistake in the user's input or set-up; the message names the file or setting and the fix."""


def fail(prog: str, message) -> NoReturn:
    """Print ``<prog>: error: <message>`` to stderr and exit with code 2 (``SystemExit``, like ``parser.error``)."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USER_ERROR)


def warn(prog: str, message) -> None:
    """Print ``<prog>: warning: <message>`` to stderr; the command goes on."""
    print(f"{prog}: warning: {message}", file=sys.stderr)


def exits_on_user_error(prog: str) -> Callable:
    """Decorator for a command's ``main``: a ``UserError`` raised inside ends the command through :func:`fail`."""
    def decorate(main: Callable) -> Callable:
        @functools.wraps(main)
        def wrapper(*args, **kwargs):
            try:
                return main(*args, **kwargs)
            except UserError as e:
                fail(prog, e)
        return wrapper
    return decorate


def resolve_dataset_name(dataset_name_or_id) -> str:
    """nnU-Net's dataset name for ``-d`` (a name or an id); an unknown or ambiguous id is a ``UserError``."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    try:
        return maybe_convert_to_dataset_name(dataset_name_or_id)
    except (RuntimeError, ValueError) as e:  # nnU-Net's message lists the folders it searched
        raise UserError(f"-d {dataset_name_or_id}: {e}") from None
