"""``python -m metazoo.bench``: the same as ``metazoo bench`` (under the same C allocator settings)."""
import sys

from ..allocator import tune

tune()

from . import main  # noqa: E402

sys.exit(main())
