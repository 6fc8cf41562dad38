"""Pack/unpack throughput of the compressed-model format against torch.save/torch.load.

Prints one row per (weights, bits): seconds for pack+write and read+unpack+dequantize of one
QuantizedTensor, the same for torch.save/torch.load of the fp32 tensor (the baseline, measured
in the same run), their ratios, and the file sizes. Usage: python benchmarks/format_pack.py
"""

from __future__ import annotations

import io
import time

import pandas as pd
import torch

from quantbench.format import CompressedModel
from quantbench.uniform import quantize_uniform


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    rows = []
    for numel in (100_000, 1_000_000, 4_000_000):
        w = torch.randn(numel // 1000, 1000)
        for bits in (2, 4, 8):
            cm = CompressedModel("bench", {}, {"w": quantize_uniform(w, 2**bits)})
            data = cm.pack()
            buf = io.BytesIO()
            torch.save({"w": w}, buf)
            raw = buf.getvalue()
            t_pack = best_of(cm.pack)
            t_unpack = best_of(lambda data=data: CompressedModel.unpack(data).records["w"].dequantize())
            t_save = best_of(lambda w=w: torch.save({"w": w}, io.BytesIO()))
            t_load = best_of(lambda raw=raw: torch.load(io.BytesIO(raw), weights_only=True))
            rows.append({"weights": numel, "bits": bits, "pack_s": t_pack, "torch.save_s": t_save,
                         "pack/save": t_pack / t_save, "unpack_s": t_unpack, "torch.load_s": t_load,
                         "unpack/load": t_unpack / t_load, "qbc_MB": len(data) / 1e6, "pt_MB": len(raw) / 1e6,
                         "size_ratio": len(raw) / len(data)})
    with pd.option_context("display.width", 200, "display.float_format", "{:.4g}".format):
        print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
