"""`python -m kdstudio` is the same as the `kdstudio` command."""

from kdstudio.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
