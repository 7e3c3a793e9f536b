"""The durable store-and-forward outbox: the only package that touches the queue database.

::

    sensors/pipeline/commands --put()--> [memory batch] --group commit--> SQLite (WAL)
                                                                            |
    forwarder <--begin(n)-- claimed rows ------------------------------------+
    forwarder --accept(seqs)--> deleted in the next commit (after PUBACK)
    forwarder --release(seqs)--> back in the queue (connection lost)

* ``put()`` assigns the message its ``seq`` (strictly increasing, persisted in ``meta.last_seq`` in the
  same transaction as the row) and returns it at once; a writer thread commits every
  ``storage.commit_interval`` seconds (one transaction, and with ``sync = "full"`` one fsync, for many
  readings). A message is visible to ``begin()`` only once committed, so nothing is sent before it is
  stored. A crash loses at most the uncommitted batch, whose seqs were never published and are
  therefore safely assigned again after the restart.
* A row is deleted only after ``accept()`` (the broker's PUBACK). Rows ``begin()`` handed out are
  "claimed" and not handed out again until ``release()``d or deleted. Acks are committed in groups
  (``ack_interval``): a crash before that only causes duplicates, never a loss.
* ``begin()`` orders by class (alarm > event > inference > telemetry), then seq. It keeps a cursor per
  class so a drain never re-reads rows it already handed out.

Every gap is accounted (see docs/reliability.md and :mod:`.ledger`): rows leave the database without a
PUBACK only by eviction (``storage.max_bytes``, free disk), expiry (``storage.max_age`` /
``Outgoing.ttl``), disk full or corruption, each reported in an ``events/dropped`` message stored in the
same transaction as the deletion.

Disk full (SQLITE_FULL/ENOSPC): the writer keeps what it could not store in memory (at most
``storage.memory_buffer`` messages; beyond that the lowest class, oldest first, is dropped and
accounted), frees a small reserve file it keeps beside the database so that eviction itself can write,
evicts, and retries; when space returns it recreates the reserve. It never raises into the producers.

Corruption at open: see :mod:`.recovery`. Seqs stay monotonic across it: a small sidecar file
``outbox.db.seq`` (written atomically, only every ``SEQ_RESERVE`` seqs) holds a seq reservation that is
always >= every committed seq and never lowered, and the fresh database continues after it. The same
holds for a database or WAL that is emptied, removed, rewound or another outbox's (:mod:`.continuity`:
a ``db_id`` in ``meta`` and in the sidecar, a clean-stop marker, ``quarantine/``), and for a database
file deleted while running (:mod:`.reopen`: rows carried over to a fresh file). A PASSIVE checkpoint
every 2 s keeps the database file itself recent. TTLs count elapsed time (:mod:`.ageclock`), not the
wall clock.

The parts: :mod:`.facade` (:class:`Outbox`), :mod:`.staging` (memory batch), :mod:`.writer` (the thread),
:mod:`.claims` (reader side), :mod:`.ledger`, :mod:`.maintenance`, :mod:`.recovery`, :mod:`.continuity`,
:mod:`.reopen`, :mod:`.ageclock`, :mod:`.schema`, :mod:`.stats`. Producers import :mod:`edge_agent.message`,
never this package.
"""

from __future__ import annotations

from edge_agent.message import Outgoing, Pending
from edge_agent.outbox.facade import CORRUPT_STREAM, Outbox
from edge_agent.outbox.ledger import DROPPED_STREAM
from edge_agent.outbox.rangeset import merge_ranges, ranges
from edge_agent.outbox.recovery import SEQ_RESERVE, precheck
from edge_agent.outbox.schema import COUNTERS, SCHEMA, SCHEMA_VERSION
from edge_agent.outbox.stats import OutboxStats, integrity_check, read_stats

__all__ = ["CORRUPT_STREAM", "COUNTERS", "DROPPED_STREAM", "SCHEMA", "SCHEMA_VERSION", "SEQ_RESERVE", "Outbox",
           "OutboxStats", "Outgoing", "Pending", "integrity_check", "merge_ranges", "precheck", "ranges",
           "read_stats"]
