import sys

from carnet_core.cli import main

sys.exit(main())
