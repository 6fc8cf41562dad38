"""LC quantization (Carreira-Perpiñán & Idelbayev) with adaptive and fixed codebooks; DC and iDC."""

from quantbench.methods.lc import methods  # noqa: F401  (registers lc_*, dc, idc)
