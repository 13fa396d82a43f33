"""`smartspec` entry point: sub-commands, and one place that turns smartspec errors into exit codes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from smartspec.errors import SmartspecError

# Bad input (4xx-class errors) exits 2, like argparse; everything else that smartspec raises, 1.
EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1


missing: list[str] = []  # commands this install cannot offer


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="smartspec", description="Goodput-optimal speculative decoding.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("models", "generate", "policy", "sim", "serve", "up", "bench", "kube_operator"):
        try:
            module = importlib.import_module(f"smartspec.cli.{name}")
        except ImportError as exc:  # a role install (e.g. the controller's) lacks torch: skip those commands
            missing.append(f"{name} ({exc.name} is not installed)")
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("generate", "serve-draft", "serve-target"):
        _quiet_transformers()
    try:
        return int(args.func(args))
    except SmartspecError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_BAD_INPUT if 400 <= exc.http_status < 500 else EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


def _quiet_transformers() -> None:
    """No per-load progress bars or advisory warnings on a CLI's output."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # the base install has no transformers; nothing to quiet
        return
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())
