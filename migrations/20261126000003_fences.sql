-- The end of an election is a marker in the votes stream (common/src/fence.rs).
-- fence_seq: the stream sequence of its first fence; a ballot counts when
--   the broker stored it before that.
-- fenced_at: when a worker saw the fence (Postgres's clock, the only one
--   compared with it).
-- final_at: when every ballot stored before the fence was recorded or
--   rejected, none waited in quarantine, and at least the publish timeout
--   had passed since fenced_at. Results and live frames are final only then.
ALTER TABLE elections ADD COLUMN fence_seq BIGINT;
ALTER TABLE elections ADD COLUMN fenced_at TIMESTAMPTZ;
ALTER TABLE elections ADD COLUMN final_at TIMESTAMPTZ;
ALTER TABLE elections ADD CONSTRAINT elections_final_after_fence CHECK (final_at IS NULL OR fenced_at IS NOT NULL);
