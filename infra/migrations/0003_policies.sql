-- Self-orchestration policies: durable timers (retry backoff, escalation expiry), human
-- escalations, saga compensation, re-planning and budgets.

alter table goals drop constraint goals_status_check;
alter table goals add constraint goals_status_check check (status in
    ('planning', 'running', 'completed', 'failed', 'waiting_human', 'cancelled', 'compensating'));
alter table goals add column max_replans int not null default 2;
alter table goals add column replans int not null default 0;
alter table goals add column compensation_policy text not null default 'all';
-- What ended the goal while its compensations still run: status, category and message to report.
alter table goals add column ending jsonb;

alter table tasks drop constraint tasks_status_check;
alter table tasks add constraint tasks_status_check check (status in
    ('pending', 'dispatched', 'evaluating', 'waiting_retry', 'waiting_human', 'succeeded',
     'failed', 'cancelled', 'compensated', 'superseded'));
-- Attempts made before the last human decision; the retry budget counts from there.
alter table tasks add column attempt_floor int not null default 0;
-- For a compensation task: the step it undoes.
alter table tasks add column compensates text;

create table timers (
    timer_id      bigserial primary key,
    goal_id       text not null references goals on delete cascade,
    kind          text not null check (kind in ('retry', 'escalation_expiry')),
    task_id       text,
    escalation_id text,
    due_at        timestamptz not null,
    payload       jsonb not null default '{}',
    created_at    timestamptz not null default now(),
    fired_at      timestamptz
);
create index timers_due on timers (due_at) where fired_at is null;
