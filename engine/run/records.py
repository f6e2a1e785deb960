"""What a run reports of itself: its extraction's measurements, its training stats and the
metadata file written beside the activations."""
from engine.finite import json_ready

NO_STEP = "no training step ran before the run stopped, so no loss was measured"


def extraction_stats(extraction) -> dict:
    return {
        "sequences": extraction.n_sequences,
        "tokens": extraction.n_tokens,
        "seconds": round(extraction.seconds, 3),
        "tokens_per_s": round(extraction.tokens_per_s, 1),
        "real_token_share": round(extraction.real_token_share, 4),
        "dtype": extraction.dtype,
        # True: training stepped on the rows while they were extracted (the spec's first_epoch_in_arrival_order).
        "overlapped_with_training": extraction.overlapped,
    }


def training_stats(result, activations, features: dict, *, extra: dict, extraction=None, disk=None) -> dict:
    """`features`: the feature_statistics; `extra`: what the caller adds (RunCallbacks.extra_training_stats);
    `extraction`: this run's, when it extracted and the caller did not say otherwise; `disk`: the
    run's engine.disk.DiskPlan, when it read a corpus."""
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
        "target_scaling_factor": result.target_scaling_factor,  # the targets'; None without
        "training_tokens": result.heldout_rows[0] if result.heldout_rows else int(activations.shape[0]),
        "resampled_features": result.resampled_features,
        "sae_batch_tokens_used": result.sae_batch_tokens,
        "decode_path": result.decode_path,
        "compute_dtype": result.compute_dtype,
        # Rows the SAE stepped on over all epochs (a training_tokens budget caps it), and as passes.
        "tokens_trained": result.tokens_trained,
        "passes": round(result.tokens_trained / result.training_rows, 4) if result.training_rows else None,
        # Whether the rows streamed from the model with no cache (engine.disk says why).
        "activations_cached": not result.streamed,
        "cache_decision": None if disk is None else disk.reason,
        **extra,
    }
    if "extraction" not in stats and extraction is not None:
        stats["extraction"] = extraction_stats(extraction)
    return json_ready(stats, {"final_loss": NO_STEP, "final_mse": NO_STEP})


def metadata(spec, result, activations, activations_path, *, model_name, model_info, corpus_name, saved_weights,
             training_stats, evaluation, saelens, tokens) -> dict:
    """`tokens`: the hook point and how sequences were made (the runner's _tokens)."""
    config = spec.config
    from_file = spec.activations_file is not None
    return {
        "job_id": spec.run_id,
        "model_name": model_name,
        "model_info": model_info,
        "layer_number": None if from_file else spec.layer_number,
        "hook_point": tokens["hook_point"],
        "hook_name": tokens["hook_name"],
        # Effective: whether a BOS was put in front of every sequence (engine.text.sequences).
        "prepend_bos": tokens["prepend_bos"],
        "exclude_special_tokens": tokens["exclude_special_tokens"],
        "hook_point_reason": tokens["reason"],
        "corpus": corpus_name,
        # How the corpus became sequences (engine.text.packing), the effective packing; None for an activations file.
        "packing": tokens.get("packing"),
        "text_field": tokens.get("text_field"),
        "activations_path": None if activations_path is None else str(activations_path),
        "activations_shape": list(activations.shape),
        "activations_dtype": str(activations.dtype),
        "sae": {
            "architecture": config.architecture,
            "k": config.k,
            "d_in": int(activations.shape[1]),
            "d_out": int(result.sae.d_out),
            "d_sae": config.hidden_dim,
            "state_dict_keys": sorted(saved_weights),
            "decode": "f @ W_dec + b_dec + x @ W_skip.T" if "W_skip" in saved_weights else "f @ W_dec + b_dec",
            "input_scaling_folded_into_weights": result.scaling_factor,
            "target_scaling_folded_into_weights": result.target_scaling_factor,
        },
        "training": {
            "sparsity_coeff": config.sparsity_coeff,
            "learning_rate": config.learning_rate,
            "batch_size": spec.batch_size,
            "sae_batch_tokens": config.sae_batch_tokens,
            "max_epochs": config.max_epochs,
            "training_tokens": spec.training_tokens if spec.training_tokens is not None else config.training_tokens,
            "cache_activations": None if from_file else spec.cache_activations,
            "min_loss": config.min_loss,
            "max_sequence_length": spec.max_sequence_length,
            "device": spec.device,
            "seed": config.seed,
        },
        "training_stats": training_stats,
        "evaluation": evaluation,
        "exports": {"saelens": str(saelens)},
    }
