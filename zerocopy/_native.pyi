# Type stub for the cffi-generated module (zerocopy/_build.py builds it).
from typing import Any

ffi: Any
lib: Any
