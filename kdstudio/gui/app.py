"""The studio application: `run_app(workspace_path)` is what `kdstudio` with no command runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from PySide6.QtCore import QCoreApplication, Qt
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication

from kdstudio import __version__


def app_icon() -> QIcon:
    """The application icon from kdstudio/resources (every rendered size), if present."""
    icon = QIcon()
    try:
        from kdstudio import resources

        for size in resources.ICON_SIZES:
            icon.addFile(str(resources.icon_path(size)))
    except (ImportError, FileNotFoundError):
        pass
    return icon


def create_app(argv: list[str] | None = None, *, install_hooks: bool = True) -> QApplication:
    """The QApplication (reused if one exists), named so QSettings has a home."""
    QCoreApplication.setOrganizationName("kdstudio")
    QCoreApplication.setOrganizationDomain("kdstudio.dev")
    QCoreApplication.setApplicationName("kdstudio")
    QCoreApplication.setApplicationVersion(__version__)
    app = QApplication.instance()
    if app is None:
        QApplication.setHighDpiScaleFactorRoundingPolicy(
            Qt.HighDpiScaleFactorRoundingPolicy.PassThrough
        )
        app = QApplication(argv if argv is not None else sys.argv[:1])
    app.setApplicationDisplayName("kdstudio")
    app.setDesktopFileName("kdstudio")
    app.setWindowIcon(app_icon())
    import pyqtgraph as pg

    pg.setConfigOptions(antialias=True, useNumba=False)

    from kdstudio.gui import collector, errors

    errors.install()
    collector.install()  # garbage is collected on this thread only
    app.aboutToQuit.connect(_stop_workers)
    return app


def _stop_workers() -> None:
    from kdstudio.gui import trackers, workers

    workers.stop_all(timeout_s=30.0, reason="the application is quitting")
    trackers.stop_all()  # TensorBoard processes the Runs panel started


def resolve_workspace(workspace_path: str | Path | None) -> Path:
    """--workspace, else $KDSTUDIO_WORKSPACE, else the last one opened, else the default."""
    from kdstudio.gui import settings
    from kdstudio.workspace import ENV_VAR, default_path

    if workspace_path:
        return Path(workspace_path)
    if os.environ.get(ENV_VAR):
        return default_path()
    last = settings.last_workspace()
    if last and Path(last).is_dir():
        return Path(last)
    return default_path()


def run_app(
    workspace_path: str | Path | None = None,
    *,
    start_panel: str | None = None,
    select_run: str | None = None,
) -> int:
    """Open the studio window on a workspace and run until it closes; the exit code.

    `start_panel` ("runs", "train", ...) is shown first; `select_run` is selected in Runs,
    with its latest evaluation when it has one (the demo opens on its result).
    """
    app = create_app()
    from kdstudio.gui.main_window import MainWindow

    window = MainWindow()
    # A workspace that cannot be opened (damaged, locked, not a folder) still gets a
    # window: the problem page says what is wrong and offers the ways out.
    opened = window.open_workspace(resolve_workspace(workspace_path), ask=False)
    if opened and start_panel in window.panels:
        panel = window.show_panel(start_panel)
        if select_run and hasattr(panel, "select_run"):
            panel.select_run(select_run)
            if start_panel == "runs" and panel.eval_box.count() and panel.eval_box.currentData():
                panel.tabs.setCurrentIndex(1)  # the evaluation: before / after / teacher
    window.show()
    return app.exec()
