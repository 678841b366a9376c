"""The Avro contract: ``*.avsc`` files, their history, the codec and the compatibility check."""

from pathlib import Path

SCHEMA_DIR = Path(__file__).resolve().parent
HISTORY_DIR = SCHEMA_DIR / "history"
