"""Entry script of the PyInstaller bundle (packaging/kdstudio.spec): the `kdstudio` command."""

import multiprocessing
import sys

from kdstudio.cli import main

if __name__ == "__main__":
    # A frozen program re-executes itself for child processes started by "spawn" (DataLoader
    # workers, pyqtgraph.multiprocess); this lets those children run their task and exit.
    multiprocessing.freeze_support()
    sys.exit(main())
