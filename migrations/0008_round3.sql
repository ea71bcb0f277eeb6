-- dag-operator: lifecycle round 3 (issue 27).
-- BufferOne: the scheduled tick waiting in the buffer once the position moved past it (a newer
-- tick skipped); queued again when the DAG is taken up or resumed, unless a run has it.
ALTER TABLE dag_positions ADD COLUMN buffered timestamptz;
-- A Backfill date's run outcome, kept when retention deletes the run (the Backfill counts the
-- date by it, never as cancelled).
ALTER TABLE backfill_dates ADD COLUMN run_state text;
CREATE INDEX backfill_dates_run_idx ON backfill_dates (run_id) WHERE run_id IS NOT NULL;
