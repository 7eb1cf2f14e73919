"""``python -m medkd`` (also what ``torchrun -m medkd`` runs)."""

import sys

from medkd.cli import main

sys.exit(main())
