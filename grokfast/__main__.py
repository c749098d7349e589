import sys

from grokfast.cli import main

sys.exit(main())
