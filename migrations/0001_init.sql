-- dag-operator: runs and task instances (SPEC §6).
-- Applied by `sqlx::migrate!` under sqlx's PostgreSQL advisory lock (see src/store/pg.rs).
-- Never edit an applied migration: sqlx checks its checksum. Add 0002_*.sql instead.

CREATE TABLE dag_runs (
    id                  uuid        PRIMARY KEY,
    namespace           text        NOT NULL,
    dag_name            text        NOT NULL,
    dag_uid             text        NOT NULL,
    run_type            text        NOT NULL
        CONSTRAINT dag_runs_run_type_check CHECK (run_type IN ('scheduled', 'manual', 'backfill')),
    backfill_name       text,
    logical_date        timestamptz NOT NULL,
    data_interval_start timestamptz NOT NULL,
    data_interval_end   timestamptz NOT NULL,
    priority            integer     NOT NULL DEFAULT 0,
    state               text        NOT NULL
        CONSTRAINT dag_runs_state_check
        CHECK (state IN ('running', 'success', 'failed', 'cancelled')),
    params              jsonb       NOT NULL DEFAULT '{}'::jsonb,
    attempt             integer     NOT NULL DEFAULT 1
        CONSTRAINT dag_runs_attempt_check CHECK (attempt >= 1),
    created_at          timestamptz NOT NULL DEFAULT now(),
    started_at          timestamptz,
    ended_at            timestamptz,
    CONSTRAINT dag_runs_interval_check CHECK (data_interval_start <= data_interval_end),
    -- Run identity (SPEC §3.3): creating a run is idempotent. This index also serves
    -- "runs of a DAG by logical_date desc" (a backward scan), so there is no second one.
    CONSTRAINT dag_runs_identity UNIQUE (namespace, dag_name, logical_date)
);

-- Running runs (the engine rebuilds its state from them after a restart). Small: only
-- running rows are in it.
CREATE INDEX dag_runs_running_idx ON dag_runs (namespace, dag_name, logical_date)
    WHERE state = 'running';

-- Last scheduled run per DAG (catch-up after downtime, SPEC §3.3): manual and backfill runs
-- must not move a DAG's schedule, so only scheduled runs are indexed.
CREATE INDEX dag_runs_last_scheduled_idx ON dag_runs (namespace, dag_name, logical_date DESC)
    WHERE run_type = 'scheduled';

-- `dag-operator runs` without a DAG name: newest runs across DAGs and namespaces.
CREATE INDEX dag_runs_logical_date_idx ON dag_runs (logical_date DESC);

CREATE TABLE task_instances (
    run_id      uuid        NOT NULL REFERENCES dag_runs (id) ON DELETE CASCADE,
    task_name   text        NOT NULL,
    try_number  integer     NOT NULL DEFAULT 1
        CONSTRAINT task_instances_try_number_check CHECK (try_number >= 1),
    state       text        NOT NULL DEFAULT 'pending'
        CONSTRAINT task_instances_state_check CHECK (state IN (
            'pending', 'queued', 'running', 'success', 'failed',
            'up_for_retry', 'upstream_failed', 'skipped', 'cancelled')),
    pool        text,
    pool_slots  integer     NOT NULL DEFAULT 1
        CONSTRAINT task_instances_pool_slots_check CHECK (pool_slots >= 1),
    pod_name    text,
    exit_code   integer,
    message     text,
    queued_at   timestamptz,
    started_at  timestamptz,
    ended_at    timestamptz,
    -- Earlier tries stay in the table (SPEC §6); the key also indexes run_id for the
    -- foreign key's cascade and for "task instances of these runs".
    CONSTRAINT task_instances_pkey PRIMARY KEY (run_id, task_name, try_number)
);
