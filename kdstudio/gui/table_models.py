"""Lazy table models over workspace queries: rows are fetched a page at a time as you scroll.

`LazyTableModel` never loads a whole table: Qt's views call `canFetchMore`/`fetchMore`
when the user scrolls near the end of what is loaded, and the model asks its `fetch`
function for the next page. Opening a million-row dataset costs one page and one count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt
from PySide6.QtGui import QBrush, QColor

Index = QModelIndex | QPersistentModelIndex
Fetch = Callable[[int, int], Sequence[Any]]  # (offset, limit) -> rows


@dataclass(frozen=True)
class Column:
    """A column: its header, how to get the cell from a row, and how to show it."""

    title: str
    key: str | int | Callable[[Any], Any]
    width: int = 0
    align_right: bool = False
    tooltip: bool = False  # show the full value as a tooltip (long text)
    max_chars: int = 200  # cells show one line, at most this many characters
    colour: Callable[[Any], str | None] | None = None  # foreground colour of a cell

    def value(self, row: Any) -> Any:
        if callable(self.key):
            return self.key(row)
        try:
            return row[self.key]
        except (KeyError, IndexError):
            return None


def _display(value: Any, max_chars: int) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    text = str(value)
    if "\n" in text or len(text) > max_chars:
        text = " ".join(text.split())
        if len(text) > max_chars:
            text = text[: max_chars - 1] + "…"
    return text


class LazyTableModel(QAbstractTableModel):
    """Rows from `fetch(offset, limit)`, loaded a page at a time; `count()` gives the total.

    `count` may be None when counting is expensive (a search over a huge table); the model
    then fetches until a short page says it has reached the end.
    """

    def __init__(
        self,
        columns: Sequence[Column],
        fetch: Fetch | None = None,
        count: Callable[[], int] | None = None,
        *,
        page_size: int = 256,
        parent=None,
    ) -> None:
        super().__init__(parent)
        self.columns = list(columns)
        self.page_size = page_size
        self._fetch: Fetch | None = None
        self._count: Callable[[], int] | None = None
        self.rows: list[Any] = []
        self.total: int | None = 0
        self._exhausted = True
        if fetch is not None:
            self.set_query(fetch, count)

    # -- the query -----------------------------------------------------------------------
    def set_query(self, fetch: Fetch | None, count: Callable[[], int] | None = None) -> None:
        """Point the model at another query (a new search or filter) and load its first page."""
        self.beginResetModel()
        self._fetch, self._count = fetch, count
        self.rows = []
        self.total = count() if (count is not None and fetch is not None) else None
        self._exhausted = fetch is None or self.total == 0
        self.endResetModel()
        if not self._exhausted:
            self.fetchMore(QModelIndex())

    def reload(self) -> None:
        """Re-run the query, keeping as many rows loaded as before (new rows show up)."""
        loaded = max(len(self.rows), self.page_size)
        fetch, count = self._fetch, self._count
        if fetch is None:
            return
        self.beginResetModel()
        self.total = count() if count is not None else None
        self.rows = list(fetch(0, loaded))
        self._exhausted = len(self.rows) < loaded or (
            self.total is not None and len(self.rows) >= self.total
        )
        self.endResetModel()

    def clear(self) -> None:
        self.set_query(None)

    # -- lazy fetching -------------------------------------------------------------------
    def canFetchMore(self, parent: Index = QModelIndex()) -> bool:  # noqa: B008
        return not parent.isValid() and not self._exhausted

    def fetchMore(self, parent: Index = QModelIndex()) -> None:  # noqa: B008
        if parent.isValid() or self._exhausted or self._fetch is None:
            return
        page = list(self._fetch(len(self.rows), self.page_size))
        if page:
            first = len(self.rows)
            self.beginInsertRows(QModelIndex(), first, first + len(page) - 1)
            self.rows.extend(page)
            self.endInsertRows()
        if len(page) < self.page_size or (self.total is not None and len(self.rows) >= self.total):
            self._exhausted = True

    # -- Qt model API --------------------------------------------------------------------
    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.columns)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ):
        if role != Qt.ItemDataRole.DisplayRole:
            return None
        if orientation == Qt.Orientation.Horizontal:
            return self.columns[section].title
        return str(section + 1)

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole):
        if not index.isValid() or index.row() >= len(self.rows):
            return None
        column = self.columns[index.column()]
        row = self.rows[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return _display(column.value(row), column.max_chars)
        if role == Qt.ItemDataRole.ToolTipRole and column.tooltip:
            value = column.value(row)
            text = "" if value is None else str(value)
            return text[:2000] + ("…" if len(text) > 2000 else "")
        if role == Qt.ItemDataRole.TextAlignmentRole and column.align_right:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.ForegroundRole and column.colour is not None:
            colour = column.colour(row)
            return QBrush(QColor(colour)) if colour else None
        if role == Qt.ItemDataRole.UserRole:
            return row
        return None

    def row(self, i: int) -> Any:
        return self.rows[i]

    def replace_row(self, i: int, row: Any) -> None:
        """Swap in a re-read row (after an edit) and repaint it."""
        self.rows[i] = row
        self.dataChanged.emit(self.index(i, 0), self.index(i, len(self.columns) - 1))

    @property
    def loaded(self) -> int:
        return len(self.rows)


class ListTableModel(LazyTableModel):
    """A small in-memory table (teachers, runs) with the same columns API."""

    def __init__(self, columns: Sequence[Column], rows: Sequence[Any] = (), parent=None) -> None:
        super().__init__(columns, parent=parent)
        self.set_rows(rows)

    def set_rows(self, rows: Sequence[Any]) -> None:
        data = list(rows)
        self.set_query(lambda offset, limit: data[offset : offset + limit], lambda: len(data))
