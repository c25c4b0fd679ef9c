# Type stub of the compiled planner loop (dojo_kernels/_plan.pyx). Private: use plan_gemm.
from typing import Any, Optional

import numpy as np

def search(m: int, n: int, k: int, g: dict[str, np.ndarray], order: np.ndarray,
           lb: np.ndarray, use_m: np.ndarray, use_n: np.ndarray, use_k: np.ndarray,
           min_m: np.ndarray, min_n: np.ndarray, fits: np.ndarray, tile_mn: np.ndarray,
           tile_k: np.ndarray, node: tuple[float, ...], ab: float, bb: float, ob: float,
           debug: Optional[list[Any]]) -> Optional[tuple[int, int, int, int, float]]: ...
def bounds(m: int, n: int, k: int, g: dict[str, np.ndarray], bm: float, bn: float, bk: float,
           clock: float, in_a0: float, in_b0: float, out0: float, pa0: float, pb0: float,
           sq0: float) -> np.ndarray: ...
