"""The customer-onboarding tool set: the example the demo runs end to end.

Validate the submitted data, create the organisation record, provision its infrastructure (files
under the sandbox folder), configure billing, send the welcome email (a local outbox table) and
tell the team channel (a local sink table). Each tool with a side effect has a compensating tool.
Every side effect is keyed by the call's idempotency key, so repeating a call returns the first
call's result and changes nothing, and is made under the key's fence (``agents.tools.effects``),
so a superseded attempt cannot act. A compensation undoes by the id the action returned or, when
that result never arrived, by the undone effect's key.

Every tool obeys the goal's ``simulate`` switches (``{"simulate": {"<tool>": {...}}}``), so the
failure paths can be shown: ``fail_times``, ``permanent``, ``partial_after``, ``delay_s`` and
``invalid_result``. docs/tools.md describes them.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agents.tools.base import (
    HUMAN_RETRY,
    Check,
    PartialToolError,
    PermanentToolError,
    Registry,
    RetryPolicy,
    Tool,
    ToolContext,
    TransientToolError,
    tool,
)
from agents.tools.effects import fenced

PLANS: Final = ("starter", "pro", "enterprise")
REGIONS: Final = ("eu-west", "eu-central", "us-east", "us-west", "ap-southeast")
COMPONENTS: Final = ("database", "storage", "network")
SLUG = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[a-z]{2,}$")
_MAX_SLUG = 40

Plan = Literal["starter", "pro", "enterprise"]
Component = Literal["database", "storage", "network"]

A = TypeVar("A", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)


# --- simulate switches -------------------------------------------------------------------------


class Simulate(BaseModel):
    """The switches one tool reads from the goal input's ``simulate`` object."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fail_times: int = Field(0, ge=0)
    permanent: bool = False
    partial_after: int | None = Field(None, ge=0)
    delay_s: float = Field(0.0, ge=0)
    invalid_result: bool = False
    down: bool = False  # transient failures until a human answers the escalation with retry/set
    # Read by the offline engine's judgement, not by the tool (see docs/tools.md).
    confidence: float | None = Field(None, ge=0, le=1)
    replan: bool = False


def _simulated(tool_name: str, ctx: ToolContext) -> Simulate:
    """Read ``tool_name``'s switches and act out the slowness and failures that precede any work.

    ``partial_after`` and ``invalid_result`` are left to the tool, which knows what they mean.
    """
    try:
        switches = Simulate.model_validate(dict(ctx.simulate(tool_name)))
    except ValidationError as exc:
        raise PermanentToolError(
            f"the simulate switches for {tool_name} are invalid",
            details={"errors": exc.errors(include_url=False, include_context=False)},
        ) from exc
    if switches.delay_s:
        ctx.sleep(switches.delay_s)  # stops early, before any effect, when told to stop
    if switches.permanent:
        raise PermanentToolError(f"{tool_name} failed for good (simulated)")
    if ctx.attempt <= switches.fail_times:
        raise TransientToolError(
            f"{tool_name} is unavailable (simulated, attempt {ctx.attempt} of "
            f"{switches.fail_times} failing)",
            details={"attempt": ctx.attempt},
        )
    if switches.down and not (ctx.feedback or "").startswith(HUMAN_RETRY):
        raise TransientToolError(f"{tool_name} is down (simulated, until a human retries)")
    return switches


# --- shared helpers ----------------------------------------------------------------------------


_UNDO: Final = (
    "update {table} set {mark} = coalesce({mark}, now()) where {column} = %s returning {id}, {mark}"
)


def _undo(
    ctx: ToolContext, table: str, id_column: str, mark: str, ident: str | None
) -> tuple[str | None, datetime | None]:
    """Set ``mark`` on the row ``ident`` (without it: the row the undone effect's key made),
    keeping the first time; ``(ident, None)`` when there is no such row, as nothing is to undo.

    The compensation's fence claims the undone key first, so a late attempt of the action is
    refused afterwards and one in flight is waited for.
    """
    column, value = (id_column, ident) if ident is not None else ("idempotency_key", _undoes(ctx))
    query = sql.SQL(_UNDO).format(
        table=sql.Identifier(table),
        mark=sql.Identifier(mark),
        column=sql.Identifier(column),
        id=sql.Identifier(id_column),
    )
    with fenced(ctx) as conn:
        row = conn.execute(query, (value,)).fetchone()
    return (row[0], row[1]) if row else (ident, None)


def _undoes(ctx: ToolContext) -> str:
    if ctx.undoes is None:
        raise PermanentToolError(
            "nothing says what to undo: give the id, or run it as a compensation naming the key "
            "of the effect it undoes"
        )
    return ctx.undoes


def _new_id(prefix: str, length: int) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:length]}"


def _typed_check(
    args_model: type[A], result_model: type[R], rule: Callable[[A, R], str | None]
) -> Check:
    """A ``Check`` that accepts models or plain JSON objects, as the evaluator may hold either."""

    def check(arguments: Any, result: Any) -> str | None:
        try:
            args = _coerce(args_model, arguments)
            res = _coerce(result_model, result)
        except ValidationError as exc:
            return (
                f"the result does not match {result_model.__name__}: {exc.error_count()} error(s)"
            )
        return rule(args, res)

    check.__name__ = rule.__name__
    return check


def _coerce(model: type[A], value: Any) -> A:
    return value if isinstance(value, model) else model.model_validate(value)


def _matches(pattern: str, value: str, what: str) -> str | None:
    return None if re.fullmatch(pattern, value) else f"{what} {value!r} is malformed"


# --- validate_customer_data --------------------------------------------------------------------


class CustomerData(BaseModel):
    """Customer data as submitted; deliberately loose so bad values reach the validation rules."""

    company: str = Field(description="the company's name")
    email: str = Field(description="the address of the customer's administrator")
    plan: str = Field(description="one of: starter, pro, enterprise")
    seats: int = Field(description="number of seats, at least 1")
    region: str = Field("eu-west", description=f"one of: {', '.join(REGIONS)}")
    slug: str | None = Field(
        None, description="short name used in URLs; derived from the company when omitted"
    )


class ValidCustomer(BaseModel):
    company: str
    email: str
    plan: str
    seats: int
    region: str
    slug: str


def _slug_of(company: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", company.lower()).strip("-")[:_MAX_SLUG].strip("-")


def _normalised(data: CustomerData) -> ValidCustomer:
    return ValidCustomer(
        company=" ".join(data.company.split()),
        email=data.email.strip().lower(),
        plan=data.plan.strip().lower(),
        seats=data.seats,
        region=data.region.strip().lower(),
        slug=(data.slug or "").strip().lower() or _slug_of(data.company),
    )


def _problems(c: ValidCustomer) -> list[str]:
    rules = [
        (bool(c.company), "the company name is empty"),
        (bool(_EMAIL.match(c.email)), f"{c.email!r} is not an email address"),
        (c.plan in PLANS, f"plan {c.plan!r} is not one of {', '.join(PLANS)}"),
        (c.seats >= 1, f"seats must be at least 1, not {c.seats}"),
        (c.region in REGIONS, f"region {c.region!r} is not one of {', '.join(REGIONS)}"),
        (_matches(SLUG, c.slug, "slug") is None, f"slug {c.slug!r} is not usable"),
        (len(c.slug) <= _MAX_SLUG, f"the slug is longer than {_MAX_SLUG} characters"),
    ]
    return [problem for ok, problem in rules if not ok]


def _valid_slug(args: CustomerData, result: ValidCustomer) -> str | None:
    return _matches(SLUG, result.slug, "slug")


def _same_email(args: CustomerData, result: ValidCustomer) -> str | None:
    expected = args.email.strip().lower()
    if result.email != expected:
        return f"email {result.email!r} is not the submitted address {expected!r}"
    return None


@tool(
    timeout_s=10.0,
    checks=[
        _typed_check(CustomerData, ValidCustomer, _valid_slug),
        _typed_check(CustomerData, ValidCustomer, _same_email),
    ],
)
def validate_customer_data(args: CustomerData, ctx: ToolContext) -> ValidCustomer:
    """Check and normalise a new customer's submitted data before anything is created.

    Trims and lower-cases the email, plan and region, and derives a URL slug from the company
    name unless one is given. Returns the normalised data. Fails permanently, listing every
    problem in details.problems, when the data is unusable: an empty company, a malformed email,
    an unknown plan (starter, pro, enterprise) or region, fewer than one seat, or a bad slug.
    Repeating the call is harmless; it has no side effects.
    """
    switches = _simulated("validate_customer_data", ctx)
    data = _normalised(args)
    problems = _problems(data)
    if problems:
        raise PermanentToolError(
            "the customer data is invalid: " + "; ".join(problems),
            details={"problems": problems},
        )
    if switches.invalid_result:
        return data.model_copy(update={"slug": data.slug.upper() + "!"})
    return data


# --- create_organisation / delete_organisation -------------------------------------------------


class OrganisationArgs(BaseModel):
    name: str = Field(min_length=1, description="the company's name")
    slug: str = Field(pattern=SLUG, max_length=_MAX_SLUG, description="the organisation's slug")


class Organisation(BaseModel):
    org_id: str
    slug: str


class OrganisationRef(BaseModel):
    org_id: str | None = Field(
        None, description="the organisation to delete; when omitted, the one the undone step made"
    )


class OrganisationDeleted(BaseModel):
    org_id: str | None = Field(description="null when none was found")
    deleted_at: datetime | None = Field(description="null when there was no such organisation")


def _org_id_format(args: OrganisationArgs, result: Organisation) -> str | None:
    return _matches(r"^org_[0-9a-f]{12}$", result.org_id, "org_id")


def _same_slug(args: OrganisationArgs, result: Organisation) -> str | None:
    if result.slug != args.slug:
        return f"the organisation has slug {result.slug!r}, not the requested {args.slug!r}"
    return None


def _slug_owner(conn: psycopg.Connection[TupleRow], slug: str) -> str:
    row = conn.execute(
        "select org_id from onboarding_organisations where slug = %s and deleted_at is null",
        (slug,),
    ).fetchone()
    return str(row[0]) if row else "unknown"


@tool(
    timeout_s=15.0,
    compensation="delete_organisation",
    scope=["orgs:write"],
    checks=[
        _typed_check(OrganisationArgs, Organisation, _org_id_format),
        _typed_check(OrganisationArgs, Organisation, _same_slug),
    ],
)
def create_organisation(args: OrganisationArgs, ctx: ToolContext) -> Organisation:
    """Create the organisation record for a new customer.

    Returns its org_id and slug. Fails permanently when another live organisation already uses
    the slug. Calling it again for the same step returns the same organisation.
    Undone by delete_organisation.
    """
    switches = _simulated("create_organisation", ctx)
    with fenced(ctx) as conn:
        # No conflict target: a repeat (same key) and a taken slug both insert nothing, and the
        # select below tells them apart.
        conn.execute(
            "insert into onboarding_organisations (org_id, name, slug, idempotency_key) "
            "values (%s, %s, %s, %s) on conflict do nothing",
            (_new_id("org", 12), args.name, args.slug, ctx.idempotency_key),
        )
        row = conn.execute(
            "select org_id, slug from onboarding_organisations where idempotency_key = %s",
            (ctx.idempotency_key,),
        ).fetchone()
        if row is None:
            owner = _slug_owner(conn, args.slug)
            raise PermanentToolError(
                f"slug {args.slug!r} is already used by organisation {owner}",
                details={"slug": args.slug, "org_id": owner},
            )
    result = Organisation(org_id=row[0], slug=row[1])
    if switches.invalid_result:
        return result.model_copy(update={"slug": f"{result.slug}-x"})
    return result


@tool(timeout_s=15.0, scope=["orgs:write"])
def delete_organisation(args: OrganisationRef, ctx: ToolContext) -> OrganisationDeleted:
    """Undo create_organisation: mark the organisation deleted, freeing its slug.

    The record is kept with its deletion time; deleting it again keeps the first time. Without
    org_id it deletes the organisation the undone step created. Returns deleted_at null when
    there is no such organisation, as there is nothing to undo.
    """
    _simulated("delete_organisation", ctx)
    org_id, deleted_at = _undo(ctx, "onboarding_organisations", "org_id", "deleted_at", args.org_id)
    return OrganisationDeleted(org_id=org_id, deleted_at=deleted_at)


# --- provision_infrastructure / deprovision_infrastructure -------------------------------------


class InfrastructureArgs(BaseModel):
    org_id: str = Field(description="the organisation the infrastructure belongs to")
    slug: str = Field(pattern=SLUG, max_length=_MAX_SLUG, description="the organisation's slug")
    region: str = Field("eu-west", description=f"one of: {', '.join(REGIONS)}")


class Infrastructure(BaseModel):
    tenant_dir: str
    components: list[str]


class DeprovisionArgs(BaseModel):
    slug: str = Field(pattern=SLUG, max_length=_MAX_SLUG, description="the organisation's slug")
    components: list[Component] | None = Field(
        None, description="what to remove; every component when omitted"
    )


class Deprovisioned(BaseModel):
    slug: str
    components: list[str]


def _all_components(args: InfrastructureArgs, result: Infrastructure) -> str | None:
    missing = [c for c in COMPONENTS if c not in result.components]
    return f"components {missing} were not provisioned" if missing else None


def _tenant_dir(ctx: ToolContext, slug: str) -> Path:
    # The slug pattern admits no separators or dots, so this stays inside the sandbox.
    return ctx.resources.sandbox_dir / "tenants" / slug


def _manifest(component: str, args: InfrastructureArgs, ctx: ToolContext) -> dict[str, Any]:
    specifics: dict[str, dict[str, Any]] = {
        "database": {"engine": "postgres", "name": f"tenant_{args.slug.replace('-', '_')}"},
        "storage": {"bucket": f"{args.slug}-{args.region}"},
        "network": {"vpc": f"vpc-{args.slug}", "cidr": "10.0.0.0/16"},
    }
    return {
        "component": component,
        "org_id": args.org_id,
        "slug": args.slug,
        "region": args.region,
        "idempotency_key": ctx.idempotency_key,
        **specifics[component],
    }


def _write_once(path: Path, content: dict[str, Any]) -> None:
    """Write ``path`` atomically unless it exists; a reader never sees half a file."""
    if path.exists():
        return
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(content, indent=2, sort_keys=True), encoding="utf-8")
    tmp.replace(path)


def _require_own(path: Path, org_id: str) -> None:
    """Refuse a manifest another organisation wrote (before anything is written)."""
    if not path.exists():
        return
    owner = json.loads(path.read_text(encoding="utf-8")).get("org_id")
    if owner != org_id:
        raise PermanentToolError(
            f"{path} belongs to organisation {owner}, not {org_id}",
            details={"path": str(path), "org_id": owner},
        )


def _require_live_org(conn: psycopg.Connection[TupleRow], org_id: str) -> None:
    row = conn.execute(
        "select 1 from onboarding_organisations where org_id = %s and deleted_at is null",
        (org_id,),
    ).fetchone()
    if row is None:
        raise PermanentToolError(f"there is no live organisation {org_id}")


@tool(
    timeout_s=60.0,
    compensation="deprovision_infrastructure",
    pool="infra",
    scope=["infra:write"],
    checks=[_typed_check(InfrastructureArgs, Infrastructure, _all_components)],
)
def provision_infrastructure(args: InfrastructureArgs, ctx: ToolContext) -> Infrastructure:
    """Provision a new organisation's infrastructure: its database, storage and network.

    Components are provisioned one by one into the tenant folder. Returns the folder and the
    components. A partial failure lists the components already provisioned in details.done;
    they must be removed with deprovision_infrastructure. Calling it again for the same step
    leaves what exists as it is. Fails permanently for an unknown or deleted organisation.
    """
    switches = _simulated("provision_infrastructure", ctx)
    tenant = _tenant_dir(ctx, args.slug)
    stop = len(COMPONENTS) if switches.partial_after is None else switches.partial_after
    done = list(COMPONENTS[:stop])
    paths = [tenant / f"{component}.json" for component in done]
    # The fence stays claimed while the files are written: a compensation of this step waits
    # for them, and the partial failure below is raised only once the claim is committed.
    with fenced(ctx) as conn:
        _require_live_org(conn, args.org_id)
        for path in paths:
            _require_own(path, args.org_id)
        ctx.checkpoint()  # the last point at which stopping leaves nothing done
        tenant.mkdir(parents=True, exist_ok=True)
        for component, path in zip(done, paths, strict=True):
            _write_once(path, _manifest(component, args, ctx))
    if switches.partial_after is not None:
        raise PartialToolError(
            f"provisioning stopped after {len(done)} of {len(COMPONENTS)} components (simulated)",
            details={
                "done": done,
                "components": done,  # what the compensating tool should remove
                "slug": args.slug,
                "tenant_dir": str(tenant),
            },
        )
    if switches.invalid_result:
        done = done[:-1]
    return Infrastructure(tenant_dir=str(tenant), components=done)


@tool(timeout_s=60.0, pool="infra", scope=["infra:write"])
def deprovision_infrastructure(args: DeprovisionArgs, ctx: ToolContext) -> Deprovisioned:
    """Undo provision_infrastructure: remove the given components (all when omitted).

    Removes the tenant folder once it is empty. Components already gone are fine; the result
    lists the components that are now absent. As a compensation it first waits for a provision
    still writing under the undone step's key, and refuses that step's later attempts.
    """
    _simulated("deprovision_infrastructure", ctx)
    tenant = _tenant_dir(ctx, args.slug)
    targets = list(COMPONENTS) if args.components is None else list(args.components)
    with fenced(ctx):
        for component in targets:
            (tenant / f"{component}.json").unlink(missing_ok=True)
        if tenant.is_dir() and not any(tenant.iterdir()):
            tenant.rmdir()
    return Deprovisioned(slug=args.slug, components=targets)


# --- configure_billing / cancel_billing --------------------------------------------------------


class BillingArgs(BaseModel):
    org_id: str = Field(description="the organisation to bill")
    plan: Plan = Field(description="the subscription plan")
    seats: int = Field(ge=1, description="number of seats")


class BillingAccount(BaseModel):
    account_id: str
    org_id: str
    plan: str
    seats: int


class BillingRef(BaseModel):
    account_id: str | None = Field(
        None, description="the billing account to cancel; when omitted, the undone step's"
    )


class BillingCancelled(BaseModel):
    account_id: str | None = Field(description="null when none was found")
    cancelled_at: datetime | None = Field(description="null when there was no such account")


def _account_id_format(args: BillingArgs, result: BillingAccount) -> str | None:
    return _matches(r"^acct_[0-9a-f]{16}$", result.account_id, "account_id")


def _same_terms(args: BillingArgs, result: BillingAccount) -> str | None:
    asked = (args.org_id, args.plan, args.seats)
    got = (result.org_id, result.plan, result.seats)
    return None if asked == got else f"the account has {got}, not the requested {asked}"


@tool(
    timeout_s=20.0,
    retry=RetryPolicy(max_attempts=5, initial_delay_s=0.5, factor=2.0, max_delay_s=8.0),
    compensation="cancel_billing",
    pool="billing",
    scope=["billing:write"],
    rate_limit_per_s=10.0,
    checks=[
        _typed_check(BillingArgs, BillingAccount, _account_id_format),
        _typed_check(BillingArgs, BillingAccount, _same_terms),
    ],
)
def configure_billing(args: BillingArgs, ctx: ToolContext) -> BillingAccount:
    """Open the billing account for an organisation on a plan with a number of seats.

    Returns the account (account_id, org_id, plan, seats). The billing API can be briefly
    unavailable; such failures are transient and worth retrying. Fails permanently for an
    unknown or deleted organisation. Calling it again for the same step returns the same
    account. Undone by cancel_billing.
    """
    switches = _simulated("configure_billing", ctx)
    with fenced(ctx) as conn:
        # Insert-from-select: the account is only opened for a live organisation.
        conn.execute(
            "insert into onboarding_billing_accounts "
            "(account_id, org_id, plan, seats, idempotency_key) "
            "select %s, org_id, %s, %s, %s from onboarding_organisations "
            "where org_id = %s and deleted_at is null "
            "on conflict (idempotency_key) do nothing",
            (_new_id("acct", 16), args.plan, args.seats, ctx.idempotency_key, args.org_id),
        )
        row = conn.execute(
            "select account_id, org_id, plan, seats from onboarding_billing_accounts "
            "where idempotency_key = %s",
            (ctx.idempotency_key,),
        ).fetchone()
    if row is None:
        raise PermanentToolError(f"there is no live organisation {args.org_id} to bill")
    account = BillingAccount(account_id=row[0], org_id=row[1], plan=row[2], seats=row[3])
    if switches.invalid_result:
        return account.model_copy(update={"account_id": account.account_id.upper()})
    return account


@tool(timeout_s=20.0, pool="billing", scope=["billing:write"])
def cancel_billing(args: BillingRef, ctx: ToolContext) -> BillingCancelled:
    """Undo configure_billing: cancel the billing account.

    Cancelling again keeps the first cancellation time. Without account_id it cancels the
    account the undone step opened. Returns cancelled_at null when there is no such account, as
    there is nothing to undo.
    """
    _simulated("cancel_billing", ctx)
    account_id, cancelled_at = _undo(
        ctx, "onboarding_billing_accounts", "account_id", "cancelled_at", args.account_id
    )
    return BillingCancelled(account_id=account_id, cancelled_at=cancelled_at)


# --- send_onboarding_email / retract_onboarding_email ------------------------------------------


class EmailArgs(BaseModel):
    to: str = Field(description="the recipient's address")
    company: str = Field(description="the company's name, for the greeting")
    org_id: str = Field(description="the new organisation's id")


class EmailSent(BaseModel):
    message_id: str
    to: str


class MessageRef(BaseModel):
    message_id: str | None = Field(
        None, description="the message to retract; when omitted, the one the undone step sent"
    )


class Retracted(BaseModel):
    message_id: str | None = Field(description="null when none was found")
    retracted_at: datetime | None = Field(description="null when there was no such message")


def _retract(ctx: ToolContext, table: str, args: MessageRef) -> Retracted:
    message_id, retracted_at = _undo(ctx, table, "id", "retracted_at", args.message_id)
    return Retracted(message_id=message_id, retracted_at=retracted_at)


def _same_recipient(args: EmailArgs, result: EmailSent) -> str | None:
    expected = args.to.strip().lower()
    if result.to != expected:
        return f"the email went to {result.to!r}, not {expected!r}"
    return None


def _welcome(company: str, org_id: str) -> tuple[str, str]:
    subject = f"Welcome aboard, {company}"
    body = (
        f"Hello {company},\n\nyour organisation {org_id} is ready: its database, storage and "
        "network are provisioned and billing is set up.\n\nThe onboarding team\n"
    )
    return subject, body


@tool(
    timeout_s=15.0,
    compensation="retract_onboarding_email",
    scope=["email:send"],
    rate_limit_per_s=5.0,
    checks=[_typed_check(EmailArgs, EmailSent, _same_recipient)],
)
def send_onboarding_email(args: EmailArgs, ctx: ToolContext) -> EmailSent:
    """Send the welcome email to the customer's administrator once everything is set up.

    Returns the message_id and the address it went to. Fails permanently for a malformed
    address. Calling it again for the same step does not send a second email.
    Undone (as far as mail can be) by retract_onboarding_email.
    """
    switches = _simulated("send_onboarding_email", ctx)
    to = args.to.strip().lower()
    if not _EMAIL.match(to):
        raise PermanentToolError(f"{args.to!r} is not an email address")
    subject, body = _welcome(args.company, args.org_id)
    with fenced(ctx) as conn:
        conn.execute(
            "insert into onboarding_emails (id, to_address, subject, body, idempotency_key) "
            "values (%s, %s, %s, %s, %s) on conflict (idempotency_key) do nothing",
            (_new_id("msg", 16), to, subject, body, ctx.idempotency_key),
        )
        row = conn.execute(
            "select id, to_address from onboarding_emails where idempotency_key = %s",
            (ctx.idempotency_key,),
        ).fetchone()
    assert row is not None  # inserted or found under this key in the same transaction
    if switches.invalid_result:
        return EmailSent(message_id=row[0], to="postmaster@example.invalid")
    return EmailSent(message_id=row[0], to=row[1])


@tool(timeout_s=15.0, scope=["email:send"])
def retract_onboarding_email(args: MessageRef, ctx: ToolContext) -> Retracted:
    """Undo send_onboarding_email as far as possible: mark the email retracted in the outbox.

    Mail that has been sent cannot be unsent; the mark records that the onboarding it announced
    was rolled back, so a correction can follow. Retracting again keeps the first time. Without
    message_id it retracts the email the undone step sent. Returns retracted_at null when there
    is no such message.
    """
    _simulated("retract_onboarding_email", ctx)
    return _retract(ctx, "onboarding_emails", args)


# --- notify_team_channel / retract_channel_message ---------------------------------------------


class NotifyArgs(BaseModel):
    channel: str = Field(
        "#onboarding", pattern=r"^#[a-z0-9_-]{1,79}$", description="the team channel"
    )
    text: str = Field(min_length=1, max_length=4000, description="the message")


class ChannelMessage(BaseModel):
    message_id: str
    channel: str


def _same_channel(args: NotifyArgs, result: ChannelMessage) -> str | None:
    if result.channel != args.channel:
        return f"the message went to {result.channel!r}, not {args.channel!r}"
    return None


@tool(
    timeout_s=10.0,
    compensation="retract_channel_message",
    scope=["chat:write"],
    rate_limit_per_s=1.0,
    checks=[_typed_check(NotifyArgs, ChannelMessage, _same_channel)],
)
def notify_team_channel(args: NotifyArgs, ctx: ToolContext) -> ChannelMessage:
    """Post a message to the team's channel (default #onboarding).

    Returns the message_id and the channel. Calling it again for the same step does not post a
    second message. Undone by retract_channel_message.
    """
    switches = _simulated("notify_team_channel", ctx)
    with fenced(ctx) as conn:
        conn.execute(
            "insert into onboarding_channel_messages (id, channel, text, idempotency_key) "
            "values (%s, %s, %s, %s) on conflict (idempotency_key) do nothing",
            (_new_id("chm", 16), args.channel, args.text, ctx.idempotency_key),
        )
        row = conn.execute(
            "select id, channel from onboarding_channel_messages where idempotency_key = %s",
            (ctx.idempotency_key,),
        ).fetchone()
    assert row is not None  # inserted or found under this key in the same transaction
    if switches.invalid_result:
        return ChannelMessage(message_id=row[0], channel=f"{row[1]}-misrouted")
    return ChannelMessage(message_id=row[0], channel=row[1])


@tool(timeout_s=10.0, scope=["chat:write"])
def retract_channel_message(args: MessageRef, ctx: ToolContext) -> Retracted:
    """Undo notify_team_channel: mark the channel message retracted.

    Retracting again keeps the first time. Without message_id it retracts the message the
    undone step posted. Returns retracted_at null when there is no such message.
    """
    _simulated("retract_channel_message", ctx)
    return _retract(ctx, "onboarding_channel_messages", args)


ONBOARDING_TOOLS: tuple[Tool[Any, Any], ...] = (
    validate_customer_data,
    create_organisation,
    delete_organisation,
    provision_infrastructure,
    deprovision_infrastructure,
    configure_billing,
    cancel_billing,
    send_onboarding_email,
    retract_onboarding_email,
    notify_team_channel,
    retract_channel_message,
)


def onboarding_registry() -> Registry:
    """A registry holding the onboarding tools and nothing else."""
    return Registry(ONBOARDING_TOOLS)
