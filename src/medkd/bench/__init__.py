"""medkd.bench: benchmarks behind ``medkd bench`` (``infer``: teacher vs student CPU inference; ``train``:
distillation throughput) and ``medkd models`` (:mod:`~medkd.bench.zoo`). Shared measuring code is in
:mod:`medkd.measure`.

Kept free of heavy imports so that a benchmark worker process loads only what it measures.
"""

from __future__ import annotations

__all__: list[str] = []
