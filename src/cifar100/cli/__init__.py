"""The `cifar100` command: a thin layer that parses arguments and calls the Python API.

One module per command (train.py, evaluate.py, ...) holds its arguments and its run function;
parser.py wires them from one table; main() runs one and turns errors into one line.
"""

from __future__ import annotations

import sys

from cifar100.cli.parser import COMMANDS, build_parser
from cifar100.display_text import visible
from cifar100.errors import CifarError


def main(argv: list[str] | None = None) -> int:
    code = _main(argv)
    # Under torchrun, end the process here (engine.distributed.exit_process says why). Looked
    # up, not imported: most commands never load torch.
    distributed = sys.modules.get("cifar100.engine.distributed")
    if distributed is not None:
        distributed.exit_process(code)
    return code


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command].run(args)
    except CifarError as e:
        if args.debug:
            raise
        # A path or class name in the message is shown, controls and all, never obeyed.
        print(f"cifar100 {args.command}: error: {visible(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:  # a user's file or folder: missing, unreadable, unwritable, disk full
        if args.debug:
            raise
        from cifar100.fileio import describe_os_error  # on this error path only: a fast start

        where = f"{e.filename}: " if e.filename else ""
        message = visible(f"{where}{describe_os_error(e)}")
        print(f"cifar100 {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted (checkpoints already written are intact; `cifar100 train --resume "
            "RUN_DIR` continues a run)",
            file=sys.stderr,
        )
        return 130
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        if args.debug:
            raise
        print(
            f"cifar100 {args.command}: unexpected error: {type(e).__name__}: {e} "
            "(run with --debug for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 1
