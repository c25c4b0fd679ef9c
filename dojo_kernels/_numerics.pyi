from typing import Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

_Bytes = npt.NDArray[np.uint8]
_Codes = Union[npt.NDArray[np.uint8], npt.NDArray[np.uint16]]  # any C-contiguous code array
_Array = npt.NDArray[np.generic]
_FmtTuple = Tuple[int, int, int, int, int, int, int]
_FlagTuple = Tuple[int, int, int, int]

LINE_ALIGN_MIN: int

def empty_lined(shape: Tuple[int, ...], dtype: "npt.DTypeLike") -> _Array: ...

# Every array argument: any object exporting a C-contiguous buffer of exactly n elements
# (a NumPy array of the right dtype, or its bytes). None: out overlapped an input other than
# element for element, and nothing was computed.
def quantize(x: _Array, xkind: int, out: _Array, n: int, fmt: _FmtTuple, mode: int, seed: int,
             want_flags: bool, isa: int, nthreads: int) -> Optional[_FlagTuple]: ...
def dequantize(codes: _Array, out: _Array, okind: int, n: int, fmt: _FmtTuple, isa: int,
               nthreads: int) -> Optional[bool]: ...
def fake_quantize(x: _Array, xkind: int, out: _Array, n: int, fmt: _FmtTuple, mode: int,
                  seed: int, isa: int, nthreads: int) -> Optional[bool]: ...
def convert_plain(entry: int, x: object, out: Optional[_Array], fmt: _FmtTuple,
                  dtype: Optional[np.dtype[np.generic]], okind: int, mode: int, seed: int,
                  want_flags: bool, isa: int,
                  nthreads: int) -> Optional[Tuple[_Array, Union[_FlagTuple, bool]]]: ...
def arith(op: int, a: _Codes, b: _Codes, c: _Codes, out: _Codes, n: int, fmt: _FmtTuple,
          mode: int, seed: int, want_flags: bool, isa: int,
          nthreads: int) -> Optional[_FlagTuple]: ...
def arith_plain(op: int, operands: Tuple[object, ...], out: Optional[_Codes], fmt: _FmtTuple,
                dtype: np.dtype[np.generic], mode: int, seed: int, want_flags: bool, isa: int,
                nthreads: int, max_n: int) -> Optional[Tuple[_Codes, _FlagTuple]]: ...
def lut2(table: _Array, a: _Array, b: _Array, out: _Array, n: int,
         nthreads: int) -> Optional[bool]: ...
def maxabs(x: _Array, xkind: int, n: int, nthreads: int) -> float: ...
def _arith_under_mxcsr(csr: int, op: int, a: _Bytes, b: _Bytes, c: _Bytes, out: _Bytes, n: int,
                       fmt: _FmtTuple, mode: int, seed: int, isa: int,
                       want_flags: bool = ...) -> Optional[Tuple[_FlagTuple, int]]: ...
