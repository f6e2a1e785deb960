"""The New job form: the API's TrainRequestSerializer turned into rows a page renders (each with its
default, the value sent and the errors about it), and what its two buttons do: make the job by the
path POST /api/v1/train takes (the serializer, then services.job_create), or show the verdict of
GET /api/v1/check-memory for the form's model and fields, making nothing.

A form that shares these fields (New sweep) builds its rows with `form_rows` from its own
serializer, places errors with `field_errors` and `service_errors`, and renders each section with
templates/training/form_rows.html."""
from dataclasses import dataclass, field

from rest_framework import serializers as drf
from rest_framework.fields import empty

from corpora.selectors import corpora_of
from engine import sae as architectures
from mistudio.errors import ServiceError
from training import services
from training.requests import JobRequest
from training.admission import memory as memory_check
from training.admission import model as modelcheck
from training.api.serializers import CheckMemoryQuerySerializer, TrainRequestSerializer

# Errors no one field of the form is about (a disk that cannot hold the run): shown above the form.
TOP = "__all__"

# The API's fields the form leaves out: several GPUs at once (gpu_ids) is for the API and the CLI;
# forcing past the memory check (force) is for staff through the API.
LEFT_OUT = ("gpu_ids", "force")

# Help for the fields whose serializer has none.
HELP = {
    "huggingface_token": "Only for gated or private hub models; never shown again, kept encrypted while the job runs.",
    "corpus_file": "One of your uploaded corpora.",
    "learning_rate": "Adam's learning rate.",
    "max_sequence_length": "Tokens per sequence, at most.",
    "quantization": "Load the model in 8-bit or 4-bit (CUDA only).",
}
# Labels the field's name does not spell well.
LABELS = {"huggingface_token": "Hugging Face token", "sae_batch_tokens": "SAE batch tokens", "target_l0": "Target L0",
          "k": "k (active features)", "matryoshka_widths": "Matryoshka widths", "gpu_id": "GPU", "min_loss": "Minimum loss", "max_epochs": "Maximum epochs"}
# What an empty choice of a nullable choice field means.
BLANK_CHOICE = {"packing": "the corpus format's default"}


def sections() -> list[tuple[str, tuple[str, ...]]]:
    """The form's fields by topic; the architectures' own fields (k, target_l0) are read from the
    registry, and a serializer field no section names lands in the last one."""
    own = tuple(f.name for f in architectures.request_fields())
    return [
        ("Model and corpus", ("model_name", "huggingface_token", "corpus_file", "layer_number", "hook_point",
                              "quantization")),
        ("SAE", ("architecture", *own, "hidden_dim", "sparsity_coeff")),
        ("Training", ("learning_rate", "sae_batch_tokens", "max_epochs", "min_loss", "training_tokens")),
        ("Sequences", ("batch_size", "max_sequence_length", "packing", "exclude_special_tokens", "prepend_bos")),
        ("Run", ("cache_activations", "gpu_id")),
    ]


@dataclass
class FormRow:
    """One field as a page shows it: its input, what it holds now, its default and its errors."""

    name: str
    label: str
    widget: str  # text, password, number, select or checkbox
    value: str = ""  # what the input holds ("" for none)
    checked: bool = False  # a checkbox's state
    default: str = ""  # the default as the input would hold it
    help_text: str = ""
    required: bool = False
    choices: list[tuple[str, str]] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)  # offered, not enforced (a datalist)
    attrs: dict[str, str] = field(default_factory=dict)  # min, max, step
    errors: list[str] = field(default_factory=list)


def form_rows(serializer, names, *, data=None, errors=None, initial=None, choices=None, suggestions=None) -> list[FormRow]:
    """Rows for the serializer's fields `names`: with `data` (a submitted form) the values sent, else
    the serializer's defaults (or `initial`'s). `choices` turns a text field into a select."""
    fields, errors, initial = serializer.fields, errors or {}, initial or {}
    rows = []
    for name in names:
        if name not in fields:
            continue
        row = _row(name, fields[name], (choices or {}).get(name))
        if data is not None:
            sent = data.get(name, "")
            row.value, row.checked = str(sent), sent in drf.BooleanField.TRUE_VALUES
        elif name in initial:
            row.value, row.checked = str(initial[name]), initial[name] in drf.BooleanField.TRUE_VALUES
        if row.widget == "password":
            row.value = ""  # a token is never sent back to the browser
        row.suggestions = list((suggestions or {}).get(name, ()))
        row.errors = list(errors.get(name, ()))
        rows.append(row)
    return rows


def _row(name: str, serializer_field, choices) -> FormRow:
    default = None if serializer_field.default is empty else serializer_field.default
    help_text = str(serializer_field.help_text or HELP.get(name, "")).strip()
    row = FormRow(name=name, label=LABELS.get(name, name.replace("_", " ").capitalize()), widget="text",
                  default="" if default is None else str(default), required=serializer_field.required,
                  help_text=help_text if not help_text or help_text.endswith(".") else f"{help_text}.")
    row.value, row.checked = row.default, bool(default)
    if isinstance(serializer_field, drf.BooleanField):
        row.widget = "checkbox"
    elif choices is not None or isinstance(serializer_field, drf.ChoiceField):
        row.widget = "select"
        row.choices = [(str(value), str(label)) for value, label in
                       (choices if choices is not None else serializer_field.choices.items())]
        if choices is None and serializer_field.allow_null:
            row.choices.insert(0, ("", BLANK_CHOICE.get(name, "none")))
    elif isinstance(serializer_field, (drf.IntegerField, drf.FloatField)):
        row.widget = "number"
        row.attrs["step"] = "1" if isinstance(serializer_field, drf.IntegerField) else "any"
        for bound in ("min_value", "max_value"):
            if getattr(serializer_field, bound, None) is not None:
                row.attrs[bound[:3]] = str(getattr(serializer_field, bound))
    elif getattr(serializer_field, "write_only", False):
        row.widget = "password"
    return row


def field_errors(errors) -> dict[str, list[str]]:
    """A serializer's errors by field, each a list of messages; non-field ones under TOP."""
    placed = {}
    for name, value in errors.items():
        placed[TOP if name == "non_field_errors" else name] = list(_messages(value))
    return placed


def _messages(value, prefix=""):
    if isinstance(value, dict):  # a list field's errors by item
        for key, inner in value.items():
            yield from _messages(inner, f"{prefix}{key}: ")
    elif isinstance(value, list):
        for inner in value:
            yield from _messages(inner, prefix)
    else:
        yield f"{prefix}{value}"


def service_errors(err: ServiceError) -> dict[str, list[str]]:
    """A service's refusal, next to the field it is about (ServiceError.field), else at the top."""
    return {err.field or TOP: [err.message]}


def top_errors(errors: dict[str, list[str]], rows: list[FormRow]) -> list[str]:
    """The errors no row shows: TOP's, and those of fields the form leaves out."""
    shown = {row.name for row in rows}
    return [message for name, messages in errors.items() if name not in shown for message in messages]


def job_submit(*, user, data):
    """(the job, {}) when the request is valid, else (None, its errors by field): the serializer and
    the service of POST /api/v1/train, which enqueues the job as the API does."""
    request = TrainRequestSerializer(data=data)
    if not request.is_valid():
        return None, field_errors(request.errors)
    try:
        return services.job_create(owner=user, request=JobRequest(**request.validated_data)), {}
    except ServiceError as err:
        return None, service_errors(err)


def memory_check_submit(*, user, data):
    """(the check-memory document, {}) for the form's model and fields, or (None, errors by field)."""
    query = CheckMemoryQuerySerializer(data=data)
    if not query.is_valid():
        return None, field_errors(query.errors)
    try:
        return memory_check.check_memory_report(user=user, model_name=data.get("model_name", ""),
                                                **query.validated_data), {}
    except ServiceError as err:
        return None, service_errors(err)


def readable_sizes(report: dict) -> dict[str, str]:
    """The check-memory document's GB as a person reads them: a tiny model's cache is some KB."""
    memory, disk = report["memory_check"], report["disk_check"]
    sizes = {"required": memory["required_gb"], "available": memory["available_gb"],
             **{part: gb for part, gb in memory["breakdown_gb"].items()}}
    sizes.update({f"disk_{part}": disk[f"{part}_gb"] for part in ("needed", "cache", "checkpoints", "free")
                  if disk.get(f"{part}_gb") is not None})
    return {name: _size(gb) for name, gb in sizes.items()}


def _size(gb: float) -> str:
    for unit, scale in (("GB", 1), ("MB", 1024), ("KB", 1024**2)):
        if gb * scale >= 1 or unit == "KB":
            return f"{gb * scale:.{2 if unit == 'GB' else 0}f} {unit}"


def corpus_choices(user) -> list[tuple[str, str]]:
    corpora = [(c.name, f"{c.name} ({c.format}, {c.documents_count:,} documents)") for c in corpora_of(user)]
    return [("", "Choose a corpus")] + corpora if corpora else []


def job_form_context(*, user, data=None, errors=None, initial=None) -> dict:
    """What templates/training/new_job_page.html renders: the sections' rows and the errors above them."""
    serializer = TrainRequestSerializer()
    choices = {"corpus_file": corpus_choices(user)}
    suggestions = {"model_name": modelcheck.model_suggestions()}
    placed, all_rows = [], []
    for title, names in _with_the_rest(sections(), serializer):
        rows = form_rows(serializer, names, data=data, errors=errors, initial=initial, choices=choices,
                         suggestions=suggestions)
        placed.append((title, rows))
        all_rows += rows
    return {"sections": placed, "top_errors": top_errors(errors or {}, all_rows),
            "has_corpora": bool(choices["corpus_file"])}


def _with_the_rest(named, serializer):
    listed = {name for _, names in named for name in names}
    rest = tuple(name for name in serializer.fields if name not in listed and name not in LEFT_OUT)
    if rest:
        title, names = named[-1]
        named = [*named[:-1], (title, names + rest)]
    return named


def form_page(request, *, submit, context, template: str, page: str):
    """A form page on these fields (New job, New sweep): re-rendered with what was sent and each
    error by its field after a refusal (400) and after "Check memory", which makes nothing; on a
    made job or sweep, its page. `submit(user=, data=)` and `context(user=, data=, errors=, initial=)`
    are the form's own; `page` is the URL name of what it makes, taking its id. ?field=... (a
    link's) fills the form in."""
    from django.shortcuts import redirect, render

    data, errors, memory = None, {}, None
    if request.method == "POST":
        data = request.POST
        if "check_memory" in data:
            memory, errors = memory_check_submit(user=request.user, data=data)
        else:
            made, errors = submit(user=request.user, data=data)
            if made is not None:
                return redirect(page, made.pk)
    shown = context(user=request.user, data=data, errors=errors, initial=request.GET.dict())
    sizes = readable_sizes(memory) if memory else None
    return render(request, template, {**shown, "memory": memory, "sizes": sizes}, status=400 if errors else 200)
