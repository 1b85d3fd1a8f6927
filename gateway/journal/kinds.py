"""Every record kind the journal holds, in one place.

A record's ``kind`` says who wrote it and what its body is. Each writer and
each reader (start-up state, forwarding, the CloudEvents mapping, ``cpmictl
log``) names a kind by its constant here, never by a literal.
"""

from __future__ import annotations

__all__ = [
    "ANSWER_RECORD",
    "CHECKPOINT_RECORD",
    "COMMAND_RECORD",
    "COMMAND_REPLY_RECORD",
    "FORWARDED_RECORD",
    "HELD_RECORD",
    "LEGACY_RECORD",
    "OFFLINE_RECORD",
    "ONLINE_RECORD",
    "QUARANTINE_RECORD",
    "QUERY_RECORD",
    "RECOVERY_RECORD",
    "REJECTED_RECORD",
    "RELOAD_RECORD",
    "RESTORE_RECORD",
    "RETENTION_RECORD",
    "SEAL_RECORD",
    "SYNC_DONE_RECORD",
    "SYNC_RECORD",
    "TOKEN_RECORD",
    "TOKEN_REVOKED_RECORD",
    "UPLINK_RECORD",
    "UPSTREAM_ACK_RECORD",
    "UPSTREAM_REPLY_RECORD",
    "kind_member",
]

# The lots (gateway.lots, gateway.dialects).
UPLINK_RECORD = "uplink"
"""An uplink request a lot sent, journaled before it is answered."""
QUERY_RECORD = "query"
"""A query-class request a lot sent (answered by the cloud)."""
ANSWER_RECORD = "answer"
"""The cloud's answer to a query, as the lot got it."""
ONLINE_RECORD = "lot-online"
"""A lot's downlink connection bound."""
OFFLINE_RECORD = "lot-offline"
"""A lot's downlink connection lost."""
TOKEN_RECORD = "token"
"""A token issued at login."""
TOKEN_REVOKED_RECORD = "token-revoked"
"""An account's token taken out of force (a reload removed or changed the lot)."""
LEGACY_RECORD = "legacy"
"""A legacy message as a dialect received it (kept beside its translations)."""

# The cloud's commands and sync downlinks (gateway.cloud.api, gateway.lots.sync).
COMMAND_RECORD = "command"
"""A command the cloud sent, journaled before the lot is asked."""
COMMAND_REPLY_RECORD = "command-reply"
"""Every command's outcome: the lot's REPLY, or why there was none."""
SYNC_RECORD = "sync"
"""A sync-class downlink queued for a lot."""
SYNC_DONE_RECORD = "sync-done"
"""A sync entry delivered (or given up)."""

# Forwarding (gateway.cloud.forwarder, gateway.upstream).
FORWARDED_RECORD = "forwarded"
"""How far forwarding went: body ``through``."""
REJECTED_RECORD = "rejected"
"""An event the cloud refused with a 4xx; body ``through`` and why."""
UPSTREAM_ACK_RECORD = "upstream-ack"
"""An ACK received from the upstream; body ``{"data"}`` as it came."""
UPSTREAM_REPLY_RECORD = "upstream-reply"
"""The REPLY sent back for an ACK; body ``{"resultCode", "resultMessage", "data"}``."""
HELD_RECORD = "upstream-held"
"""A request held back by the repeat rule until the hour allows it."""

# The journal's own (gateway.journal) and the gateway's housekeeping.
RECOVERY_RECORD = "recovery"
"""A torn tail cut, or damage set aside (signed)."""
QUARANTINE_RECORD = "quarantine"
"""Damage set aside."""
SEAL_RECORD = "seal"
"""A signed seal over the chain so far."""
RESTORE_RECORD = "restore"
"""The signed record a restored journal goes on from."""
RETENTION_RECORD = "retention"
"""Which segments retention removed."""
CHECKPOINT_RECORD = "checkpoint"
"""The start-up state as of a seq (gateway.state)."""
RELOAD_RECORD = "reload"
"""A configuration reload and what it changed."""


def kind_member(kind: str) -> bytes:
    """The kind as its member stands in a record's line (``"kind":"seal"``): to find it without decoding."""
    return b'"kind":"%s"' % kind.encode()
