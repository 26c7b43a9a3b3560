"""The package version, written in this one place: pyproject.toml reads it at build time and
``dapkernels.__version__`` re-exports it."""

__version__ = "0.1.0"
