-- The upload outbox: one row per file to store; the spool copy is deleted only after `done`.
CREATE TABLE uploads (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id        TEXT NOT NULL,
    target          TEXT NOT NULL,
    key             TEXT NOT NULL,
    path            TEXT NOT NULL,
    content_type    TEXT NOT NULL,
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error      TEXT NOT NULL DEFAULT '',
    location        TEXT NOT NULL DEFAULT '',
    size            INTEGER NOT NULL DEFAULT 0,
    checksum        TEXT NOT NULL DEFAULT '',
    created_at      REAL NOT NULL,
    done_at         REAL
);
CREATE INDEX uploads_state ON uploads (state, next_attempt_at);
CREATE INDEX uploads_group ON uploads (group_id);

-- Stored chunks, so ContentService resolves every location it ever announced.
CREATE TABLE chunks (
    document_id       TEXT PRIMARY KEY,
    recording_id      TEXT NOT NULL,
    chunk_index       INTEGER NOT NULL,
    end_reason        TEXT NOT NULL,
    target            TEXT NOT NULL,
    media_key         TEXT NOT NULL,
    metadata_key      TEXT NOT NULL,
    media_type        TEXT NOT NULL,
    content_location  TEXT NOT NULL,
    metadata_location TEXT NOT NULL,
    delete_location   TEXT NOT NULL,
    created_at        REAL NOT NULL,
    deleted_at        REAL
);
CREATE INDEX chunks_recording ON chunks (recording_id, chunk_index);
CREATE INDEX chunks_content ON chunks (content_location);
CREATE INDEX chunks_metadata ON chunks (metadata_location);
CREATE INDEX chunks_delete ON chunks (delete_location);
