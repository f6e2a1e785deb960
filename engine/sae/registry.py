"""The registry of SAE architectures, and what an architecture is.

An architecture is a class with a `name`, registered with `@register`, in a module of its own under
engine/sae/. It owns everything that differs between architectures: the request fields it takes
(and their rules), how a code is taken from the pre-activations, its sparsity and auxiliary losses,
what it does after a step (resampling), its parameter groups, whether the decoder may run as a
sparse gather, and how it is exported. The trainer, request validation, the CLI, the demo and the
export ask the registry; nothing outside engine/sae/ compares architecture names.

This module, and the architecture modules, import no torch at import time: the web process lists
architectures and checks requests without it. The torch side (engine.sae.module) calls the
methods below with the SAE and tensors; an architecture imports torch inside them where it needs to.
"""
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from engine.errors import EngineError

# Names are kept in 32 characters (a job row's column is that wide; "matryoshka_batchtopk" is SAELens' name).
MAX_NAME_LENGTH = 32
# sparsity_coeff x this = lambda in the summed-squared-error convention for an input of
# REFERENCE_WIDTH, the bundled MiniLM's d_model, where the seed's 0.001 was measured; lambda scales
# with the width from there (Architecture.sparsity_weight, JumpReLU.sparsity_weight).
LAMBDA_PER_SPARSITY_COEFF = 2000.0
REFERENCE_WIDTH = 384
# How far (in pre-activation units) an architecture's `fast_biases` can move in any run: their
# learning rate is max(learning_rate, this / total steps) (Architecture.param_groups).
BIAS_TRAVEL = 5.0


@dataclass(frozen=True)
class RequestField:
    """An option of a training request (and a TrainConfig field of the same name) that one or
    more architectures take. Registered fields become API fields, CLI options and job columns."""

    name: str
    type: type  # int, float, or list (a list of positive integers, in increasing order)
    help: str  # what it is, as the API's schema and the CLI say it
    about: str  # a short phrase for error messages ("active features per token")
    required: bool = False  # the architecture cannot train without it
    api_minimum: float | None = None  # the smallest value a request may give

    def problem(self, value, architecture: str) -> str | None:
        """The engine's check of a value (None: fine)."""
        if value is None and not self.required:
            return None
        if self.type is list:
            problem = increasing_positive_ints_problem(value)
            return f"{self.name} {problem}" if problem else None
        if value is None or value <= 0 or (self.type is int and int(value) != value):
            must_be = "a positive integer" if self.type is int else "positive"
            where = f" for the {architecture} architecture" if self.required else ""
            return f"{self.name} must be {must_be}{where}"
        return None

    def parse(self, text: str):
        """A value from the command line's text: a list as "128,512,2048" (or space-separated)."""
        if self.type is list:
            return [int(part) for part in text.replace(",", " ").split()]
        return self.type(text)


def increasing_positive_ints_problem(values) -> str | None:
    """What is wrong with a list field's value, as the end of a sentence, or None."""
    if not isinstance(values, list | tuple) or not values:
        return "must be a non-empty list of positive integers"
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        return f"must hold positive integers only, not {list(values)}"
    if any(a >= b for a, b in zip(values, values[1:])):
        return f"must be strictly increasing, not {list(values)}"
    return None


# Shared by the architectures that can hold an L0: jumprelu penalises (L0/target - 1)^2; an L1
# architecture that sets `adapts_l1_to_target_l0` has the trainer steer its penalty weight instead.
TARGET_L0 = RequestField(
    "target_l0", float, about="the L0 to hold",
    help="hold L0 near this target instead of trading it off by sparsity_coeff (jumprelu: an (L0/target - 1)^2 "
         "penalty; relu: the L1 weight adapted during training)", api_minimum=0.01)


@dataclass(frozen=True)
class Sites:
    """Where in a block a run's rows come from (hook points, engine.models.hooks): `input`, the rows
    the SAE reads, and `target`, the rows it predicts when they are other rows (None: it reconstructs
    its input). Paired sites are read from the same forward passes, row for row."""

    input: str
    target: str | None = None

    @property
    def paired(self) -> bool:
        return self.target is not None

    @property
    def count(self) -> int:
        """The caches a run writes side by side."""
        return 1 if self.target is None else 2


class Architecture:
    """The default behaviour is the ReLU SAE's; an architecture overrides what differs.

    Every architecture shares pre = (x - b_dec) @ W_enc + b_enc and x_hat = f @ W_dec + b_dec
    (engine.sae.module), with SAELens' names and shapes."""

    name: str = ""
    saelens_name: str = "standard"  # cfg.json's "architecture" in an SAELens export
    request_fields: tuple[RequestField, ...] = ()
    # Whether the trainer keeps decoder rows at unit norm (and drops the gradient parallel to them).
    unit_norm_decoder = False
    # W_enc starts at this multiple of W_dec.T.
    encoder_init_scale = 1.0
    # Biases that decide how often an L1 architecture's features fire, learned at a rate that lets
    # them travel BIAS_TRAVEL in any run (param_groups).
    fast_biases: tuple[str, ...] = ()
    # Codes have a fixed number of non-zeros per token (sparse_code): the trainer may then decode
    # by gathering those decoder rows instead of a dense matmul, timing both on the first batch.
    sparse_decode = False
    # Tensors of its state dict besides the four weights; sae_from_state_dict recognises an
    # architecture by them when `recognized_by_keys` (topk has relu's keys, so it must be named).
    state_keys: frozenset[str] = frozenset()
    recognized_by_keys = True
    # With target_l0 (which it must list in request_fields), the trainer scales this architecture's
    # sparsity weight up or down during training until L0 sits at the target
    # (engine.trainer.target_l0): for sparsity terms that are an L1, whose L0 follows their weight.
    adapts_l1_to_target_l0 = False
    # An SAE subtracts b_dec from its input (it lives in the input's space); a transcoder's b_dec is
    # in the output's space and is not (SAELens' apply_b_dec_to_input).
    apply_b_dec_to_input = True
    # An architecture whose code of one site predicts another names both hook points: it reads
    # `input_point` and predicts `target_point` (a transcoder: the MLP's input and its output), which
    # is then the run's hook point. None: it reconstructs what it reads, at the run's hook point.
    # A run decides its sites from these alone (engine.run.sources.run_sites): it extracts both from
    # the same forward passes, gives the SAE the target rows with its input rows, and is scored on them.
    input_point: str | None = None
    target_point: str | None = None

    @property
    def predicts_another_site(self) -> bool:
        return self.target_point is not None

    def sites(self, hook_point: str) -> Sites:
        """The sites of a run at `hook_point`: that point alone, or, for an architecture that predicts
        another site, its input_point paired with `hook_point` (which should be its target_point)."""
        return Sites(hook_point) if self.target_point is None else Sites(self.input_point, hook_point)

    def targets_problem(self, given: bool) -> str | None:
        """What is wrong with a run's targets, the rows it predicts, being `given` or not: one that
        predicts another site needs them, one that reconstructs its input takes none (None: fine)."""
        if self.predicts_another_site and not given:
            return f"A {self.name} predicts another site from its input: give its targets"
        if not self.predicts_another_site and given:
            return f"A {self.name} SAE reconstructs its input: it takes no targets"
        return None

    # -- requests (no torch) --

    def check_request(self, values: Mapping, *, hidden_dim: int) -> str | None:
        """A rule between this architecture's fields and the rest of a request, beyond a field
        being present: the first problem, in the API's words, or None."""
        return None

    # -- the model --

    def setup(self, sae, options: Mapping) -> None:
        """Add what this architecture keeps beyond the four weights (parameters, buffers,
        attributes) to a new SAE; `options` holds TrainConfig-named values (k, ...)."""

    def resolved_fields(self, values: Mapping, *, hidden_dim: int) -> dict:
        """This architecture's fields as a run will use them, where that is not the request's value
        (a default that depends on hidden_dim): what the job records instead of the request's."""
        return {}

    def options(self, sae) -> dict:
        """What build_sae needs besides the shape to rebuild this SAE (e.g. {"k": 4})."""
        return {}

    def options_in_state(self, state_dict: Mapping) -> dict:
        """What build_sae needs that the SAE's own state dict records (sae_from_state_dict)."""
        return {}

    def loadable_state(self, state_dict: Mapping) -> dict:
        """The state dict as this architecture's module holds it, from its own or from its export
        (engine.sae.export writes some tensors in SAELens' shapes)."""
        return dict(state_dict)

    def encode(self, sae, x):
        return self.activate(sae, sae.pre_activations(x))

    def activate(self, sae, pre):
        return pre.relu()

    def skip(self, sae, x):
        """A linear term of the input added to the decoded output (skip transcoders), or None."""
        return None

    def sparse_code(self, sae, pre):
        """(values, indices) of each token's non-zero codes, for architectures with sparse_decode."""
        raise NotImplementedError(f"{self.name} codes are not a fixed number of features per token")

    # -- training --

    def sparsity_loss(self, sae, pre, f, config):
        """The term the trainer weighs by sparsity_weight: the decoder-norm-weighted L1."""
        return sae.weighted_l1(f)

    def sparsity_weight(self, config, d_in: int, *, legacy: bool = False) -> float:
        """The weight of the sparsity term beside the MSE (a mean over elements).

        `sparsity_coeff` is lambda/2000 in the loss of Anthropic's April 2024 update, ||x - x_hat||^2
        summed over the d_in dimensions + lambda sum_i f_i ||W_dec,i||, with inputs at mean norm
        sqrt(d_in), for an input of REFERENCE_WIDTH; lambda grows as sqrt(d_in / REFERENCE_WIDTH).
        The trainer minimises that loss divided by d_in, so the reported loss (and min_loss) stays a
        per-element MSE: the weight here is lambda / d_in.

        Why sqrt: with inputs at norm sqrt(d_in), a feature's magnitude grows as sqrt(d_in) and its
        share of the summed squared error as d_in, so an L1 price (lambda x magnitude) that is the
        same fraction of what the feature is worth at every width needs lambda ~ sqrt(d_in). A fixed
        lambda made features dear at small widths and cheap at large ones: on planted data with 4
        active features per token, L0 went 9.5 at width 48 to 34 at 4096; under this rule 23 and 4.6
        (bench/width_grid.py; docs/architectures.md, "Defaults across widths"). JumpReLU's L0 price follows the
        energy itself (lambda ~ d_in, engine/sae/jumprelu.py). Both equal the old rule at
        REFERENCE_WIDTH, the bundled MiniLM's d_model, where the factor was chosen: the seed's 0.001
        is lambda = 2 there; lambda = 1 left hundreds of features firing on more than 10% of tokens,
        lambda = 2 a few dozen at L0 ~30-40 (docs/architectures.md). Checkpoints keep the weight
        they were written with. `legacy`: the rule of checkpoints written before they kept it, where
        sparsity_coeff was the per-element weight itself."""
        if legacy:
            return config.sparsity_coeff
        return config.sparsity_coeff * LAMBDA_PER_SPARSITY_COEFF / math.sqrt(REFERENCE_WIDTH * d_in)

    def reconstruction_losses(self, sae, x, f) -> dict:
        """Further reconstruction losses by name, each added to the step's loss at weight 1 beside
        the MSE of the whole SAE (Matryoshka's prefixes); the trainer reports them by these names."""
        return {}

    def prefix_reconstructions(self, sae, f) -> dict:
        """{width: the reconstruction from the first `width` features} where an architecture trains
        its prefixes to reconstruct on their own (Matryoshka); evaluation reports each one's EV."""
        return {}

    def aux_loss(self, sae, x, recon, pre, trainer):
        """An auxiliary loss added to the step's loss (already weighted), or None. `x` is what
        `recon` predicts: the SAE's input, or the target it was given. `trainer` gives config,
        dead_mask(), optimizer, parallel, state and total_steps."""
        return None

    def after_step(self, sae, x, recon, trainer) -> None:
        """Anything after the optimizer step (relu resamples dead features)."""

    def param_groups(self, sae, config, total_steps: int) -> list[dict]:
        """Adam's parameter groups, each with its `base_lr` (the schedule scales it).

        The `fast_biases` learn at max(learning_rate, BIAS_TRAVEL / total steps). With inputs at mean
        norm sqrt(d_in) and a tied start, a feature's pre-activation on a token it does not encode
        has variance ~1 at every width, so it fires on half the tokens until its bias stands near
        -1.3 (10%) or lower; an Adam step moves a parameter by about the learning rate (Kingma and
        Ba 2015, section 2.1), so at the default 1e-4 the service's 5,000 steps move a bias by 0.5 at
        most, and every feature of a relu or gated SAE stayed dense (docs/architectures.md, "Defaults across
        widths"; bench/width_grid.py). Anthropic's recipe (April 2024: 5e-5 and every bias at it) is
        for runs far longer than ours; this gets there in any run, and is the plain rate in long
        runs, as jumprelu's thresholds' own rate is (engine/sae/jumprelu.py)."""
        fast = set(self.fast_biases)
        weights = [p for name, p in sae.named_parameters() if name not in fast]
        groups = [{"params": weights, "base_lr": config.learning_rate}]
        if fast:
            biases = [p for name, p in sae.named_parameters() if name in fast]
            groups.append({"params": biases, "base_lr": max(config.learning_rate, BIAS_TRAVEL / max(total_steps, 1))})
        return groups

    # -- export --

    def export_tensors(self, sae) -> dict:
        """Tensors besides the four weights an exported SAE needs (SAELens names)."""
        return {}

    def scaled_export_tensors(self, sae, input_scale: float, output_scale: float) -> dict:
        """Tensors an export needs that the input and output scaling fold into (engine.sae.export)."""
        return {}

    def saelens_config(self, sae) -> dict:
        """Entries of an SAELens cfg.json beyond the shared ones."""
        return {}

    def saelens_tensors(self, weights: dict) -> dict:
        """The exported tensors (engine.sae.export) under the names SAELens' class loads."""
        return weights


_ARCHITECTURES: dict[str, Architecture] = {}


def register(cls: type[Architecture]) -> type[Architecture]:
    """Class decorator: make an architecture available by its name. Registering a name twice is
    a mistake (two modules would answer for it)."""
    if not cls.name or len(cls.name) > MAX_NAME_LENGTH:
        raise EngineError(f"{cls.__name__} needs a name of 1 to {MAX_NAME_LENGTH} characters, not '{cls.name}'")
    if cls.name in _ARCHITECTURES and type(_ARCHITECTURES[cls.name]) is not cls:
        raise EngineError(f"architecture '{cls.name}' is registered already, by {type(_ARCHITECTURES[cls.name]).__name__}")
    _ARCHITECTURES[cls.name] = cls()
    return cls


def unregister(name: str) -> None:
    """For tests that register an architecture of their own."""
    _ARCHITECTURES.pop(name, None)


def names() -> tuple[str, ...]:
    return tuple(_ARCHITECTURES)


def get(name: str) -> Architecture:
    try:
        return _ARCHITECTURES[name]
    except (KeyError, TypeError):
        raise EngineError(f"architecture must be one of {', '.join(names())}, not '{name}'") from None


def all_architectures() -> Iterable[Architecture]:
    return tuple(_ARCHITECTURES.values())


def request_fields() -> tuple[RequestField, ...]:
    """Every architecture's request fields, each once, in registration order."""
    fields = {}
    for architecture in _ARCHITECTURES.values():
        for field in architecture.request_fields:
            fields.setdefault(field.name, field)
    return tuple(fields.values())


def taking(field_name: str) -> tuple[str, ...]:
    """The architectures that take a request field."""
    return tuple(a.name for a in _ARCHITECTURES.values() if field_name in {f.name for f in a.request_fields})


def _listed(names: tuple[str, ...]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def describe_field(field: RequestField) -> str:
    """The field's help with the architectures it applies to, as the API's schema says it."""
    users = _listed(taking(field.name))
    return f"{field.help}; required for {users}" if field.required else f"{users} only: {field.help}"


def check_request(name: str, values: Mapping, *, hidden_dim: int) -> str | None:
    """The first problem of a request's architecture and its fields, in the API's words, or None.
    `values` maps every registered request field to the request's value (None: not given)."""
    if name not in _ARCHITECTURES:
        return f"architecture: must be one of {', '.join(names())}, not '{name}'."
    architecture = _ARCHITECTURES[name]
    own = {f.name: f for f in architecture.request_fields}
    for field in request_fields():
        value = values.get(field.name)
        if field.name not in own:
            if value is not None:
                return f"{field.name}: only applies to {_listed(taking(field.name))}, not '{name}'."
        elif value is None and field.required:
            return f"{field.name}: required when architecture is '{name}' ({field.about})."
    return architecture.check_request(values, hidden_dim=hidden_dim)


def check_config(config) -> list[str]:
    """The engine's check of a TrainConfig's architecture and the fields it takes."""
    if config.architecture not in _ARCHITECTURES:
        return [f"architecture must be one of {', '.join(names())}"]
    architecture = _ARCHITECTURES[config.architecture]
    problems = [field.problem(getattr(config, field.name, None), architecture.name) for field in architecture.request_fields]
    return [p for p in problems if p]
