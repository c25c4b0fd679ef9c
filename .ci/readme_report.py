"""The README's sample `dojo-kernels report` output: check it or regenerate it.

    python .ci/readme_report.py            # exit 1 if the README's D1 figures differ from a live run
    python .ci/readme_report.py --write    # replace the README block with a live run's last lines

The block is the fenced code block of README.md that starts with "The step (GEMMs". Its D1
figures (the tile and system times, fractions of peak, achieved FLOP/s, the algorithms) are
deterministic; the CPU figures (emulation times, CPU/D1 ratio, whole-report time) vary with
the machine and are left out of the comparison (d1_lines). tests/test_readme_report.py runs
the check in CI.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from typing import List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
FIRST = "The step (GEMMs"
#: columns of the step table that are D1 figures (format .. +RxC tiles); the rest are CPU's
D1_COLUMNS = 7


def live_tail(extra: Optional[List[str]] = None) -> List[str]:
    """The last lines of `dojo-kernels report -q`, from the line starting with FIRST."""
    cmd = [sys.executable, "-m", "dojo_kernels", "report", "-q", *(extra or [])]
    # from a neutral directory: at the repository root the source tree would shadow the
    # installed package
    out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                         cwd=tempfile.gettempdir()).stdout
    lines = out.rstrip("\n").split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith(FIRST))
    return lines[start:]


def readme_block(text: str) -> Tuple[int, int]:
    """(first, end) line indices of the block's content in README text (end exclusive)."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if line.startswith(FIRST) and i > 0 and lines[i - 1].startswith("```"):
            end = next(j for j in range(i, len(lines)) if lines[j].startswith("```"))
            return i, end
    raise ValueError(f"README.md has no fenced block starting with {FIRST!r}")


def d1_lines(lines: List[str]) -> List[str]:
    """The deterministic part of the block: table rows cut to their D1 columns, the
    algorithms line cut before the CPU times, every other line as it is."""
    out = []
    for line in lines:
        s = line.strip()
        if s.startswith("tile all-reduce:"):
            out.append(s.split("; FP32 reference")[0])
        elif re.match(r"^[-\s]+$", s):
            continue  # rule under the header: its width follows the CPU columns
        elif "  " in s and not s.startswith("With "):
            cells = re.split(r"\s{2,}", s)
            out.append(" | ".join(cells[:D1_COLUMNS]))
        else:
            out.append(s)
    return out


def main(argv: List[str]) -> int:
    with open(README) as f:
        text = f.read()
    first, end = readme_block(text)
    lines = text.split("\n")
    live = live_tail()
    if "--write" in argv:
        lines[first:end] = live
        with open(README, "w") as f:
            f.write("\n".join(lines))
        print(f"README.md: block replaced ({len(live)} lines)")
        return 0
    want, got = d1_lines(lines[first:end]), d1_lines(live)
    if want != got:
        print("README.md's D1 figures differ from `dojo-kernels report`:")
        for a, b in zip(want + [""] * len(got), got + [""] * len(want)):
            if a != b:
                print(f"  README: {a}\n  live  : {b}")
        print("regenerate with: python .ci/readme_report.py --write")
        return 1
    print("README.md's D1 figures match `dojo-kernels report`")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
