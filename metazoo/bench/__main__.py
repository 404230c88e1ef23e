"""``python -m metazoo.bench``: the same as ``metazoo bench``."""
import sys

from . import main

sys.exit(main())
