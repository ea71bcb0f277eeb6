-- dag-operator: task-level actions (issue 29, item 3), like Airflow's Clear and Mark: clear one
-- task of a run so it runs again, or mark it success or failed — optionally with the tasks
-- below it and/or above it (transitively). The task and the choice of relatives are columns of
-- their own (a run action leaves them NULL / false).
ALTER TABLE run_actions DROP CONSTRAINT run_actions_action_check;
ALTER TABLE run_actions ADD CONSTRAINT run_actions_action_check
    CHECK (action IN ('trigger', 'cancel', 'rerun', 'mark_success', 'mark_failed',
                      'clear_task', 'mark_task_success', 'mark_task_failed'));
ALTER TABLE run_actions
    ADD COLUMN task_name  text,
    ADD COLUMN downstream boolean NOT NULL DEFAULT false,
    ADD COLUMN upstream   boolean NOT NULL DEFAULT false;
-- a task action names its task; a run action names none
ALTER TABLE run_actions ADD CONSTRAINT run_actions_task_check
    CHECK ((task_name IS NOT NULL)
           = (action IN ('clear_task', 'mark_task_success', 'mark_task_failed')));
