"""Helpers for GUI tests and scripts (screenshots, benchmarks): isolated settings."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings


def prepare_app(settings_dir: str | Path):
    """The application with QSettings kept in `settings_dir` (never the user's own)."""
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(settings_dir))
    from kdstudio.gui.app import create_app

    return create_app(install_hooks=True)
