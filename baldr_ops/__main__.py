import sys

from baldr_ops.cli import main

sys.exit(main())
