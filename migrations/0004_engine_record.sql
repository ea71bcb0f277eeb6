-- dag-operator: what the scheduler decided is recorded, so that no restart, crash, removal
-- or second replica can lose or repeat it (issue 13, SPEC §3.5, §11).

-- Manual triggers: one row per (DAG, trigger value), written in the same transaction as the
-- run it created, so a value yields exactly one run. `logical_date` is the date the value was
-- mapped to (the value itself when it is RFC3339, else the moment it was first admitted);
-- `outcome` says whether it created a run or was refused (suspended DAG, bad params, date
-- taken), with `message` saying why.
CREATE TABLE dag_triggers (
    namespace    text        NOT NULL,
    dag_name     text        NOT NULL,
    value        text        NOT NULL,
    logical_date timestamptz,
    run_id       uuid,
    outcome      text        NOT NULL
        CONSTRAINT dag_triggers_outcome_check CHECK (outcome IN ('created', 'refused')),
    message      text,
    handled_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT dag_triggers_pkey PRIMARY KEY (namespace, dag_name, value)
);

-- The latest handled trigger of a DAG (status.lastHandledTrigger).
CREATE INDEX dag_triggers_handled_idx ON dag_triggers (namespace, dag_name, handled_at DESC);

-- A DAG's schedule position: the schedule (expression and zone) it is of, when that schedule
-- began (the DAG's creation, or the change to it), and the latest scheduled tick decided —
-- a run created, or a tick skipped (Forbid, startingDeadlineSeconds, Replace). Planning
-- starts from here whatever removed the DAG from the scheduler (invalid spec, suspend,
-- restart), never from a snapshot taken at start-up.
CREATE TABLE dag_positions (
    namespace      text        NOT NULL,
    dag_name       text        NOT NULL,
    dag_uid        text        NOT NULL,
    schedule       text        NOT NULL,
    schedule_since timestamptz NOT NULL,
    last_tick      timestamptz,
    CONSTRAINT dag_positions_pkey PRIMARY KEY (namespace, dag_name)
);

-- A Backfill's record: when it started and finished (a finished Backfill is never planned
-- again), how many dates it plans, and for a dry run how many it would skip.
CREATE TABLE backfills (
    namespace    text        NOT NULL,
    name         text        NOT NULL,
    uid          text        NOT NULL,
    total        bigint,
    would_skip   bigint,
    started_at   timestamptz,
    completed_at timestamptz,
    phase        text,
    CONSTRAINT backfills_pkey PRIMARY KEY (namespace, name, uid)
);

-- Every date a Backfill is done with: the run it created or re-ran (in the same transaction
-- as that run), or skipped (a run existed that `reprocess` leaves alone). A planned date
-- counts as done only when its row exists; progress is these rows.
CREATE TABLE backfill_dates (
    namespace    text        NOT NULL,
    backfill     text        NOT NULL,
    backfill_uid text        NOT NULL,
    logical_date timestamptz NOT NULL,
    run_id       uuid,
    outcome      text        NOT NULL
        CONSTRAINT backfill_dates_outcome_check CHECK (outcome IN ('created', 'rerun', 'skipped')),
    CONSTRAINT backfill_dates_pkey PRIMARY KEY (namespace, backfill, backfill_uid, logical_date)
);
