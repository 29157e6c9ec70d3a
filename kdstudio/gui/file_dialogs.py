"""File dialogs that never open the files they list: the only way the studio asks for a path.

Qt's file dialog asks QMimeDatabase for the type of every file it lists, and for a name it
has no pattern for (`kdstudio.sqlite-wal`, `kdstudio.sqlite-shm`) QMimeDatabase opens the
file and reads its first bytes. Closing that descriptor drops every POSIX advisory lock
this process holds on the file (fcntl semantics), SQLite's included: another process then
believes it is the workspace's last user, and on closing deletes the WAL that this
process is still writing to (a corrupted workspace; docs/design-notes.md has the whole
story). A native dialog running inside the process (GTK's, through GIO) sniffs content
the same way. So every dialog here is Qt's own, with an icon provider that looks at names
only. `tests/test_architecture.py` checks that no other module calls QFileDialog.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QFileInfo
from PySide6.QtGui import QAbstractFileIconProvider, QIcon
from PySide6.QtWidgets import QApplication, QFileDialog, QStyle, QWidget


class NamesOnlyIconProvider(QAbstractFileIconProvider):
    """Icons and type names from the name and the kind of entry, never from the content.

    Qt calls it from its file-information thread, so the icons are made up front, on the
    GUI thread, and only handed out later."""

    def __init__(self) -> None:
        super().__init__()
        style = QApplication.style()
        self._folder = style.standardIcon(QStyle.StandardPixmap.SP_DirIcon)
        self._file = style.standardIcon(QStyle.StandardPixmap.SP_FileIcon)
        self._drive = style.standardIcon(QStyle.StandardPixmap.SP_DriveHDIcon)

    def icon(self, what) -> QIcon:  # noqa: D102 - QAbstractFileIconProvider's API
        if isinstance(what, QFileInfo):
            if what.isRoot():
                return self._drive
            return self._folder if what.isDir() else self._file
        if what == QAbstractFileIconProvider.IconType.Folder:
            return self._folder
        if what == QAbstractFileIconProvider.IconType.Drive:
            return self._drive
        return self._file

    def type(self, info: QFileInfo) -> str:  # noqa: D102
        if info.isRoot():
            return "Drive"
        if info.isDir():
            return "Folder"
        suffix = info.suffix()
        return f"{suffix.upper()} file" if suffix else "File"


_provider: NamesOnlyIconProvider | None = None


def _dialog(parent: QWidget | None, caption: str, start: str) -> QFileDialog:
    global _provider
    if _provider is None:
        _provider = NamesOnlyIconProvider()
    path = Path(start) if start else None
    folder = str(path.parent) if path is not None and not path.is_dir() else start
    dialog = QFileDialog(parent, caption, folder)
    if path is not None and not path.is_dir():
        dialog.selectFile(path.name)  # a proposed file name (Save TOML…)
    dialog.setOption(QFileDialog.Option.DontUseNativeDialog, True)
    dialog.setIconProvider(_provider)
    return dialog


def _run(dialog: QFileDialog) -> list[str]:
    try:
        return dialog.selectedFiles() if dialog.exec() else []
    finally:
        dialog.deleteLater()


def existing_folder(parent: QWidget | None, caption: str, start: str = "") -> str:
    """A folder the user picks ("" when cancelled)."""
    dialog = _dialog(parent, caption, start)
    dialog.setFileMode(QFileDialog.FileMode.Directory)
    dialog.setOption(QFileDialog.Option.ShowDirsOnly, True)
    chosen = _run(dialog)
    return chosen[0] if chosen else ""


def open_file(parent: QWidget | None, caption: str, start: str = "", filters: str = "") -> str:
    """An existing file the user picks ("" when cancelled)."""
    dialog = _dialog(parent, caption, start)
    dialog.setFileMode(QFileDialog.FileMode.ExistingFile)
    if filters:
        dialog.setNameFilter(filters)
    chosen = _run(dialog)
    return chosen[0] if chosen else ""


def save_file(parent: QWidget | None, caption: str, start: str = "", filters: str = "") -> str:
    """A file name to write ("" when cancelled); asks before replacing an existing file."""
    dialog = _dialog(parent, caption, start)
    dialog.setAcceptMode(QFileDialog.AcceptMode.AcceptSave)
    dialog.setFileMode(QFileDialog.FileMode.AnyFile)
    if filters:
        dialog.setNameFilter(filters)
    chosen = _run(dialog)
    return chosen[0] if chosen else ""
