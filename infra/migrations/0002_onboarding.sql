-- What the customer-onboarding example tools act on (agents/tools/onboarding.py).
-- Every side effect carries the idempotency key of the tool call that caused it, unique, so a
-- repeated call finds its earlier row instead of making a second one. Undoing is a timestamp
-- (deleted_at, cancelled_at, retracted_at), never a delete: the record of what happened stays.

create table onboarding_organisations (
    org_id          text primary key,
    name            text not null,
    slug            text not null,
    idempotency_key text not null unique,
    created_at      timestamptz not null default now(),
    deleted_at      timestamptz
);
-- A slug names one live organisation; once an onboarding is rolled back, it may be used again.
create unique index onboarding_organisations_live_slug
    on onboarding_organisations (slug) where deleted_at is null;

create table onboarding_billing_accounts (
    account_id      text primary key,
    org_id          text not null references onboarding_organisations,
    plan            text not null,
    seats           int not null check (seats >= 1),
    idempotency_key text not null unique,
    created_at      timestamptz not null default now(),
    cancelled_at    timestamptz
);
create index onboarding_billing_accounts_org on onboarding_billing_accounts (org_id);

-- The local outbox that stands in for a mail server: a row here is a sent message.
create table onboarding_emails (
    id              text primary key,
    to_address      text not null,
    subject         text not null,
    body            text not null,
    idempotency_key text not null unique,
    sent_at         timestamptz not null default now(),
    retracted_at    timestamptz
);

-- The team channel sink that stands in for a chat service.
create table onboarding_channel_messages (
    id              text primary key,
    channel         text not null,
    text            text not null,
    idempotency_key text not null unique,
    posted_at       timestamptz not null default now(),
    retracted_at    timestamptz
);
