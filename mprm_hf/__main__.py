"""`python -m mprm_hf`: the `mprm-hf` command, for environments where its script is not on PATH."""

import sys

from mprm_hf.cli import main

if __name__ == "__main__":
    sys.exit(main())
