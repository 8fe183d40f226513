"""``python -m infra.local [--check]``: regenerate infra/local's compose file and TF Serving configs from
infra/bootstrap.py, or (``--check``) exit 1 naming the files that are out of date."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from infra.local.compose import HERE, stale, write


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.local", description=__doc__)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file is out of date")
    args = parser.parse_args(argv)
    if args.check:
        out_of_date = stale()
        if out_of_date:
            print(f"out of date in {HERE}: {', '.join(out_of_date)}; run: python -m infra.local", file=sys.stderr)
            return 1
        return 0
    for name in write():
        print(f"wrote {HERE / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
