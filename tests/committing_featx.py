"""``featx`` with a journal commit after every batch (a long job commits every 2,048
images): run by the distributed tests as torchrun's script, so that a kill lands
between commits."""
import sys

import featx.extract
from featx.cli import main

featx.extract.extract.__kwdefaults__["commit_rows"] = 1

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
