"""Pack/unpack time and peak memory of the compressed-model format against torch.save/torch.load.

One row per (weights, bits) for one per-tensor uniform ``QuantizedTensor``:

* ``pack_s`` / ``unpack_s``: best-of-3 seconds for :meth:`CompressedModel.pack` and for
  :meth:`CompressedModel.unpack` + dequantize to the float32 tensor; ``torch.save_s`` /
  ``torch.load_s`` the same for the float32 tensor itself (the baseline, measured in the same run),
  and their ratios;
* ``pack_mem`` / ``unpack_mem``: the peak memory each allocates above what it was given (traced
  with :mod:`tracemalloc`, which sees numpy's buffers), as a multiple of the tensor's float32 size
  (the target is <= 1.5; unpack's peak includes the float32 tensor it returns);
* the file sizes.

    python benchmarks/format_pack.py                   # 1e5 .. 1e8 weights at 2, 4 and 8 bits
    python benchmarks/format_pack.py --weights 1e6 1e7 --bits 4
"""

from __future__ import annotations

import argparse
import gc
import io
import time
import tracemalloc

import pandas as pd
import torch

from quantbench.format import CompressedModel
from quantbench.methods.uniform import quantize_uniform


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def peak_bytes(fn) -> int:
    """Peak bytes allocated while ``fn`` runs, above what was allocated before it."""
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def unpack_dense(data: bytes) -> torch.Tensor:
    return CompressedModel.unpack(data).records["w"].dequantize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=float, nargs="+", default=[1e5, 1e6, 1e7, 1e8])
    parser.add_argument("--bits", type=int, nargs="+", default=[2, 4, 8])
    args = parser.parse_args()
    rows = []
    for numel in (int(n) for n in args.weights):
        w = torch.randn(numel // 1000, 1000)
        fp32 = 4 * w.numel()
        buf = io.BytesIO()
        torch.save({"w": w}, buf)
        raw = buf.getvalue()
        del buf
        repeat = 1 if numel >= 10**8 else 3
        t_save = best_of(lambda w=w: torch.save({"w": w}, io.BytesIO()), repeat)
        t_load = best_of(lambda raw=raw: torch.load(io.BytesIO(raw), weights_only=True), repeat)
        for bits in args.bits:
            cm = CompressedModel("bench", {}, {"w": quantize_uniform(w, 2**bits)})
            data = cm.pack()
            t_pack = best_of(cm.pack, repeat)
            t_unpack = best_of(lambda data=data: unpack_dense(data), repeat)
            rows.append({
                "weights": numel, "bits": bits,
                "pack_s": t_pack, "torch.save_s": t_save, "pack/save": t_pack / t_save,
                "unpack_s": t_unpack, "torch.load_s": t_load, "unpack/load": t_unpack / t_load,
                "pack_mem": peak_bytes(cm.pack) / fp32,
                "unpack_mem": peak_bytes(lambda data=data: unpack_dense(data)) / fp32,
                "qbc_MB": len(data) / 1e6, "pt_MB": len(raw) / 1e6, "size_ratio": len(raw) / len(data),
            })
            del cm, data
            print(pd.DataFrame(rows[-1:]).to_string(index=False, header=len(rows) == 1), flush=True)
    with pd.option_context("display.width", 200, "display.float_format", "{:.4g}".format):
        print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
