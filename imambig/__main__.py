"""``python -m imambig``: the command line, for environments without the entry point."""

from imambig.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
