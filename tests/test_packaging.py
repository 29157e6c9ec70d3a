"""Packaging: the icon ships as package data, and the desktop files pass their validators.

Fast and Qt-free. The validators come from Debian packages (desktop-file-utils, appstream);
where they are not installed those checks skip and say so.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
import zipfile
import zlib
from pathlib import Path

import pytest

from kdstudio import resources

ROOT = Path(__file__).resolve().parents[1]
PACKAGING = ROOT / "packaging"
APP_ID = "io.github.kdstudio.KDStudio"
DESKTOP = PACKAGING / f"{APP_ID}.desktop"
METAINFO = PACKAGING / f"{APP_ID}.metainfo.xml"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_png(path: Path) -> tuple[int, int, bytes]:
    """Decode an 8-bit RGBA, non-interlaced PNG (what rsvg-convert writes): width, height, pixels.

    Checks the signature and every chunk's CRC, and undoes the per-row filters, so a file that
    passes is a PNG any viewer can show.
    """
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), f"{path.name} does not start with the PNG signature"
    pos, chunks = len(PNG_SIGNATURE), []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"{path.name}: bad CRC in chunk {kind!r}"
        chunks.append((kind, body))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND", f"{path.name}: truncated PNG"
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour, interlace) == (8, 6, 0), f"{path.name}: not 8-bit RGBA non-interlaced"
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride = 4 * width
    assert len(raw) == height * (1 + stride), f"{path.name}: image data does not match the header"
    out, prev = bytearray(), bytearray(stride)
    for y in range(height):
        kind, row = (
            raw[y * (stride + 1)],
            bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]),
        )
        for i in range(stride):
            a = row[i - 4] if i >= 4 else 0
            b, c = prev[i], prev[i - 4] if i >= 4 else 0
            if kind == 1:
                row[i] = (row[i] + a) & 0xFF
            elif kind == 2:
                row[i] = (row[i] + b) & 0xFF
            elif kind == 3:
                row[i] = (row[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                row[i] = (row[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
            else:
                assert kind == 0, f"{path.name}: unknown filter {kind} in row {y}"
        out += row
        prev = row
    return width, height, bytes(out)


def test_icon_path_gives_the_svg_by_default_and_a_png_per_rendered_size():
    svg = resources.icon_path()
    assert svg.is_file() and svg.name == "kdstudio.svg"
    assert svg.parent == Path(resources.__file__).parent / "icons", "package data, not the repo"
    for size in resources.ICON_SIZES:
        path = resources.icon_path(size)
        assert path.is_file() and path.name == f"kdstudio-{size}.png"


def test_icon_path_rejects_a_size_that_was_never_rendered():
    with pytest.raises(ValueError, match="16, 24, 32"):
        resources.icon_path(20)


@pytest.mark.parametrize("size", resources.ICON_SIZES)
def test_each_png_icon_is_a_square_rgba_png_of_its_size_with_transparent_corners(size):
    width, height, pixels = read_png(resources.icon_path(size))
    assert (width, height) == (size, size)
    assert pixels[3] == 0, "the top-left corner is outside the rounded tile: transparent"
    centre = 4 * (size // 2 * size + size // 2)
    assert pixels[centre + 3] == 255, "the middle of the icon is opaque"


def test_the_png_icons_are_renderings_of_the_current_svg(tmp_path):
    tool = shutil.which("rsvg-convert")
    if tool is None:
        pytest.skip("rsvg-convert is not installed (apt-get install librsvg2-bin)")
    for size in (32, 128):
        fresh = tmp_path / f"{size}.png"
        subprocess.run(
            [tool, "-w", str(size), "-h", str(size), "-o", str(fresh), str(resources.icon_path())],
            check=True,
            timeout=60,
        )
        _, _, want = read_png(fresh)
        _, _, have = read_png(resources.icon_path(size))
        mean_diff = sum(abs(x - y) for x, y in zip(want, have, strict=True)) / len(want)
        assert mean_diff < 1.0, f"kdstudio-{size}.png is stale: run scripts/render-icons"


def test_the_svg_icon_is_well_formed_square_svg():
    root = ET.parse(resources.icon_path()).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert root.get("viewBox") == "0 0 256 256"
    assert root.get("width") == root.get("height") == "256"
    assert not root.findall(".//{http://www.w3.org/2000/svg}image"), "no embedded bitmaps"
    assert not root.findall(".//{http://www.w3.org/2000/svg}text"), "text would need a font"


def test_the_render_script_and_helper_list_the_same_sizes():
    script = (ROOT / "scripts" / "render-icons").read_text()
    sizes_line = next(line for line in script.splitlines() if line.startswith("sizes=("))
    listed = tuple(int(s) for s in sizes_line.split("(")[1].split(")")[0].split())
    assert listed == resources.ICON_SIZES


def test_pyproject_ships_resources_as_package_data():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = config["package-data"]["kdstudio"]
    assert "resources/**/*" in patterns
    assert "kdstudio*" in config["packages"]["find"]["include"]  # kdstudio.migrations too


def test_the_wheel_carries_the_icons_the_migrations_and_the_command(tmp_path):
    # Build from a copy so the shared checkout gets no build/ or egg-info; call the backend
    # directly (what `python -m build` does in its isolated env) to stay offline and fast.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "MANIFEST.in"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "kdstudio", src / "kdstudio", ignore=shutil.ignore_patterns("__pycache__")
    )
    build = "import setuptools.build_meta as b, sys; print(b.build_wheel(sys.argv[1]))"
    out = subprocess.run(
        [sys.executable, "-c", build, str(tmp_path)],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    with zipfile.ZipFile(tmp_path / out.stdout.strip().splitlines()[-1]) as wheel:
        names = set(wheel.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "kdstudio = kdstudio.cli:main" in wheel.read(entry_points).decode()
        shipped_code = {n: wheel.read(n).decode() for n in names if n.endswith(".py")}
    icons = {f"kdstudio/resources/icons/{p.name}" for p in resources.icon_path().parent.iterdir()}
    migrations = {
        f"kdstudio/migrations/{p.name}" for p in (ROOT / "kdstudio/migrations").glob("*.py")
    }
    assert {"kdstudio/resources/__init__.py", "kdstudio/migrations/__init__.py"} <= names
    assert icons - names == set(), "icons missing from the wheel"
    assert migrations - names == set(), "migrations missing from the wheel"
    assert len(migrations) > 1
    # Test scaffolding stays in tests/: no loopback server, no test helpers in the wheel.
    assert "kdstudio/demo/tiny.py" in names, "the demo builds its models with it"
    servers = [n for n, code in shipped_code.items() if "start_server(" in code]
    assert servers == [], "an HTTP server (the loopback test teacher) is in the wheel"
    assert not [n for n in names if "testing" in n or n.startswith("tests/")]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_declared_dependencies_are_exactly_what_kdstudio_imports():
    """Every third-party package kdstudio imports is declared (dependencies, or an extra for
    an optional feature), and nothing is declared that kdstudio never imports."""
    import ast
    import importlib.metadata

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    requirements = project["dependencies"] + [
        r for name, reqs in extras.items() if name != "test" for r in reqs
    ]
    declared = {_canonical(re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0]) for r in requirements}
    imported: set[str] = set()
    for path in (ROOT / "kdstudio").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m != "kdstudio"}
    by_module = importlib.metadata.packages_distributions()
    missing = [m for m in sorted(third_party) if m not in by_module]
    assert missing == [], f"imported but not installed (so not declared either): {missing}"
    distributions = {_canonical(by_module[m][0]) for m in third_party}
    assert distributions - declared == set(), "imported but not declared"
    indirect = {"tensorboard"}  # torch.utils.tensorboard writes for it; `tensorboard` serves
    assert declared - distributions - indirect == set(), "declared but never imported"


def test_desktop_entry_names_the_installed_icon_and_command():
    lines = dict(line.split("=", 1) for line in DESKTOP.read_text().splitlines() if "=" in line)
    assert lines["Icon"] == APP_ID
    assert lines["Exec"].split()[0] == "kdstudio"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "kdstudio" in project["scripts"], "the entry runs the `kdstudio` console script"


def test_metainfo_launches_the_desktop_entry():
    root = ET.parse(METAINFO).getroot()
    assert root.findtext("id") == APP_ID
    assert root.find("launchable").text == DESKTOP.name
    assert root.findtext("provides/binary") == "kdstudio"
    from kdstudio import __version__

    assert root.find("releases/release").get("version") == __version__


def _validator(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (apt-get install {package})")
    return path


def test_desktop_entry_passes_desktop_file_validate():
    tool = _validator("desktop-file-validate", "desktop-file-utils")
    result = subprocess.run([tool, str(DESKTOP)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "error" not in (result.stdout + result.stderr).lower()


def test_metainfo_passes_appstreamcli_validate():
    tool = _validator("appstreamcli", "appstream")
    result = subprocess.run(
        [tool, "validate", "--no-net", str(METAINFO)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
