"""One run, from a spec to its artifacts, in this order: resolve and load the model, extract the
layer's activations (training on them as they arrive where it can), train, evaluate, save and
export the SAE, analyse its features, write the metadata."""
from dataclasses import replace
from pathlib import Path

from engine.activations.extract import ExtractionStream, extract_activations, extract_sites
from engine.activations.cache import load_activations, load_token_index
from engine.errors import AnalysisCancelled, EngineError, ExtractionCancelled
from engine.sae.export import save_sae, write_metadata
from engine.sae.export_saelens import export_saelens
from engine.models.resolve import ResolvedModel
from engine.run import records, sources
from engine.run.analysis import analyze
from engine.run.evaluation import evaluate
from engine.run.final_rows import final_rows, keep_final_rows
from engine.run.spec import ANALYZING, EVALUATING, EXTRACTING, LOADING, TRAINING, RunCallbacks, RunOutcome, RunSpec
from engine.run.training import StreamStep, TrainFunction, TrainStep, train_in_process
from engine.activations.stream import ActivationStream


def run(spec: RunSpec, callbacks: RunCallbacks | None = None, *, train: TrainFunction | None = None,
        loaded=None) -> RunOutcome:
    """Run the spec to its outcome: completed, or cancelled (callbacks.should_stop) and where.
    Failures raise (engine.errors.EngineError for what the spec or its inputs got wrong), after
    callbacks.on_error has named the phase.

    `train(step, activations, callbacks)`: the training step, engine.run.training.train_in_process
    by default. Only that one trains while the model extracts; a run given another extracts first
    and hands it the finished file (torchrun ranks, say, that read it themselves), or, when the run
    streams, a StreamStep and its stream (each rank then streams too: train_stream_step).

    `loaded`: the spec's model already loaded (engine.models.loading.LoadedModel), as a sweep shares one
    among its members (engine.run.sweep); the run then loads none."""
    return _Run(spec, callbacks or RunCallbacks(), train, loaded).outcome()


def finish_streamed(spec: RunSpec, callbacks: RunCallbacks | None, *, loaded, stream: ActivationStream, result,
                    disk) -> RunOutcome:
    """The rest of a run whose SAE was trained on `stream` elsewhere (a streaming sweep's member,
    engine.run.sweep): what run() does after a streamed train_sae (evaluate, save, export, analyse, the
    metadata), with the spec's model already `loaded` and `disk` its engine.disk plan."""
    finishing = _Run(spec, callbacks or RunCallbacks(), None, loaded)
    finishing.model, finishing.loaded, finishing.source = resolve_spec_model(spec), loaded, stream.source
    finishing.stream, finishing.disk, finishing.phase = stream, disk, TRAINING
    if result.stopped_reason == "cancelled":
        return RunOutcome(paths=spec.paths, cancelled_in="training", result=result)
    try:
        return finishing._finish(result, stream, None)
    except Exception as err:
        finishing._call("on_error", finishing.phase, err)
        raise


def train_stream_step(spec: RunSpec, step: StreamStep, *, distributed: bool = False, on_progress=None,
                      on_checkpoint=None, should_stop=None):
    """A StreamStep trained here, on the stream the spec and the step describe, with the spec's
    model loaded on step.device (a torchrun rank's part of a streamed run)."""
    import numpy as np

    from engine.trainer import train_sae

    spec = replace(spec, device=step.device)
    loaded = load_spec_model(spec)
    stream = spec_stream(spec, loaded, sources.sequence_source(spec, loaded), np.load(step.rows_path),
                         n_rows=step.n_rows, corpus_rows=step.corpus_rows)
    return train_sae(stream, step.config, device=step.device, checkpoint_dir=step.checkpoint_dir,
                     checkpoint_prefix=step.checkpoint_prefix, on_progress=on_progress, should_stop=should_stop,
                     on_checkpoint=on_checkpoint, resume_from=step.resume_from, distributed=distributed)


def spec_stream(spec: RunSpec, loaded, source, rows, *, n_rows: int | None, corpus_rows: int) -> ActivationStream:
    """The spec's pass over its corpus with no cache: `rows` per sequence, n_rows of them read."""
    return ActivationStream(loaded, source, rows, layer_number=spec.layer_number, batch_size=spec.batch_size,
                            hook_point=spec.hook_point, n_rows=n_rows, corpus_rows=corpus_rows)


def resolve_spec_model(spec: RunSpec) -> ResolvedModel:
    """The spec's model, resolved (a name engine.models.resolve finds offline first)."""
    if isinstance(spec.model, ResolvedModel):
        return spec.model
    from engine.models.resolve import resolve_model

    return resolve_model(str(spec.model), models_dir=None, token=spec.token)


def load_spec_model(spec: RunSpec, model: ResolvedModel | None = None):
    """The spec's model loaded as its run loads it (with the LM head: next-token evaluation). A hub
    model under spec.hub_limits has its weights' sizes asked of the hub first: a download past
    hub_limits.max_bytes, or one the hub cache's disk cannot hold, fails (WeightsTooLarge) before a
    byte of it is written."""
    from engine.models.loading import load_model

    model = model or resolve_spec_model(spec)
    if spec.hub_limits is not None and model.source == "hub":
        _check_hub_weights(model, spec.token, spec.hub_limits)
    return load_model(model, device=spec.device, quantization=spec.quantization, token=spec.token,
                      with_lm_head=True, cpu_bf16=spec.cpu_bf16, models_cache_dir=spec.models_cache_dir)


def _check_hub_weights(model: ResolvedModel, token, limits) -> None:
    """Checked again on the worker, right before from_pretrained downloads: the commit's files
    cannot have changed since the job was made, but the disk can have filled."""
    from huggingface_hub import constants

    from engine.models.hub_files import check_download

    check_download(model, token=token, timeout_s=limits.timeout_s, max_bytes=limits.max_bytes,
                   reserve_bytes=limits.reserve_bytes)
    # huggingface_hub's timeout for each read of a download (HF_HUB_DOWNLOAD_TIMEOUT, read when it
    # downloads): a hub that stops sending fails the load after this long instead of holding the
    # worker. The download as a whole has no limit: 16 GB takes what the link takes.
    constants.HF_HUB_DOWNLOAD_TIMEOUT = limits.timeout_s


class _Run:
    def __init__(self, spec: RunSpec, callbacks: RunCallbacks, train: TrainFunction | None, loaded=None):
        if (spec.activations_file is None) == (spec.model is None) or (spec.model is not None and spec.corpus is None):
            raise EngineError("A run takes a model and a corpus, or an activations file (not both)")
        self.spec, self.callbacks = spec, callbacks
        self.train, self.may_overlap = train or train_in_process, train is None
        self.phase = LOADING
        self.model = None  # the ResolvedModel
        self.model_info = spec.model_info
        self.loaded = self.extraction = None
        self.shared_model = loaded
        self.source = self.stream = self.disk = None  # the corpus as sequences; the rows when streamed; engine.disk's plan
        self.sites = sources.run_sites(spec)
        self.targets = None  # the target site's rows, when the sites are paired: row for row with the activations
        # The spec's budget is the trainer's (a TrainConfig given one keeps it).
        self.config = replace(spec.config, training_tokens=sources.budget(spec))

    def outcome(self) -> RunOutcome:
        try:
            return self._run()
        except ExtractionCancelled:
            return RunOutcome(paths=self.spec.paths, cancelled_in="extraction")
        except Exception as err:
            self._call("on_error", self.phase, err)
            raise

    def _call(self, name: str, *args, **kwargs):
        callback = getattr(self.callbacks, name)
        return None if callback is None else callback(*args, **kwargs)

    def _enter(self, phase: str, **details) -> None:
        self.phase = phase
        self._call("on_phase", phase, **details)

    def _run(self) -> RunOutcome:
        spec = self.spec
        self._enter(LOADING, device=spec.device)
        activations, path, result = self._activations()
        if result is None:
            result = self._train(activations, path)
        if result is None or result.stopped_reason == "cancelled":
            # A run cancelled while still extracting keeps no partial file (and a streamed one has none).
            kept = path if path is not None and Path(path).is_file() else None
            return RunOutcome(paths=spec.paths, cancelled_in="training", result=result, activations_path=kept,
                              extraction=self.extraction)
        return self._finish(result, activations, path)

    def _activations(self):
        """(the rows, their file, and the training result when training ran while extracting)."""
        spec = self.spec
        if spec.activations_file is not None:
            path = Path(spec.activations_file)
            if self.sites.paired:
                if spec.targets_file is None:
                    raise EngineError(f"A {spec.config.architecture} trained from an activations file needs its targets_file")
                self.targets = load_activations(Path(spec.targets_file))
            return load_activations(path), path, None
        self.model = resolve_spec_model(spec)
        if self.sites.paired:
            return self._paired_activations()
        causal = bool(self._model_info().get("is_causal_lm"))
        cache = Path(spec.cache) if spec.cache is not None and Path(spec.cache).is_file() else None
        if cache is not None and not causal:
            return load_activations(cache), cache, None
        self.loaded = self.shared_model or load_spec_model(spec, self.model)
        self.source = sources.sequence_source(spec, self.loaded)
        if cache is not None:
            return load_activations(cache), cache, None
        # A resume takes its batches as its checkpoint's run did: streamed, or from a cache made again.
        resumed = spec.resume_from is not None
        streamed = resumed and sources.checkpoint_streamed(spec.resume_from)
        # What one pass over the corpus gives: a streamed checkpoint keeps it, else the tokenizer's pass.
        saved = sources.saved_rows(spec, self.source) if streamed else None
        # A cache plans its file and batches from every sequence's lengths, taken in the same pass
        # (as far as the budget reads).
        lengths = None if saved else self.source.lengths(max_rows=sources.rows_needed(spec))
        rows, corpus_rows = saved or (lengths[0], None)
        corpus_rows = int(rows.sum()) if corpus_rows is None else corpus_rows
        mode = "never" if streamed else "always" if resumed else spec.cache_activations
        self.disk = sources.disk_plan(spec, self.loaded, corpus_rows, mode=mode, sequences=len(rows))
        if not self.disk.cache:
            self.stream = spec_stream(spec, self.loaded, self.source, rows, n_rows=sources.rows_to_read(spec, corpus_rows),
                                      corpus_rows=corpus_rows)
            # Training elsewhere (train given) computes these rows in other processes: here they
            # are computed again after it.
            if self.may_overlap:
                keep_final_rows(spec, self.stream)
            return self.stream, None, None
        # The corpus is read a group of sequences at a time as the model runs (engine.activations.extract).
        reading = dict(n_rows=sources.rows_to_read(spec, corpus_rows), lengths=lengths)
        result = None
        self._enter(EXTRACTING, device=spec.device)
        if spec.first_epoch_in_arrival_order and spec.resume_from is None and self.may_overlap:
            result, path = self._extract_and_train(reading)
        else:
            self.extraction = extract_activations(self.loaded, self.source, on_progress=self.callbacks.on_extraction_progress,
                                                  should_stop=self.callbacks.should_stop, **reading,
                                                  **self._extract_options())
            path = self.extraction.path
            self._call("on_cache_complete", self.extraction)
        if not causal:
            self.loaded = None  # only next-token evaluation needs the model again: free it now
        if result is not None and result.stopped_reason == "cancelled":
            return None, path, result
        return load_activations(path), path, result

    def _paired_activations(self):
        """The input and target sites' rows, both cached from the same forward passes
        (engine.activations.extract.extract_sites): training reads them at the same indices."""
        spec = self.spec
        files = sources.paired_extraction(spec)
        self.loaded = self.shared_model or load_spec_model(spec, self.model)
        self.source = sources.sequence_source(spec, self.loaded)
        lengths = self.source.lengths()
        corpus_rows = int(lengths[0].sum())
        self.disk = sources.disk_plan(spec, self.loaded, corpus_rows, mode="always")
        self._enter(EXTRACTING, device=spec.device)
        extraction = extract_sites(self.loaded, self.source, n_rows=sources.rows_to_read(spec, corpus_rows),
                                   lengths=lengths, sites=files, batch_size=spec.batch_size,
                                   max_sequence_length=spec.max_sequence_length, seed=spec.config.seed,
                                   on_progress=self.callbacks.on_extraction_progress, should_stop=self.callbacks.should_stop,
                                   prepend_bos=spec.prepend_bos, exclude_special_tokens=spec.exclude_special_tokens)
        input_site, target_site = files
        self.extraction = extraction.results[input_site]
        self._call("on_cache_complete", self.extraction)
        self.targets = load_activations(extraction.results[target_site].path)
        if not bool(self._model_info().get("is_causal_lm")):
            self.loaded = None  # only next-token evaluation needs the model again: free it now
        return load_activations(self.extraction.path), self.extraction.path, None

    def _model_info(self) -> dict:
        if self.model_info is None:
            from engine.models.info import describe_model
            from engine.models.resolve import load_config

            config = load_config(self.model, self.spec.token)
            self.model_info = describe_model(self.model, config, selected_layer=self.spec.layer_number,
                                             token=self.spec.token).to_dict()
        return self.model_info

    def _extract_options(self) -> dict:
        spec = self.spec
        return dict(layer_number=spec.layer_number, batch_size=spec.batch_size, max_sequence_length=spec.max_sequence_length,
                    out_path=spec.paths.activations, seed=spec.config.seed, hook_point=spec.hook_point,
                    prepend_bos=spec.prepend_bos, exclude_special_tokens=spec.exclude_special_tokens)

    def _extract_and_train(self, reading: dict):
        """Extraction in a background thread, training on its rows as they arrive: (the training
        result, the finished file or where it would have been)."""
        stream = ExtractionStream(
            self.loaded, self.source, on_progress=self.callbacks.on_extraction_progress,
            # Told as soon as the cache is complete: a run killed in a later epoch can reuse it.
            on_done=self.callbacks.on_cache_complete, **reading, **self._extract_options(),
        )
        try:
            self._enter(TRAINING, overlapped=True, resume_from=None)
            result = train_in_process(self._step(self.spec.paths.activations, arrival_order=False), stream, self.callbacks)
            if result.stopped_reason == "cancelled":
                return result, self.spec.paths.activations
            self.extraction = stream.result()
            return result, self.extraction.path
        except BaseException as err:
            # Both ran at once: the phase says which one failed (an out-of-memory message names it).
            self.phase = EXTRACTING if stream.error is err else TRAINING
            raise
        finally:
            stream.close()  # stops the extraction if training ended early (a cancel, an error)

    def _step(self, path: Path, *, arrival_order: bool) -> TrainStep:
        spec = self.spec
        targets = None
        if self.sites.paired:
            targets = Path(spec.targets_file if spec.activations_file is not None else spec.paths.targets)
        return TrainStep(activations_path=Path(path), config=self.config, device=spec.device,
                         checkpoint_dir=spec.paths.checkpoint_dir, checkpoint_prefix=spec.checkpoint_prefix,
                         resume_from=spec.resume_from, arrival_order=arrival_order, targets_path=targets)

    def _train(self, activations, path):
        """The training step on the finished file; a rerun of a run that trained while extracting
        follows its order again, a resume the order its checkpoint's run used."""
        spec = self.spec
        if self.stream is not None and not self.may_overlap:
            self._enter(TRAINING, overlapped=False, resume_from=spec.resume_from)
            step = self._stream_step()
            # Each process of the step loads the model (one of them on this device): this copy is
            # freed while they train, and loaded again for the evaluation.
            self.loaded = self.stream.loaded = None
            try:
                result = self.train(step, self.stream, self.callbacks)
            finally:
                step.rows_path.unlink(missing_ok=True)
            if result is not None and result.stopped_reason != "cancelled":
                self.loaded = self.stream.loaded = load_spec_model(spec, self.model)
            return result
        if self.stream is not None:
            from engine.trainer import train_sae

            self._enter(TRAINING, overlapped=False, resume_from=spec.resume_from)
            callbacks = self.callbacks
            try:
                return train_sae(self.stream, self.config, device=spec.device,
                                 checkpoint_dir=spec.paths.checkpoint_dir, checkpoint_prefix=spec.checkpoint_prefix,
                                 on_progress=callbacks.on_train_progress, should_stop=callbacks.should_stop,
                                 on_checkpoint=callbacks.on_checkpoint, resume_from=spec.resume_from)
            except BaseException as err:
                if self.stream.error is err:  # the model's forward failed (out of memory, a NaN layer)
                    self.phase = EXTRACTING
                raise
        extracted = spec.activations_file is None
        step = self._step(path, arrival_order=extracted and (spec.resume_from is not None or spec.first_epoch_in_arrival_order))
        self._enter(TRAINING, overlapped=False, resume_from=spec.resume_from)
        return self.train(step, activations, self.callbacks)

    def _stream_step(self) -> StreamStep:
        """The stream as a step other processes rebuild: its rows per sequence go to a file beside
        the checkpoints."""
        import numpy as np

        from engine.files import AtomicFile

        spec, stream = self.spec, self.stream
        rows_path = spec.paths.checkpoint_dir / f"{spec.checkpoint_prefix}_stream_rows.npy"
        with AtomicFile(rows_path) as partial, open(partial, "wb") as out:
            np.save(out, np.diff(stream.ends, prepend=0))
        return StreamStep(config=self.config, device=spec.device, checkpoint_dir=spec.paths.checkpoint_dir,
                          checkpoint_prefix=spec.checkpoint_prefix, rows_path=rows_path, n_rows=stream.n_rows,
                          corpus_rows=stream.corpus_rows, resume_from=spec.resume_from)

    def _finish(self, result, activations, path) -> RunOutcome:
        spec = self.spec
        from_file = spec.activations_file is not None
        model_name = self.model.name if self.model is not None else None
        self._enter(EVALUATING)
        # The rows the evaluation and the analysis read, once (a streamed run computes them again).
        final = final_rows(spec, result, activations, targets=self.targets,
                           token_index=None if path is None or spec.activations_file is not None else load_token_index(path))
        evaluation, feature_density = evaluate(spec, result, final, model_name=model_name, loaded=self.loaded,
                                               heldout_sequences_from=self._heldout_sequences_from(activations))
        saved_weights = save_sae(spec.paths.model, result.sae, result.scaling_factor, result.target_scaling_factor)
        tokens = self._tokens()
        saelens = export_saelens(
            spec.paths.saelens_dir, result.sae, result.scaling_factor, model_name=model_name or None,
            hook_name=tokens["hook_name"], context_size=None if from_file else spec.max_sequence_length,
            prepend_bos=tokens["prepend_bos"], exclude_special_tokens=tokens["exclude_special_tokens"],
            feature_density=feature_density, target_scaling_factor=result.target_scaling_factor,
            hook_name_out=tokens.get("hook_name_out"),
        )
        # One pass over the activations after training: the analysis counts what the feature
        # statistics need too.
        features_dir, features_info, features = self._analyze(result, final)
        stats = records.training_stats(result, activations, features, extra=self._call("extra_training_stats", result) or {},
                                       extraction=self.extraction, disk=self.disk)
        corpus_name = spec.corpus_name or (Path(spec.corpus).name if spec.corpus is not None else None)
        metadata = records.metadata(
            spec, result, activations, path, model_name=model_name or None,
            model_info=self.model_info, corpus_name=corpus_name, saved_weights=saved_weights,
            training_stats=stats, evaluation=evaluation, saelens=saelens, tokens=tokens,
        )
        write_metadata(spec.paths.metadata, metadata)
        return RunOutcome(
            paths=spec.paths, cancelled_in=None if features_dir is not None else "analysis", result=result,
            activations_path=None if path is None else Path(path), extraction=self.extraction, evaluation=evaluation, training_stats=stats,
            exports={"saelens": saelens}, features_dir=features_dir, features=features_info, metadata=metadata,
        )

    def _tokens(self) -> dict:
        """Where the rows were read and how their sequences were made, as they were (the effective
        prepend_bos: engine.text.sequences); None with the reason for an activations file."""
        spec = self.spec
        if spec.activations_file is not None:
            return {"hook_point": None, "hook_name": None, "prepend_bos": None, "exclude_special_tokens": None,
                    "reason": "trained from an activations file: its rows came from elsewhere, so no hook point or "
                              "tokenization is known"}
        from engine.models.hooks import transformerlens_name
        from engine.text.sequences import effective_prepend_bos

        # Only a causal LM gets a BOS put in front, and a causal LM stays loaded (evaluation needs
        # it); an encoder's may be gone by now, and needs none.
        causal = bool(self._model_info().get("is_causal_lm"))
        tokenizer = self.loaded.tokenizer if self.loaded is not None else None
        from engine.text.corpus import corpus_format, default_packing

        packing = spec.packing or default_packing(corpus_format(Path(spec.corpus)))
        names = {"hook_name": transformerlens_name(self.sites.input, spec.layer_number)}
        if self.sites.paired:  # it reads one point and writes another (SAELens' hook_name_out)
            names["hook_name_out"] = transformerlens_name(self.sites.target, spec.layer_number)
        return {"packing": packing, "text_field": spec.text_field, "hook_point": spec.hook_point, **names,
                "prepend_bos": tokenizer is not None and effective_prepend_bos(
                    tokenizer, causal=causal, prepend_bos=spec.prepend_bos),
                "exclude_special_tokens": spec.exclude_special_tokens, "reason": None}

    def _heldout_sequences_from(self, activations):
        """engine.run.evaluation's `heldout_sequences_from(row, max_rows)`: the held-out sequences the
        next-token metrics measure, tokenized again (only those are kept)."""
        if isinstance(activations, ActivationStream):
            return lambda row, max_rows: activations.sequences_from(row, max_rows=max_rows)
        if self.source is None:
            return None
        n_rows = int(activations.shape[0])
        return lambda row, max_rows: sources.sequences_from(self.source, row, max_rows=max_rows, n_rows=n_rows)

    def _analyze(self, result, final):
        """(the analysis' folder, what it did, the feature_statistics); no folder when cancelled."""
        spec = self.spec
        self._enter(ANALYZING)
        try:
            info, features = analyze(spec, result, final, model=self.model, loaded=self.loaded,
                                     on_progress=self.callbacks.on_analysis_progress, should_stop=self.callbacks.should_stop)
            return spec.paths.features_dir, info, features
        except AnalysisCancelled:
            from engine.evaluation.stats import feature_statistics

            # The result stays complete: the statistics then take a pass of their own over the same rows.
            return None, None, feature_statistics(result.sae, final.rows_from(final.analysis_first),
                                                  scaling_factor=result.scaling_factor, device=spec.device,
                                                  batch_tokens=spec.config.sae_batch_tokens)
