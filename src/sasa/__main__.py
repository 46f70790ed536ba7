"""``python -m sasa`` (and ``torchrun -m sasa``) runs the command line."""
import sys

from sasa.cli.main import main

sys.exit(main())
