import sys
from pathlib import Path

# The project's modules live at the repository's top level, as in the reference code.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
