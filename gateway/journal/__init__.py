"""The replay journal: append-only, chained JSON Lines segments with group commit."""

from gateway.journal.reader import ChainError, read_records, verify
from gateway.journal.record import Record
from gateway.journal.writer import FSYNC_MODES, Journal, JournalWriteError

__all__ = ["FSYNC_MODES", "ChainError", "Journal", "JournalWriteError", "Record", "read_records", "verify"]
