-- The upload outbox in PostgreSQL: every node's uploads in one table, so any node answers for any
-- recording's uploads (a dead node's too). A row belongs to the node whose spool holds its file
-- (`node_id`): only that node attempts, retries, expires and prunes it.
CREATE TABLE uploads (
    id              BIGSERIAL PRIMARY KEY,
    node_id         TEXT NOT NULL,
    group_id        TEXT NOT NULL,
    target          TEXT NOT NULL,
    key             TEXT NOT NULL,
    path            TEXT NOT NULL,
    content_type    TEXT NOT NULL,
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION NOT NULL,
    last_error      TEXT NOT NULL DEFAULT '',
    location        TEXT NOT NULL DEFAULT '',
    size            BIGINT NOT NULL DEFAULT 0,
    checksum        TEXT NOT NULL DEFAULT '',
    created_at      DOUBLE PRECISION NOT NULL,
    queued_at       DOUBLE PRECISION NOT NULL,
    done_at         DOUBLE PRECISION,
    failed_at       DOUBLE PRECISION
);
CREATE INDEX uploads_node_due ON uploads (node_id, state, target, next_attempt_at);
CREATE INDEX uploads_group ON uploads (group_id);
CREATE INDEX uploads_node_done ON uploads (node_id, state, done_at);
