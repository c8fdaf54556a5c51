import sys

from cxr_assets.cli import main

sys.exit(main())
