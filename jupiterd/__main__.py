import sys

from jupiterd.cli import main

sys.exit(main())
