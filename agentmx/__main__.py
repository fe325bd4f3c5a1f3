import sys

from agentmx.cli import main

sys.exit(main())
