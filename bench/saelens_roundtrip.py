"""Train one small SAE of each architecture with miStudio's engine, export it in SAELens format,
load the folder with SAELens itself, and compare SAELens' encoder and decoder with ours.

Transcoders (trained on pairs: an input and a target of another width) load as SAELens'
`transcoder` / `skip_transcoder`. SAELens encodes those with a ReLU where ours keep each token's top
k, so the check compares what both define the same way: the pre-activations, and the prediction
(decoder, b_dec and W_skip) from our codes.

Run in the bench venv (bench/requirements.txt), from the repository root:
    .venv-bench/bin/python bench/saelens_roundtrip.py
"""
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.sae.export import export_state_dict  # noqa: E402
from engine.sae.export_saelens import export_saelens  # noqa: E402
from engine.trainer import TrainConfig, train_sae  # noqa: E402


def main():
    from sae_lens import SAE, __version__

    rng = np.random.default_rng(0)
    raw = (rng.normal(size=(4000, 24)) * 3 + 1).astype(np.float32)
    x = torch.from_numpy(raw[:256])
    worst = 0.0
    for architecture, k in (("relu", None), ("topk", 6), ("batchtopk", 6), ("jumprelu", None),
                            ("matryoshka_batchtopk", 6), ("gated", None)):
        config = TrainConfig(min_steps=0, cpu_bf16="off", architecture=architecture, k=k, hidden_dim=48, max_epochs=3, min_loss=0,
                             sae_batch_tokens=256, learning_rate=1e-3)
        result = train_sae(raw, config)
        sae = result.sae.eval()
        s = result.scaling_factor
        with tempfile.TemporaryDirectory() as folder:
            export_saelens(Path(folder), sae, s, model_name="synthetic", hook_name="blocks.0.hook_resid_post",
                           context_size=128, feature_density=np.full(48, 0.01))
            loaded = SAE.load_from_disk(folder, device="cpu")
            with torch.no_grad():
                ours_f = sae.encode(x * s)
                ours_recon = sae.decode(ours_f) / s
                theirs_f = loaded.encode(x)
                theirs_recon = loaded.decode(theirs_f)
        f_err = (ours_f - theirs_f).abs().max().item()
        recon_err = (ours_recon - theirs_recon).abs().max().item()
        worst = max(worst, f_err, recon_err)
        print(f"{architecture:20s} -> SAELens {type(loaded).__name__:14s} max |Δf| {f_err:.2e}  max |Δx̂| {recon_err:.2e}"
              f"  L0 ours {float((ours_f > 0).float().sum(1).mean()):.2f} theirs {float((theirs_f > 0).float().sum(1).mean()):.2f}")
        assert set(export_state_dict(sae, s)) >= {"W_enc", "b_enc", "W_dec", "b_dec"}
    worst = max(worst, transcoders(rng))
    print(f"sae-lens {__version__}: worst difference {worst:.2e}")
    if worst > 1e-4:
        raise SystemExit("SAELens disagrees with our encoder")


def transcoders(rng) -> float:
    from sae_lens import SAE

    raw_in = (rng.normal(size=(4000, 24)) * 3 + 1).astype(np.float32)
    mix = rng.normal(size=(24, 16)).astype(np.float32)
    raw_out = (np.maximum(raw_in @ mix, 0) * 0.2 + 5).astype(np.float32)  # another width, scale and offset
    x = torch.from_numpy(raw_in[:256])
    worst = 0.0
    for architecture in ("transcoder", "skip_transcoder"):
        config = TrainConfig(min_steps=0, cpu_bf16="off", architecture=architecture, k=6, hidden_dim=48, max_epochs=3, min_loss=0,
                             sae_batch_tokens=256, learning_rate=1e-3)
        result = train_sae(raw_in, config, targets=raw_out)
        sae, s, s_out = result.sae.eval(), result.scaling_factor, result.target_scaling_factor
        with tempfile.TemporaryDirectory() as folder:
            export_saelens(Path(folder), sae, s, model_name="synthetic", hook_name="blocks.0.ln2.hook_normalized",
                           hook_name_out="blocks.0.hook_mlp_out", context_size=128, target_scaling_factor=s_out)
            loaded = SAE.load_from_disk(folder, device="cpu")
            with torch.no_grad():
                ours_pre = sae.pre_activations(x * s)
                ours = sae(x * s)
                ours_out, ours_f = ours.output / s_out, ours.codes
                theirs_pre = x @ loaded.W_enc + loaded.b_enc
                theirs_out = loaded.decode(ours_f)
                if hasattr(loaded, "W_skip"):
                    theirs_out = theirs_out + x @ loaded.W_skip.T
        pre_err = (ours_pre - theirs_pre).abs().max().item()
        out_err = (ours_out - theirs_out).abs().max().item() / ours_out.abs().max().item()
        worst = max(worst, pre_err, out_err)
        print(f"{architecture:15s} -> SAELens {type(loaded).__name__:14s} d_out {loaded.cfg.d_out}  max |Δpre| {pre_err:.2e}"
              f"  max |Δŷ|/max|ŷ| {out_err:.2e}  hook_name_out {loaded.cfg.metadata.hook_name_out}")
    return worst


if __name__ == "__main__":
    main()
