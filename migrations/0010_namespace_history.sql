-- dag-operator: history does not outlive its namespace (issue 28, finding 8). Runs, tries,
-- kept logs, actions, trigger values and positions are keyed by the namespace's *name*; a
-- namespace deleted and created again (a new tenant) must neither see nor be acted on by the
-- old one's. Each namespace's current incarnation is recorded here: rows of the namespace
-- recorded before `since` (its creationTimestamp; or when it was seen gone) are not the
-- current namespace's — never served, never read by the scheduler — and the leader deletes
-- them a batch at a time; `purged_before` says how far that deletion has got.
CREATE TABLE namespace_epochs (
    namespace     text        PRIMARY KEY,
    -- the uid of the namespace seen last ('' when it was seen gone)
    uid           text        NOT NULL,
    since         timestamptz NOT NULL,
    purged_before timestamptz
);
-- The purge finds a namespace's oldest runs without a scan.
CREATE INDEX dag_runs_namespace_created_idx ON dag_runs (namespace, created_at);
