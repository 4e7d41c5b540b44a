#!/usr/bin/env python3
"""Copies result tables from the committed grid reports into README.md, so that no number there is retyped.

README.md marks each generated block:

    <!-- grid-table: results/shootout-minilm-cb/report.md | minilm-l6 on cb -->
    ...replaced...
    <!-- /grid-table -->

The part after `|` names a `## ` heading of the report; the block becomes that section's table and the
sentences under it (up to its first plot). `python3 scripts/grid_tables.py` rewrites README.md in place;
`--check` only says whether it is current (exit 1 if not).
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARK = re.compile(
    r"(<!-- grid-table: (?P<report>[^|]+?) \| (?P<heading>.+?) -->\n)(?P<body>.*?)(<!-- /grid-table -->)",
    re.S,
)


def section(report: Path, heading: str) -> str:
    """The table and sentences of the report's `## heading` section."""
    lines = report.read_text().splitlines()
    try:
        start = lines.index(f"## {heading}") + 1
    except ValueError:
        sys.exit(f"{report}: no section '## {heading}'")
    kept = []
    for line in lines[start:]:
        if line.startswith("## ") or line.startswith("!["):
            break
        kept.append(line)
    text = "\n".join(kept).strip()
    return text + "\n"


def render(readme: str) -> str:
    def replace(m: re.Match) -> str:
        body = section(ROOT / m["report"].strip(), m["heading"].strip())
        return m.group(1) + body + m.group(5)

    return MARK.sub(replace, readme)


def main() -> None:
    path = ROOT / "README.md"
    old = path.read_text()
    new = render(old)
    if "--check" in sys.argv:
        if new != old:
            sys.exit("README.md's grid tables differ from the reports: run python3 scripts/grid_tables.py")
        print("README.md's grid tables match the reports")
        return
    tmp = path.with_suffix(".md.tmp-grid")
    tmp.write_text(new)
    tmp.replace(path)
    print(f"{len(MARK.findall(old))} grid tables written into README.md")


if __name__ == "__main__":
    main()
