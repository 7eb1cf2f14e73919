"""medkd.bench: benchmarks behind ``medkd bench`` (``infer``: teacher vs student CPU inference).

Kept free of heavy imports so that a benchmark worker process loads only what it measures.
"""

from __future__ import annotations

__all__: list[str] = []
