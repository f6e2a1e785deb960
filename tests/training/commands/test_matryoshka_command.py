"""`manage.py train --architecture matryoshka_batchtopk --matryoshka-widths ...` recovers the planted
dictionary of tests.training.worker.test_ground_truth, and its result and exported SAE say what it trained."""
import pytest
import torch

from tests.training.worker.test_ground_truth import FEATURES_PER_TOKEN, planted, recovery, train_on_planted  # noqa: F401
from tests.training.commands.test_train_command import OWN_DATABASE

pytestmark = OWN_DATABASE


@pytest.mark.slow
def test_matryoshka_from_the_command_line_recovers_the_planted_features(train_on_planted, planted):  # noqa: F811
    result = train_on_planted("--architecture", "matryoshka_batchtopk", "--k", str(FEATURES_PER_TOKEN),
                              "--matryoshka-widths", "8,32", "--max-epochs", "5", "--sae-batch-tokens", "512")
    assert result["architecture"] == "matryoshka_batchtopk" and result["matryoshka_widths"] == [8, 32, 128]
    assert recovery(result, planted[1]) >= 0.9
    assert result["evaluation"]["explained_variance"] >= 0.8
    assert result["evaluation"]["l0"] == pytest.approx(FEATURES_PER_TOKEN, abs=1.5)  # BatchTopK's threshold
    exported = torch.load(result["model_path"], weights_only=True)
    assert set(exported) == {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"}  # SAELens' jumprelu tensors


@pytest.mark.slow
def test_a_bad_widths_option_names_the_field(train_on_planted):  # noqa: F811
    with pytest.raises(AssertionError, match="matryoshka_widths: must be strictly increasing"):
        train_on_planted("--architecture", "matryoshka_batchtopk", "--k", "3", "--matryoshka-widths", "32,8")


@pytest.mark.slow
def test_widths_that_are_not_integers_are_refused_by_the_option(train_on_planted):  # noqa: F811
    with pytest.raises(AssertionError, match="--matryoshka-widths: '8,many' is not a comma-separated list of integers"):
        train_on_planted("--architecture", "matryoshka_batchtopk", "--k", "3", "--matryoshka-widths", "8,many")
