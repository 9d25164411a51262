-- Upload deadlines and retention (issue 9): `queued_at` is when an upload was queued or re-queued by
-- RetryUploads (its deadline counts from there, `created_at` stays the first enqueue), `failed_at` when it
-- became failed (failed leftovers are pruned after the failed retention).
ALTER TABLE uploads ADD COLUMN queued_at REAL NOT NULL DEFAULT 0;
UPDATE uploads SET queued_at = created_at;
ALTER TABLE uploads ADD COLUMN failed_at REAL;
UPDATE uploads SET failed_at = MAX(created_at, next_attempt_at) WHERE state = 'failed';
CREATE INDEX uploads_target ON uploads (target, state, next_attempt_at);
CREATE INDEX uploads_done ON uploads (state, done_at)
