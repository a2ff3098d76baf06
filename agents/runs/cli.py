"""How every script meets its user: one line for a user's mistake, a hint on Ctrl-C, tracebacks
only with `--debug`, and output paths checked before any work starts."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeVar

import yaml

from agents.runs.config import config_defaults, config_from_dict, config_to_dict, resolve_config_paths
from agents.runs.rundir import RunDir, load_yaml, prepare_run_dir

T = TypeVar("T")

#: What a user's input can raise: a bad value (the project's checks raise ValueError naming the
#: field and what is allowed), a file that is missing, unreadable or unwritable, or broken YAML.
USER_ERRORS = (ValueError, OSError, yaml.YAMLError)
DEBUG_FLAG = "--debug"
DEBUG_HELP = "show the traceback of an error instead of its one-line message"
RESUME_HINT = "resume with the same command and --resume"  # what a training script says on Ctrl-C


def run_script(main: Callable[[], object], interrupted_hint: str = "") -> NoReturn:
    """Run a script's `main` and exit: 0 when it returns, 2 with one line on a user error, 130 on
    Ctrl-C (with `interrupted_hint`, e.g. how to resume). With `--debug` on the command line an
    error keeps its traceback; the script's parser should accept the flag (`DEBUG_HELP`)."""
    debug = DEBUG_FLAG in sys.argv[1:]
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted" + (f": {interrupted_hint}" if interrupted_hint else ""), file=sys.stderr)
        sys.exit(130)
    except USER_ERRORS as error:
        if debug:
            raise
        print(f"error: {one_line(error)} ({DEBUG_FLAG} shows the traceback)", file=sys.stderr)
        sys.exit(2)
    sys.exit(0)


def one_line(error: BaseException) -> str:
    """The error's message on one line (OSError: its text and the file it names)."""
    if isinstance(error, OSError) and error.strerror:
        message = f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    else:
        message = str(error) or type(error).__name__
    return " ".join(message.split())


def check_writable(path: Path, field: str) -> None:
    """Raise a ValueError naming `field` unless `path` (a file or folder, existing or not) can be
    written. A folder (`path` itself if it is one, else its nearest existing ancestor) is tried by
    creating a temporary file in it, which is removed at once: permission bits alone say nothing
    to root, nor on a read-only or virtual file system."""
    path = Path(path)
    if path.is_file():
        if not os.access(path, os.W_OK):
            raise ValueError(f"{field}: {path} is not writable")
        return
    folder = path.absolute()
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"{field}: cannot create {path}: {folder} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ValueError(f"{field}: cannot write in {folder} ({error.strerror or one_line(error)})") from error


def training_parser(description: str, config_name: str) -> argparse.ArgumentParser:
    """The command line every resumable training script shares: --config, --run, --resume, --force,
    --iterations, --debug (scripts add their own flags to it)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    parser.add_argument("--config", type=Path, required=True, help=f"YAML file with {config_name} fields")
    parser.add_argument("--run", type=Path, required=True, help="run directory to create (or resume)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --run from its last checkpoint")
    parser.add_argument("--force", action="store_true", help="move an existing run aside and start afresh")
    parser.add_argument("--iterations", type=int, help="override the config's iterations")
    return parser


def training_run(config_class: type[T], args: argparse.Namespace, path_fields: tuple[str, ...] = (),
                 check: Callable[[T], None] | None = None) -> tuple[T, RunDir]:
    """The config of `training_parser`'s arguments (the YAML, `--iterations` over it) and its run
    directory, created or resumed (`iterations` and `num_threads` may change on resume; fields newer
    than the run's stored config are accepted at their defaults). `path_fields` name fields that
    hold files, found as `agents.runs.config.resolve_config_paths` finds them; `check(config)`
    raises on what the config's files hold (e.g. an init of another family) before the run
    directory is written."""
    check_writable(args.run, "run")  # before any work
    raw = resolve_config_paths(load_yaml(args.config), args.config, path_fields)
    if args.iterations is not None:
        raw["iterations"] = args.iterations
    config = config_from_dict(config_class, raw)
    if check is not None:
        check(config)
    run = prepare_run_dir(args.run, resume=args.resume, force=args.force, config=config_to_dict(config),
                          changeable={"resume", "force", "iterations", "num_threads"},
                          defaults=config_defaults(config_class))
    return config, run
