"""``python -m dapkernels …`` (and ``torchrun … -m dapkernels …``): the console script."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
