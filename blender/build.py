"""Build the Blender add-on two ways, from ``blender/farm_submit`` and the redis wheels:

* ``farm_submit-<version>.zip``: a Blender 4.2+ extension (manifest at the zip's root,
  the wheels under ``wheels/``; Blender installs them);
* ``farm_submit-<version>-legacy.zip``: an old-style add-on (``farm_submit/`` folder with
  ``bl_info``; redis unpacked into ``farm_submit/_vendor``).

Usage: ``python blender/build.py --wheels build/wheels --out build`` (``make addon``
downloads the wheels the manifest names, then runs this). Standard library only.
"""

from __future__ import annotations

import argparse
import re
import sys
import zipfile
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "farm_submit"
SKIP = re.compile(r"(^|/)(__pycache__|\.)|\.pyc$|\.zip$")
STAMP = (2024, 1, 1, 0, 0, 0)  # fixed times: the same sources give the same zip


def manifest_value(key: str) -> str:
    text = (SOURCE / "blender_manifest.toml").read_text()
    m = re.search(rf'^{key}\s*=\s*"([^"]+)"', text, re.M)
    if m is None:
        raise SystemExit(f"blender_manifest.toml has no {key}")
    return m.group(1)


def manifest_wheels() -> list[str]:
    text = (SOURCE / "blender_manifest.toml").read_text()
    block = re.search(r"^wheels\s*=\s*\[(.*?)\]", text, re.M | re.S)
    return [Path(w).name for w in re.findall(r'"([^"]+)"', block.group(1))] if block else []


def sources() -> list[Path]:
    return sorted(p for p in SOURCE.rglob("*") if p.is_file()
                  and not SKIP.search(p.relative_to(SOURCE).as_posix()))  # fmt: skip


def _write(z: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, STAMP)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    z.writestr(info, data)


def build(wheels: Path, out: Path) -> tuple[Path, Path]:
    """Write both zips to ``out``; returns (extension, legacy)."""
    names = manifest_wheels()
    missing = [n for n in names if not (wheels / n).is_file()]
    if missing:
        raise SystemExit(
            f"missing wheels in {wheels}: {', '.join(missing)}; run `make addon` (it downloads them)"
        )
    version = manifest_value("version")
    out.mkdir(parents=True, exist_ok=True)
    ext = out / f"farm_submit-{version}.zip"
    legacy = out / f"farm_submit-{version}-legacy.zip"
    with zipfile.ZipFile(ext, "w") as z:
        for p in sources():
            _write(z, p.relative_to(SOURCE).as_posix(), p.read_bytes())
        for n in names:
            _write(z, f"wheels/{n}", (wheels / n).read_bytes())
    with zipfile.ZipFile(legacy, "w") as z:
        for p in sources():
            if p.name != "blender_manifest.toml":
                _write(z, f"farm_submit/{p.relative_to(SOURCE).as_posix()}", p.read_bytes())
        for n in names:
            with zipfile.ZipFile(wheels / n) as wheel:
                for item in wheel.infolist():
                    if not item.is_dir() and ".dist-info/" not in item.filename:
                        _write(z, f"farm_submit/_vendor/{item.filename}", wheel.read(item))
    return ext, legacy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", type=Path, default=Path("build/wheels"))
    parser.add_argument("--out", type=Path, default=Path("build"))
    parser.add_argument("--requirements", action="store_true",
                        help="print the manifest's wheels as pip requirements (name==version) and exit")  # fmt: skip
    args = parser.parse_args(argv)
    if args.requirements:
        print("\n".join("==".join(w.split("-")[:2]) for w in manifest_wheels()))
        return 0
    for path in build(args.wheels, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
