-- dag-operator: each run executes the DAG spec it was admitted with (issue 12, SPEC §11).
-- A spec version is stored once, content-addressed by the SHA-256 of its JSON; a run names
-- the version it was admitted with. Runs admitted before this migration have no version
-- (NULL): the executor pins the DAG's current spec to them when it first sees them.
CREATE TABLE dag_specs (
    hash       text        PRIMARY KEY,
    spec       jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE dag_runs ADD COLUMN spec_hash text;
