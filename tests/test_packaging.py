"""Packaging: the sdist carries the C++ sources, the extension stands alone (no libtorch)."""

import subprocess
import sys
import tarfile
from pathlib import Path

import dapkernels._C as core

ROOT = Path(__file__).resolve().parents[1]


def test_sdist_contains_the_cpp_core(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(tmp_path)],
        cwd=ROOT, check=True, capture_output=True,
    )
    (sdist,) = tmp_path.glob("dapkernels-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {Path(n).relative_to(Path(n).parts[0]).as_posix() for n in tar.getnames()
                 if len(Path(n).parts) > 1}
    want = {p.relative_to(ROOT).as_posix() for p in (ROOT / "csrc").iterdir()
            if p.suffix in (".cpp", ".h")}
    assert want and want <= names
    assert {"setup.py", "pyproject.toml", "README.md"} <= names


def test_extension_does_not_link_libtorch():
    out = subprocess.run(["readelf", "-d", core.__file__], check=True, capture_output=True,
                         text=True).stdout
    needed = [line for line in out.splitlines() if "(NEEDED)" in line]
    assert needed, out
    assert not any("torch" in line or "c10" in line for line in needed), needed


def test_package_is_ruff_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "dapkernels", "tests"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
