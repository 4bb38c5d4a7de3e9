import os
import pathlib
import sys

# The package folder (bindings/python) first, so `import lamina` finds the generated module
# and the library beside it.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

ROOT = pathlib.Path(__file__).resolve().parents[3]
# The model the tests load: LAMINA_TEST_MODEL, or None for the default model (fetched and
# cached on first use, as `lamina fetch` does).
MODEL = os.environ.get("LAMINA_TEST_MODEL") or None
# The command line, to check that the bindings generate what it prints.
CLI = os.environ.get("LAMINA_CLI") or str(ROOT / "target" / "release" / "lamina")
