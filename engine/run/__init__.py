"""One run of the whole job with no Django: a spec in, an outcome out.

    from engine.run import RunPaths, RunSpec, run
    outcome = run(RunSpec(paths=RunPaths.in_folder("out"), model="gpt2", corpus=Path("corpus.txt"), layer_number=6))

`run` resolves and loads the model, extracts the layer's activations (training while it extracts
where the spec's first epoch follows the extraction order), trains, evaluates, saves and exports
the SAE and analyses its features; RunCallbacks tell the caller how it goes and let it cancel.
The worker and `manage.py train` run jobs through it (training.worker.job), with callbacks that
write the job row; a multi-GPU job plugs in its own training step (training.worker.ddp)."""
from engine.run.runner import run
from engine.run.spec import (
    ANALYZING,
    EVALUATING,
    EXTRACTING,
    LOADING,
    TRAINING,
    EvaluationSettings,
    FeatureSettings,
    RunCallbacks,
    RunOutcome,
    RunPaths,
    RunSpec,
)
from engine.run.training import TrainStep, train_in_process, train_step

__all__ = [
    "ANALYZING", "EVALUATING", "EXTRACTING", "LOADING", "TRAINING", "EvaluationSettings", "FeatureSettings", "RunCallbacks", "RunOutcome",
    "RunPaths", "RunSpec", "TrainStep", "run", "train_in_process", "train_step",
]
