"""Entry point for torchrun in tests: `python -m core` with one rank made to fail (never collected by pytest).

CLIPSCOPE_TEST_FAULT=die: rank 1 exits (status 3) right after writing its first shard's partial.
CLIPSCOPE_TEST_FAULT=other_texts:PATH: rank 1 uses the text pool PATH instead of --texts.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from core.cli import main  # noqa: E402
from core.distributed import bases  # noqa: E402

fault = os.environ.get("CLIPSCOPE_TEST_FAULT", "")
rank = int(os.environ.get("RANK", "0"))
argv = sys.argv[1:]

if fault == "die" and rank == 1:
    save = bases._Work.save

    def save_then_die(self, pass_number, shard, tensors):
        save(self, pass_number, shard, tensors)
        os._exit(3)

    bases._Work.save = save_then_die
elif fault.startswith("other_texts:") and rank == 1:
    argv[argv.index("--texts") + 1] = fault.split(":", 1)[1]

raise SystemExit(main(argv))
