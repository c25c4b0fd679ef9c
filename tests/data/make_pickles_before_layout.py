"""Writes pickles_before_layout.pkl (and pickles_before_layout_torch.pkl): objects pickled by
the package as it was before the numerics and machine capabilities moved into subpackages
(commit d6a04b5: ``dojo_kernels/d1.py``, ``mesh.py``, ``formats.py``, ``torch.py`` at the top),
so that their pickles name ``dojo_kernels.d1.D1Chip``, ``dojo_kernels.mesh.Mesh2D``,
``dojo_kernels.formats.Format``, ``dojo_kernels.torch.Recipe``. tests/test_layout.py loads
them with the current code. How they were made (the compiled modules are unchanged)::

    git archive d6a04b5 dojo_kernels | tar -x -C /tmp/old
    cp dojo_kernels/*.so /tmp/old/dojo_kernels/
    PYTHONPATH=/tmp/old python tests/data/make_pickles_before_layout.py tests/data
"""
import os
import pickle
import sys

import dojo_kernels as dk

out = sys.argv[1]
assert os.path.isfile(os.path.join(os.path.dirname(dk.__file__), "d1.py")), dk.__file__
objs = {
    "D1Node": dk.D1Node(clock_hz=2.5e9),
    "D1Chip": dk.D1Chip(),
    "TrainingTile": dk.TrainingTile(),
    "D2Tile": dk.D2Tile(),
    "DojoSystem": dk.DojoSystem(tiles=6),
    "chip_mesh": dk.mesh.chip_mesh(3, 4),
    "training_tile": dk.mesh.training_tile(),
    "damaged": dk.mesh.chip_mesh(3, 4).with_failures(nodes=[5]),
    "cfloat8_143": dk.cfloat8_143(bias=9),
    "BF16": dk.BF16,
    "plan": dk.plan_gemm(64, 96, 128, a_format=dk.BF16, b_format=dk.BF16,
                         machine=dk.TrainingTile()),
    "allreduce": dk.estimate_allreduce(1e6, dk.mesh.chip_mesh(3, 4), algorithm="ring"),
    "hierarchical": dk.estimate_hierarchical(1e6, dk.DojoSystem(tiles=6)),
}
with open(os.path.join(out, "pickles_before_layout.pkl"), "wb") as fh:
    pickle.dump(objs, fh, protocol=4)
import dojo_kernels.torch as dkt  # noqa: E402

with open(os.path.join(out, "pickles_before_layout_torch.pkl"), "wb") as fh:
    pickle.dump({"recipe": dkt.RECIPES["cfloat8"]}, fh, protocol=4)
print(sorted(objs))
