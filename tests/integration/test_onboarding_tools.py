"""The onboarding tools against a real Postgres: effects, idempotency, switches, compensations,
fencing and stopping.

The module runs on a database of its own, created on the stack's server, migrated, and dropped at
the end, so it shares nothing with other tests that use the same server.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg_pool import ConnectionPool
from pydantic import BaseModel

from agents.ledger.migrate import migrate
from agents.runtime.settings import MeshSettings
from agents.tools.base import (
    COMPENSATION_FENCE,
    CancelledError,
    PartialToolError,
    PermanentToolError,
    SupersededError,
    Tool,
    ToolContext,
    ToolError,
    ToolResources,
    ToolTimeoutError,
    TransientToolError,
    action_fence,
)
from agents.tools.onboarding import (
    COMPONENTS,
    ONBOARDING_TOOLS,
    onboarding_registry,
)
from tests.support import assert_eventually, unique

pytestmark = pytest.mark.integration

TOOLS = {t.name: t for t in ONBOARDING_TOOLS}
EFFECT_TABLES = (
    "onboarding_organisations",
    "onboarding_billing_accounts",
    "onboarding_emails",
    "onboarding_channel_messages",
)
CUSTOMER = {
    "company": "  Acme   Rockets ",
    "email": " Ops@Acme.Example ",
    "plan": "Pro",
    "seats": 5,
}


@pytest.fixture(scope="module")
def database_url(stack_settings: MeshSettings) -> Iterator[str]:
    server = stack_settings.database_url.get_secret_value()
    dbname = unique("onboarding_tools_")
    name = sql.Identifier(dbname)
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(name))
    try:
        url = make_conninfo(server, dbname=dbname)
        migrate(url)
        yield url
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(sql.SQL("drop database if exists {} with (force)").format(name))


@pytest.fixture(scope="module")
def pool(database_url: str) -> Iterator[ConnectionPool]:
    db = ConnectionPool(database_url, min_size=1, max_size=4, open=True)
    try:
        yield db
    finally:
        db.close()


@pytest.fixture
def resources(pool: ConnectionPool, tmp_path: Path) -> ToolResources:
    return ToolResources(db=pool, sandbox_dir=tmp_path)


MakeContext = Callable[..., ToolContext]


@pytest.fixture
def make_ctx(resources: ToolResources) -> MakeContext:
    def make(
        key: str | None = None,
        *,
        simulate: dict[str, Any] | None = None,
        attempt: int = 1,
        **fields: Any,
    ) -> ToolContext:
        return ToolContext(
            goal_id="goal-1",
            task_id="task-1",
            step_id="step",
            attempt=attempt,
            idempotency_key=key or unique("key-"),
            goal_input={"simulate": simulate} if simulate else {},
            resources=resources,
            **fields,
        )

    return make


def call(name: str, arguments: dict[str, Any], ctx: ToolContext) -> Any:
    t = TOOLS[name]
    return t.run(t.parse_args(arguments), ctx)


def problems(name: str, arguments: dict[str, Any], result: BaseModel) -> list[str]:
    """The tool's checks as the evaluator applies them, to plain JSON."""
    t: Tool[Any, Any] = TOOLS[name]
    found = [check(arguments, result.model_dump(mode="json")) for check in t.checks]
    return [p for p in found if p]


def effects(pool: ConnectionPool, key: str) -> int:
    """How many rows, over every onboarding table, carry idempotency key ``key``."""
    with pool.connection() as conn:
        return sum(
            conn.execute(
                sql.SQL("select count(*) from {} where idempotency_key = %s").format(
                    sql.Identifier(table)
                ),
                (key,),
            ).fetchone()[0]  # type: ignore[index]
            for table in EFFECT_TABLES
        )


def column(pool: ConnectionPool, query: str, value: Any) -> Any:
    with pool.connection() as conn:
        row = conn.execute(query.encode(), (value,)).fetchone()
    return row[0] if row else None


@pytest.fixture
def org(make_ctx: MakeContext) -> Any:
    return call("create_organisation", {"name": "Acme", "slug": unique("acme-")}, make_ctx())


def action_arguments(name: str, org: Any) -> dict[str, Any]:
    """Valid arguments for each action tool, for an existing organisation."""
    options: dict[str, dict[str, Any]] = {
        "validate_customer_data": dict(CUSTOMER),
        "create_organisation": {"name": "Acme", "slug": unique("acme-")},
        "provision_infrastructure": {"org_id": org.org_id, "slug": org.slug, "region": "eu-west"},
        "configure_billing": {"org_id": org.org_id, "plan": "pro", "seats": 5},
        "send_onboarding_email": {
            "to": "ops@acme.example",
            "company": "Acme",
            "org_id": org.org_id,
        },
        "notify_team_channel": {"text": "Acme is on board"},
    }
    return options[name]


ACTIONS = (
    "validate_customer_data",
    "create_organisation",
    "provision_infrastructure",
    "configure_billing",
    "send_onboarding_email",
    "notify_team_channel",
)


# --- the catalogue --------------------------------------------------------------------------------


def test_every_compensation_is_a_registered_tool_in_the_same_pool() -> None:
    registry = onboarding_registry()
    pairs = {t.name: t.compensation for t in registry if t.compensation}
    assert pairs == {
        "create_organisation": "delete_organisation",
        "provision_infrastructure": "deprovision_infrastructure",
        "configure_billing": "cancel_billing",
        "send_onboarding_email": "retract_onboarding_email",
        "notify_team_channel": "retract_channel_message",
    }
    for action, compensation in pairs.items():
        assert registry.get(compensation).pool == registry.get(action).pool
    assert registry.get("provision_infrastructure").pool == "infra"
    assert registry.get("configure_billing").pool == "billing"
    assert registry.get("configure_billing").retry.max_attempts >= 4
    assert all(t.description for t in registry)


# --- happy paths and idempotency ------------------------------------------------------------------


def test_validate_normalises_and_derives_a_slug(make_ctx: MakeContext) -> None:
    result = call("validate_customer_data", dict(CUSTOMER), make_ctx())

    assert result.model_dump() == {
        "company": "Acme Rockets",
        "email": "ops@acme.example",
        "plan": "pro",
        "seats": 5,
        "region": "eu-west",
        "slug": "acme-rockets",
    }
    assert problems("validate_customer_data", dict(CUSTOMER), result) == []


def test_validate_refuses_bad_data_for_good_listing_every_problem(make_ctx: MakeContext) -> None:
    bad = {"company": " ", "email": "nobody", "plan": "gold", "seats": 0, "region": "mars"}
    with pytest.raises(PermanentToolError) as caught:
        call("validate_customer_data", bad, make_ctx())

    assert caught.value.category == "permanent"
    assert not caught.value.retryable
    assert len(caught.value.details["problems"]) == 6  # company, email, plan, seats, region, slug


@pytest.mark.parametrize("name", ACTIONS)
def test_a_repeated_call_returns_the_same_result_and_changes_nothing(
    name: str, make_ctx: MakeContext, org: Any, pool: ConnectionPool
) -> None:
    arguments = action_arguments(name, org)
    ctx = make_ctx()

    first = call(name, arguments, ctx)
    second = call(name, arguments, ctx)

    assert first == second
    assert problems(name, arguments, first) == []
    expected_rows = 0 if name in ("validate_customer_data", "provision_infrastructure") else 1
    assert effects(pool, ctx.idempotency_key) == expected_rows


def test_create_organisation_stores_the_record(make_ctx: MakeContext, pool: ConnectionPool) -> None:
    slug = unique("acme-")
    result = call("create_organisation", {"name": "Acme", "slug": slug}, make_ctx())

    assert result.slug == slug
    query = "select name from onboarding_organisations where org_id = %s and deleted_at is null"
    assert column(pool, query, result.org_id) == "Acme"


def test_a_taken_slug_is_refused_until_its_organisation_is_deleted(
    make_ctx: MakeContext, org: Any
) -> None:
    again = {"name": "Other", "slug": org.slug}
    with pytest.raises(PermanentToolError) as caught:
        call("create_organisation", again, make_ctx())
    assert caught.value.details["org_id"] == org.org_id

    call("delete_organisation", {"org_id": org.org_id}, make_ctx())
    assert call("create_organisation", again, make_ctx()).org_id != org.org_id


def test_provision_writes_one_manifest_per_component(
    make_ctx: MakeContext, org: Any, tmp_path: Path
) -> None:
    arguments = action_arguments("provision_infrastructure", org)
    ctx = make_ctx()

    result = call("provision_infrastructure", arguments, ctx)
    tenant = tmp_path / "tenants" / org.slug
    written = {p.name: p.stat().st_mtime_ns for p in tenant.iterdir()}
    call("provision_infrastructure", arguments, ctx)

    assert result.tenant_dir == str(tenant)
    assert result.components == list(COMPONENTS)
    assert written == {p.name: p.stat().st_mtime_ns for p in tenant.iterdir()}
    assert sorted(written) == sorted(f"{c}.json" for c in COMPONENTS)
    manifest = json.loads((tenant / "database.json").read_text())
    assert manifest["org_id"] == org.org_id
    assert manifest["idempotency_key"] == ctx.idempotency_key


def test_provision_and_billing_refuse_an_unknown_organisation(make_ctx: MakeContext) -> None:
    ghost = {"org_id": "org_000000000000", "slug": unique("ghost-"), "region": "eu-west"}
    with pytest.raises(PermanentToolError):
        call("provision_infrastructure", ghost, make_ctx())
    with pytest.raises(PermanentToolError):
        call(
            "configure_billing", {"org_id": ghost["org_id"], "plan": "pro", "seats": 1}, make_ctx()
        )


def test_email_lands_in_the_outbox(make_ctx: MakeContext, org: Any, pool: ConnectionPool) -> None:
    arguments = action_arguments("send_onboarding_email", org)
    result = call("send_onboarding_email", arguments, make_ctx())

    query = "select body from onboarding_emails where id = %s"
    assert org.org_id in column(pool, query, result.message_id)
    assert result.to == "ops@acme.example"


def test_notify_posts_to_the_default_channel(make_ctx: MakeContext, pool: ConnectionPool) -> None:
    result = call("notify_team_channel", {"text": "hello"}, make_ctx())

    assert result.channel == "#onboarding"
    query = "select text from onboarding_channel_messages where id = %s"
    assert column(pool, query, result.message_id) == "hello"


# --- compensations --------------------------------------------------------------------------------


def _compensate_twice(name: str, arguments: dict[str, Any], make_ctx: MakeContext) -> Any:
    first = call(name, arguments, make_ctx())
    assert call(name, arguments, make_ctx()) == first
    return first


def test_delete_organisation_undoes_and_is_idempotent(
    make_ctx: MakeContext, org: Any, pool: ConnectionPool
) -> None:
    result = _compensate_twice("delete_organisation", {"org_id": org.org_id}, make_ctx)

    assert result.deleted_at is not None
    query = "select deleted_at from onboarding_organisations where org_id = %s"
    assert column(pool, query, org.org_id) == result.deleted_at


def test_deprovision_removes_everything_and_is_idempotent(
    make_ctx: MakeContext, org: Any, tmp_path: Path
) -> None:
    call("provision_infrastructure", action_arguments("provision_infrastructure", org), make_ctx())

    result = _compensate_twice("deprovision_infrastructure", {"slug": org.slug}, make_ctx)

    assert result.components == list(COMPONENTS)
    assert not (tmp_path / "tenants" / org.slug).exists()


def test_cancel_billing_undoes_and_is_idempotent(
    make_ctx: MakeContext, org: Any, pool: ConnectionPool
) -> None:
    account = call("configure_billing", action_arguments("configure_billing", org), make_ctx())

    result = _compensate_twice("cancel_billing", {"account_id": account.account_id}, make_ctx)

    query = "select cancelled_at from onboarding_billing_accounts where account_id = %s"
    assert result.cancelled_at is not None
    assert column(pool, query, account.account_id) == result.cancelled_at


@pytest.mark.parametrize(
    ("action", "compensation", "table"),
    [
        ("send_onboarding_email", "retract_onboarding_email", "onboarding_emails"),
        ("notify_team_channel", "retract_channel_message", "onboarding_channel_messages"),
    ],
)
def test_retractions_mark_the_message_and_are_idempotent(
    action: str,
    compensation: str,
    table: str,
    make_ctx: MakeContext,
    org: Any,
    pool: ConnectionPool,
) -> None:
    sent = call(action, action_arguments(action, org), make_ctx())

    result = _compensate_twice(compensation, {"message_id": sent.message_id}, make_ctx)

    query = f"select retracted_at from {table} where id = %s"
    assert result.retracted_at is not None
    assert column(pool, query, sent.message_id) == result.retracted_at


@pytest.mark.parametrize(
    ("name", "arguments", "field"),
    [
        ("delete_organisation", {"org_id": "org_missing"}, "deleted_at"),
        ("cancel_billing", {"account_id": "acct_missing"}, "cancelled_at"),
        ("retract_onboarding_email", {"message_id": "msg_missing"}, "retracted_at"),
        ("retract_channel_message", {"message_id": "chm_missing"}, "retracted_at"),
    ],
)
def test_compensating_what_never_happened_is_a_no_op(
    name: str, arguments: dict[str, Any], field: str, make_ctx: MakeContext
) -> None:
    assert getattr(call(name, arguments, make_ctx()), field) is None


# --- simulate switches ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ACTIONS)
def test_fail_times_fails_transiently_then_succeeds(
    name: str, make_ctx: MakeContext, org: Any, pool: ConnectionPool
) -> None:
    arguments = action_arguments(name, org)
    key = unique("key-")
    switches = {name: {"fail_times": 2}}
    for attempt in (1, 2):
        with pytest.raises(TransientToolError) as caught:
            call(name, arguments, make_ctx(key, simulate=switches, attempt=attempt))
        assert caught.value.category == "transient"
        assert caught.value.retryable
        assert effects(pool, key) == 0

    result = call(name, arguments, make_ctx(key, simulate=switches, attempt=3))
    assert problems(name, arguments, result) == []


@pytest.mark.parametrize("name", ACTIONS)
def test_permanent_fails_for_good_before_acting(
    name: str, make_ctx: MakeContext, org: Any, pool: ConnectionPool, tmp_path: Path
) -> None:
    ctx = make_ctx(simulate={name: {"permanent": True}}, attempt=7)
    with pytest.raises(PermanentToolError) as caught:
        call(name, action_arguments(name, org), ctx)

    assert caught.value.category == "permanent"
    assert not caught.value.retryable
    assert effects(pool, ctx.idempotency_key) == 0
    assert not (tmp_path / "tenants").exists()


@pytest.mark.parametrize("name", ACTIONS)
def test_invalid_result_fails_the_tools_own_checks(
    name: str, make_ctx: MakeContext, org: Any
) -> None:
    arguments = action_arguments(name, org)
    result = call(name, arguments, make_ctx(simulate={name: {"invalid_result": True}}))

    assert problems(name, arguments, result)


@pytest.mark.parametrize("name", ["configure_billing", "notify_team_channel"])
def test_delay_s_slows_the_call_down(name: str, make_ctx: MakeContext, org: Any) -> None:
    started = time.monotonic()
    call(name, action_arguments(name, org), make_ctx(simulate={name: {"delay_s": 0.3}}))
    assert time.monotonic() - started >= 0.3


def test_switches_for_other_tools_change_nothing(make_ctx: MakeContext) -> None:
    ctx = make_ctx(simulate={"configure_billing": {"permanent": True}})
    assert call("notify_team_channel", {"text": "hi"}, ctx).channel == "#onboarding"


def test_malformed_switches_are_a_permanent_error(make_ctx: MakeContext) -> None:
    ctx = make_ctx(simulate={"notify_team_channel": {"fail_times": "often", "explode": True}})
    with pytest.raises(PermanentToolError) as caught:
        call("notify_team_channel", {"text": "hi"}, ctx)
    assert len(caught.value.details["errors"]) == 2


@pytest.mark.parametrize("after", [0, 1, 2])
def test_partial_after_provisions_some_components_then_fails(
    after: int, make_ctx: MakeContext, org: Any, tmp_path: Path
) -> None:
    arguments = action_arguments("provision_infrastructure", org)
    ctx = make_ctx(simulate={"provision_infrastructure": {"partial_after": after}})
    with pytest.raises(PartialToolError) as caught:
        call("provision_infrastructure", arguments, ctx)

    done = list(COMPONENTS[:after])
    assert caught.value.category == "partial"
    assert caught.value.details["done"] == done
    tenant = tmp_path / "tenants" / org.slug
    assert sorted(p.name for p in tenant.iterdir()) == sorted(f"{c}.json" for c in done)

    call("deprovision_infrastructure", {"slug": org.slug, "components": done}, make_ctx())
    assert not tenant.exists()


# --- fencing and undoing by key -------------------------------------------------------------------

EFFECTFUL = (
    "create_organisation",
    "provision_infrastructure",
    "configure_billing",
    "send_onboarding_email",
    "notify_team_channel",
)
UNDOES = [  # (action, its compensation, the table, the column the compensation sets)
    ("create_organisation", "delete_organisation", "onboarding_organisations", "deleted_at"),
    ("configure_billing", "cancel_billing", "onboarding_billing_accounts", "cancelled_at"),
    ("send_onboarding_email", "retract_onboarding_email", "onboarding_emails", "retracted_at"),
    (
        "notify_team_channel",
        "retract_channel_message",
        "onboarding_channel_messages",
        "retracted_at",
    ),
]

UNDONE_MARK = {compensation: mark for _, compensation, _, mark in UNDOES}


def fence(pool: ConnectionPool, key: str) -> Any:
    return column(pool, "select token from effect_fences where idempotency_key = %s", key)


def claim(pool: ConnectionPool, key: str, token: int) -> None:
    """A newer attempt's claim on ``key``, as ``fenced`` leaves it."""
    with pool.connection() as conn:
        conn.execute(
            "insert into effect_fences (idempotency_key, token) values (%s, %s)", (key, token)
        )


def acted(pool: ConnectionPool, tmp_path: Path, key: str) -> bool:
    """Whether anything was made under ``key``: a row, or a tenant folder."""
    return effects(pool, key) > 0 or (tmp_path / "tenants").exists()


def undo_by_key(compensation: str, key: str, make_ctx: MakeContext, slug: str) -> Any:
    """Run ``compensation`` as a rollback does when the undone step's result never arrived."""
    arguments = {"slug": slug} if compensation == "deprovision_infrastructure" else {}
    return call(compensation, arguments, make_ctx(fence=COMPENSATION_FENCE, undoes=key))


@pytest.mark.parametrize("name", EFFECTFUL)
def test_a_stale_token_is_refused_as_superseded_and_changes_nothing(
    name: str, make_ctx: MakeContext, org: Any, pool: ConnectionPool, tmp_path: Path
) -> None:
    key = unique("key-")
    claim(pool, key, action_fence(2, 1))

    with pytest.raises(SupersededError) as caught:
        call(name, action_arguments(name, org), make_ctx(key, fence=action_fence(1, 3)))

    assert (caught.value.category, caught.value.retryable) == ("superseded", False)
    assert not acted(pool, tmp_path, key)
    assert fence(pool, key) == action_fence(2, 1)


@pytest.mark.parametrize("name", EFFECTFUL)
def test_a_higher_or_equal_token_acts_and_raises_the_fence(
    name: str, make_ctx: MakeContext, org: Any, pool: ConnectionPool, tmp_path: Path
) -> None:
    key = unique("key-")
    arguments = action_arguments(name, org)
    claim(pool, key, action_fence(1, 1))

    first = call(name, arguments, make_ctx(key, fence=action_fence(1, 2)))
    again = call(name, arguments, make_ctx(key, fence=action_fence(1, 2)))

    assert first == again
    assert acted(pool, tmp_path, key)
    assert fence(pool, key) == action_fence(1, 2)


@pytest.mark.parametrize("name", EFFECTFUL)
def test_an_attempt_under_a_key_its_step_replaced_is_refused(
    name: str, make_ctx: MakeContext, org: Any, pool: ConnectionPool, tmp_path: Path
) -> None:
    """A human's ``set`` gave the step a new key; the old key's attempt, resumed late, is
    fenced off by the step's stem, which the newer attempt claimed."""
    stem = f"{unique('goal')}:step"
    old, new = f"{stem}:{'a' * 16}", f"{stem}:{'b' * 16}"
    call(name, action_arguments(name, org), make_ctx(new, fence=action_fence(1, 2), attempt=2))

    with pytest.raises(SupersededError):
        call(name, action_arguments(name, org), make_ctx(old, fence=action_fence(1, 1)))

    assert effects(pool, old) == 0
    assert (fence(pool, stem), fence(pool, new), fence(pool, old)) == (
        action_fence(1, 2),
        action_fence(1, 2),
        None,
    )


def test_an_unfenced_call_claims_nothing(make_ctx: MakeContext, pool: ConnectionPool) -> None:
    ctx = make_ctx()
    call("notify_team_channel", {"text": "hi"}, ctx)
    assert fence(pool, ctx.idempotency_key) is None


@pytest.mark.parametrize(("action", "compensation", "table", "mark"), UNDOES)
def test_a_compensation_undoes_by_key_and_then_refuses_the_original(
    action: str,
    compensation: str,
    table: str,
    mark: str,
    make_ctx: MakeContext,
    org: Any,
    pool: ConnectionPool,
) -> None:
    key = unique("key-")
    arguments = action_arguments(action, org)
    call(action, arguments, make_ctx(key, fence=action_fence(1, 1)))

    undone = undo_by_key(compensation, key, make_ctx, org.slug)

    query = f"select {mark} from {table} where idempotency_key = %s"
    assert getattr(undone, mark) is not None
    assert column(pool, query, key) == getattr(undone, mark)
    assert undo_by_key(compensation, key, make_ctx, org.slug) == undone  # keeps the first time
    with pytest.raises(SupersededError):
        call(action, arguments, make_ctx(key, fence=action_fence(1, 2), attempt=2))
    assert effects(pool, key) == 1


def test_deprovision_by_key_removes_the_files_and_then_refuses_the_original(
    make_ctx: MakeContext, org: Any, tmp_path: Path
) -> None:
    key = unique("key-")
    arguments = action_arguments("provision_infrastructure", org)
    call("provision_infrastructure", arguments, make_ctx(key, fence=action_fence(1, 1)))

    undo_by_key("deprovision_infrastructure", key, make_ctx, org.slug)

    assert not (tmp_path / "tenants" / org.slug).exists()
    with pytest.raises(SupersededError):
        call("provision_infrastructure", arguments, make_ctx(key, fence=action_fence(1, 2)))
    assert not (tmp_path / "tenants" / org.slug).exists()


@pytest.mark.parametrize(
    ("action", "compensation"),
    [(a, c) for a, c, _, _ in UNDOES]
    + [("provision_infrastructure", "deprovision_infrastructure")],
)
def test_compensating_a_key_without_an_effect_succeeds_and_fences_the_key(
    action: str,
    compensation: str,
    make_ctx: MakeContext,
    org: Any,
    pool: ConnectionPool,
    tmp_path: Path,
) -> None:
    key = unique("key-")

    undone = undo_by_key(compensation, key, make_ctx, org.slug)

    if compensation in UNDONE_MARK:
        assert getattr(undone, UNDONE_MARK[compensation]) is None  # nothing to undo
    with pytest.raises(SupersededError):
        call(action, action_arguments(action, org), make_ctx(key, fence=action_fence(9, 9)))
    assert not acted(pool, tmp_path, key)


@pytest.mark.parametrize("compensation", [c for _, c, _, _ in UNDOES])
def test_a_compensation_without_id_or_undone_key_is_refused(
    compensation: str, make_ctx: MakeContext
) -> None:
    with pytest.raises(PermanentToolError):
        call(compensation, {}, make_ctx(fence=COMPENSATION_FENCE))


@pytest.mark.parametrize("name", ["notify_team_channel", "provision_infrastructure"])
@pytest.mark.parametrize(
    ("how", "error"), [("given_up", ToolTimeoutError), ("goal_cancelled", CancelledError)]
)
def test_a_slow_call_told_to_stop_stops_without_effect(
    name: str,
    how: str,
    error: type[ToolError],
    make_ctx: MakeContext,
    org: Any,
    pool: ConnectionPool,
    tmp_path: Path,
) -> None:
    stop = threading.Event()
    told = {"given_up": stop} if how == "given_up" else {"goal_cancelled": stop.is_set}
    ctx = make_ctx(simulate={name: {"delay_s": 120}}, **told)
    with ThreadPoolExecutor(1) as thread:
        running = thread.submit(call, name, action_arguments(name, org), ctx)
        stop.set()
        assert isinstance(running.exception(timeout=10), error)
    assert not acted(pool, tmp_path, ctx.idempotency_key)


def test_a_provision_past_its_deadline_does_nothing(
    make_ctx: MakeContext, org: Any, tmp_path: Path
) -> None:
    arguments = action_arguments("provision_infrastructure", org)
    with pytest.raises(ToolTimeoutError):
        call("provision_infrastructure", arguments, make_ctx(deadline=time.monotonic()))
    assert not (tmp_path / "tenants").exists()


def waiting_for_a_lock(pool: ConnectionPool) -> bool:
    """Whether a session of this test database waits for a lock (a fence held by another)."""
    with pool.connection() as conn:
        row = conn.execute(
            "select exists (select from pg_stat_activity "
            "where datname = current_database() and wait_event_type = 'Lock')"
        ).fetchone()
    return bool(row and row[0])


def test_a_compensation_waits_for_a_provision_in_flight_then_removes_its_files(
    make_ctx: MakeContext, org: Any, tmp_path: Path, pool: ConnectionPool
) -> None:
    key = unique("key-")
    inside, release = threading.Event(), threading.Event()

    def held() -> bool:
        # Read by provision's checkpoint, with its fence claimed and no file written yet: it
        # keeps the call in flight until released.
        inside.set()
        return not release.wait(30)

    arguments = action_arguments("provision_infrastructure", org)
    in_flight = make_ctx(key, fence=action_fence(1, 1), goal_cancelled=held)
    with ThreadPoolExecutor(2) as threads:
        provisioned = threads.submit(call, "provision_infrastructure", arguments, in_flight)
        assert inside.wait(10)
        removed = threads.submit(undo_by_key, "deprovision_infrastructure", key, make_ctx, org.slug)
        assert_eventually(lambda: waiting_for_a_lock(pool), what="the compensation waits")
        assert not removed.done()
        release.set()
        assert provisioned.result(timeout=10).components == list(COMPONENTS)
        assert removed.result(timeout=10).components == list(COMPONENTS)
    assert not (tmp_path / "tenants" / org.slug).exists()
