"""The gated SAE (engine.sae.gated): its code, which of its losses trains what, and its export."""
import torch
import torch.nn.functional as F

from engine.sae.export import export_state_dict
from engine.sae import build_sae, sae_from_state_dict
from engine.trainer import TrainConfig, train_sae
from tests.engine.trainer.test_sae_training import sparse_data


def random_gated(d_in=8, d_sae=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    sae = build_sae("gated", d_in, d_sae)
    with torch.no_grad():
        for param in sae.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return sae


def test_gated_codes_are_the_magnitude_path_where_the_gate_is_open():
    sae = random_gated()
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    centred = x - sae.b_dec
    gate = centred @ sae.W_enc + sae.b_enc
    magnitude = centred @ (sae.W_enc * sae.r_mag.exp()) + sae.b_mag
    expected = (gate > 0).float() * magnitude.relu()
    with torch.no_grad():
        f = sae.encode(x)
    torch.testing.assert_close(f, expected, rtol=1e-5, atol=1e-5)
    assert 0 < (f > 0).float().mean() < 1  # some gates open, some closed: both branches were checked


def test_the_decoder_learns_from_the_reconstruction_only_and_the_gate_bias_from_its_own_losses():
    sae = random_gated()
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(2))
    config = TrainConfig(min_steps=0, cpu_bf16="off", architecture="gated")
    pre = sae.pre_activations(x)
    gate_losses = sae.kind.sparsity_loss(sae, pre, sae.activate(pre), config) + \
        sae.kind.aux_loss(sae, x, None, pre, trainer=None)
    gate_losses.backward()
    # The paper's auxiliary loss and (here) the penalty's weights see a frozen decoder (b_dec still
    # learns from them as the encoder's centring, x - b_dec).
    assert sae.W_dec.grad is None
    assert sae.b_enc.grad.abs().sum() > 0 and sae.W_enc.grad.abs().sum() > 0
    assert sae.r_mag.grad is None and sae.b_mag.grad is None  # magnitudes are not penalised

    sae.zero_grad(set_to_none=True)
    F.mse_loss(sae(x).output, x).backward()
    # The gate's step passes no gradient: b_gate gets none from the reconstruction.
    torch.testing.assert_close(sae.b_enc.grad, torch.zeros_like(sae.b_enc), atol=1e-6, rtol=0)
    assert sae.r_mag.grad.abs().sum() > 0 and sae.W_dec.grad.abs().sum() > 0


def test_our_export_runs_on_raw_activations_and_is_recognised_by_its_keys():
    data = sparse_data(n_tokens=1024)
    result = train_sae(data, TrainConfig(min_steps=0, cpu_bf16="off", architecture="gated", hidden_dim=64, learning_rate=1e-2, sae_batch_tokens=256,
                                         max_epochs=2, min_loss=0.0))
    s = result.scaling_factor
    exported = export_state_dict(result.sae, s)
    assert set(exported) == {"W_enc", "b_enc", "W_dec", "b_dec", "r_mag", "b_mag"}
    folded = sae_from_state_dict(exported)
    assert folded.architecture == "gated"
    raw = torch.from_numpy(sparse_data(n_tokens=200, seed=3))
    with torch.no_grad():
        scaled, on_raw = result.sae(raw * s), folded(raw)
    recon_scaled, f_scaled, recon_raw, f_raw = scaled.output, scaled.codes, on_raw.output, on_raw.codes
    assert (f_raw > 0).any()
    torch.testing.assert_close(f_raw, f_scaled, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(recon_raw, recon_scaled / s, rtol=1e-5, atol=1e-5)
