"""The `data pack`, `data check` and `data index` commands (`python -m vit.data.pack pack|check|index ...`;
`vitq data` adds them with `add_commands`). Exit codes: 0 done, 1 check found damage, 2 bad input (the message says what)."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from vit.config import shard_pattern
from vit.data.errors import DataError
from vit.data.shard_check import CheckReport, check
from vit.data.shard_index import read_index
from vit.data.shard_io import LocalLocation
from vit.data.shard_pack import SOURCES, Progress, pack
from vit.data.shard_scan import pattern_index

EXIT_OK, EXIT_DAMAGED, EXIT_BAD_INPUT = 0, 1, 2
UNITS = {"": 1, "B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}


def shard_size(text: str) -> int:
    """'512MB', '1GB', '64KB' or a number of bytes."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMG]?B?)\s*", text.upper())
    if match is None or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"a size like 512MB or 1GB, got {text!r}")
    return int(float(match.group(1)) * UNITS[match.group(2)])


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `pack` and `check` to a subcommand set; each sets `run`, a function of the parsed args -> exit code."""
    pack_parser = commands.add_parser(
        "pack", help="convert an image folder or a torchvision dataset to shards"
    )
    pack_parser.add_argument("source", help="the image folder, or the root torchvision reads --dataset from")
    pack_parser.add_argument("out", type=Path, help="a new or empty directory for the shards")
    pack_parser.add_argument("--dataset", choices=SOURCES, default="imagefolder")
    pack_parser.add_argument("--shard-size", type=shard_size, default="1GB", help="per shard (default 1GB)")
    pack_parser.add_argument("--max-images", type=int, default=None, help="per shard, besides the size")
    pack_parser.add_argument("--seed", type=int, default=0, help="of the order images are written in")
    pack_parser.set_defaults(run=run_pack)
    check_parser = commands.add_parser("check", help="verify packed shards; names damaged members")
    check_parser.add_argument("root", help="the pack output: a directory or an http(s) URL")
    check_parser.add_argument(
        "--no-decode", action="store_true", help="skip decoding every image (sizes, checksums, members only)"
    )
    check_parser.set_defaults(run=run_check)
    index_parser = commands.add_parser(
        "index", help="scan WebDataset shards named by a brace pattern once, for jobs to train on the pattern"
    )
    index_parser.add_argument(
        "pattern", help="e.g. /data/ds/train-{0000..0099}.tar or an http(s) URL pattern"
    )
    index_parser.set_defaults(run=run_index)


def run_pack(args: argparse.Namespace) -> int:
    def show(progress: Progress) -> None:
        rate = progress.images / max(progress.seconds, 1e-9)
        print(
            f"\r{progress.split}: {progress.images:,}/{progress.total:,} images "
            f"({100 * progress.images / progress.total:.0f}%), {progress.shards} shards, "
            f"{progress.bytes / 1e6:,.0f} MB, {rate:,.0f} img/s",
            end="\n" if progress.images == progress.total else "",
            file=sys.stderr,
            flush=True,
        )

    try:
        index = pack(
            args.source,
            args.out,
            dataset=args.dataset,
            shard_bytes=args.shard_size,
            max_images=args.max_images,
            seed=args.seed,
            progress=show,
        )
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"packed {len(index.class_names)} classes into {args.out}:")
    for split, shards in index.splits.items():
        images, size = sum(s.count for s in shards), sum(s.bytes for s in shards)
        pattern = f"{split}-{{000000..{len(shards) - 1:06d}}}.tar"
        print(f"  {split}: {images:,} images in {len(shards)} shards, {size / 1e6:,.1f} MB ({pattern})")
    print(f"train with  data: {{dataset: shards, root: {args.out}}}")
    return EXIT_OK


def run_check(args: argparse.Namespace) -> int:
    def show(report: CheckReport, total: int) -> None:
        end = "\n" if report.shards == total else ""
        print(f"\rchecked {report.shards}/{total} shards", end=end, file=sys.stderr, flush=True)

    try:
        report = check(args.root, decode=not args.no_decode, progress=show)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for problem in report.problems:
        print(problem)
    verdict = "ok" if report.ok else f"{len(report.problems)} problems"
    print(f"{report.shards} shards, {report.images:,} images, {report.bytes / 1e6:,.1f} MB: {verdict}")
    return EXIT_OK if report.ok else EXIT_DAMAGED


def run_index(args: argparse.Namespace) -> int:
    try:
        shard_pattern(args.pattern)
        _, cached = pattern_index(args.pattern)
        index = read_index(LocalLocation(cached))
    except (ValueError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    shards = index.splits["train"]
    images = sum(shard.count for shard in shards)
    print(f"{args.pattern}: {images:,} images of {len(index.class_names)} classes in {len(shards)} shards")
    print(f"index cached in {cached}; train with  data: {{dataset: shards, root: '{args.pattern}'}}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None, prog: str = "python -m vit.data.pack") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    add_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
