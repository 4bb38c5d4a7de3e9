"""Lamina: run and fine-tune small language models on this device's GPU.

Every call blocks: run it on a background thread. An ``Engine`` is safe to share between
threads; its calls run one at a time, and ``Engine.cancel()`` may be called from any thread
while ``generate``, ``chat`` or ``fine_tune`` runs on another.

The names come from ``lamina.lamina``, which ``bindings/generate.sh`` writes from the Rust
library (with ``liblamina_ffi`` beside it); do not edit that file.
"""

from .lamina import *  # noqa: F401,F403
