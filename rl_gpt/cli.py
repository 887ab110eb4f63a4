"""``rl-gpt``: argument parsing and config loading only; every command calls a library function."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _cmd_collect(args: argparse.Namespace) -> None:
    from rl_gpt.collect import collect
    from rl_gpt.config import load_config

    cfg = load_config(args.config, args.overrides, command="collect")
    collect(cfg, progress=not args.quiet)


def _cmd_info(args: argparse.Namespace) -> None:
    from rl_gpt.dataset.info import describe

    print(describe(args.dataset, show_spec=args.spec))


COMMANDS = {"collect": _cmd_collect, "info": _cmd_info}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rl-gpt", description="Generative models of neural-network checkpoints (after G.pt)."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("collect", help="train SB3 runs and store their checkpoints as a dataset")
    p.add_argument("config", help="config file or preset name in configs/ (e.g. cartpole)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. runs=8 timesteps=20000 out=runs/x")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")

    p = sub.add_parser("info", help="summarise a checkpoint dataset")
    p.add_argument("dataset", help="dataset directory")
    p.add_argument("--spec", action="store_true", help="also print spec.json")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may come before or after flags such as -q: collect the leftovers
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any("=" not in e or e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    from rl_gpt.config import ConfigError
    from rl_gpt.dataset import DatasetError

    try:
        COMMANDS[args.command](args)
    except (ConfigError, DatasetError, PermissionError, FileNotFoundError, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"rl-gpt {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except OSError as exc:  # full disk and friends: say so in one line; nothing half-written is left
        print(f"rl-gpt {args.command}: error: {exc.strerror or exc} ({getattr(exc, 'filename', '')})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
