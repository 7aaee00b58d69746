"""Build the 10th ABAW release's face selection table (``txtid,strategy``) from its metadata.

    python -m kitlib.tools.face_selection ../shared/abaw10-metadata params/abaw10_face_selection.csv

The committed ``params/abaw10_face_selection.csv`` is this command's output; ``tests/test_faces_selection.py``
checks that it still matches the metadata where that folder exists.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from kitlib.faces.selection import release_selection


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metadata_dir", type=Path, help="the release metadata folder (face_extract_strategy.csv ...)")
    parser.add_argument("out", type=Path, help="CSV to write (txtid,strategy)")
    args = parser.parse_args(argv)
    table = release_selection(args.metadata_dir)
    table.to_csv(args.out, index=False)
    print(f"{len(table)} tracks -> {args.out}: {table['strategy'].value_counts().to_dict()}")


if __name__ == "__main__":
    main()
