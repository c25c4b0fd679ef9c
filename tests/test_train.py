"""dojo-kernels train: a short real training run (the cfloat8 recipe's loss falls; one seed
gives identical weights twice), the command line, and the message without the extra."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest


def test_without_torch_the_command_names_the_extra(tmp_path):
    code = ("import sys; sys.modules['torch'] = None\n"
            "from dojo_kernels import cli\n"
            "sys.exit(cli.main(['train']))\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert "pip install 'dojo_kernels[train]'" in p.stderr


def _torch():
    pytest.importorskip("torch", reason="torch not installed: pip install '.[train]' "
                                        "(CI installs it in its own step)")
    pytest.importorskip("sklearn", reason="scikit-learn not installed: pip install '.[train]'")
    from dojo_kernels import train
    return train


def _bits(weights):
    return {k: v.contiguous().view(-1).numpy().view(np.uint8).copy() for k, v in weights.items()}


def test_short_run_loss_falls_and_is_reproducible():
    train = _torch()
    # batch 128, lr 0.05: 11 steps an epoch, a few seconds
    cfg = train.TrainConfig(epochs=2, recipes=("cfloat8", "cfloat8_sr"), seed=3, batch=128,
                            lr=0.05)
    a = train.run_training(cfg)
    for r in a.runs:
        assert r.loss[0] < r.initial_loss and r.loss[1] < r.loss[0], (r.name, r.loss)
        assert all(0.0 <= v <= 1.0 for v in r.test_accuracy)
    # results as data (issue 12 item 5): a real result round-trips, weights bit exact
    import pickle
    assert train.TrainResult.from_dict(json.loads(json.dumps(a.to_dict()))) == a
    assert pickle.loads(pickle.dumps(a)) == a
    b = train.run_training(cfg)
    for ra, rb in zip(a.runs, b.runs):
        wa, wb = _bits(ra.weights), _bits(rb.weights)
        assert wa.keys() == wb.keys()
        assert all(np.array_equal(wa[k], wb[k]) for k in wa), ra.name
        assert ra.loss == rb.loss
    c = train.run_training(train.TrainConfig(epochs=1, recipes=("cfloat8_sr",), seed=4,
                                             batch=128, lr=0.05))
    wa, wc = _bits(a.run("cfloat8_sr").weights), _bits(c.run("cfloat8_sr").weights)
    assert not all(np.array_equal(wa[k], wc[k]) for k in wa)
    # the SR weights hold BF16 values
    import torch
    for v in a.run("cfloat8_sr").weights.values():
        assert torch.equal(v, v.bfloat16().float())


def test_step_cost_structure():
    train = _torch()
    import dojo_kernels as dk
    from dojo_kernels import mesh
    cfg = train.TrainConfig(epochs=1, hidden=(32, 16))
    layers = [(64, 32), (32, 16), (16, 10)]
    params = sum(i * o + o for i, o in layers)
    c8 = train.step_cost(cfg, layers, "cfloat8", params)
    b16 = train.step_cost(cfg, layers, "bf16", params)
    assert train.step_cost(cfg, layers, "fp32", params) is None
    assert c8.gemms == 3 * len(layers) - 1       # no dX for the input layer
    # forward, dW and (past the first layer) dX: 2 B in out FLOP each
    assert c8.flops == sum(2 * cfg.batch * i * o * (2 if j == 0 else 3)
                           for j, (i, o) in enumerate(layers))
    assert c8.allreduce_bytes == 2 * params and c8.tile_chips == 25
    ar = dk.estimate_allreduce(2 * params, mesh.training_tile())
    assert c8.allreduce_s == pytest.approx(ar.time) and c8.tile_s == pytest.approx(
        c8.chip_s + ar.time)
    assert 0 < c8.chip_s <= b16.chip_s          # 1-byte operands never cost more than 2-byte


def test_cli_train_json_and_errors(tmp_path, capsys):
    _torch()
    from dojo_kernels import cli
    out = tmp_path / "t.json"
    assert cli.main(["train", "--epochs", "1", "--recipes", "fp32,cfloat8", "--json", str(out),
                     "--batch", "256", "-q"]) == 0
    text = capsys.readouterr().out
    assert "D1 time of one training step" in text and "cfloat8" in text
    d = json.loads(out.read_text())
    assert set(d["runs"]) == {"fp32", "cfloat8"}
    assert len(d["runs"]["cfloat8"]["loss_per_epoch"]) == 1
    assert d["runs"]["cfloat8"]["d1_step"]["tile_s"] > d["runs"]["cfloat8"]["d1_step"]["chip_s"]
    for args, word in ((["--recipes", "fp8"], "recipes"), (["--epochs", "0"], "epochs"),
                       (["--lr", "-1"], "lr")):
        assert cli.main(["train", *args]) == 2
        assert word in capsys.readouterr().err


def test_rnn_sequence_model_trains():
    train = _torch()
    cfg = train.TrainConfig(epochs=2, recipes=("cfloat8",), model="rnn", hidden=(32,),
                            batch=256, lr=0.05)
    r = train.run_training(cfg)
    run = r.run("cfloat8")
    assert run.loss[1] < run.loss[0] < run.initial_loss, run.loss
    assert r.layers == [(8, 32), (32, 32), (32, 10)]
    # per row: input and recurrent forward and dW (16 + 16), recurrent dX past row 1 (7);
    # the classifier's forward, dW, dX (3)
    assert run.cost.gemms == 42
    model = train.RowRNN(32, __import__("torch").Generator().manual_seed(0))
    from dojo_kernels.torch import D1Linear, convert
    convert(model)
    assert all(isinstance(m, D1Linear) for m in (model.inp, model.rec, model.out))
