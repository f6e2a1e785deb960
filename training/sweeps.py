"""Workflows on sweeps: create one (every member checked up front), queue it, cancel it; and the
reads: a user's sweeps, one sweep, and the document its status endpoint and page show.

A sweep is a family of TrainingJobs on one model and corpus, one per layer x hook point x member,
trained from one pass over the corpus by one queue task (training.worker.sweep). Each member is a job
like any other (its status and result endpoints unchanged); what the members must share (the
corpus, its tokenization and batches, the device) is the sweep's base.
"""
from django.conf import settings
from django.db import transaction

from engine import sae as architectures
from mistudio.errors import Conflict, Forbidden, NotFound, ServiceError
from training import services
from training.admission import model as modelcheck
from training.admission import quotas
from training.admission import disk as runplan
from training.models import Sweep, TrainingJob
from training.requests import SweepRequest, paired_sites

# The SAE fields a member may set for itself; everything else is the base's, shared by all.
SAE_FIELDS = ("architecture", "hidden_dim", "sparsity_coeff", "learning_rate", "sae_batch_tokens", "min_loss", "max_epochs")


def member_fields() -> tuple[str, ...]:
    """SAE_FIELDS and the request fields of the registered architectures (k, target_l0, ...)."""
    return SAE_FIELDS + tuple(f.name for f in architectures.request_fields() if f.name not in SAE_FIELDS)


def sweep_create(*, owner, request: SweepRequest, enqueue: bool = True, any_local_path: bool = False) -> Sweep:
    """Check every member against the real model, corpus and machine (memory for the model and each
    SAE, disk for every site's cache and every member's checkpoints), then save the sweep and its
    jobs and queue its one task once the transaction commits."""
    base = request.base
    _check_shape(request)
    services.check_force(owner, base, on_the_machine=any_local_path)
    count = len(request.member_requests())
    quotas.check_active_jobs(owner, adding=count)  # every member is a job of its own
    if not base.model_name:
        raise ServiceError("model_name: this field is required.", field="model_name")
    described = modelcheck.describe(base.model_name, token=base.huggingface_token, any_local_path=any_local_path)
    rows = []
    for number, (layer, point, overrides, member) in enumerate(request.member_requests()):
        try:
            columns = services.job_columns(owner=owner, request=member, any_local_path=any_local_path,
                                           described=described, plan_disk=False)
        except ServiceError as err:
            # Next to what set it, on a form: the sites' lists, the member's overrides, or the base's field.
            where = {"layer_number": "layers", "hook_point": "hook_points"}.get(err.field, err.field)
            raise ServiceError(f"members[{number % len(request.members)}] at layer {layer}, {point}: {err.message}",
                               field="members" if err.field in overrides else where) from None
        rows.append((columns, overrides))
    first = rows[0][0]
    plans = runplan.sweep_disk_plans(
        corpus=first["corpus"], described=described, packing=first["packing"],
        max_sequence_length=base.max_sequence_length, training_tokens=base.training_tokens,
        sites=len(request.sites()), members=[(c["hidden_dim"], c["max_epochs"]) for c, _ in rows],
        token=base.huggingface_token, cache_activations=base.cache_activations)
    # A caching sweep's members read their site's cache, which the sweep writes once for all of them;
    # a streaming sweep's keep the sweep's mode (the engine decides again from the corpus's exact rows).
    member_cache = base.cache_activations if plans["sweep"]["streams"] else "always"
    if plans["sweep"]["streams"]:
        # Its members train at once (each member's check counted its own SAE beside the model).
        verdict = _memory_together(base, [columns for columns, _ in rows], described)
        rows = [({**columns, "memory_check": verdict}, overrides) for columns, overrides in rows]
    quotas.check_storage(owner, plan=plans["sweep"])
    with transaction.atomic():
        services.owner_lock(owner)
        quotas.check_active_jobs(owner, adding=count)
        sweep = Sweep.objects.create_with_fresh_id(owner=owner, model_name=base.model_name, corpus=first["corpus"],
                                                   layers=list(dict.fromkeys(layer for layer, _ in request.sites())),
                                                   hook_points=list(dict.fromkeys(point for _, point in request.sites())),
                                                   members=request.members, disk_plan=plans["sweep"])
        for (columns, overrides), plan in zip(rows, plans["members"]):
            # Members made in one second share the date and time: each draws its digits until they are free.
            TrainingJob.objects.create_with_fresh_id(**{**columns, "cache_activations": member_cache, "disk_plan": plan,
                                                        "message": f"Waiting for a worker (sweep {sweep.id})"},
                                                     sweep=sweep, sweep_settings=overrides)
        if enqueue:
            transaction.on_commit(lambda: services.sweep_enqueue(sweep.id))
    return sweep


def _memory_together(base, members: list[dict], described) -> str:
    """The memory verdict of a streaming sweep: the model and every member's SAE training at once."""
    first = members[0]
    try:
        return modelcheck.memory_verdict(
            described, quantization=first["quantization"], gpu_id=base.gpu_id, force=base.force,
            hidden_dim=first["hidden_dim"], batch_size=base.batch_size, max_sequence_length=base.max_sequence_length,
            sae_batch_tokens=first["sae_batch_tokens"], layer_number=max(m["layer_number"] for m in members),
            alongside=[(m["hidden_dim"], m["sae_batch_tokens"]) for m in members[1:]])
    except ServiceError as err:
        raise ServiceError(f"The sweep streams, so its {len(members)} members train at once: {err.message}",
                           field="members") from None


def _check_shape(request: SweepRequest) -> None:
    base = request.base
    if base.activations_file:
        raise ServiceError("activations_file: a sweep trains from a model and a corpus; train on a file with "
                           "POST /api/v1/train.", field="activations_file")
    if base.gpu_ids is not None:
        raise ServiceError("gpu_ids: a sweep trains on one device (its members one after another); give gpu_id.",
                           field="gpu_ids")
    for name, values in (("layers", request.layers), ("hook_points", request.hook_points)):
        if values is not None and not values:
            raise ServiceError(f"{name}: list at least one, or leave it out for the base's.", field=name)
        if values is not None and len(set(values)) != len(values):
            raise ServiceError(f"{name}: {list(values)} names one more than once.", field=name)
    if not request.members:
        raise ServiceError("members: list at least one member ({} trains the base's settings).", field="members")
    for number, overrides in [(None, {}), *enumerate(request.members)]:
        name = overrides.get("architecture", base.architecture)
        if paired_sites(name) is not None:
            where = "architecture" if number is None else f"members[{number}].architecture"
            # A sweep shares one cache per (layer, hook point); paired sites need two read together.
            raise ServiceError(f"{where}: a sweep cannot train a {name} yet (transcoders need a cache of the MLP's input "
                               "and output together); train it with POST /api/v1/train.",
                               field="architecture" if number is None else "members")
    allowed = member_fields()
    for number, overrides in enumerate(request.members):
        unknown = sorted(set(overrides) - set(allowed))
        if unknown:
            raise ServiceError(
                f"members[{number}]: {', '.join(unknown)} cannot differ between members (one pass over the corpus "
                f"feeds them all): set it on the sweep. A member may set {', '.join(allowed)}.", field="members")
    count = len(request.sites()) * len(request.members)
    if count > settings.SWEEP_MAX_MEMBERS:
        raise ServiceError(f"The sweep has {count} members (layers x hook_points x members), more than "
                           f"MISTUDIO_SWEEP_MAX_MEMBERS ({settings.SWEEP_MAX_MEMBERS}): split it into smaller sweeps.",
                           field="members")


def sweep_cancel(sweep: Sweep) -> Sweep:
    """Cancel every member that has not ended: queued ones at once, running ones within seconds."""
    unfinished = list(sweep.jobs.exclude(status__in=TrainingJob.FINISHED))
    if not unfinished:
        raise Conflict(f"Sweep {sweep.id} has ended: every member is completed, failed or cancelled.")
    for job in unfinished:
        try:
            services.job_cancel(job)
        except Conflict:
            pass  # it ended meanwhile
    return sweep


def sweeps_visible_to(user):
    return Sweep.objects.visible_to(user)


def sweep_get(*, user, sweep_id: str) -> Sweep:
    sweep = sweeps_visible_to(user).filter(pk=sweep_id).first()
    if sweep is None:
        raise NotFound(f"Sweep {sweep_id} not found")
    return sweep


def sweep_to_cancel(*, user, sweep_id: str) -> Sweep:
    """A sweep `user` sees (sweep_get) and may cancel: their own, or staff's with the change permission."""
    sweep = sweep_get(user=user, sweep_id=sweep_id)
    if not sweep.cancellable_by(user):
        raise Forbidden(f"Sweep {sweep_id} is not yours: cancelling another user's sweep needs the permission to "
                        "change sweeps (the admin's user permissions)")
    return sweep


def sweep_status(statuses: list[str]) -> str:
    """The seed's status values, for the family: running while any member runs, queued while any
    waits, and once all ended: completed when every one completed, else failed if any failed, else
    cancelled."""
    if TrainingJob.Status.RUNNING in statuses:
        return TrainingJob.Status.RUNNING
    if TrainingJob.Status.QUEUED in statuses:
        return TrainingJob.Status.QUEUED
    if all(status == TrainingJob.Status.COMPLETED for status in statuses):
        return TrainingJob.Status.COMPLETED
    return TrainingJob.Status.FAILED if TrainingJob.Status.FAILED in statuses else TrainingJob.Status.CANCELLED


METRICS = ("explained_variance", "l0", "mse", "cosine_similarity", "dead_features", "ce_loss_recovered", "kl_div_score")


def member_metrics(job: TrainingJob) -> dict | None:
    """A finished member's headline metrics from its evaluation (None until it has one)."""
    if not job.evaluation:
        return None
    return {name: job.evaluation.get(name) for name in METRICS}


def sweep_created_document(sweep: Sweep) -> dict:
    """What POST /api/v1/sweeps answers: the ids, and the members' memory checks in one line."""
    jobs = list(sweep.jobs.order_by("created_at", "pk"))
    warnings = [job.memory_check for job in jobs if job.memory_check != "passed"]
    return {
        "sweep_id": sweep.id, "status": TrainingJob.Status.QUEUED, "job_ids": [job.id for job in jobs],
        "message": f"Sweep started for {sweep.model_name}: {len(jobs)} members from one pass over {sweep.corpus.name}",
        "memory_check": warnings[0] if warnings else "passed",
    }


def sweep_document(sweep: Sweep) -> dict:
    jobs = list(sweep.jobs.order_by("created_at", "pk"))
    statuses = [job.status for job in jobs]
    counts = {status: statuses.count(status) for status in TrainingJob.Status.values if status in statuses}
    return {
        "sweep_id": sweep.id,
        "status": sweep_status(statuses),
        "progress": round(sum(job.progress for job in jobs) / len(jobs), 4) if jobs else 0.0,
        "model_name": sweep.model_name,
        "corpus_file": sweep.corpus.name,
        "layers": sweep.layers,
        "hook_points": sweep.hook_points,
        "members_count": len(jobs),
        "members_by_status": counts,
        # How the one pass was shared: the model's forward passes over the corpus and the tokens they
        # extracted, for all members at once (null until the extraction is done).
        "lm_forward_batches": sweep.lm_forward_batches,
        # cached: one file per site, extracted once; streamed: no file, the members trained together
        # from passes of the model (its caches would not fit, or cache_activations is never).
        "activations": "streamed" if (sweep.disk_plan or {}).get("streams") else "cached",
        "tokens_extracted": sweep.tokens_extracted,
        "extraction_seconds": sweep.extraction_seconds,
        "created_at": sweep.created_at,
        "members": [{
            "job_id": job.id, "layer_number": job.layer_number, "hook_point": job.hook_point,
            "settings": job.sweep_settings or {}, "architecture": job.architecture, "hidden_dim": job.hidden_dim,
            "status": job.status, "progress": job.progress, "message": job.message,
            "metrics": member_metrics(job),
        } for job in jobs],
    }
