"""The seed's request and response documents, as DRF serializers (they also make the schema)."""
from rest_framework import serializers
from rest_framework.fields import empty
from rest_framework.utils import html

from engine import sae as architectures
from engine.disk import CACHE_MODES
from engine.models.hooks import HOOK_POINTS
from engine.text.packing import PACKINGS

from training.defaults import DEFAULTS
from training.models import TrainingJob
from training.requests import paired_sites


def packing_field():
    return serializers.ChoiceField(
        choices=list(PACKINGS), required=False, allow_null=True, default=DEFAULTS.packing,
        error_messages={"invalid_choice": f'"{{input}}" is not a packing: choose one of {", ".join(PACKINGS)}.'},
        help_text="How the corpus's documents become sequences: lines (every non-empty line is one, cut at "
                  "max_sequence_length), documents (every document is one, cut there) or concat (documents joined "
                  "with EOS and cut into windows of exactly max_sequence_length tokens, as SAELens does); null: the "
                  "corpus format's default (lines for a .txt corpus, concat for the dataset formats)")


def training_tokens_field():
    return serializers.IntegerField(
        required=False, allow_null=True, default=DEFAULTS.training_tokens, min_value=1,
        error_messages={"min_value": "a budget is at least 1 token; leave it null to train max_epochs passes."},
        help_text="Tokens the SAE trains on, at most (a hard cap; max_epochs still caps the passes over the corpus); "
                  "null: max_epochs passes")


def cache_activations_field():
    return serializers.ChoiceField(
        choices=list(CACHE_MODES), default=DEFAULTS.cache_activations,
        error_messages={"invalid_choice": f'"{{input}}" is not a cache mode: choose one of {", ".join(CACHE_MODES)}.'},
        help_text="auto: cache the activations on disk when the run passes over them more than once and the cache "
                  "fits the free disk, else stream them from the model (each pass runs the model again); always: "
                  "cache (refused with a 400 when the cache cannot fit); never: stream every pass")


class TrainRequestSerializer(serializers.Serializer):
    model_name = serializers.CharField(max_length=500, help_text="Hugging Face model id, a folder under the models directory, or a local path")
    corpus_file = serializers.CharField(max_length=200, help_text="Name of an uploaded corpus")
    layer_number = serializers.IntegerField(default=DEFAULTS.layer_number, min_value=0, help_text="Block whose residual-stream output is used (0-based; must be below the model's layer count)")
    huggingface_token = serializers.CharField(required=False, allow_null=True, allow_blank=True, write_only=True, trim_whitespace=True)
    hidden_dim = serializers.IntegerField(default=DEFAULTS.hidden_dim, min_value=1, max_value=1_048_576, help_text="Number of SAE features")
    sparsity_coeff = serializers.FloatField(default=DEFAULTS.sparsity_coeff, min_value=0.0, max_value=1000.0, help_text=f"L1 sparsity coefficient (jumprelu: the L0 penalty's). The loss is (||x - x_hat||^2 + lambda * penalty) / d_model with lambda = 2000 x this at d_model 384, growing as sqrt(d_model / 384) for the L1 and as d_model / 384 for jumprelu's L0, inputs scaled to mean norm sqrt(d_model): the default {DEFAULTS.sparsity_coeff} suits models of any width")
    learning_rate = serializers.FloatField(default=DEFAULTS.learning_rate, min_value=1e-9, max_value=1.0)
    batch_size = serializers.IntegerField(default=DEFAULTS.batch_size, min_value=1, max_value=128, help_text="Sequences per forward pass of the language model")
    max_epochs = serializers.IntegerField(default=DEFAULTS.max_epochs, min_value=1, max_value=100_000, help_text="Passes over all of the job's activations")
    min_loss = serializers.FloatField(default=DEFAULTS.min_loss, min_value=0.0, help_text="Stop once an epoch's mean loss is below this")
    gpu_id = serializers.IntegerField(required=False, allow_null=True, default=None, min_value=0, help_text="GPU to use; null picks the one with the most free memory")
    gpu_ids = serializers.ListField(child=serializers.IntegerField(min_value=0), required=False, allow_null=True, default=None, min_length=2, max_length=64, help_text="Train on these GPUs of one host together (one process per GPU, DDP): at least 2, distinct; instead of gpu_id")
    max_sequence_length = serializers.IntegerField(default=DEFAULTS.max_sequence_length, min_value=1, max_value=131_072)
    sae_batch_tokens = serializers.IntegerField(default=DEFAULTS.sae_batch_tokens, min_value=1, max_value=1_048_576, help_text="Tokens per SAE optimizer step")
    quantization = serializers.ChoiceField(choices=TrainingJob.Quantization.values, default=DEFAULTS.quantization, help_text="Load the model in 8-bit or 4-bit (CUDA only)")
    hook_point = serializers.ChoiceField(
        choices=list(HOOK_POINTS), default=DEFAULTS.hook_point,
        error_messages={"invalid_choice": f'"{{input}}" is not a hook point: choose one of {", ".join(HOOK_POINTS)}.'},
        help_text="Where in block layer_number the SAE reads: resid_post (the block's output), resid_pre (its input), "
                  "mlp_out or attn_out (the MLP's or attention's output as added to the residual stream), mlp_in (the "
                  "MLP's input after its norm, TransformerLens' blocks.L.ln2.hook_normalized); TransformerLens' "
                  "blocks.L.hook_<point>. A transcoder reads mlp_in and predicts mlp_out, which this then names "
                  "(left out, it is mlp_out)")
    exclude_special_tokens = serializers.BooleanField(default=DEFAULTS.exclude_special_tokens, help_text="Leave positions holding a special token (BOS, CLS, SEP, EOS, padding) out of training and evaluation; the model still sees them")
    prepend_bos = serializers.BooleanField(default=DEFAULTS.prepend_bos, help_text="Start a causal LM's sequences with its tokenizer's BOS (once, whether or not the tokenizer adds one itself), as TransformerLens and SAELens do; encoders add their own CLS and SEP")
    packing = packing_field()
    training_tokens = training_tokens_field()
    cache_activations = cache_activations_field()
    force = serializers.BooleanField(
        default=False, help_text="Staff only (403 for others): create the job even though its memory estimate "
                                 "exceeds the memory of the device it would run on (without it, such a job is a 400 "
                                 "saying what it needs and what to lower); its memory_check then starts 'forced:'")

    def get_fields(self):
        # The registered architectures (engine.sae) and the request fields they take (k, target_l0).
        return {**super().get_fields(), **architecture_fields()}

    def validate(self, attrs):
        # An architecture that predicts another site (a transcoder: the MLP's output) is named by the
        # site it predicts: a request that names no hook_point means that one.
        paired = paired_sites(attrs.get("architecture"))
        if "hook_point" not in self.initial_data and paired is not None:
            attrs["hook_point"] = paired.target
        return super().validate(attrs)


def architecture_fields() -> dict:
    """`architecture`, then one optional field per request field of the registered architectures,
    read from the registry when a serializer is made (a test may register an architecture)."""
    names = architectures.names()
    fields = {"architecture": serializers.ChoiceField(choices=names, default=DEFAULTS.architecture,
                                                      help_text=f"SAE architecture: {', '.join(names)}")}
    kinds = {int: serializers.IntegerField, float: serializers.FloatField, list: IntegerListField}
    for field in architectures.request_fields():
        fields[field.name] = kinds[field.type](required=False, allow_null=True, default=getattr(DEFAULTS, field.name, None),
                                               min_value=field.api_minimum, help_text=architectures.describe_field(field))
    return fields


class IntegerListField(serializers.ListField):
    """A request field of the list kind (engine.sae.RequestField): a JSON list of integers, or, as a
    form's text input and a sweep member's line give it, text such as "128, 512, 2048" or
    "128 512 2048". A blank input is the field not given."""

    MAX_ITEMS = 64  # matryoshka_widths: 64 nested prefixes is far past any use, and bounds the work

    def __init__(self, *, min_value=None, **kwargs):
        super().__init__(child=serializers.IntegerField(min_value=min_value), allow_empty=False,
                         max_length=self.MAX_ITEMS, **kwargs)

    def get_value(self, dictionary):
        if html.is_html_input(dictionary) and self.field_name in dictionary:
            text = " ".join(dictionary.getlist(self.field_name))
            return text if text.strip() else empty
        return super().get_value(dictionary)

    def to_internal_value(self, data):
        if isinstance(data, str):
            data = data.replace(",", " ").split()
        return super().to_internal_value(data)


class TrainResponseSerializer(serializers.Serializer):
    job_id = serializers.CharField()
    status = serializers.ChoiceField(choices=TrainingJob.Status.values)
    message = serializers.CharField()
    model_name = serializers.CharField()
    requires_token = serializers.BooleanField()
    memory_check = serializers.CharField()
    optimizations_applied = serializers.CharField()


class ModelInfoSerializer(serializers.Serializer):
    model_name = serializers.CharField()
    actual_model_loaded = serializers.CharField()
    architecture = serializers.CharField()
    total_layers = serializers.IntegerField()
    selected_layer = serializers.IntegerField(allow_null=True)
    hidden_size = serializers.IntegerField()
    vocab_size = serializers.IntegerField()
    requires_token = serializers.BooleanField()
    parameter_count = serializers.IntegerField(required=False)
    is_causal_lm = serializers.BooleanField(required=False)


class DiskPlanSerializer(serializers.Serializer):
    cache = serializers.BooleanField(help_text="The run writes an activation cache; false: the activations stream from the model to the SAE")
    passes = serializers.IntegerField(help_text="Passes over the corpus the run makes")
    rows_per_pass = serializers.IntegerField(help_text="Activation rows (tokens) one pass over the corpus gives, estimated")
    cache_bytes = serializers.IntegerField(help_text="What the cache takes (0 when not caching)")
    checkpoint_bytes = serializers.IntegerField(help_text="The checkpoints kept on disk at once")
    needed_bytes = serializers.IntegerField()
    free_bytes = serializers.IntegerField(help_text="Free space of the data folder when the job was made")
    reason = serializers.CharField(help_text="Why it caches or streams, and how the tokens were estimated")
    bytes_per_token = serializers.FloatField(help_text="Of the corpus's first documents under the model's tokenizer; 1 where it could not be read at submission (an upper bound on the tokens)")
    tokens_estimated_from = serializers.CharField()
    download_bytes = serializers.IntegerField(required=False, help_text="A hub model's weights still to download into the hub cache (0: none, or all cached); part of needed_bytes when the hub cache is on the data folder's disk")
    download_free_bytes = serializers.IntegerField(required=False, allow_null=True, help_text="Free space of the hub cache's disk, less MISTUDIO_DISK_RESERVE_BYTES, when it is not the data folder's; null when it is")
    download_files = serializers.DictField(child=serializers.IntegerField(), required=False, help_text="Each weight file to download and its size on the hub")
    weights_cached_bytes = serializers.IntegerField(required=False, help_text="The model's weight files the hub cache already holds (not counted)")


class StatusSerializer(serializers.Serializer):
    job_id = serializers.CharField()
    status = serializers.ChoiceField(choices=TrainingJob.Status.values)
    phase = serializers.CharField()
    progress = serializers.FloatField()
    current_epoch = serializers.IntegerField()
    current_loss = serializers.FloatField(allow_null=True)
    estimated_time_remaining = serializers.IntegerField(allow_null=True)
    message = serializers.CharField()
    device = serializers.CharField(allow_blank=True)
    tokens_per_s = serializers.FloatField(allow_null=True, help_text="Tokens per second of the current phase (extraction or training)")
    hook_point = serializers.CharField(allow_null=True, required=False, help_text="Where in the layer the SAE reads; null for a job on an activations file")
    exclude_special_tokens = serializers.BooleanField(allow_null=True, help_text="Special tokens' positions are no rows; null for a job on an activations file")
    prepend_bos = serializers.BooleanField(allow_null=True, help_text="As asked (never put in front for an encoder); null for a job on an activations file")
    packing = serializers.CharField(allow_null=True, required=False, help_text="How the corpus's documents became sequences (the corpus format's default when none was asked for); null for a job on an activations file")
    training_tokens = serializers.IntegerField(allow_null=True, required=False, help_text="The job's token budget; null: max_epochs passes")
    cache_activations = serializers.CharField(allow_null=True, required=False, help_text="auto, always or never, as asked; null for a job on an activations file")
    disk_plan = DiskPlanSerializer(allow_null=True, required=False, help_text="What the run writes to disk, as planned when the job was made; null for a job on an activations file or one made before disk plans")
    model_info = ModelInfoSerializer(allow_null=True)
    last_checkpoint = serializers.CharField(allow_null=True)
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    completed_at = serializers.DateTimeField(allow_null=True)
    artifacts_removed_at = serializers.DateTimeField(allow_null=True, required=False, help_text="When retention deleted the job's files (MISTUDIO_RETENTION_DAYS, manage.py purge_artifacts): its downloads and features then answer 410; null while they are kept")


class FeatureStatisticsSerializer(serializers.Serializer):
    total_features = serializers.IntegerField()
    active_features = serializers.IntegerField()
    dead_features = serializers.IntegerField()
    mean_activation = serializers.FloatField()
    sparsity_achieved = serializers.FloatField()
    l0 = serializers.FloatField()


class RunSerializer(serializers.Serializer):
    attempt = serializers.IntegerField(help_text="1 for the first run; a resumed job has more")
    started_at = serializers.DateTimeField()
    ended_at = serializers.DateTimeField(allow_null=True)
    ended = serializers.CharField(allow_null=True, help_text="completed, cancelled, failed, or 'worker lost' (killed; the next run resumed it)")
    extraction_seconds = serializers.FloatField(allow_null=True, help_text="Seconds this run spent extracting activations (null: it reused a cache)")
    training_seconds = serializers.FloatField(allow_null=True, help_text="Seconds this run spent training, up to its last progress report for a run that was killed")


UNMEASURED = "null when it could not be measured; {name}_reason then says why"


class TrainingStatsSerializer(serializers.Serializer):
    final_loss = serializers.FloatField(allow_null=True, help_text=UNMEASURED.format(name="final_loss"))
    final_loss_reason = serializers.CharField(required=False, help_text="Why final_loss is null, where it is")
    total_epochs = serializers.IntegerField()
    training_time_seconds = serializers.FloatField(help_text="Seconds spent training, every run of the job added up (a resumed job's too)")
    convergence_epoch = serializers.IntegerField(allow_null=True)
    feature_statistics = FeatureStatisticsSerializer()
    final_mse = serializers.FloatField(allow_null=True, help_text="Reconstruction MSE of the last epoch (scaled inputs); "
                                       + UNMEASURED.format(name="final_mse"))
    final_mse_reason = serializers.CharField(required=False, help_text="Why final_mse is null, where it is")
    stopped_reason = serializers.ChoiceField(choices=["max_epochs", "min_loss", "training_tokens", "cancelled"])
    loss_history = serializers.ListField(child=serializers.FloatField(), help_text="Mean loss per epoch")
    tokens = serializers.IntegerField(help_text="Activation rows of the job")
    input_scaling_factor = serializers.FloatField(help_text="Scale applied to inputs while training; folded into the saved weights")
    training_tokens = serializers.IntegerField(help_text="Activation rows of one pass that train (the rest is held out)")
    tokens_trained = serializers.IntegerField(required=False, help_text="Tokens the SAE stepped on over all epochs: the job's training_tokens budget caps it")
    passes = serializers.FloatField(required=False, allow_null=True, help_text="tokens_trained as passes over the training rows")
    activations_cached = serializers.BooleanField(required=False, help_text="false: the activations streamed from the model to the SAE and no cache was written (cache_activations)")
    cache_decision = serializers.CharField(required=False, allow_null=True, help_text="Why the job cached its activations or streamed them")
    sae_batch_tokens_used = serializers.IntegerField(help_text="Tokens per optimizer step actually used: sae_batch_tokens, or fewer when the job would otherwise take fewer than MISTUDIO_MIN_SAE_STEPS steps or fewer than 0.5 / learning_rate steps")
    resampled_features = serializers.IntegerField(help_text="relu: dead features resampled during training")
    decode_path = serializers.ChoiceField(choices=["dense", "sparse"], help_text="topk: how the decoder ran, chosen by timing both on the first batch")
    compute_dtype = serializers.ChoiceField(choices=["float32", "bfloat16"], required=False, help_text="What the SAE's matmuls computed in: bfloat16 on a GPU, and on a CPU per MISTUDIO_CPU_BF16")
    extraction = serializers.DictField(required=False, help_text="Sequences, tokens, seconds, tokens/s, real-token share and model dtype of activation extraction, as the run that extracted measured them")
    runs = RunSerializer(many=True, required=False, help_text="One entry per run of the job: a job whose worker died is resumed by another run (absent for jobs finished before runs were kept)")


class DensityHistogramSerializer(serializers.Serializer):
    bin_edges = serializers.ListField(child=serializers.FloatField(), help_text="log10 feature density")
    counts = serializers.ListField(child=serializers.IntegerField(), help_text="Features per bin, one fewer than bin_edges")
    never_fired = serializers.IntegerField(
        help_text="Features that never fired on the evaluation tokens: density 0 has no log10, so no bin holds them"
    )


class EvaluationSerializer(serializers.Serializer):
    """Measured on held-out tokens never used for training."""

    l0 = serializers.FloatField()
    explained_variance = serializers.FloatField(allow_null=True, help_text=UNMEASURED.format(name="explained_variance"))
    explained_variance_reason = serializers.CharField(
        required=False, help_text="Why explained_variance is null: the held-out tokens do not vary (too few held out)")
    mse = serializers.FloatField(allow_null=True, help_text=UNMEASURED.format(name="mse"))
    mse_reason = serializers.CharField(required=False, help_text="Why mse is null, where it is")
    cosine_similarity = serializers.FloatField(allow_null=True, help_text=UNMEASURED.format(name="cosine_similarity"))
    cosine_similarity_reason = serializers.CharField(required=False, help_text="Why cosine_similarity is null, where it is")
    prefix_explained_variance = serializers.DictField(
        child=serializers.FloatField(allow_null=True), allow_null=True, required=False,
        help_text="matryoshka_batchtopk: the explained variance of each nested prefix alone, by its width; null for "
                  "other architectures")
    prefix_explained_variance_reason = serializers.CharField(required=False, help_text="Why a prefix's explained variance is null")
    dead_features = serializers.IntegerField()
    dead_window_tokens = serializers.IntegerField()
    dense_features = serializers.IntegerField()
    density_histogram = DensityHistogramSerializer()
    ce_loss_clean = serializers.FloatField(allow_null=True)
    ce_loss_with_sae = serializers.FloatField(allow_null=True)
    ce_loss_zero_ablation = serializers.FloatField(allow_null=True)
    ce_loss_recovered = serializers.FloatField(allow_null=True)
    ce_loss_reason = serializers.CharField(allow_null=True, required=False, help_text="Why the CE and KL metrics are null, or why ce_loss_recovered alone is")
    kl_div_with_sae = serializers.FloatField(
        allow_null=True, required=False,
        help_text="Mean KL divergence (nats) from the clean next-token distribution to the one with the SAE spliced in")
    kl_div_with_ablation = serializers.FloatField(
        allow_null=True, required=False, help_text="The same with the hook point zero-ablated")
    kl_div_score = serializers.FloatField(
        allow_null=True, required=False, help_text="(kl_div_with_ablation - kl_div_with_sae) / kl_div_with_ablation; 1 is perfect")
    kl_div_reason = serializers.CharField(allow_null=True, required=False, help_text="Why kl_div_score alone is null")
    eval_tokens = serializers.IntegerField(help_text="Held-out tokens the reconstruction metrics were measured on")
    eval_tokens_reason = serializers.CharField(
        required=False, help_text="Present when the held-out tail was longer than the evaluation reads (MISTUDIO_EVAL_MAX_TOKENS)")
    ce_eval_tokens = serializers.IntegerField(
        required=False, help_text="Next-token predictions the CE and KL metrics were measured on (MISTUDIO_CE_EVAL_TOKENS caps them); "
                                  "absent when those metrics are null")
    warnings = serializers.ListField(child=serializers.CharField(), required=False, help_text="What is wrong with the SAE and what to change (engine.run.verdict); empty when it is usable")


class ExportsSerializer(serializers.Serializer):
    saelens = serializers.CharField(help_text="Folder with cfg.json, sae_weights.safetensors, sparsity.safetensors")


class ResultSerializer(serializers.Serializer):
    job_id = serializers.CharField()
    status = serializers.ChoiceField(choices=TrainingJob.Status.values)
    message = serializers.CharField()
    model_path = serializers.CharField(allow_null=True)
    activations_path = serializers.CharField(allow_null=True)
    metadata_path = serializers.CharField(allow_null=True)
    training_stats = TrainingStatsSerializer(allow_null=True)
    feature_count = serializers.IntegerField()
    model_info = ModelInfoSerializer(allow_null=True)
    ready_for_find_service = serializers.BooleanField()
    checkpoints = serializers.ListField(child=serializers.CharField())
    error = serializers.CharField(allow_null=True)
    architecture = serializers.ChoiceField(choices=architectures.names())
    k = serializers.IntegerField(allow_null=True)
    matryoshka_widths = serializers.ListField(child=serializers.IntegerField(), allow_null=True, required=False, help_text="matryoshka_batchtopk: the nested prefixes' widths it trained, hidden_dim last; null for other architectures")
    gpu_ids = serializers.ListField(child=serializers.IntegerField(), allow_null=True, help_text="The GPUs that trained the SAE together (DDP); null for a one-device job")
    hook_point = serializers.CharField(allow_null=True, help_text="Where in the layer the SAE read (TransformerLens' blocks.L.hook_<point>); null for a job on an activations file")
    model_revision = serializers.CharField(allow_null=True, required=False, help_text="The hub commit the model was checked at and loaded from; null for a local or GGUF model or an activations file")
    exclude_special_tokens = serializers.BooleanField(allow_null=True, help_text="Special tokens' positions were no rows; null for a job on an activations file")
    prepend_bos = serializers.BooleanField(allow_null=True, help_text="As asked; the metadata file and the SAELens cfg say whether a BOS was put in front (never for an encoder); null for a job on an activations file")
    packing = serializers.CharField(allow_null=True, required=False, help_text="How the corpus's documents became sequences; null for a job on an activations file")
    training_tokens = serializers.IntegerField(allow_null=True, required=False, help_text="The job's token budget as asked (training_stats.training_tokens counts the rows trained on); null: max_epochs passes")
    cache_activations = serializers.CharField(allow_null=True, required=False, help_text="auto, always or never, as asked; null for a job on an activations file")
    disk_plan = DiskPlanSerializer(allow_null=True, required=False, help_text="What the run was planned to write to disk")
    evaluation = EvaluationSerializer(allow_null=True)
    warnings = serializers.ListField(child=serializers.CharField(), help_text="Sentences saying what is wrong with the trained SAE (silent or dense features, little explained variance) and what to change; empty when it is usable or not evaluated yet")
    exports = ExportsSerializer(allow_null=True)
    artifacts_removed_at = serializers.DateTimeField(allow_null=True, required=False, help_text="When retention deleted the job's files (MISTUDIO_RETENTION_DAYS, manage.py purge_artifacts): its downloads and features then answer 410; null while they are kept")


class JobSummarySerializer(serializers.Serializer):
    job_id = serializers.CharField()
    status = serializers.ChoiceField(choices=TrainingJob.Status.values)
    model_name = serializers.CharField()
    progress = serializers.FloatField()
    created_at = serializers.DateTimeField()
    completed_at = serializers.DateTimeField(allow_null=True)


class JobListSerializer(serializers.Serializer):
    total_jobs = serializers.IntegerField()
    jobs = JobSummarySerializer(many=True)


class ValidateModelRequestSerializer(serializers.Serializer):
    model_name = serializers.CharField(max_length=500)
    huggingface_token = serializers.CharField(required=False, allow_null=True, allow_blank=True, write_only=True)


class ValidateModelResponseSerializer(serializers.Serializer):
    model_name = serializers.CharField()
    valid = serializers.BooleanField()
    accessible = serializers.BooleanField()
    requires_token = serializers.BooleanField()
    message = serializers.CharField()
    model_info = serializers.DictField(allow_null=True)
    memory_requirements = serializers.DictField(allow_null=True)


class CheckMemoryQuerySerializer(serializers.Serializer):
    batch_size = serializers.IntegerField(default=DEFAULTS.batch_size, min_value=1, max_value=128)
    hidden_dim = serializers.IntegerField(default=DEFAULTS.hidden_dim, min_value=1, max_value=1_048_576)
    max_sequence_length = serializers.IntegerField(default=DEFAULTS.max_sequence_length, min_value=1, max_value=131_072)
    sae_batch_tokens = serializers.IntegerField(default=DEFAULTS.sae_batch_tokens, min_value=1, max_value=1_048_576)
    layer_number = serializers.IntegerField(default=None, allow_null=True, min_value=0, help_text="Defaults to the middle layer")
    quantization = serializers.ChoiceField(choices=TrainingJob.Quantization.values, default=DEFAULTS.quantization)
    # For the disk check: the run's corpus and what decides its passes and cache.
    corpus_file = serializers.CharField(required=False, allow_blank=True, default="", max_length=200,
                                        help_text="Name of an uploaded corpus: estimate the disk a run on it needs")
    packing = packing_field()
    training_tokens = training_tokens_field()
    max_epochs = serializers.IntegerField(default=DEFAULTS.max_epochs, min_value=1, max_value=100_000)
    cache_activations = cache_activations_field()


class DiskCheckSerializer(serializers.Serializer):
    cache = serializers.BooleanField(required=False, help_text="The run would write an activation cache")
    passes = serializers.IntegerField(required=False)
    estimated_tokens_per_pass = serializers.IntegerField(required=False)
    cache_gb = serializers.FloatField(required=False)
    checkpoints_gb = serializers.FloatField(required=False)
    download_gb = serializers.FloatField(required=False, help_text="A hub model's weights still to download into the hub cache")
    needed_gb = serializers.FloatField(required=False)
    free_gb = serializers.FloatField(required=False, help_text="Free space of the data folder")
    sufficient = serializers.BooleanField(allow_null=True, help_text="null without corpus_file: nothing to estimate")
    reason = serializers.CharField(help_text="Why it caches or streams, how the tokens were estimated, or what to change")
    bytes_per_token = serializers.FloatField(required=False)


class CheckMemoryResponseSerializer(serializers.Serializer):
    model_name = serializers.CharField()
    device = serializers.CharField()
    memory_check = serializers.DictField()
    disk_check = DiskCheckSerializer()
    optimization_suggestions = serializers.DictField()
    gpu_compatibility = serializers.DictField()
    parameter_count = serializers.IntegerField()
