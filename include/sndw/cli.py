"""Command line: `python -m sndw.cli` (or `sndw`). Works without Airflow."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from sndw.config import FileSource, HttpSource, SqlSource, iter_sources
from sndw.errors import ConfigError


def cmd_validate(args: argparse.Namespace) -> int:
    failures = 0
    checked = 0
    for target in args.paths:
        path = Path(target)
        folder_items = iter_sources(path) if path.is_dir() else _single(path)
        for file, parsed in folder_items:
            checked += 1
            if isinstance(parsed, ConfigError):
                failures += 1
                print(f"INVALID {parsed}", file=sys.stderr)
            else:
                tables = ", ".join(t.name for t in parsed.tables)
                print(f"ok      {file}: {parsed.kind} source {parsed.name!r} ({tables})")
    if not checked:
        print("no source configs found", file=sys.stderr)
        return 1
    print(f"{checked - failures} valid, {failures} invalid")
    return 1 if failures else 0


def _single(path: Path) -> Iterator[tuple[Path, HttpSource | SqlSource | FileSource | ConfigError]]:
    from sndw.config import load_source_file

    try:
        yield path, load_source_file(path)
    except ConfigError as exc:
        yield path, exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sndw", description="Single-node data warehouse tools")
    sub = parser.add_subparsers(dest="command", required=True)
    validate = sub.add_parser("validate", help="check source configs; exit 1 if any is invalid")
    validate.add_argument("paths", nargs="*", default=["dags/sources"], help="config files or folders")
    validate.set_defaults(func=cmd_validate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
