-- Event filters in SQL (issue 10): SubscribeEvents filters by type, call and recording with these
-- indexes instead of reading every event into Python on the event loop (a filtered subscriber over a
-- 200 000-event log stalled every call for ~4 s). The columns exist since 0001, so nothing to backfill.
-- An index's entries are ordered by rowid (= sequence) within one key, so "key = ? AND sequence > ?
-- ORDER BY sequence LIMIT n" is one range read of the index, with no sort.
CREATE INDEX events_type ON events (event_type);
CREATE INDEX events_call ON events (server_call_id);
CREATE INDEX events_recording ON events (recording_id)
