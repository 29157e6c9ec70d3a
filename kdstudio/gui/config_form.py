"""A form generated from a config `Section` dataclass: one widget per setting.

Widgets follow each field's type and metadata (choices -> combo box, bool -> check box,
int -> spin box, float/str -> line edit), the help text becomes the tooltip, and the core's
own validation (constructing the dataclass) reports bad values, so the form never drifts
from the config when a setting is added.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QCheckBox, QComboBox, QFormLayout, QLineEdit, QSpinBox, QWidget

from kdstudio.config import _base_type

WORDS = {"api": "API", "lr": "LR", "kd": "KD", "gpu": "GPU", "cpu": "CPU", "id": "ID", "ids": "IDs"}


def _label(name: str) -> str:
    words = name.split("_")
    text = " ".join(WORDS.get(w, w) for w in words)
    return text[0].upper() + text[1:]


class SectionForm(QWidget):
    """Edits one section's fields (nested sections are skipped: give each its own form)."""

    changed = Signal()

    def __init__(
        self,
        cls: type,
        *,
        skip: tuple[str, ...] = (),
        only: tuple[str, ...] | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.cls = cls
        self.layout_ = QFormLayout(self)
        self.layout_.setContentsMargins(0, 0, 0, 0)
        self.widgets: dict[str, QWidget] = {}
        self.kinds: dict[str, tuple[Any, bool]] = {}
        hints = typing.get_type_hints(cls)
        defaults = cls.__dataclass_fields__
        for f in dataclasses.fields(cls):
            tp, nullable = _base_type(hints[f.name])
            if (
                (only is not None and f.name not in only)
                or f.name in skip
                or dataclasses.is_dataclass(tp)
                or typing.get_origin(tp) is dict
                or tp is dict
            ):
                continue
            widget = self._widget(tp, f.metadata, nullable)
            widget.setToolTip(f.metadata.get("help", ""))
            self.widgets[f.name] = widget
            self.kinds[f.name] = (tp, nullable)
            self.layout_.addRow(_label(f.name), widget)
            default = defaults[f.name]
            if default.default is not dataclasses.MISSING:
                self._set(f.name, default.default)
            elif default.default_factory is not dataclasses.MISSING:
                self._set(f.name, default.default_factory())

    def _widget(self, tp: Any, meta: Any, nullable: bool = False) -> QWidget:
        if meta.get("choices"):
            box = QComboBox()
            box.addItems([str(c) for c in meta["choices"]])
            box.currentIndexChanged.connect(self.changed)
            return box
        if tp is bool:
            box = QCheckBox()
            box.toggled.connect(self.changed)
            return box
        if tp is int and not nullable:  # an optional int is a line edit: empty means unset
            box = QSpinBox()
            lo, hi = meta.get("min"), meta.get("max")
            box.setRange(
                int(lo) if lo is not None else -(2**31), int(hi) if hi is not None else 2**31 - 1
            )
            box.setGroupSeparatorShown(True)
            box.valueChanged.connect(self.changed)
            return box
        edit = QLineEdit()
        edit.textChanged.connect(self.changed)
        return edit

    def replace_widget(self, name: str, widget: QWidget) -> None:
        """Swap in a richer editor (a combo of collections, a folder picker) for `name`.

        The widget must offer `value()`/`set_value(v)` or be a QComboBox / QLineEdit.
        """
        old = self.widgets[name]
        value, tip = self.value(name), old.toolTip()
        row = self.layout_.getWidgetPosition(old)[0]
        self.layout_.removeRow(row)
        self.layout_.insertRow(row, _label(name), widget)
        widget.setToolTip(tip)
        self.widgets[name] = widget
        self._set(name, value)

    def row_widget(self, name: str) -> QWidget:
        return self.widgets[name]

    def _set(self, name: str, value: Any) -> None:
        w = self.widgets[name]
        tp, _ = self.kinds[name]
        if hasattr(w, "set_value"):
            w.set_value(value)
        elif isinstance(w, QComboBox):
            text = "" if value is None else str(value)
            if w.findText(text) < 0 and w.isEditable():
                w.addItem(text)
            if w.findText(text) < 0 and text:
                w.addItem(text)
            w.setCurrentText(text)
        elif isinstance(w, QCheckBox):
            w.setChecked(bool(value))
        elif isinstance(w, QSpinBox):
            w.setValue(int(value or 0))
        elif isinstance(w, QLineEdit):
            if isinstance(value, list):
                w.setText(", ".join(str(v) for v in value))
            else:
                w.setText(
                    ""
                    if value is None
                    else (f"{value:g}" if isinstance(value, float) else str(value))
                )

    def value(self, name: str) -> Any:
        w = self.widgets[name]
        tp, nullable = self.kinds[name]
        if hasattr(w, "value") and not isinstance(w, QSpinBox):
            return w.value()
        if isinstance(w, QComboBox):
            text = w.currentText().strip()
            return None if (nullable and not text) else _typed(text, tp)
        if isinstance(w, QCheckBox):
            return w.isChecked()
        if isinstance(w, QSpinBox):
            return w.value()
        text = w.text().strip()
        if not text and nullable:
            return None
        origin = typing.get_origin(tp) or tp
        if origin is list:
            (item,) = typing.get_args(tp) or (str,)
            return [_typed(p.strip(), item) for p in text.split(",") if p.strip()]
        return _typed(text, tp)

    def values(self) -> dict[str, Any]:
        return {name: self.value(name) for name in self.widgets}

    def set_values(self, data: dict[str, Any]) -> None:
        for name, value in data.items():
            if name in self.widgets:
                self._set(name, value)


def _typed(text: str, tp: Any) -> Any:
    """Text to the field's type where it parses; otherwise the text itself, so that the
    config's own validation reports it with the key's name."""
    if tp is float:
        try:
            return float(text)
        except ValueError:
            return text
    if tp is int:
        try:
            return int(text)
        except ValueError:
            return text
    return text
