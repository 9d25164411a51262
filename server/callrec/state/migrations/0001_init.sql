-- Recordings: indexed columns for lookups and paging, the full entity as JSON.
CREATE TABLE recordings (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    recording_id   TEXT NOT NULL UNIQUE,
    server_call_id TEXT NOT NULL,
    state          TEXT NOT NULL,
    body           TEXT NOT NULL,
    updated_at     TEXT NOT NULL
);
CREATE INDEX recordings_call ON recordings (server_call_id, seq);
CREATE INDEX recordings_state ON recordings (state, seq);

-- StartRecording request_id -> recording, remembered for the idempotency window.
CREATE TABLE idempotency_keys (
    request_id   TEXT PRIMARY KEY,
    recording_id TEXT NOT NULL,
    created_at   REAL NOT NULL
);

-- The durable event log; sequence numbers are dense and never reused.
CREATE TABLE events (
    sequence       INTEGER PRIMARY KEY,
    id             TEXT NOT NULL UNIQUE,
    event_type     TEXT NOT NULL,
    subject        TEXT NOT NULL,
    server_call_id TEXT NOT NULL,
    recording_id   TEXT NOT NULL,
    event_time     TEXT NOT NULL,
    created_at     REAL NOT NULL,
    payload        TEXT NOT NULL,
    json           TEXT NOT NULL
);
CREATE INDEX events_created ON events (created_at);

CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO counters (name, value) VALUES ('event_sequence', 0);
