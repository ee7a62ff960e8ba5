"""lipsync-stream: a self-hostable real-time lip-sync streaming server (LipsyncStream protocol)."""

import os as _os

# The server renders sessions in parallel threads (and processes); a BLAS or OpenMP pool inside
# each small matrix product only spins against them. One thread each, unless the user says.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    _os.environ.setdefault(_var, "1")

__version__ = "0.1.0"
