import sys

from bertlab.cli import main

sys.exit(main())
