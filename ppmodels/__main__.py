"""``python -m ppmodels ...`` (and ``torchrun ... -m ppmodels train ...``): the command line."""

import sys

from .cli import main

sys.exit(main())
