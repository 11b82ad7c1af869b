"""``python -m ctran`` (also what ``torchrun ... -m ctran`` runs)."""

import sys

from ctran.cli import main

sys.exit(main())
