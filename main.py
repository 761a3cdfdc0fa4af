"""``python main.py ...`` runs the marketpipe CLI from a checkout."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from marketpipe.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
