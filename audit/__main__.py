"""``python -m robaudit`` is the ``robaudit`` command."""

import sys

from robaudit.cli import main

sys.exit(main())
