"""The dojo-kernels command: subcommands, exit statuses, argument errors, the built-in bench."""
from __future__ import annotations

import subprocess
import sys

import pytest

from dojo_kernels import _bench, cli


def _py(args, tmp_path):
    return subprocess.run([sys.executable, "-m", "dojo_kernels", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


def test_info(tmp_path):
    p = _py(["info"], tmp_path)
    assert p.returncode == 0, p.stderr
    assert "isa tier" in p.stdout


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "report" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["report", "--formats", "fp16"], "formats"),
    (["report", "--algorithms", "ring,nope"], "algorithms"),
    (["report", "--d-model", "0"], "d_model"),
    (["report", "--bias", "99"], "bias"),
])
def test_report_bad_values_exit_2(args, message, capsys):
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("args", [["report", "--system", "2by3"], ["report", "--clock", "-1"],
                                  ["nonsense"]])
def test_argparse_errors(args, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(args)
    assert e.value.code == 2


def test_report_options_reach_the_config(tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = cli.main(["report", "--d-model", "16", "--seq", "32", "--formats", "cfloat8",
                   "--bias", "9", "--algorithms", "chain", "--system", "1x2", "--clock", "1",
                   "--link-bandwidth", "500", "--grad-dtype", "fp32", "--check-elements", "0",
                   "-q", "--json", str(out)])
    assert rc == 0
    import json

    d = json.loads(out.read_text())
    c = d["config"]
    assert c["clock_hz"] == 1e9 and c["chip_link_bandwidth_bytes_per_s"] == 500e9
    assert c["system_shape_tiles"] == [1, 2] and c["bias"] == 9 and c["formats"] == ["cfloat8"]
    assert d["allreduce"][0]["per_node_bytes"] == c["params"] * 4
    assert all(a["algorithm"] == "chain" for a in d["allreduce"])
    assert d["gemms"][0]["formats"]["cfloat8"]["a_format"] == "cfloat8_143(bias=9)"
    assert c["tile_peak_flop_per_s"] == pytest.approx(9.06e15 / 2, rel=0.01)


def test_bench_rows_and_table():
    rows = [_bench.BenchRow("g", "a", 2.0, "Gelem/s", "peer", 1.0),
            _bench.BenchRow("g", "b", 2.0, "Gelem/s")]
    assert rows[0].ratio == 2.0 and rows[1].ratio is None
    text = _bench.render_bench(rows)
    assert "2.00x" in text and "peer" in text


def test_bench_quick_runs(tmp_path):
    p = _py(["bench", "--quick", "--threads", "1", "-q"], tmp_path)
    assert p.returncode == 0, p.stderr
    assert "float32 -> BF16" in p.stdout and "NumPy float32 matmul" in p.stdout
    assert "1 kernel thread(s)" in p.stdout


def test_bench_suite_needs_a_checkout(tmp_path):
    p = _py(["bench", "--suite"], tmp_path)
    assert p.returncode == 2 and "bench/" in p.stderr


def test_measure_peak_validates():
    with pytest.raises(ValueError, match="probe"):
        _bench.measure_peak("nope")


def test_report_json_to_stdout_is_pure_json(capsys):
    import json

    rc = cli.main(["report", "--d-model", "16", "--seq", "16", "--formats", "bf16",
                   "--algorithms", "ring", "--check-elements", "0", "-q", "--json", "-"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert d["config"]["seq"] == 16 and d["gemms"][0]["m"] == 16
