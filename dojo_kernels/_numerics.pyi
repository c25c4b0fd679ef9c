from typing import Optional, Tuple

import numpy as np
import numpy.typing as npt

_Bytes = npt.NDArray[np.uint8]
_FmtTuple = Tuple[int, int, int, int, int, int, int]
_FlagTuple = Tuple[int, int, int, int]

def quantize(x: _Bytes, xkind: int, out: _Bytes, n: int, fmt: _FmtTuple, mode: int, seed: int,
             want_flags: bool, isa: int, nthreads: int) -> Optional[_FlagTuple]: ...
def dequantize(codes: _Bytes, out: _Bytes, okind: int, n: int, fmt: _FmtTuple, isa: int,
               nthreads: int) -> None: ...
def fake_quantize(x: _Bytes, xkind: int, out: _Bytes, n: int, fmt: _FmtTuple, mode: int,
                  seed: int, isa: int, nthreads: int) -> None: ...
def arith(op: int, a: _Bytes, b: _Bytes, c: _Bytes, out: _Bytes, n: int, fmt: _FmtTuple,
          mode: int, seed: int, isa: int, nthreads: int) -> _FlagTuple: ...
def maxabs(x: _Bytes, xkind: int, n: int, nthreads: int) -> float: ...
def _arith_under_mxcsr(csr: int, op: int, a: _Bytes, b: _Bytes, c: _Bytes, out: _Bytes, n: int,
                       fmt: _FmtTuple, mode: int, seed: int,
                       isa: int) -> Optional[Tuple[_FlagTuple, int]]: ...
