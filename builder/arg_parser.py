"""argparse with the one-line errors every other failure here gives."""

from __future__ import annotations

import argparse


class ArgumentParser(argparse.ArgumentParser):
    """A usage error is one line and exit 2: argparse's default printed the whole usage
    first (21 lines for the build flags), which buried the line saying what was wrong."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")
