-- What a recording's finaliser needs from each chunk when another process wrote it (after a restart):
-- its audio samples (16 kHz, for the duration) and its participants (JSON list).
ALTER TABLE chunks ADD COLUMN samples INTEGER NOT NULL DEFAULT 0;
ALTER TABLE chunks ADD COLUMN participants TEXT NOT NULL DEFAULT '[]';
