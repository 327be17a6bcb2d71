"""A platform team's first steps with a client generated from openapi/openapi.json, against a
running roster and dev-target: register an app, post a joiner, wait for the account, read the
provisioning log, and read a 422 as the declared problem+json model.

Only the generated package (`roster_client`) talks to roster. Every answer is parsed into the
generated model its operation declares and then checked strictly against the model's own type
hints: a field missing, of another type, `null` where the document does not allow it, or not in
the document at all fails the run, so the document cannot describe an answer wrongly.

Environment: ROSTER_URL (…/api/v1), ROSTER_TOKEN (an admin key), TARGET_URL (the dev-target's
SCIM base URL), TARGET_TOKEN.
"""

import datetime
import enum
import os
import sys
import time
import types
import typing

import attrs

from roster_client import AuthenticatedClient, models
from roster_client.api.admin import list_audit_entries
from roster_client.api.apps import create_app, get_app, list_apps, test_app_connection, update_app
from roster_client.api.delivery import get_app_status, list_jobs, list_operations
from roster_client.api.directory import get_identity, list_identities
from roster_client.api.events import post_event, post_event_batch
from roster_client.types import Response, Unset

# Generous: an event-driven wait (polling the API), not a measure of speed.
LINKED_WITHIN_SECONDS = 60.0


class CheckFailed(Exception):
    pass


def hints(cls: type) -> dict[str, typing.Any]:
    """A generated model's field types. Its annotations are strings naming the other models
    (imported only for type checkers), so they are resolved against the models package."""
    module = sys.modules[cls.__module__]
    return typing.get_type_hints(cls, globalns={**vars(models), **vars(module)})


def strict(value: typing.Any, hint: typing.Any, at: str) -> None:
    """Checks `value` (from a generated model) against the generated type `hint`."""
    if hint is typing.Any:
        return
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arm in typing.get_args(hint):
            try:
                strict(value, arm, at)
                return
            except CheckFailed as e:
                errors.append(str(e))
        raise CheckFailed(f"{at}: {value!r} is none of {hint}: {errors}")
    if origin is list:
        if not isinstance(value, list):
            raise CheckFailed(f"{at}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        for i, element in enumerate(value):
            strict(element, item, f"{at}[{i}]")
        return
    if origin is dict:
        if not isinstance(value, dict):
            raise CheckFailed(f"{at}: expected an object, got {value!r}")
        _, item = typing.get_args(hint)
        for key, element in value.items():
            strict(element, item, f"{at}.{key}")
        return
    if hint is type(None):
        if value is not None:
            raise CheckFailed(f"{at}: expected null, got {value!r}")
        return
    if hint is Unset:
        if not isinstance(value, Unset):
            raise CheckFailed(f"{at}: expected to be absent, got {value!r}")
        return
    if hint is bool or hint is str or (isinstance(hint, type) and issubclass(hint, enum.Enum)):
        if not isinstance(value, hint):
            raise CheckFailed(f"{at}: expected {hint.__name__}, got {value!r}")
        return
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise CheckFailed(f"{at}: expected an integer, got {value!r}")
        return
    if hint is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise CheckFailed(f"{at}: expected a number, got {value!r}")
        return
    if hint in (datetime.datetime, datetime.date):
        if not isinstance(value, hint):
            raise CheckFailed(f"{at}: expected {hint.__name__}, got {value!r}")
        return
    if attrs.has(hint):
        if not isinstance(value, hint):
            raise CheckFailed(f"{at}: expected {hint.__name__}, got {value!r}")
        extra = getattr(value, "additional_properties", {})
        if extra:
            raise CheckFailed(f"{at}: fields the document does not declare: {sorted(extra)}")
        for name, field_hint in hints(hint).items():
            if name != "additional_properties":
                strict(getattr(value, name), field_hint, f"{at}.{name}")
        return
    raise CheckFailed(f"{at}: no check for the type {hint!r}")


def answer(response: Response, status: int, model: type, what: str) -> typing.Any:
    """The parsed answer of `what`, which must be `status` with a strict `model`."""
    if response.status_code != status:
        raise CheckFailed(
            f"{what}: expected {status}, got {int(response.status_code)}: "
            f"{response.content[:500]!r}"
        )
    if not isinstance(response.parsed, model):
        raise CheckFailed(f"{what}: parsed as {type(response.parsed).__name__}, not {model.__name__}")
    strict(response.parsed, model, what)
    return response.parsed


def main() -> None:
    client = AuthenticatedClient(
        base_url=os.environ["ROSTER_URL"],
        token=os.environ["ROSTER_TOKEN"],
        raise_on_unexpected_status=True,
        timeout=30.0,
    )
    target_url = os.environ["TARGET_URL"]

    app_body = models.AppCreate(
        name="sherpany",
        base_url=target_url,
        auth=models.AuthIn(type_=models.AuthKind.BEARER, token=os.environ["TARGET_TOKEN"]),
        rate_limit=models.RateLimit(per_second=10, burst=20),
        max_concurrency=4,
        scope=models.AppScope(email_domains=["example.com"]),
        mappings=[
            models.MappingEntry(target="userName", source="email"),
            models.MappingEntry(target="name.givenName", source="given_name"),
            models.MappingEntry(target="name.familyName", source="family_name"),
            models.MappingEntry(target='emails[type eq "work"].value', source="email"),
            models.MappingEntry(target="externalId", source="employee_id"),
        ],
        role_mapping=models.RoleMappingEntry(
            target="roles[primary eq true].value",
            default="member",
            rules=[models.RoleRuleEntry(group="board-admins", value="admin")],
        ),
        deprovision=models.Deprovision(action=models.DeprovisionAction.DEACTIVATE),
    )
    app = answer(create_app.sync_detailed(client=client, body=app_body), 201, models.AppOut, "createApp")
    assert app.auth.token_set is True, app.auth
    answer(get_app.sync_detailed(app.id, client=client), 200, models.AppOut, "getApp")
    apps = list_apps.sync_detailed(client=client)
    if apps.status_code != 200 or not isinstance(apps.parsed, list):
        raise CheckFailed(f"listApps: {apps.status_code} {apps.content[:300]!r}")
    strict(apps.parsed, list[models.AppOut], "listApps")
    connection = answer(
        test_app_connection.sync_detailed(app.id, client=client), 200, models.ConnectionOut, "testAppConnection"
    )
    if not connection.ok:
        raise CheckFailed(f"testAppConnection: the dev-target is not usable: {connection.reason}")

    joiner = models.EventIn(
        event_id="evt-1",
        type_=models.EventKind.JOINER,
        occurred_at=datetime.datetime(2026, 11, 23, 9, 0, tzinfo=datetime.timezone.utc),
        employee=models.EmployeeIn(
            employee_id="E100",
            user_name="ada",
            email="ada@example.com",
            given_name="Ada",
            family_name="Lovelace",
            department="Board",
            title="Chair",
        ),
    )
    accepted = answer(post_event.sync_detailed(client=client, body=joiner), 202, models.EventAccepted, "postEvent")
    if accepted.result != "applied":
        raise CheckFailed(f"postEvent: {accepted}")
    batch = models.EventBatchIn(
        events=[
            models.EventIn(
                event_id="evt-2",
                type_=models.EventKind.JOINER,
                occurred_at=datetime.datetime(2026, 11, 23, 9, 5, tzinfo=datetime.timezone.utc),
                employee=models.EmployeeIn(employee_id="E200", email="grace@example.com"),
            )
        ]
    )
    answer(post_event_batch.sync_detailed(client=client, body=batch), 202, models.EventBatchAccepted, "postEventBatch")

    deadline = time.monotonic() + LINKED_WITHIN_SECONDS
    while True:
        person = answer(get_identity.sync_detailed("E100", client=client), 200, models.IdentityOut, "getIdentity")
        links = [] if isinstance(person.links, Unset) else person.links
        states = {link.app_id: link.state for link in links}
        if states.get(app.id) == "linked":
            break
        if time.monotonic() > deadline:
            raise CheckFailed(f"E100 not linked within {LINKED_WITHIN_SECONDS}s: {states}")
        time.sleep(0.2)

    log = answer(
        list_operations.sync_detailed(client=client, app=app.id, identity="E100"),
        200,
        models.OperationPage,
        "listOperations",
    )
    creates = [op for op in log.items if op.operation == "create" and op.outcome == "succeeded"]
    if not creates:
        raise CheckFailed(f"listOperations: no successful create for E100: {log.items}")
    # `null` clears: a mover without a title, an app without its role mapping.
    mover = models.EventIn(
        event_id="evt-3",
        type_=models.EventKind.MOVER,
        occurred_at=datetime.datetime(2026, 11, 23, 10, 0, tzinfo=datetime.timezone.utc),
        employee=models.EmployeeIn(employee_id="E100", title=None),
    )
    answer(post_event.sync_detailed(client=client, body=mover), 202, models.EventAccepted, "postEvent (mover)")
    person = answer(get_identity.sync_detailed("E100", client=client), 200, models.IdentityOut, "getIdentity")
    if not isinstance(person.title, Unset):
        raise CheckFailed(f"getIdentity: the mover's null did not clear the title: {person.title!r}")
    cleared = answer(
        update_app.sync_detailed(app.id, client=client, body=models.AppPatch(role_mapping=None)),
        200,
        models.AppOut,
        "updateApp",
    )
    if not isinstance(cleared.role_mapping, Unset):
        raise CheckFailed(f"updateApp: role_mapping null did not remove it: {cleared.role_mapping!r}")

    answer(list_identities.sync_detailed(client=client), 200, models.IdentityPage, "listIdentities")
    answer(list_jobs.sync_detailed(client=client), 200, models.JobPage, "listJobs")
    answer(get_app_status.sync_detailed(app.id, client=client), 200, models.AppStatusOut, "getAppStatus")
    answer(list_audit_entries.sync_detailed(client=client), 200, models.AuditPage, "listAuditEntries")

    # A bearer app without its token: well-formed, refused as invalid, read as the Problem model.
    invalid = models.AppCreate(
        name="no-token", base_url=target_url, auth=models.AuthIn(type_=models.AuthKind.BEARER)
    )
    problem = answer(create_app.sync_detailed(client=client, body=invalid), 422, models.Problem, "createApp (422)")
    if problem.type_ != "urn:roster:problem:validation" or problem.status != 422 or "auth.token" not in problem.detail:
        raise CheckFailed(f"createApp (422): {problem}")

    print("generated Python client: app registered, E100 linked, log read, 422 read as Problem")


if __name__ == "__main__":
    try:
        main()
    except CheckFailed as failure:
        print(f"FAILED: {failure}", file=sys.stderr)
        sys.exit(1)
