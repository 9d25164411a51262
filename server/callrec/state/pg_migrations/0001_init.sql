-- callrec's state in PostgreSQL (cluster mode, SPEC §8): the tables of the SQLite migrations 0001-0005
-- that several nodes share, in PostgreSQL's types, plus the node registry and call ownership.
-- Applied by `state.postgres.PostgresDatabase` under an advisory lock: nodes that start at once
-- migrate one after the other, and each applies only what is missing.

-- Recordings: indexed columns for lookups and paging, the full entity as JSON.
CREATE TABLE recordings (
    seq            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recording_id   TEXT NOT NULL UNIQUE,
    server_call_id TEXT NOT NULL,
    state          TEXT NOT NULL,
    body           TEXT NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL,
    node_id        TEXT NOT NULL DEFAULT ''  -- the node that records it (recovers it after its restart)
);
CREATE INDEX recordings_call ON recordings (server_call_id, seq);
CREATE INDEX recordings_state ON recordings (state, seq);
CREATE INDEX recordings_node ON recordings (node_id, state);

-- StartRecording request_id -> recording, remembered for the idempotency window.
CREATE TABLE idempotency_keys (
    request_id   TEXT PRIMARY KEY,
    recording_id TEXT NOT NULL,
    created_at   DOUBLE PRECISION NOT NULL
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- Stored chunks, so ContentService on any node resolves every location the cluster announced.
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
    samples           BIGINT NOT NULL DEFAULT 0,
    participants      TEXT NOT NULL DEFAULT '[]',
    created_at        DOUBLE PRECISION NOT NULL,
    deleted_at        DOUBLE PRECISION
);
CREATE INDEX chunks_recording ON chunks (recording_id, chunk_index);
CREATE INDEX chunks_content ON chunks (content_location);
CREATE INDEX chunks_metadata ON chunks (metadata_location);
CREATE INDEX chunks_delete ON chunks (delete_location);
CREATE INDEX chunks_target ON chunks (target, created_at) WHERE deleted_at IS NULL;

-- The node registry: each node heartbeats its lease; a lapsed lease means the node is dead.
CREATE TABLE nodes (
    node_id          TEXT PRIMARY KEY,
    advertise        TEXT NOT NULL,
    started_at       TIMESTAMPTZ NOT NULL,
    heartbeat_at     TIMESTAMPTZ NOT NULL,
    lease_expires_at TIMESTAMPTZ NOT NULL,
    capacity         DOUBLE PRECISION NOT NULL DEFAULT 0,
    load             DOUBLE PRECISION NOT NULL DEFAULT 0
);

-- Which node owns each open call: one row per call, so a call never has two owners.
CREATE TABLE call_owners (
    server_call_id TEXT PRIMARY KEY,
    node_id        TEXT NOT NULL,
    claimed_at     TIMESTAMPTZ NOT NULL
);
CREATE INDEX call_owners_node ON call_owners (node_id)
