"""Generate the shim's cffi module (out-of-line ABI mode) from the cffi section of baldr_memcap.h.

`make shim` runs this beside the compile: Python then loads ready-made type tables instead of
parsing C declarations at start-up (pycparser costs ~70 ms, more than all of `doctor`).
Usage: python csrc/ffi_build.py HEADER OUTPUT.py
"""

import re
import sys
from pathlib import Path

import cffi


def main(header: str, output: str) -> None:
    text = Path(header).read_text()
    match = re.search(r"/\* cffi-begin \*/(.*)/\* cffi-end \*/", text, re.S)
    if not match:
        sys.exit(f"{header}: no cffi-begin/cffi-end section")
    ffi = cffi.FFI()
    ffi.cdef(match.group(1))
    ffi.set_source("_baldr_memcap_cffi", None)  # ABI mode: no C compiler needed for this part
    tmp = Path(output).with_suffix(".py.tmp")
    ffi.emit_python_code(str(tmp))
    tmp.replace(output)


if __name__ == "__main__":
    main(*sys.argv[1:3])
