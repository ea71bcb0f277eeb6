-- dag-operator: the end of each task try's log, kept past its Pod (issue 16). Written once
-- when the try ends (at most --log-tail-bytes, the last bytes of the log); removed with its
-- run.
CREATE TABLE task_logs (
    run_id     uuid        NOT NULL,
    task_name  text        NOT NULL,
    try_number integer     NOT NULL,
    pod_name   text        NOT NULL,
    -- the log's last bytes (valid UTF-8: a character cut at the start is dropped)
    tail       text        NOT NULL,
    -- the tail is the whole log
    complete   boolean     NOT NULL,
    saved_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT task_logs_pkey PRIMARY KEY (run_id, task_name, try_number),
    CONSTRAINT task_logs_try_fkey FOREIGN KEY (run_id, task_name, try_number)
        REFERENCES task_instances (run_id, task_name, try_number) ON DELETE CASCADE
);
