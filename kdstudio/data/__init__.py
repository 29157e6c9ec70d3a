"""Prompt datasets: import (JSONL, JSON, CSV/TSV, Parquet; OpenAI chat, ShareGPT, Alpaca or
plain tables), lazy row access for the window, stats, full-text search, versions, export.

    from kdstudio.data import import_dataset, export_dataset, store
    result = import_dataset(ws, "prompts.jsonl")          # -> ImportResult
    store.page(ws, result.name, offset=0, limit=100)       # -> [DatasetRow]
    export_dataset(ws, result.name, "out.parquet", "parquet")
"""

from __future__ import annotations

from kdstudio.data import store
from kdstudio.data.export import EXPORT_FORMATS, ExportResult, export_dataset
from kdstudio.data.importer import FORMATS, ImportResult, import_dataset
from kdstudio.data.readers import DataError
from kdstudio.data.store import (
    DatasetInfo,
    DatasetRow,
    count,
    delete_dataset,
    derive,
    get_dataset,
    get_row,
    iter_rows,
    list_datasets,
    page,
    search,
    stats,
)

__all__ = [
    "EXPORT_FORMATS",
    "FORMATS",
    "DataError",
    "DatasetInfo",
    "DatasetRow",
    "ExportResult",
    "ImportResult",
    "count",
    "delete_dataset",
    "derive",
    "export_dataset",
    "get_dataset",
    "get_row",
    "import_dataset",
    "iter_rows",
    "list_datasets",
    "page",
    "search",
    "stats",
    "store",
]
