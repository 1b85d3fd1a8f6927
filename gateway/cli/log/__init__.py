"""``cpmictl log``: read, check, export, replay and back up the replay journal (CONTRACT §7).

``cpmictl log VERB [options] DIR``, DIR being the journal directory:

- ``tail``: the last records, one readable line each; ``-f`` follows the live journal;
- ``show SEQ``: one record, whole, pretty-printed;
- ``stats``: counts per kind, code and park; the forwarding backlog;
- ``verify``: the chain and the seals;
- ``export``: the raw lines (JSON Lines) of the records that match;
- ``replay``: the events of a range of records, sent again with their original ids;
- ``backup DIR DEST``: copies what is new in a live journal into a backup of it;
- ``restore DEST DIR``: makes DIR a journal restored from the backup DEST, going on
  above a seq floor (gateway.journal.backup).

``--since`` and ``--until`` take a seq -- ``42`` or ``#42`` -- or an RFC 3339 time
with its offset (``2026-11-24T08:30:00+08:00``, ``2026-11-24T00:30:00Z``); both
ends are inclusive. A time without an offset is refused rather than guessed at:
the journal's times are UTC, the lots' are not.

Every verb but ``restore`` reads the journal while the gateway writes it:
nothing else here takes the journal's lock or writes to it, and a partial last line (a write in
progress) is left out until it is whole. Reading streams, a line at a time,
so memory does not grow with the journal. A damaged line in an older segment
(which the gateway quarantines and skips, see docs/journal.md) is skipped
with a warning on stderr by every verb but ``verify``, which reports it. A
hole, where the gateway set damage aside under a signed ``recovery`` record,
is skipped silently; ``verify`` names each, and ``show`` a seq lost in one.

One module per verb, the helpers they share in ``common``, the parser in
``parser``.

Exit codes: 0 done, 1 the command failed (no journal, a damaged journal, no
such seq, the cloud refusing a replay, ...), 2 usage.
"""

from gateway.cli.log.backup import run_backup, run_restore
from gateway.cli.log.common import Position, parse_position, parse_seq, render, shorten
from gateway.cli.log.export import run_export
from gateway.cli.log.parser import add_parser
from gateway.cli.log.replay import run_replay
from gateway.cli.log.show import run_show
from gateway.cli.log.stats import EVENT_KINDS, NO_EVENT_KINDS, run_stats
from gateway.cli.log.tail import POLL_SECONDS, run_tail
from gateway.cli.log.verify import run_verify

__all__ = [
    "EVENT_KINDS",
    "NO_EVENT_KINDS",
    "POLL_SECONDS",
    "Position",
    "add_parser",
    "parse_position",
    "parse_seq",
    "render",
    "run_backup",
    "run_export",
    "run_replay",
    "run_restore",
    "run_show",
    "run_stats",
    "run_tail",
    "run_verify",
    "shorten",
]
