"""The New sweep form: the New job form's fields as every member's base (training.pages.job_form), plus
the sites and the members, as people type them: layers and hook points as comma-separated lists,
one member per line of `name=value` overrides. Submitting takes the path POST /api/v1/sweeps takes
(its serializer, then training.sweeps.sweep_create); errors land next to the field they are about."""
from rest_framework import serializers as drf

from mistudio.errors import ServiceError
from training import sweeps
from training.pages.job_form import field_errors, form_rows, job_form_context, service_errors, top_errors
from training.api.sweep_serializers import SweepRequestSerializer

SWEEP_FIELDS = ("layers", "hook_points", "members")
WIDGETS = {"layers": "text", "hook_points": "text", "members": "textarea"}
HELP = {
    "layers": "Comma-separated layer numbers, e.g. 3, 6, 9.",
    "hook_points": "Comma-separated, e.g. resid_post, mlp_out.",
    "members": "One member per line, each overriding SAE fields of the base as name=value pairs separated by "
               "commas, e.g. k=64, learning_rate=0.0003 (an empty line: the base's settings). A member may set "
               + ", ".join(sweeps.member_fields()) + ".",
}
DEFAULTS = {"layers": "the base's layer_number", "hook_points": "the base's hook_point",
            "members": "one member, with the base's settings"}
NULLS = ("", "none", "null")


def parse_members(text: str) -> tuple[list[dict], list[str]]:
    """(the members, what could not be read) from the textarea: a line per member."""
    members, problems = [], []
    for number, line in enumerate((text or "").splitlines()):
        overrides = {}
        for pair in (part.strip() for part in line.split(",")):
            if not pair:
                continue
            name, equals, value = pair.partition("=")
            if not equals or not name.strip():
                problems.append(f"line {number + 1}: {pair!r} is not name=value")
                continue
            value = value.strip()
            overrides[name.strip()] = None if value.lower() in NULLS else value
        members.append(overrides)
    while len(members) > 1 and not members[-1]:  # a trailing blank line is not a member
        members.pop()
    return members or [{}], problems


def _as_list(text: str) -> list[str] | None:
    items = [item.strip() for item in (text or "").split(",") if item.strip()]
    return items or None


def request_data(data) -> tuple[dict, dict]:
    """(the API's body for what the form sent, errors of the form's own fields). The base's fields
    read as DRF reads a form (an HTML form's empty input is null where null is allowed, else the
    field's default; an unchecked checkbox is false); the sweep's own are parsed here, as JSON would
    give them."""
    body = {}
    for name, field in SweepRequestSerializer().fields.items():
        if name in SWEEP_FIELDS or field.read_only:
            continue
        if isinstance(field, drf.BooleanField):
            body[name] = data.get(name, "") in drf.BooleanField.TRUE_VALUES
        elif data.get(name, "") != "":
            body[name] = data[name]
        elif name in data and field.allow_null:
            body[name] = None
    members, problems = parse_members(data.get("members", ""))
    body.update(layers=_as_list(data.get("layers", "")), hook_points=_as_list(data.get("hook_points", "")),
                members=members)
    return body, ({"members": problems} if problems else {})


def sweep_submit(*, user, data):
    """(the sweep, {}) when valid, else (None, errors by field)."""
    body, errors = request_data(data)
    if errors:
        return None, errors
    request = SweepRequestSerializer(data=body)
    if not request.is_valid():
        return None, _by_form_field(field_errors(request.errors))
    try:
        return sweeps.sweep_create(owner=user, request=request.to_request()), {}
    except ServiceError as err:
        return None, service_errors(err)


def _by_form_field(errors: dict) -> dict:
    """A member's errors ("members[1].k") go to the members field, which holds them all."""
    placed = {}
    for name, messages in errors.items():
        target = "members" if name.startswith("members[") else name
        prefix = f"{name}: " if target != name else ""
        placed.setdefault(target, []).extend(prefix + message for message in messages)
    return placed


def sweep_form_context(*, user, data=None, errors=None, initial=None) -> dict:
    """The New job form's sections on the sweep's serializer, then the Sweep section."""
    context = job_form_context(user=user, data=data, errors=errors, initial=initial)
    rows = form_rows(SweepRequestSerializer(), SWEEP_FIELDS, data=data, errors=errors, initial=initial)
    for row in rows:
        row.widget, row.help_text, row.default = WIDGETS[row.name], HELP[row.name], DEFAULTS[row.name]
        if data is None and row.name not in (initial or {}):
            row.value = ""
    all_rows = [row for _, section in context["sections"] for row in section] + rows
    return {**context, "sections": [("Sweep", rows), *context["sections"]],
            "top_errors": top_errors(errors or {}, all_rows)}
