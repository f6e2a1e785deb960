"""Matryoshka BatchTopK SAE (Bussmann, Nabeshima, Karvonen and Nanda 2025, "Learning Multi-Level
Features with Matryoshka Sparse Autoencoders", arXiv 2503.17547; Nabeshima 2024): a BatchTopK SAE
whose nested prefixes of the dictionary, the first `matryoshka_widths[m]` features, must each
reconstruct the input on their own. A general feature then has to live in a small prefix, where no
more specific feature can absorb it, which is what reduces feature absorption on hierarchical
concepts.

The loss is the sum over the prefixes of each reconstruction's MSE: the whole SAE's is the trainer's
`mse`, the inner ones are `inner_mse_<width>` (the paper's sum over nested dictionaries, and what
SAELens' MatryoshkaBatchTopKTrainingSAE adds to its loss; not an average). BatchTopK picks the codes
over the whole dictionary once, AuxK revives dead features against the whole SAE's residual, and the
inference threshold is BatchTopK's: outside training it encodes exactly as a BatchTopK SAE, so it
is exported to SAELens as a jumprelu with that threshold, as SAELens does.

The widths travel in the SAE's state dict (the buffer `matryoshka_widths`), so a checkpoint or a
saved state dict rebuilds its own prefixes.
"""
from engine.errors import EngineError
from engine.sae.batchtopk import BatchTopK
from engine.sae.registry import RequestField, increasing_positive_ints_problem, register

WIDTHS = RequestField(
    "matryoshka_widths", list, about="the nested prefixes' widths",
    help="Widths of the nested prefixes of the dictionary, each trained to reconstruct the input on its own, "
         "strictly increasing, the last at most hidden_dim (hidden_dim is added when the last is smaller, as "
         "SAELens does); null: groups doubling from hidden_dim/32 (hidden_dim/32, 3/32, 7/32, 15/32, all of it)",
    api_minimum=1)

# Default group sizes as fractions of the dictionary, each group about twice the one before: the
# group_fractions 1/32, 1/16, 1/8, 1/4, 1/2 + 1/32 of the Matryoshka BatchTopK runs trained with
# dictionary_learning (the implementation Bussmann et al. 2025 release). Their cumulative sums are
# the prefix widths: 1/32, 3/32, 7/32, 15/32 of hidden_dim, then all of it. A fixed list such as
# [128, 512, 2048] would not fit a dictionary of 64 features, nor scale to one of a million.
_DEFAULT_PREFIX_FRACTIONS = (1 / 32, 3 / 32, 7 / 32, 15 / 32)


def default_widths(hidden_dim: int) -> list[int]:
    """The prefixes when none are asked for; small dictionaries lose the prefixes that round to 0."""
    inner = sorted({int(hidden_dim * fraction) for fraction in _DEFAULT_PREFIX_FRACTIONS} - {0})
    return [width for width in inner if width < hidden_dim] + [hidden_dim]


def resolved_widths(asked, hidden_dim: int) -> list[int]:
    """The widths a run trains: the default for None; the asked ones with hidden_dim appended when
    their last is smaller (SAELens appends d_sae the same way), so the whole SAE is always a level."""
    if asked is None:
        return default_widths(hidden_dim)
    widths = [int(width) for width in asked]
    return widths if widths[-1] == hidden_dim else [*widths, hidden_dim]


def widths_problem(asked, hidden_dim: int) -> str | None:
    """The API's words for what is wrong with asked widths, or None."""
    if asked is None:
        return None
    problem = increasing_positive_ints_problem(asked)
    if problem:
        return f"matryoshka_widths: {problem}."
    if asked[-1] > hidden_dim:
        return (f"matryoshka_widths: the last width, {asked[-1]}, is more than hidden_dim ({hidden_dim}): "
                "every prefix is part of the dictionary.")
    return None


@register
class MatryoshkaBatchTopK(BatchTopK):
    name = "matryoshka_batchtopk"
    request_fields = (*BatchTopK.request_fields, WIDTHS)
    state_keys = frozenset({"threshold", "matryoshka_widths"})

    def check_request(self, values, *, hidden_dim):
        return super().check_request(values, hidden_dim=hidden_dim) or \
            widths_problem(values.get("matryoshka_widths"), hidden_dim)

    def resolved_fields(self, values, *, hidden_dim):
        return {"matryoshka_widths": resolved_widths(values.get("matryoshka_widths"), hidden_dim)}

    def setup(self, sae, options):
        import torch

        super().setup(sae, options)
        asked = options.get("matryoshka_widths")
        problem = widths_problem(asked, sae.d_sae)
        if problem:
            raise EngineError(problem)
        sae.register_buffer("matryoshka_widths", torch.tensor(resolved_widths(asked, sae.d_sae), dtype=torch.int64))

    def options(self, sae):
        return {**super().options(sae), "matryoshka_widths": sae.matryoshka_widths.tolist()}

    def options_in_state(self, state_dict):
        return {"matryoshka_widths": [int(width) for width in state_dict["matryoshka_widths"].tolist()]}

    def reconstruction_losses(self, sae, x, f):
        """Each inner prefix's MSE (a mean over elements, as the trainer's `mse`); the last prefix is
        the whole SAE, whose MSE is `mse` already."""
        from torch.nn.functional import mse_loss

        inner = list(self.prefix_reconstructions(sae, f).items())[:-1]
        return {f"inner_mse_{width}": mse_loss(reconstruction, x) for width, reconstruction in inner}

    def prefix_reconstructions(self, sae, f) -> dict:
        """{width: the reconstruction from the first `width` features} for every prefix, built up
        group by group so all of them cost one decode of the whole dictionary."""
        reconstructions, start, partial = {}, 0, sae.b_dec
        for width in sae.matryoshka_widths.tolist():
            partial = partial + f[:, start:width] @ sae.W_dec[start:width]
            reconstructions[width] = partial
            start = width
        return reconstructions
