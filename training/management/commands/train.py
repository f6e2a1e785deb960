import argparse
import filecmp
import json
import sys
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from rest_framework.utils.encoders import JSONEncoder
import yaml

from corpora.models import Corpus
from engine import sae as architectures
from corpora.services import corpus_add_from_path
from mistudio.errors import ServiceError, flatten_errors
from training import documents, services, sweeps
from training.api import serializers
from training.requests import JobRequest
from training.worker.job import job_run
from training.worker.sweep import sweep_run
from training.api.sweep_serializers import SweepRequestSerializer


def sweep_file(path: Path) -> dict:
    """A sweep's request from a YAML or JSON file (JSON is YAML too, but its errors read better)."""
    try:
        text = path.read_text()
    except OSError as err:
        raise CommandError(f"--sweep {path}: {err.strerror or err}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except Exception as err:  # noqa: BLE001 - json and yaml raise their own kinds
        raise CommandError(f"--sweep {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {err}") from None
    if not isinstance(data, dict):
        raise CommandError(f"--sweep {path}: the file holds one object (the body of POST /api/v1/sweeps).")
    return data


class TrainOptions(serializers.TrainRequestSerializer):
    """The API's fields and ranges; a model and corpus are not needed when --activations is given."""

    model_name = serializers.serializers.CharField(required=False, allow_blank=True, default="")
    corpus_file = serializers.serializers.CharField(required=False, allow_blank=True, default="")


def gpu_index_list(value: str) -> list[int]:
    """--gpu-ids 0,1"""
    return [int(index) for index in value.split(",") if index.strip()]


def request_field_type(field):
    """argparse's type for an architecture's request field: a list as 128,512,2048."""
    def parse(text):
        try:
            return field.parse(text)
        except ValueError:
            what = "a comma-separated list of integers" if field.type is list else f"a valid {field.type.__name__}"
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    return parse


# (option, field, type); defaults and ranges come from the API serializer.
OPTIONS = [
    ("--layer-number", "layer_number", int),
    ("--hidden-dim", "hidden_dim", int),
    ("--sparsity-coeff", "sparsity_coeff", float),
    ("--learning-rate", "learning_rate", float),
    ("--batch-size", "batch_size", int),
    ("--max-epochs", "max_epochs", int),
    ("--min-loss", "min_loss", float),
    ("--max-sequence-length", "max_sequence_length", int),
    ("--gpu-id", "gpu_id", int),
    ("--gpu-ids", "gpu_ids", gpu_index_list),
    ("--sae-batch-tokens", "sae_batch_tokens", int),
    ("--quantization", "quantization", str),
    ("--architecture", "architecture", str),
    ("--hook-point", "hook_point", str),
    ("--packing", "packing", str),
    ("--training-tokens", "training_tokens", int),
    ("--cache-activations", "cache_activations", str),
    # The request fields the registered architectures take (engine.sae): --k, --target-l0, ...
    *((f"--{field.name.replace('_', '-')}", field.name, request_field_type(field)) for field in architectures.request_fields()),
]
# The token's two options (add_arguments): the plain one shows in `ps`, the file does not.
TOKEN_OPTIONS = [("--huggingface-token", "huggingface_token"), ("--huggingface-token-file", "huggingface_token_file")]
# Switches with a --no- form: --exclude-special-tokens / --no-exclude-special-tokens.
SWITCHES = [
    ("--exclude-special-tokens", "exclude_special_tokens"),
    ("--prepend-bos", "prepend_bos"),
]


class Command(BaseCommand):
    help = (
        "Train an SAE from the terminal, through the same path as the API and the worker. "
        "Prints the result document (as GET /api/v1/train/{id}/result) as the last thing on stdout."
    )

    def add_arguments(self, parser):
        parser.add_argument("--model", help="Model id, folder under the models directory, or local path")
        parser.add_argument("--corpus", help="A corpus file (.txt, .jsonl, .parquet, .csv, .arrow) or datasets folder, "
                                             "or the name of an uploaded corpus")
        parser.add_argument("--text-field", default=None,
                            help="The column holding the text, for a corpus path in a dataset format (default: text)")
        parser.add_argument("--activations", help="A .npy or .safetensors array [tokens, d_model] (key 'activations') to train on instead of a model and corpus")
        parser.add_argument("--user", default="cli", help="Owner of the job and corpus (created if needed)")
        parser.add_argument("--no-progress", action="store_true", help="No progress bar")
        parser.add_argument("--sweep", metavar="FILE",
                            help="A sweep: a YAML or JSON file with the body of POST /api/v1/sweeps (corpus_file may be "
                                 "a path; text_field names its column). Prints the sweep document last on stdout")
        fields = TrainOptions().fields
        for option, name, kind in OPTIONS:
            field = fields[name]
            default = getattr(field, "default", None)
            parser.add_argument(option, dest=name, type=kind, default=None,
                                help=f"{field.help_text or name} (default: {default})")
        for option, name in SWITCHES:
            field = fields[name]
            parser.add_argument(option, dest=name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{field.help_text} (default: {'on' if field.default else 'off'})")
        parser.add_argument("--force", action="store_true", default=None,
                            help="Create the job even though its memory estimate exceeds the memory of the device "
                                 "it would run on (the API lets only staff do this; on the machine, you may)")
        parser.add_argument("--huggingface-token", metavar="TOKEN",
                            help="A Hugging Face token for a gated or private hub model. Every user of this machine "
                                 "sees it in `ps` while the command runs (and it stays in the shell's history): "
                                 "prefer --huggingface-token-file, or give - to read it from stdin")
        parser.add_argument("--huggingface-token-file", metavar="PATH",
                            help="Read the Hugging Face token from this file (its first line); nothing shows in `ps`")

    def handle(self, *args, **options):
        owner, _ = get_user_model().objects.get_or_create(username=options["user"])
        if options["sweep"]:
            return self._sweep(owner, options)
        names = [name for _, name, _ in OPTIONS] + [name for _, name in SWITCHES] + ["force"]
        data = {name: options[name] for name in names if options[name] is not None}
        if options["activations"]:
            if options["model"] or options["corpus"]:
                raise CommandError("Give either --activations or --model with --corpus, not both.")
            data["activations_file"] = str(Path(options["activations"]).resolve())
            if not Path(data["activations_file"]).is_file():
                raise CommandError(f"--activations {options['activations']}: no such file.")
        else:
            if not options["model"] or not options["corpus"]:
                raise CommandError("Give --model and --corpus (or --activations FILE).")
            data["model_name"] = options["model"]
            data["corpus_file"] = self._corpus_name(owner, options["corpus"], options["text_field"] or "text")
        token = self._token(options)
        if token:
            data["huggingface_token"] = token
        form = TrainOptions(data=data)
        if not form.is_valid():
            raise CommandError("; ".join(f"{k}: {' '.join(map(str, v))}" for k, v in form.errors.items()))
        values = dict(form.validated_data)
        values["activations_file"] = data.get("activations_file", "")
        try:
            # Whoever runs this command is on the machine: any local model path is theirs to name.
            job = services.job_create(owner=owner, request=JobRequest(**values), enqueue=False,
                                      any_local_path=True)
        except ServiceError as err:
            raise CommandError(err.message) from None
        self.stderr.write(f"Job {job.id}: {self._describe(job)}")
        # The terminal is where the user waits for this job: a busy slot is waited for, not left
        # to a background worker.
        job = job_run(job.id, on_progress=self._progress_bar(options["no_progress"]), wait_for_slot=True)
        self._close_bar()
        document = serializers.ResultSerializer(documents.result_document(job)).data
        self.stdout.write(json.dumps(document, indent=2, cls=JSONEncoder))
        for warning in job.warnings:
            self.stderr.write(f"Warning: {warning}")
        if job.status != job.Status.COMPLETED:
            raise CommandError(job.message)

    def _sweep(self, owner, options):
        # Every request option, each switch in the form given, --force and --text-field: the file has
        # a field for each (text_field for its corpus path), and one place for the request is clearer
        # than a merge of two.
        switches = [(f"--{'' if options[name] else 'no-'}{option[2:]}", name) for option, name in SWITCHES
                    if options[name] is not None]
        named = [*OPTIONS, *TOKEN_OPTIONS, *switches, ("--force", "force"), ("--text-field", "text_field")]
        given = [option for option, name, *_ in named if options[name] is not None]
        if given or options["model"] or options["corpus"] or options["activations"]:
            raise CommandError(f"--sweep FILE holds the whole request: give {', '.join(given) or 'the model and corpus'} "
                               "in the file instead.")
        data = sweep_file(Path(options["sweep"]))
        if data.get("corpus_file"):
            data["corpus_file"] = self._corpus_name(owner, data["corpus_file"], data.pop("text_field", "text"))
        form = SweepRequestSerializer(data=data)
        if not form.is_valid():
            raise CommandError(" ".join(flatten_errors(form.errors)))
        try:
            sweep = sweeps.sweep_create(owner=owner, request=form.to_request(), enqueue=False, any_local_path=True)
        except ServiceError as err:
            raise CommandError(err.message) from None
        count = sweep.jobs.count()
        self.stderr.write(f"Sweep {sweep.id}: {count} members of {sweep.model_name} from one pass over {sweep.corpus.name}")

        def member_end(job):
            self.stderr.write(f"  {job.id} (layer {job.layer_number}, {job.hook_point}, "
                              f"{json.dumps(job.sweep_settings or {})}): {job.status} - {job.message}")

        sweep = sweep_run(sweep.id, on_member_end=member_end, wait_for_slot=True)
        document = sweeps.sweep_document(sweep)
        self.stdout.write(json.dumps(document, indent=2, cls=JSONEncoder))
        if document["status"] != "completed":
            raise CommandError(f"Sweep {sweep.id} is {document['status']}: {document['members_by_status']}")

    @staticmethod
    def _token(options) -> str | None:
        """The token from --huggingface-token-file, from stdin (--huggingface-token -), or as given."""
        given, path = options["huggingface_token"], options["huggingface_token_file"]
        if given is not None and path:
            raise CommandError("Give --huggingface-token or --huggingface-token-file, not both.")
        if path:
            try:
                text, where = Path(path).read_text(), f"--huggingface-token-file {path}"
            except (OSError, UnicodeDecodeError) as err:
                raise CommandError(f"--huggingface-token-file {path}: {getattr(err, 'strerror', None) or err}") from None
        elif given == "-":
            text, where = sys.stdin.readline(), "--huggingface-token - (stdin)"
        else:
            return given
        lines = text.strip().splitlines()
        if not lines or not lines[0].strip():
            raise CommandError(f"{where}: no token there (an empty file or line).")
        return lines[0].strip()

    @staticmethod
    def _describe(job):
        if job.activations_file:
            return f"an SAE on the activations in {job.activations_file}"
        return f"{job.model_name} on layer {job.layer_number}"

    def _corpus_name(self, owner, corpus, text_field):
        path = Path(corpus)
        if not path.exists():
            return corpus  # the name of an uploaded corpus; job_create checks it exists
        existing = Corpus.objects.filter(owner=owner, name=path.name, text_field=text_field).first()
        if existing and path.is_file() and Path(existing.path).is_file() and filecmp.cmp(existing.path, path, shallow=False):
            return existing.name
        name, n = path.name, 1
        while Corpus.objects.filter(owner=owner, name=name).exists():
            n += 1
            name = f"{path.stem}-{n}{path.suffix}"
        try:
            return corpus_add_from_path(owner=owner, path=path, name=name, text_field=text_field).name
        except ServiceError as err:
            raise CommandError(err.message) from None

    def _progress_bar(self, disabled):
        from tqdm import tqdm

        self._bar = tqdm(total=1.0, file=sys.stderr, disable=disabled, dynamic_ncols=True,
                         bar_format="{l_bar}{bar}| {n:.1%} [{elapsed}<{remaining}] {postfix}")

        def update(event):
            bar = self._bar
            if event.get("phase") == "waiting":
                # Said even with --no-progress: a silent terminal would look hung.
                bar.clear()
                self.stderr.write(event["message"])
                bar.set_description("waiting")
            elif event.get("phase") == "training":
                bar.n = min(event["progress"], 1.0)
                bar.set_description(f"epoch {event['epoch']}/{event['total_epochs']}")
                bar.set_postfix_str(f"loss {event['loss']:.5g}")
            elif event.get("phase") == "extracting":
                bar.set_description("extracting")
                bar.set_postfix_str(f"{event['done']}/{event['total']} sequences")
            else:
                bar.set_description(event.get("phase", ""))
            bar.refresh()

        return update

    def _close_bar(self):
        self._bar.close()
