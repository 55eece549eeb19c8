import sys

from gansweep.cli import main

sys.exit(main())
