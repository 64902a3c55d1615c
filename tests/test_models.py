"""Event ids: random version 4 UUIDs, also across reads of the random source."""

from __future__ import annotations

import uuid

from switchd.models import IDS_PER_READ, new_event_id


def test_event_ids_are_distinct_version_4_uuids_across_refills() -> None:
    ids = [new_event_id() for _ in range(3 * IDS_PER_READ + 1)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text  # canonical lower-case form, as uuid4() gave
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


def test_event_ids_read_the_random_bytes_as_uuid_does(monkeypatch) -> None:
    raw = bytes(range(256)) * (IDS_PER_READ // 16)  # 16 bytes per id
    monkeypatch.setattr("os.urandom", lambda n: raw[:n])
    fresh = type(new_event_id)()
    for i in range(IDS_PER_READ):
        assert fresh() == str(uuid.UUID(bytes=raw[16 * i : 16 * i + 16], version=4))
