"""One training run, from a claimed job to its artifacts. Runs in a worker process or in
`manage.py train`; the engine does the work, this module keeps the job row up to date."""
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
from django.conf import settings

from engine.errors import AnalysisCancelled, EngineError, ExtractionCancelled
from mistudio.errors import ServiceError
from training import selectors, services
from training.job_training import first_epoch_in_arrival_order, train_callbacks, train_start
from training.models import TrainingJob

logger = logging.getLogger("training")


class _Throttle:
    """True at most once per interval: progress writes and cancel checks must not hammer the DB."""

    def __init__(self, interval_s):
        self.interval_s = interval_s
        self.last = 0.0

    def __call__(self):
        now = time.monotonic()
        if now - self.last >= self.interval_s:
            self.last = now
            return True
        return False


def _slot():
    from gpus.selectors import this_device

    return this_device()


def _device(job, select_device):
    """A GPU worker sees only its own GPU (CUDA_VISIBLE_DEVICES), as cuda:0; a fake one (tests)
    trains on the CPU; the default worker picks as it always has."""
    if settings.WORKER_GPU is not None:
        return "cpu" if settings.FAKE_GPU else select_device(0)
    if job.gpu_ids:
        from training import ddp

        return ddp.worker_device(job, select_device)
    return select_device(job.gpu_id)


class JobLost(Exception):
    """The job was recovered elsewhere while this worker still ran it: stop and write nothing."""


class _Heartbeat(threading.Thread):
    """Tells the database this worker is alive, independently of progress: loading a large model
    or one long epoch must not look like a dead worker."""

    def __init__(self, job):
        super().__init__(name=f"heartbeat-{job.pk}", daemon=True)
        self.job = job
        self.stopped = threading.Event()
        self.lost = False

    def run(self):
        from django.db import connection

        try:
            while not self.stopped.wait(settings.HEARTBEAT_INTERVAL_S):
                if not services.job_heartbeat(self.job):
                    self.lost = True
                    return
        finally:
            connection.close()

    def stop(self):
        self.stopped.set()
        self.join(timeout=10)


def _cancel_check(job_id, heartbeat):
    throttle = _Throttle(0.5)
    state = {"stop": False}

    def should_stop():
        if heartbeat.lost:
            raise JobLost(job_id)
        if not state["stop"] and throttle():
            state["stop"] = selectors.job_cancel_requested(job_id)
        return state["stop"]

    return should_stop


def job_run(job_id: str, *, on_progress=None, wait_for_slot=False) -> TrainingJob | None:
    """Claim the job and run it to an ending. `on_progress(dict)` lets a terminal show a bar.
    `wait_for_slot`: when another job trains on this machine's slot, wait for it and then train
    here (a terminal's `manage.py train`), rather than hand the job back to the queue (a worker)."""
    job = services.job_claim(job_id)
    if job is None:
        logger.info("Job %s is not queued any more; nothing to run", job_id)
        return None
    from gpus.services import lease_acquire, lease_release, lease_wait

    if not wait_for_slot and not lease_acquire(job):
        # Another live job trains on this worker's GPU (two workers started on one GPU): the job
        # goes back to its queue for another worker, and this one trains nothing.
        time.sleep(settings.WORKER_SEEN_INTERVAL_S)  # not at once: the same busy worker may take it again
        services.job_requeue(job, f"GPU slot {settings.HOST_NAME}/{_slot()} was busy; waiting for a free worker")
        return TrainingJob.objects.get(pk=job_id)
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    report = on_progress or (lambda update: None)
    heartbeat = _Heartbeat(job)
    heartbeat.start()
    should_stop = _cancel_check(job.id, heartbeat)

    def slot_busy(holder_id):
        message = f"Waiting for GPU slot {settings.HOST_NAME}/{_slot()}: job {holder_id} trains on it"
        services.job_update_progress(job.id, phase=TrainingJob.Phase.WAITING, message=message)
        report({"phase": "waiting", "message": message})

    try:
        # While it waits the job stays running, with this live pid and the heartbeat above, so no
        # worker's watchdog re-queues it; a cancel request ends the wait.
        if wait_for_slot and not lease_wait(job, should_stop=should_stop, on_busy=slot_busy):
            services.job_finish(job, status=TrainingJob.Status.CANCELLED,
                                message="Cancelled while waiting for the GPU slot")
        else:
            if wait_for_slot:
                services.job_update_progress(job.id, phase=TrainingJob.Phase.LOADING)
            _run(job, report, should_stop)
    except JobLost:
        logger.warning("Job %s was recovered by another worker; this run stops", job_id)
        return TrainingJob.objects.get(pk=job_id)
    except ExtractionCancelled:
        services.job_finish(job, status=TrainingJob.Status.CANCELLED, message="Cancelled during extraction")
    except (EngineError, ServiceError) as err:
        services.job_fail(job, str(err))
    except (MemoryError, RuntimeError) as err:
        if not _is_out_of_memory(err):
            logger.exception("Job %s crashed", job_id)
            services.job_fail(job, f"{type(err).__name__}: {err}")
        else:
            services.job_fail(job, _describe_out_of_memory(TrainingJob.objects.get(pk=job_id), err))
    except Exception as err:  # noqa: BLE001 - any crash must end the job, not leave it running
        logger.exception("Job %s crashed", job_id)
        services.job_fail(job, f"{type(err).__name__}: {err}")
    finally:
        heartbeat.stop()
        lease_release(job)
        # Whatever the ending, the token is gone (job_finish wipes it; this covers a crash in it),
        # unless the job went back to the queue to resume and still needs it.
        TrainingJob.objects.filter(pk=job_id).exclude(status=TrainingJob.Status.QUEUED).exclude(
            encrypted_hf_token="").update(encrypted_hf_token="")
    return TrainingJob.objects.get(pk=job_id)


def _is_out_of_memory(err):
    return isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError" or "out of memory" in str(err).lower()


def _describe_out_of_memory(job, err):
    """What was needed, what there was, and what to change: the three things a user asks."""
    GB = 1024**3
    device = job.device or "cpu"
    if device.startswith("cuda"):
        import torch

        free, total = torch.cuda.mem_get_info(torch.device(device))
        where = f"{device}: {free / GB:.1f} GB free of {total / GB:.1f} GB"
    else:
        from engine.devices import system_memory

        total, free = system_memory()
        where = f"system RAM: {free / GB:.1f} GB available of {total / GB:.1f} GB"
    needed = ""
    if job.model_name and not job.activations_file:
        from training import modelcheck

        try:
            described = modelcheck.describe(job.model_name, any_local_path=True)
            estimate = modelcheck.estimate(
                described, device_kind="cuda" if device.startswith("cuda") else "cpu",
                quantization=job.quantization, hidden_dim=job.hidden_dim, batch_size=job.batch_size,
                max_sequence_length=job.max_sequence_length, sae_batch_tokens=job.sae_batch_tokens,
                layer_number=job.layer_number,
            )
            needed = f" Estimated requirement: {estimate.total_bytes / GB:.1f} GB."
        except ServiceError:
            pass
    return (
        f"Out of memory during {job.phase.replace('_', ' ')} ({str(err).splitlines()[0][:200]}).{needed} "
        f"Available on {where}. Hint: lower batch_size (now {job.batch_size}) or max_sequence_length "
        f"(now {job.max_sequence_length}), lower sae_batch_tokens (now {job.sae_batch_tokens}) or hidden_dim "
        f"(now {job.hidden_dim}), or load the model with quantization '4bit'."
    )


def _run(job, report, should_stop):
    from engine.activations import load_activations
    from engine.corpus import read_corpus
    from engine.devices import select_device

    paths = services.job_artifact_paths(job)
    device = _device(job, select_device)
    services.job_update_progress(job.id, device=device, message=f"Loading on {device}")
    report({"phase": "loading", "device": device})

    loaded = texts = extraction = result = None
    # A resumed run reuses what its earlier run extracted (the file appears complete or not at all).
    extracted = Path(job.activations_path) if job.activations_path and not job.activations_file else None
    if extracted is not None and not extracted.is_file():
        extracted = None
    if job.activations_file:
        activations_path = Path(job.activations_file)
        activations = load_activations(activations_path)
    elif extracted is not None and not job.model_info.get("is_causal_lm"):
        activations_path = extracted
        activations = load_activations(activations_path)
    else:
        from engine.loading import load_model
        from engine.resolve import ResolvedModel

        token = selectors.job_token(job)
        resolved = ResolvedModel(name=job.model_name, location=job.model_location, source=job.model_source)
        loaded = load_model(
            resolved,
            device=device,
            quantization=None if job.quantization == TrainingJob.Quantization.NONE else job.quantization,
            token=token,
            with_lm_head=True,
            cpu_bf16=settings.CPU_BF16,
        )
        texts = read_corpus(Path(job.corpus.path))
        if extracted is not None:
            activations_path = extracted
        else:
            services.job_update_progress(
                job.id, phase=TrainingJob.Phase.EXTRACTING, message=f"Extracting activations on {device}"
            )
            if _overlaps(job):
                # A fresh single-process run trains while the model extracts (engine.activations.ExtractionStream).
                result, extraction = _extract_and_train(job, loaded, texts, device, paths, should_stop, report)
                activations_path = extraction.path if extraction is not None else paths["activations_path"]
            else:
                extraction = _extract(job, loaded, texts, paths["activations_path"], should_stop, report)
                activations_path = extraction.path
                # (An overlapped run recorded it already, as soon as the file was complete.)
                _extracted(job, extraction)
        if not job.model_info.get("is_causal_lm"):
            loaded = None  # only next-token evaluation needs the model again: free it now
        if result is None or result.stopped_reason != "cancelled":
            activations = load_activations(activations_path)

    if result is not None:
        pass  # trained while extracting
    elif job.gpu_ids:
        from training import ddp

        # None: cancelled before rank 0 could hand back a result.
        result = ddp.train(job, activations_path, device, paths, should_stop, report)
    else:
        result = _train(job, activations, device, paths, should_stop, report,
                        extracted_to=None if job.activations_file else activations_path)
    if result is None or result.stopped_reason == "cancelled":
        services.job_finish(
            job,
            status=TrainingJob.Status.CANCELLED,
            message=f"Cancelled at epoch {result.total_epochs + 1}; checkpoints kept" if result else "Cancelled; checkpoints kept",
            # A run cancelled while still extracting keeps no partial file.
            activations_path=str(activations_path) if Path(activations_path).is_file() else "",
            current_loss=result.final_loss if result else None,
        )
        return
    _finish(job, result, activations, activations_path, device, paths, report, loaded, texts, should_stop)


def _overlaps(job):
    """Whether this run trains while it extracts: a one-process job with no checkpoint yet whose
    first epoch follows the extraction order. A multi-GPU job extracts in the worker before its
    ranks start; a resume extracts first, then follows whatever order its checkpoint's run used."""
    last = job.last_checkpoint
    if job.gpu_ids or (last is not None and Path(last.path).is_file()):
        return False
    return first_epoch_in_arrival_order(job)


class _ExtractionReport:
    """Extraction progress on the job row. While training runs beside it (an overlapped run) the
    training reports own the message and the progress bar; extraction's share is appended to it."""

    def __init__(self, job, report):
        self.job, self.report = job, report
        self.throttle = _Throttle(settings.PROGRESS_INTERVAL_S)
        self.started = time.monotonic()
        self.training = False
        self.note = None  # "extracting 120/400 sequences (9000 tokens/s)" while both run

    def __call__(self, done, total, tokens):
        if not (self.throttle() or done == total):
            return
        elapsed = time.monotonic() - self.started
        rate = tokens / elapsed if elapsed > 0 else 0.0
        self.note = None if done == total else f"extracting {done}/{total} sequences ({rate:.0f} tokens/s)"
        if self.training:
            return
        eta = int((total - done) * elapsed / done) if done else None
        message = f"Extracting activations - {done}/{total} sequences ({rate:.0f} tokens/s)"
        services.job_update_progress(self.job.id, eta_s=eta, message=message, tokens_per_s=round(rate, 1),
                                     phase=TrainingJob.Phase.EXTRACTING, spent={"extraction_seconds": elapsed})
        self.report({"phase": "extracting", "done": done, "total": total, "message": message})


def _extracted(job, extraction):
    """The cache is complete: the row keeps where it is and what extracting it measured, so a rerun
    reuses it and its result still reports the extraction."""
    services.job_update_progress(job.id, activations_path=str(extraction.path),
                                 extraction_stats=_extraction_stats(extraction),
                                 spent={"extraction_seconds": extraction.seconds})


def _extraction_stats(extraction) -> dict:
    return {
        "sequences": extraction.n_sequences,
        "tokens": extraction.n_tokens,
        "seconds": round(extraction.seconds, 3),
        "tokens_per_s": round(extraction.tokens_per_s, 1),
        "real_token_share": round(extraction.real_token_share, 4),
        "dtype": extraction.dtype,
        # True: training stepped on the rows while they were extracted (MISTUDIO_OVERLAP_EXTRACTION).
        "overlapped_with_training": extraction.overlapped,
    }


def _extract_options(job, out_path):
    return dict(layer_number=job.layer_number, batch_size=job.batch_size,
                max_sequence_length=job.max_sequence_length, out_path=out_path, seed=settings.TRAINING_SEED)


def _extract(job, loaded, texts, out_path, should_stop, report):
    from engine.activations import extract_activations

    return extract_activations(loaded, texts, on_progress=_ExtractionReport(job, report), should_stop=should_stop,
                               **_extract_options(job, out_path))


def _extract_and_train(job, loaded, texts, device, paths, should_stop, report):
    """Extraction in a background thread, training on its rows as they arrive: (the training
    result, the extraction result or None when cancelled)."""
    from engine.activations import ExtractionStream

    extraction_report = _ExtractionReport(job, report)
    stream = ExtractionStream(
        loaded, texts, on_progress=extraction_report,
        # Recorded as soon as the cache is complete: a worker killed in a later epoch resumes from it.
        on_done=lambda done: _extracted(job, done),
        **_extract_options(job, paths["activations_path"]),
    )
    try:
        result = _train(job, stream, device, paths, should_stop, report, extraction_report=extraction_report)
        if result.stopped_reason == "cancelled":
            return result, None
        return result, stream.result()
    except BaseException as err:
        # Both ran at once: the phase on the row says which one failed (an out-of-memory message names it).
        failed = TrainingJob.Phase.EXTRACTING if stream.error is err else TrainingJob.Phase.TRAINING
        services.job_update_progress(job.id, phase=failed)
        raise
    finally:
        stream.close()  # stops the extraction if training ended early (a cancel, an error)


def _train(job, activations, device, paths, should_stop, report, *, extracted_to=None, extraction_report=None):
    """`extracted_to`: the finished cache this job extracted. A resume reads its arrival order,
    which the trainer uses if the checkpoint's run trained while extracting; a fresh run uses it
    when the job's first epoch follows the extraction order (its first run overlapped)."""
    from engine.activations import load_arrival_rows
    from engine.trainer import train_sae

    config, resume_from = train_start(job, device, overlapped=extraction_report is not None)
    first_epoch_rows = None
    if extracted_to is not None and (resume_from is not None or first_epoch_in_arrival_order(job)):
        first_epoch_rows = load_arrival_rows(extracted_to, activations.shape[0])
    on_progress, on_checkpoint = train_callbacks(job, report, extraction_report)
    return train_sae(
        activations,
        config,
        device=device,
        checkpoint_dir=paths["checkpoint_dir"],
        checkpoint_prefix=job.id,
        on_progress=on_progress,
        should_stop=should_stop,
        on_checkpoint=on_checkpoint,
        resume_from=resume_from,
        first_epoch_rows=first_epoch_rows,
    )


def _evaluate(job, result, activations, device, loaded, texts):
    """Metrics on the held-out tail of the activations, which training never saw; for causal LMs,
    next-token loss on the held-out sequences with the SAE spliced in."""
    from engine.evaluate import evaluate_sae

    start, stop = result.heldout_rows or (0, int(activations.shape[0]))
    evaluation = evaluate_sae(
        result.sae, activations[start:stop], scaling_factor=result.scaling_factor, device=device,
        batch_tokens=job.sae_batch_tokens, dead_counts=result.tokens_since_fired,
        dead_window_tokens=result.dead_window_tokens,
    )
    feature_density = evaluation.pop("feature_density", None)
    evaluation.update(_ce_loss(job, result, device, loaded, texts, heldout_start=start))
    return evaluation, feature_density


def _ce_loss(job, result, device, loaded, texts, *, heldout_start):
    empty = {"ce_loss_clean": None, "ce_loss_with_sae": None, "ce_loss_zero_ablation": None,
             "ce_loss_recovered": None}
    if job.activations_file:
        return {**empty, "ce_loss_reason": "trained from an activations file: there is no language model to splice the SAE into"}
    if loaded is None:
        return {**empty, "ce_loss_reason": f"{job.model_name} is not a causal language model: next-token loss does not apply"}
    from engine.lm_eval import ce_loss_evaluation

    # The held-out rows are the corpus's last sequences (rows are stored in corpus order).
    lengths = [len(ids) for ids in loaded.tokenizer(texts, truncation=True, max_length=job.max_sequence_length)["input_ids"]]
    offset, heldout_texts = 0, []
    for text, length in zip(texts, lengths):
        if offset >= heldout_start:
            heldout_texts.append(text)
        offset += length
    sae, s = result.sae.to(device).eval(), result.scaling_factor

    def reconstruct(x):
        return sae.decode(sae.encode(x * s)) / s

    ce = ce_loss_evaluation(loaded, heldout_texts, layer_number=job.layer_number, reconstruct=reconstruct,
                            max_sequence_length=job.max_sequence_length, batch_size=job.batch_size)
    return ce  # its ce_loss_reason says why ce_loss_recovered is None, when it is


def _finish(job, result, activations, activations_path, device, paths, report, loaded, texts, should_stop):
    from engine.export import save_sae, write_metadata
    from engine.export_saelens import export_saelens
    from engine.stats import feature_statistics

    services.job_update_progress(
        job.id, phase=TrainingJob.Phase.EVALUATING, progress=1.0, message="Evaluating on held-out tokens"
    )
    report({"phase": "evaluating"})
    evaluation, feature_density = _evaluate(job, result, activations, device, loaded, texts)
    saved_weights = save_sae(paths["model_path"], result.sae, result.scaling_factor)
    saelens = export_saelens(
        paths["saelens_dir"], result.sae, result.scaling_factor,
        model_name=job.model_name or None,
        # TransformerLens' name for the residual stream after block L: what our layer output is.
        hook_name=None if job.activations_file else f"blocks.{job.layer_number}.hook_resid_post",
        context_size=None if job.activations_file else job.max_sequence_length,
        feature_density=feature_density,
    )
    try:
        # One pass over the activations after training: the analysis counts what the feature
        # statistics need too.
        features_dir, features_info, features = _analyze(job, result, activations, activations_path, device, paths,
                                                         report, loaded, should_stop)
    except AnalysisCancelled:
        features_dir = features_info = None
        # The result stays complete: the statistics then take a pass of their own.
        features = feature_statistics(result.sae, activations, scaling_factor=result.scaling_factor, device=device,
                                      batch_tokens=job.sae_batch_tokens)
    training_stats = _training_stats(job, result, activations, features)
    write_metadata(paths["metadata_path"], _metadata(job, result, activations, activations_path, device,
                                                     saved_weights, training_stats, evaluation, saelens))
    outputs = dict(
        training_stats=training_stats,
        model_path=str(paths["model_path"]),
        activations_path=str(activations_path),
        metadata_path=str(paths["metadata_path"]),
        evaluation=evaluation,
        exports={"saelens": str(saelens)},
        progress=1.0,
        current_epoch=result.total_epochs,
        current_loss=result.final_loss,
    )
    if features_dir is None:
        services.job_finish(
            job, status=TrainingJob.Status.CANCELLED,
            message=f"Cancelled during the feature analysis; the trained SAE was saved to {paths['model_path']}",
            **outputs,
        )
        return
    services.job_finish(
        job,
        status=TrainingJob.Status.COMPLETED,
        message=f"Training completed: {result.total_epochs} epochs, final loss {result.final_loss:.6g} ({result.stopped_reason})",
        features_dir=str(features_dir),
        features=features_info,
        **outputs,
    )


def _training_stats(job, result, activations, features) -> dict:
    stats = {
        "final_loss": result.final_loss,
        "final_mse": result.final_mse,
        "total_epochs": result.total_epochs,
        "convergence_epoch": result.convergence_epoch,
        "stopped_reason": result.stopped_reason,
        "loss_history": result.loss_history,
        "feature_statistics": features,
        "tokens": int(activations.shape[0]),
        "input_scaling_factor": result.scaling_factor,
        "training_tokens": result.heldout_rows[0] if result.heldout_rows else int(activations.shape[0]),
        "resampled_features": result.resampled_features,
        "sae_batch_tokens_used": result.sae_batch_tokens,
        "decode_path": result.decode_path,
        "compute_dtype": result.compute_dtype,
    }
    # This run's training time joins its entry in `runs`; the result adds up every run's.
    services.job_update_progress(job.id, spent={"training_seconds": result.training_time_seconds})
    job.refresh_from_db()
    stats.update(selectors.job_runs_summary(job.runs))
    # The run that extracted the activations recorded what it measured (maybe an earlier run).
    if job.extraction_stats:
        stats["extraction"] = job.extraction_stats
    return stats


def _metadata(job, result, activations, activations_path, device, saved_weights, training_stats, evaluation,
              saelens) -> dict:
    return {
        "job_id": job.id,
        "model_name": job.model_name or None,
        "model_info": job.model_info,
        "layer_number": job.layer_number if not job.activations_file else None,
        "corpus": job.corpus.name if job.corpus_id else None,
        "activations_path": str(activations_path),
        "activations_shape": list(activations.shape),
        "activations_dtype": str(activations.dtype),
        "sae": {
            "architecture": job.architecture,
            "k": job.k,
            "d_in": int(activations.shape[1]),
            "d_sae": job.hidden_dim,
            "state_dict_keys": sorted(saved_weights),
            "decode": "f @ W_dec + b_dec",
            "input_scaling_folded_into_weights": result.scaling_factor,
        },
        "training": {
            "sparsity_coeff": job.sparsity_coeff,
            "learning_rate": job.learning_rate,
            "batch_size": job.batch_size,
            "sae_batch_tokens": job.sae_batch_tokens,
            "max_epochs": job.max_epochs,
            "min_loss": job.min_loss,
            "max_sequence_length": job.max_sequence_length,
            "device": device,
            "seed": settings.TRAINING_SEED,
        },
        "training_stats": training_stats,
        "evaluation": evaluation,
        "exports": {"saelens": str(saelens)},
    }


def _analyze(job, result, activations, activations_path, device, paths, report, loaded, should_stop):
    """The feature analysis (engine.features): top contexts, statistics and histograms of every
    feature in one pass over the job's activations, and for causal LMs the logit effect. Returns
    its folder, what the result says of it, and the job's feature_statistics from its counts."""
    import json

    from engine.activations import load_token_index
    from engine.features import analyze_features, logit_effects, save_analysis
    from engine.stats import statistics_from_analysis
    from engine.tokens import token_texts

    services.job_update_progress(job.id, phase=TrainingJob.Phase.ANALYZING, message="Analyzing features")
    report({"phase": "analyzing"})
    throttle = _Throttle(settings.PROGRESS_INTERVAL_S)
    started = time.monotonic()

    def on_progress(done, total):
        if throttle() or done == total:
            elapsed = time.monotonic() - started
            rate = done / elapsed if elapsed > 0 else 0.0
            message = f"Analyzing features - {done}/{total} tokens"
            services.job_update_progress(job.id, message=message, tokens_per_s=round(rate, 1),
                                         eta_s=int((total - done) / rate) if rate > 0 else None)
            report({"phase": "analyzing", "done": done, "total": total, "message": message})

    index = None if job.activations_file else load_token_index(activations_path)
    token_ids, starts = index if index is not None else (None, None)
    sae = result.sae.to(device).eval()
    analysis = analyze_features(
        sae, result.scaling_factor, activations, token_ids=token_ids, sequence_starts=starts,
        top_n=settings.FEATURE_TOP_N, window=settings.FEATURE_CONTEXT_WINDOW,
        chunk_rows=max(256, job.sae_batch_tokens), device=device, on_progress=on_progress, should_stop=should_stop,
    )
    info = {"top_n": analysis.top_n, "window": analysis.window, "analyzed_tokens": analysis.n_rows,
            "contexts": token_ids is not None, "logit_effect": False, "logit_effect_reason": None,
            "seconds": None}
    if token_ids is None:
        info["contexts_reason"] = ("trained from an activations file: there are no tokens" if job.activations_file
                                   else "the activations were extracted before token indexes were kept")
    info["logit_effect_reason"] = _add_logit_effects(job, analysis, sae, result.scaling_factor, loaded, logit_effects)
    info["logit_effect"] = info["logit_effect_reason"] is None
    folder = paths["features_dir"]
    save_analysis(analysis, folder)
    tokenizer = _tokenizer(job, loaded)
    if tokenizer is not None:
        used = set()
        for array in (analysis.window_tokens, analysis.logit_top_ids, analysis.logit_bottom_ids):
            if array is not None:
                used.update(int(t) for t in np.unique(np.asarray(array)) if t >= 0)
        strings = {str(t): text for t, text in token_texts(tokenizer, sorted(used)).items()}
        partial = folder / "tokens.json.partial"
        partial.write_text(json.dumps(strings, ensure_ascii=False), encoding="utf-8")
        partial.replace(folder / "tokens.json")
    info["seconds"] = round(time.monotonic() - started, 3)
    return folder, info, statistics_from_analysis(analysis)


def _add_logit_effects(job, analysis, sae, scaling_factor, loaded, logit_effects) -> str | None:
    """Fills the analysis' logit arrays; returns why not, or None when it did."""
    if job.activations_file:
        return "trained from an activations file: there is no unembedding"
    if loaded is None:
        return f"{job.model_name} is not a causal language model: it has no unembedding to read tokens through"
    model = loaded.model
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is None or getattr(output, "weight", None) is None:
        return f"{job.model_name} exposes no output embedding"
    base = getattr(model, "base_model", model)
    norm = next((getattr(base, name) for name in ("norm", "ln_f", "final_layernorm", "final_layer_norm")
                 if getattr(base, name, None) is not None), None)
    norm_weight = getattr(norm, "weight", None)
    try:
        unembedding = output.weight.detach().float()
    except (RuntimeError, TypeError) as err:  # a quantized head that cannot be dequantized this way
        return f"the output embedding could not be read as floats: {err}"
    top_ids, top_values, bottom_ids, bottom_values = logit_effects(
        sae, scaling_factor, unembedding, norm_weight=None if norm_weight is None else norm_weight.detach().float(),
        n=settings.FEATURE_LOGIT_TOKENS,
    )
    analysis.logit_top_ids, analysis.logit_top_values = top_ids, top_values
    analysis.logit_bottom_ids, analysis.logit_bottom_values = bottom_ids, bottom_values
    return None


def _tokenizer(job, loaded):
    if loaded is not None:
        return loaded.tokenizer
    if job.activations_file or not job.model_location:
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(job.model_location, token=selectors.job_token(job))
    except (OSError, ValueError) as err:
        logger.warning("job %s: no tokenizer for feature contexts: %s", job.id, err)
        return None
