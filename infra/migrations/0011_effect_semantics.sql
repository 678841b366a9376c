-- Effect semantics (docs/delivery.md, "Effects, fencing and rollback"). An attempt records the
-- idempotency key and fencing token it ran under and its outcome: succeeded, failed (the tool
-- did nothing) or unknown (it may have taken effect). A task keeps what its attempts may have
-- done, per key, with the arguments and result to undo it by (what a rollback undoes, in every
-- plan version), its losses to the infrastructure (a budget of their own) and the generation of
-- its key (a changed call is a new key). A goal keeps its early-termination counters and its open questions; its deadline is
-- a durable timer.
alter table attempts
    add column idempotency_key text,
    add column fence bigint not null default 0,
    add column outcome text check (outcome in ('succeeded', 'failed', 'unknown')),
    add column feedback text;

alter table tasks
    add column effects jsonb not null default '[]',
    add column infra_losses int not null default 0,
    add column generation int not null default 0,
    add column undoes text;

alter table goals
    add column failures jsonb not null default '{}',
    add column since_accept int not null default 0,
    add column escalations jsonb not null default '{}',
    drop column kept_by,
    drop column revision;

alter table timers drop constraint timers_kind_check;
alter table timers add constraint timers_kind_check
    check (kind in ('retry', 'escalation_expiry', 'deadline'));
