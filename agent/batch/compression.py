"""The zstd compressor every batch encoder uses (telemetry, incidents, diagnostics, camera events).

zstd's high levels size their match-finder tables for inputs of many megabytes: level 19's context grows to
~17 MB for a 1 MB body, and keeps that size for the life of the compressor, a quarter of the agent's memory
budget (issue 16: <= 60 MB).  Our bodies are 10-300 KB of compact columns, and tables sized for them find
the same matches: capped as below, the shared logs' batches come out within 0.05 % of the uncapped level
19 (docs/performance.md "Soak"), and the context stays under ~4 MB whatever the body.  The window cap also
bounds what a decoder must hold for one of our frames (1 MiB; every zstd decoder accepts 8 MiB).
"""

from __future__ import annotations

import zstandard

from agent.batch.format import DEFAULT_LEVEL

MAX_WINDOW_LOG = 20  # 1 MiB: larger than the bodies the agent makes (a batch closes at 100k samples)
MAX_HASH_LOG = 17
MAX_CHAIN_LOG = 18


def bounded_parameters(level: int) -> zstandard.ZstdCompressionParameters:
    """``level``'s parameters with the tables' and window's sizes capped (never raised: level 1 stays level 1)."""
    params = zstandard.ZstdCompressionParameters.from_level(level)
    return zstandard.ZstdCompressionParameters(
        window_log=min(params.window_log, MAX_WINDOW_LOG), hash_log=min(params.hash_log, MAX_HASH_LOG),
        chain_log=min(params.chain_log, MAX_CHAIN_LOG), search_log=params.search_log,
        min_match=params.min_match, target_length=params.target_length, strategy=params.strategy,
        write_content_size=True, write_checksum=False)


def batch_compressor(level: int = DEFAULT_LEVEL, dictionary: bytes | None = None) -> zstandard.ZstdCompressor:
    """A compressor for batch bodies at ``level`` (with the zstd ``dictionary`` when given), memory bounded."""
    zdict = zstandard.ZstdCompressionDict(dictionary) if dictionary else None
    return zstandard.ZstdCompressor(compression_params=bounded_parameters(level), dict_data=zdict)
