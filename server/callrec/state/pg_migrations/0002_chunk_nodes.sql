-- Which node stored each chunk: a chunk in a node's own local store (`local`) is on that node's disk, so
-- a download or delete of it that reaches another node is forwarded there (api/forward.py).
ALTER TABLE chunks ADD COLUMN node_id TEXT NOT NULL DEFAULT ''
