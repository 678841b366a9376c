-- The ledger: the source of truth for goals, plans, tasks, attempts, verdicts and costs.
-- Every row change here is also published as an event (through the outbox), so the Kafka log
-- alone can rebuild it.

create table goals (
    goal_id              text primary key,
    text                 text not null,
    input                jsonb not null default '{}',
    status               text not null check (status in
                           ('planning', 'running', 'completed', 'failed', 'waiting_human', 'cancelled')),
    max_steps            int not null,
    max_tokens           bigint,
    budget_usd           double precision,
    deadline_at          timestamptz,
    confidence_threshold double precision not null default 0,
    submitted_by         text not null,
    plan_version         int not null default 0,
    steps_used           int not null default 0,
    input_tokens         bigint not null default 0,
    output_tokens        bigint not null default 0,
    cost_usd             double precision not null default 0,
    summary              text,
    error_category       text,
    error_message        text,
    output               jsonb,
    trace_parent         text,
    submitted_at         timestamptz not null,
    created_at           timestamptz not null default now(),
    finished_at          timestamptz
);
create index goals_status on goals (status) where status in ('planning', 'running', 'waiting_human');

create table plans (
    goal_id    text not null references goals on delete cascade,
    version    int not null,
    engine     text not null,
    rationale  text not null default '',
    steps      jsonb not null,
    reason     text not null default '',
    created_at timestamptz not null default now(),
    primary key (goal_id, version)
);

-- One row per plan step (per plan version); ``attempt`` is the current attempt, the epoch that
-- results must match (compare-and-set) to change the row.
create table tasks (
    task_id         text primary key,
    goal_id         text not null references goals on delete cascade,
    plan_version    int not null,
    step_id         text not null,
    tool            text not null,
    arguments       jsonb not null default '{}',
    depends_on      text[] not null default '{}',
    pool            text not null default 'default',
    kind            text not null default 'action',
    status          text not null check (status in
                      ('pending', 'dispatched', 'evaluating', 'succeeded', 'failed',
                       'cancelled', 'compensated')),
    attempt         int not null default 0,
    idempotency_key text not null,
    result          jsonb,
    first_started_at timestamptz,
    finished_at     timestamptz,
    unique (goal_id, plan_version, step_id, kind)
);
create index tasks_goal on tasks (goal_id);

create table attempts (
    task_id       text not null references tasks on delete cascade,
    attempt       int not null,
    status        text not null check (status in ('dispatched', 'completed', 'failed', 'superseded')),
    arguments     jsonb not null default '{}',
    worker_id     text,
    dispatched_at timestamptz not null default now(),
    started_at    timestamptz,
    finished_at   timestamptz,
    category      text,
    message       text,
    result        jsonb,
    input_tokens  bigint not null default 0,
    output_tokens bigint not null default 0,
    cost_usd      double precision not null default 0,
    primary key (task_id, attempt)
);

create table verdicts (
    task_id       text not null,
    attempt       int not null,
    decision      text not null,
    confidence    double precision not null,
    reason        text not null,
    feedback      text,
    input_tokens  bigint not null default 0,
    output_tokens bigint not null default 0,
    cost_usd      double precision not null default 0,
    created_at    timestamptz not null default now(),
    primary key (task_id, attempt),
    foreign key (task_id, attempt) references attempts on delete cascade
);

create table escalations (
    escalation_id  text primary key,
    goal_id        text not null references goals on delete cascade,
    task_id        text references tasks on delete cascade,
    reason         text not null,
    evidence       jsonb not null default '{}',
    options        text[] not null default '{}',
    status         text not null default 'open' check (status in ('open', 'resolved', 'expired')),
    default_action text not null,
    expires_at     timestamptz,
    action         text,
    values         jsonb,
    resolved_by    text,
    created_at     timestamptz not null default now(),
    resolved_at    timestamptz
);

-- Tokens and money, one row per engine call or tool call that spent any.
create table usage_log (
    id            bigserial primary key,
    goal_id       text not null references goals on delete cascade,
    source        text not null,
    input_tokens  bigint not null,
    output_tokens bigint not null,
    cost_usd      double precision not null,
    created_at    timestamptz not null default now()
);

-- Generic memo of tool side effects by idempotency key, for tools without a natural unique key.
create table tool_effects (
    idempotency_key text primary key,
    tool            text not null,
    result          jsonb not null,
    created_at      timestamptz not null default now()
);

-- Transactional outbox: events written in the same transaction as the state change they
-- announce; relayed to Kafka by the writing process right after commit, or by any process's
-- sweeper if that one died first. Consumers de-duplicate, so a repeated relay is harmless.
create table outbox (
    id         bigserial primary key,
    topic      text not null,
    key        bytea,
    value      bytea not null,
    headers    jsonb not null default '[]',
    created_at timestamptz not null default now()
);

-- Inbox: event ids a consumer has applied, written in the same transaction as the effect.
create table inbox (
    consumer   text not null,
    event_id   text not null,
    seen_at    timestamptz not null default now(),
    primary key (consumer, event_id)
);
