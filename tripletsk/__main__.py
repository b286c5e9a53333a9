"""Allow ``python -m tripletsk``."""

from tripletsk.cli import cli

if __name__ == "__main__":
    raise SystemExit(cli())
