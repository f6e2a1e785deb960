"""Training a sparse autoencoder of any registered architecture (engine.sae) on stored activations.

Recipe, shared by every architecture unless noted (sources inline):
- the last `eval_fraction` of the rows (a contiguous tail, at least 1, at most 100k) is held out
  for engine.evaluation.reconstruction and never trained on;
- inputs are multiplied by one fixed scalar so their mean L2 norm is sqrt(d_in) (Anthropic,
  "Circuits Updates - April 2024"; SAELens' normalize_activations="expected_average_only_in"), which
  makes the sparsity coefficient mean roughly the same thing for every model and layer; the
  scalar is folded back into the saved weights (engine.sae.export);
- b_dec starts at the geometric median of a sample, W_enc at W_dec.T;
- loss = MSE (mean over elements) + the architecture's sparsity term (relu: decoder-norm-weighted
  L1, gated: the same L1 of its gate plus a frozen-decoder reconstruction from the gate,
  jumprelu: L0 or a target-L0 penalty, topk/batchtopk: none, plus the AuxK loss), each
  architecture's own (engine.sae), + its further reconstruction losses, by name
  (matryoshka_batchtopk: the MSE of each inner prefix of the dictionary);
- relu and gated keep free decoder norms (the weighted L1 removes the incentive to shrink f by growing
  W_dec; Anthropic, "Circuits Updates - April 2024"); the others keep decoder rows at unit norm;
- Adam with linear LR warm-up and a linear decay to 0 over the last steps, sparsity-penalty
  warm-up, gradient-norm clipping at 1.0;
- per-feature "tokens since last fired" counters define dead features: topk/batchtopk revive them
  through AuxK, relu resamples them;
- each epoch is one pass over the training rows in a fresh random order; where the rows come
  from an extraction (its arrival order known), the first epoch instead draws them through a
  shuffle buffer in the order extraction writes them, so it can start before extraction ends
  (`ExtractionStream`) and still be the same run when repeated from the finished cache.

With `distributed=True` every process of a torch.distributed group trains its share of each batch
(data parallel; engine.distributed says how the ranks stay in step).

The package, by concept: config (TrainConfig and its checks), plan (held-out rows, batch, step
floor, penalty weight), schedules (learning rate, penalty warm-up), init (input scale, b_dec),
ordering (the first epoch in extraction order), checkpoint (the run state and the file format),
parallel (the data-parallel glue), step (one optimizer step), progress (reports), rows (the row
source train_sae takes), epochs (what a cached and a streamed run share), loop (train_sae), streamed
(a run streamed from the model).
"""
from engine.trainer.config import TrainConfig  # noqa: F401 (the package's API)
from engine.trainer.loop import train_sae  # noqa: F401
from engine.trainer.plan import min_steps_for  # noqa: F401
