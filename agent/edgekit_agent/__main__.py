"""``python -m edgekit_agent``: the same as the ``edgekit-agent`` command."""

import sys

from edgekit_agent.cli import main

sys.exit(main())
