"""The Train panel's choice of collections: one or several, each with its teacher and its
finished answers, and optionally a weight each (the `[data]` keys `collection`,
`collections` and `weights`)."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QDoubleSpinBox,
    QHeaderView,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from kdstudio.gui.widgets import fmt_count

NAME, ABOUT, WEIGHT = range(3)
ROW_HEIGHT = 24
ROWS_SHOWN = 5  # more scroll


class CollectionPicker(QWidget):
    """Tick the collections to train on; with "Mix by weights", each gets a weight.

    The state (the workspace's collections, the ticked ones, the weights) lives here and
    the table is drawn from it, so a refresh never loses a tick or a weight, and a ticked
    collection that is not in the workspace (a restored form) stays listed, marked."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._infos: dict[str, dict[str, Any]] = {}  # the workspace's, by name
        self._ticked: list[str] = []
        self._weights: dict[str, float] = {}
        self._drawing = False
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(
            ["Collections to train on", "Teacher · answers", "Weight"]
        )
        self.table.verticalHeader().hide()
        self.table.verticalHeader().setDefaultSectionSize(ROW_HEIGHT)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.table.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.table.setWordWrap(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(NAME, QHeaderView.ResizeMode.Stretch)
        for col in (ABOUT, WEIGHT):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        self.table.itemChanged.connect(self.on_item_changed)
        self.mix = QCheckBox("Mix by weights")
        self.mix.setToolTip(
            "Off: every example of every ticked collection once per epoch. On: each epoch "
            "draws from collection i a share weight i / (sum of the weights) of its examples."
        )
        self.mix.toggled.connect(self.on_mix_toggled)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.table)
        layout.addWidget(self.mix)
        self.table.setColumnHidden(WEIGHT, True)

    # -- state -> table ------------------------------------------------------------------
    def names(self) -> list[str]:
        """The listed collections, in the order shown (by name)."""
        return sorted(set(self._infos) | set(self._ticked))

    def selected(self) -> list[str]:
        """The ticked collections, in the order shown."""
        return [n for n in self.names() if n in self._ticked]

    def _draw(self) -> None:
        self._drawing = True
        names = self.names()
        self.table.setRowCount(len(names))
        for r, name in enumerate(names):
            info = self._infos.get(name)
            item = QTableWidgetItem(name)
            item.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsUserCheckable)
            ticked = name in self._ticked
            item.setCheckState(Qt.CheckState.Checked if ticked else Qt.CheckState.Unchecked)
            item.setToolTip(name)
            self.table.setItem(r, NAME, item)
            if info is None:
                about = "not in this workspace"
            else:
                about = (
                    f"{info.get('teacher_name') or 'imported'} · {fmt_count(info.get('done') or 0)}"
                )
            self.table.setItem(r, ABOUT, QTableWidgetItem(about))
            box = QDoubleSpinBox()
            box.setRange(0.01, 1000.0)
            box.setDecimals(2)
            box.setValue(self._weights.get(name, 1.0))
            box.setProperty("collection", name)
            box.valueChanged.connect(self.on_weight_changed)
            self.table.setCellWidget(r, WEIGHT, box)
        shown = max(1, min(len(names), ROWS_SHOWN))
        self.table.setFixedHeight(
            self.table.horizontalHeader().sizeHint().height() + shown * ROW_HEIGHT + 4
        )
        self._drawing = False

    def set_collections(self, infos: list[dict[str, Any]]) -> None:
        """The workspace's collections (`collection_overview`); a judge's are not training
        data and are left out."""
        fresh = {i["name"]: i for i in infos if i.get("source") != "judge"}
        if fresh != self._infos:
            self._infos = fresh
            self._draw()

    # -- the config ----------------------------------------------------------------------
    def config_values(self) -> dict[str, Any]:
        """`collection` for one, `collections` (and `weights` when mixing) for several."""
        chosen = self.selected()
        if len(chosen) <= 1:
            return {"collection": chosen[0] if chosen else None, "collections": [], "weights": []}
        weights = [self._weights.get(n, 1.0) for n in chosen] if self.mix.isChecked() else []
        return {"collection": None, "collections": chosen, "weights": weights}

    def set_config_values(self, data: dict[str, Any]) -> None:
        names = data.get("collections") or ([data["collection"]] if data.get("collection") else [])
        weights = list(data.get("weights") or [])
        self._ticked = list(names)
        self._weights.update({n: float(w) for n, w in zip(names, weights, strict=False)})
        self.mix.blockSignals(True)
        self.mix.setChecked(bool(weights))
        self.mix.blockSignals(False)
        self.table.setColumnHidden(WEIGHT, not weights)
        self._draw()
        self.changed.emit()

    # -- slots -----------------------------------------------------------------------------
    @Slot(QTableWidgetItem)
    def on_item_changed(self, item: QTableWidgetItem) -> None:
        if self._drawing or item.column() != NAME:
            return
        name = item.text()
        if item.checkState() == Qt.CheckState.Checked and name not in self._ticked:
            self._ticked.append(name)
        elif item.checkState() != Qt.CheckState.Checked and name in self._ticked:
            self._ticked.remove(name)
        self.changed.emit()

    @Slot(float)
    def on_weight_changed(self, value: float) -> None:
        box = self.sender()
        if box is not None and not self._drawing:
            self._weights[str(box.property("collection"))] = float(value)
            self.changed.emit()

    @Slot(bool)
    def on_mix_toggled(self, on: bool) -> None:
        self.table.setColumnHidden(WEIGHT, not on)
        self.changed.emit()

    def tick(self, name: str, on: bool = True) -> None:
        """Tick (or untick) a collection, as a click on its box does."""
        row = self.names().index(name)
        state = Qt.CheckState.Checked if on else Qt.CheckState.Unchecked
        self.table.item(row, NAME).setCheckState(state)
