"""`manage.py`: Django's command line, made for someone at a terminal without the environment yet.

A request for help (`manage.py help`, `manage.py <command> --help`, `manage.py` alone) is answered
without the settings a run needs: the settings then check, make and write nothing (no secret key,
no data folder), since help runs no command. A run whose settings are missing or wrong stops with one
line naming the setting and what to set, not Django's traceback.

The settings read `answering_help`; this module imports nothing else, so that they may import it.
"""
import sys
from pathlib import Path

# Set by main() before Django reads the settings; only a request for help sets it, and such a request
# stops at argument parsing, before any command's handle() could sign or store anything.
answering_help = False

_HELP_SUBCOMMANDS = {"help", "version"}
_HELP_FLAGS = {"-h", "--help", "--version"}


def asks_for_help(args: list[str]) -> bool:
    """Whether `args` (the command line after `manage.py`) asks for help or the version only: Django
    answers those before running anything (argparse exits at `--help`). Arguments after `--` are
    a command's values, never a request for help."""
    if not args or args[0] in _HELP_SUBCOMMANDS:
        return True
    options = args[:args.index("--")] if "--" in args else args
    return any(arg in _HELP_FLAGS for arg in options)


def main(argv: list[str]) -> None:
    global answering_help
    answering_help = asks_for_help(argv[1:])
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(argv)
    except ImproperlyConfigured as error:
        sys.exit(f"{Path(argv[0]).name}: {error}")
