"""Files that ship inside the package: the application icon (SVG plus PNG sizes).

They live here, not in a top-level folder, so that the wheel and the PyInstaller bundle carry
them and code finds them with `importlib.resources` wherever kdstudio is installed. Qt-free:
the window builds its `QIcon` from these paths, packaging scripts copy them.
"""

from __future__ import annotations

import atexit
import contextlib
from importlib import resources
from pathlib import Path

ICON_NAME = "kdstudio"
# Rendered from icons/kdstudio.svg by scripts/render-icons; keep the two lists in step.
ICON_SIZES: tuple[int, ...] = (16, 24, 32, 48, 64, 128, 256, 512)

_extracted = contextlib.ExitStack()  # holds files extracted from a zipped install until exit
atexit.register(_extracted.close)


def resource_path(*parts: str) -> Path:
    """A file under kdstudio/resources/ as a real filesystem path.

    An ordinary install (wheel, editable, PyInstaller bundle) returns the file in place; an
    install imported from a zip gets a temporary copy that lives until the process exits.
    """
    ref = resources.files(__name__).joinpath(*parts)
    if not ref.is_file():
        raise FileNotFoundError(f"kdstudio resource {'/'.join(parts)} is missing from {ref}")
    if isinstance(ref, Path):
        return ref
    return _extracted.enter_context(resources.as_file(ref))


def icon_path(size: int | None = None) -> Path:
    """The application icon: the SVG when `size` is None, else the `size` x `size` PNG.

    Raises ValueError for a size that is not rendered (see ICON_SIZES).
    """
    if size is None:
        return resource_path("icons", f"{ICON_NAME}.svg")
    if size not in ICON_SIZES:
        sizes = ", ".join(map(str, ICON_SIZES))
        raise ValueError(
            f"no {size}px kdstudio icon; the PNG sizes are {sizes} (or None for the SVG)"
        )
    return resource_path("icons", f"{ICON_NAME}-{size}.png")
