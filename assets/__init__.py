"""Files that ship with xaiscope: demo checkpoints, small real datasets (see SOURCES.md), coastlines."""
from pathlib import Path

ASSETS = Path(__file__).resolve().parent
