"""Encodings of what a store keeps: the record envelope and application state (msgpack).

Record envelope (a msgpack array, specs/store.md), format 1, or format 2 when the record
carries a caller (so records without one stay readable by older backends):

    [1, session_id: str, version: int, expires_at_ms: int, owner: str, state: bin]
    [2, session_id: str, version: int, expires_at_ms: int, owner: str, state: bin, caller: bin]

Decoding checks every field and that the record is the one asked for, so a store returning
garbage, or another session's record, yields ``CorruptRecordError`` and never a record.
"""

from __future__ import annotations

from typing import Any

import msgpack

from quicvoice.errors import StoreError

from .base import (
    MAX_CALLER_LEN,
    MAX_OWNER_LEN,
    MAX_SESSION_ID_LEN,
    MAX_STATE_LEN,
    CorruptRecordError,
    SessionRecord,
)

#: Envelope format of a record without a caller (readable by every version of quicvoice).
RECORD_FORMAT = 1
#: Envelope format of a record with a caller.
RECORD_FORMAT_WITH_CALLER = 2
#: Fields of a format-1 envelope.
RECORD_FIELDS = 6
#: Fields of each envelope format.
_FIELDS = {RECORD_FORMAT: RECORD_FIELDS, RECORD_FORMAT_WITH_CALLER: RECORD_FIELDS + 1}
#: Largest envelope accepted on read: the state and caller plus room for the other fields.
MAX_RECORD_LEN = MAX_STATE_LEN + MAX_CALLER_LEN + MAX_SESSION_ID_LEN + MAX_OWNER_LEN + 64
#: Deepest nesting accepted in application state.
MAX_STATE_DEPTH = 32


def encode_record(record: SessionRecord) -> bytes:
    """The format-1 envelope of ``record``."""
    fields: list[object] = [
        RECORD_FORMAT_WITH_CALLER if record.caller else RECORD_FORMAT,
        record.session_id,
        record.version,
        round(record.expires_at * 1000),
        record.owner,
        record.state,
    ]
    if record.caller:
        fields.append(record.caller)
    body: bytes = msgpack.packb(fields, use_bin_type=True)
    return body


def decode_record(blob: object, session_id: str) -> SessionRecord:
    """The record in envelope ``blob``, which must be ``session_id``'s.

    Raises ``CorruptRecordError`` for anything else: wrong type, size, format, field or session.
    """
    if not isinstance(blob, bytes):
        raise CorruptRecordError(f"session {session_id!r}: record is not bytes")
    if len(blob) > MAX_RECORD_LEN:
        raise CorruptRecordError(f"session {session_id!r}: record of {len(blob)} octets")
    try:
        fields = msgpack.unpackb(
            blob,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=MAX_STATE_LEN,
            max_str_len=max(MAX_SESSION_ID_LEN, MAX_OWNER_LEN) * 4,
            max_array_len=RECORD_FIELDS + 1,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types for garbage; none may escape
        raise CorruptRecordError(f"session {session_id!r}: record is not msgpack") from exc
    if not (isinstance(fields, list) and fields):
        raise CorruptRecordError(f"session {session_id!r}: record is not an array")
    fmt = fields[0]
    if type(fmt) is not int or fmt not in _FIELDS:
        raise CorruptRecordError(f"session {session_id!r}: unknown record format {fmt!r}")
    if len(fields) != _FIELDS[fmt]:
        raise CorruptRecordError(
            f"session {session_id!r}: a format-{fmt} record is not a {_FIELDS[fmt]}-array"
        )
    _, stored_id, version, expires_ms, owner, state, *rest = fields
    caller = rest[0] if rest else b""
    if fmt == RECORD_FORMAT_WITH_CALLER and not (isinstance(caller, bytes) and caller):
        raise CorruptRecordError(f"session {session_id!r}: caller is not a non-empty bin")
    if stored_id != session_id:
        raise CorruptRecordError(f"session {session_id!r}: record belongs to another session")
    if type(version) is not int or type(expires_ms) is not int:
        raise CorruptRecordError(f"session {session_id!r}: version or expiry is not an integer")
    if not isinstance(owner, str) or not isinstance(state, bytes):
        raise CorruptRecordError(f"session {session_id!r}: owner or state has the wrong type")
    try:
        return SessionRecord(
            session_id=session_id,
            version=version,
            state=state,
            expires_at=expires_ms / 1000,
            owner=owner,
            caller=caller,
        )
    except (TypeError, ValueError) as exc:
        raise CorruptRecordError(f"session {session_id!r}: invalid record: {exc}") from exc


def pack_state(state: Any) -> bytes:
    """Application state (msgpack-serialisable values) as a blob; ``StoreError`` if too big."""
    try:
        blob: bytes = msgpack.packb(state, use_bin_type=True, strict_types=False)
    except (TypeError, ValueError, OverflowError) as exc:
        raise StoreError(f"application state cannot be encoded as msgpack: {exc}") from exc
    if len(blob) > MAX_STATE_LEN:
        raise StoreError(f"application state of {len(blob)} octets exceeds {MAX_STATE_LEN}")
    return blob


def unpack_state(blob: bytes) -> Any:
    """The application state in ``blob``; ``StoreError`` for anything that is not valid msgpack.

    Maps must have string keys; extension types and nesting deeper than ``MAX_STATE_DEPTH`` are
    refused, so a corrupt or hostile blob cannot exhaust memory or the stack.
    """
    if not isinstance(blob, bytes):
        raise TypeError("state blob must be bytes")
    if len(blob) > MAX_STATE_LEN:
        raise StoreError(f"state blob of {len(blob)} octets exceeds {MAX_STATE_LEN}")
    try:
        value = msgpack.unpackb(blob, raw=False, strict_map_key=True, max_ext_len=0, use_list=True)
    except Exception as exc:  # msgpack raises many types for garbage; none may escape
        raise StoreError("state blob is not valid msgpack") from exc
    _check_depth(value)
    return value


def _check_depth(value: Any) -> None:
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, list | dict):
            if depth >= MAX_STATE_DEPTH:
                raise StoreError(f"state blob nests deeper than {MAX_STATE_DEPTH}")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
