"""Writes quant_blocks.json: random blocks of every quantized type the runtime reads, with their
values as dequantized by gguf-py (`pip install gguf`, the ggml project's own Python reader), so
tests check src/quant.rs's dequantizer against the formats' reference implementation.

    python3 tests/data/make_quant_blocks.py
"""
import json
import pathlib

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

# (type, byte ranges of f16 scale fields inside one block)
TYPES = [
    (T.Q4_0, [(0, 2)]),
    (T.Q4_1, [(0, 4)]),
    (T.Q5_0, [(0, 2)]),
    (T.Q5_1, [(0, 4)]),
    (T.Q8_0, [(0, 2)]),
    (T.Q2_K, [(80, 84)]),
    (T.Q3_K, [(108, 110)]),
    (T.Q4_K, [(0, 4)]),
    (T.Q5_K, [(0, 4)]),
    (T.Q6_K, [(208, 210)]),
]
BLOCKS = 3

rng = np.random.default_rng(20261201)
out = []
for ty, halves in TYPES:
    block_elems, block_bytes = quants.GGML_QUANT_SIZES[ty]
    raw = rng.integers(0, 256, size=(BLOCKS, block_bytes), dtype=np.uint8)
    for a, b in halves:
        scales = rng.uniform(-0.05, 0.05, size=(BLOCKS, (b - a) // 2)).astype(np.float16)
        raw[:, a:b] = scales.view(np.uint8).reshape(BLOCKS, b - a)
    values = quants.dequantize(raw.reshape(-1), ty).reshape(-1).astype(np.float32)
    assert values.size == BLOCKS * block_elems
    out.append({"type": ty.name, "bytes": raw.tobytes().hex(), "values": values.tolist()})

path = pathlib.Path(__file__).with_name("quant_blocks.json")
path.write_text(json.dumps(out) + "\n")
print(f"wrote {path}")
