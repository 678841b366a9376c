-- The highest fencing token seen per effect key (agents/tools/effects.py). A tool claims its
-- effect's key with its attempt's token in the transaction that makes the effect; a lower token
-- than the stored one is refused, so a superseded attempt, or one whose effect a compensation has
-- already claimed, cannot act any more. A compensation claims the key of the effect it undoes.
create table effect_fences (
    idempotency_key text primary key,
    token           bigint not null,
    updated_at      timestamptz not null default now()
);
