"""The README's sample `dojo-kernels report` output (issue 11, item 4): its D1 figures (the
deterministic part) equal what `dojo-kernels report` prints now. Regenerate the block with
`python .ci/readme_report.py --write`. Slow (the report runs its GEMMs for real, ~10-30 s)."""
from __future__ import annotations

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, ".ci", "readme_report.py")


def _script():
    spec = importlib.util.spec_from_file_location("readme_report", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_d1_lines_drop_only_cpu_figures():
    rr = _script()
    block = ["The step (GEMMs one after another, then the fastest all-reduce: no overlap)",
             "format     GEMMs  all-reduce  tile step  of peak      achieved  +2x3 tiles  CPU emulation  CPU/D1 time",
             "-------  -------  ----------  ---------  -------  ------------  ----------  -------------  -----------",
             "BF16     32.2 us     13.1 us    45.2 us    37.7%  3.42 PFLOP/s     56.3 us         4.38 s    9.69e+04x",
             "  tile all-reduce: ring; across tiles: 2d (+11.1 us); FP32 reference on this CPU: 2.47 s; whole report 26.5 s"]
    other_cpu = [line.replace("4.38 s", "9.99 s").replace("2.47 s", "0.10 s") for line in block]
    assert rr.d1_lines(block) == rr.d1_lines(other_cpu)
    changed_d1 = [line.replace("45.2 us", "45.3 us") for line in block]
    assert rr.d1_lines(block) != rr.d1_lines(changed_d1)
    assert rr.d1_lines(block)[2] == "BF16 | 32.2 us | 13.1 us | 45.2 us | 37.7% | 3.42 PFLOP/s | 56.3 us"


@pytest.mark.slow
def test_readme_d1_figures_match_a_live_report():
    rr = _script()
    with open(os.path.join(ROOT, "README.md")) as f:
        lines = f.read().split("\n")
    first, end = rr.readme_block("\n".join(lines))
    want = rr.d1_lines(lines[first:end])
    got = rr.d1_lines(rr.live_tail())
    assert want == got, "README.md's report block is stale: python .ci/readme_report.py --write"
