"""The feature browser's and the training curves' documents, as DRF serializers (they also make the schema)."""
from rest_framework import serializers


class FeatureSummarySerializer(serializers.Serializer):
    index = serializers.IntegerField()
    frequency = serializers.FloatField(help_text="Share of the analyzed tokens on which the feature fired")
    mean_activation = serializers.FloatField(help_text="Mean activation where it fired")
    max_activation = serializers.FloatField()
    dead = serializers.BooleanField()
    dense = serializers.BooleanField()


class FeatureListSerializer(serializers.Serializer):
    count = serializers.IntegerField(help_text="Features matching the filter")
    page = serializers.IntegerField()
    page_size = serializers.IntegerField()
    pages = serializers.IntegerField()
    sort = serializers.CharField()
    descending = serializers.BooleanField()
    filter = serializers.CharField()
    query = serializers.CharField(help_text="The q searched for, or empty")
    total_features = serializers.IntegerField()
    analyzed_tokens = serializers.IntegerField()
    results = FeatureSummarySerializer(many=True)


class ContextTokenSerializer(serializers.Serializer):
    token = serializers.CharField()
    token_id = serializers.IntegerField()
    activation = serializers.FloatField()
    peak = serializers.BooleanField(help_text="The token of the top activation")


class ContextSerializer(serializers.Serializer):
    activation = serializers.FloatField()
    row = serializers.IntegerField(help_text="Row of the peak token in the job's activations")
    tokens = ContextTokenSerializer(many=True, help_text="The window around the peak, inside its sequence")


class LogitTokenSerializer(serializers.Serializer):
    token = serializers.CharField()
    token_id = serializers.IntegerField()
    logit = serializers.FloatField()


class LogitEffectSerializer(serializers.Serializer):
    promoted = LogitTokenSerializer(many=True)
    suppressed = LogitTokenSerializer(many=True)


class HistogramSerializer(serializers.Serializer):
    log10_bin_edges = serializers.ListField(child=serializers.FloatField())
    counts = serializers.ListField(child=serializers.IntegerField())


class FeatureDetailSerializer(FeatureSummarySerializer):
    total_features = serializers.IntegerField()
    histogram = HistogramSerializer(help_text="Non-zero activations by log10(activation)")
    top_contexts = ContextSerializer(many=True)
    contexts_unavailable_reason = serializers.CharField(allow_null=True)
    logit_effect = LogitEffectSerializer(allow_null=True, help_text="Causal LMs: tokens the decoder direction promotes and suppresses through the unembedding")
    logit_effect_unavailable_reason = serializers.CharField(allow_null=True)


class CurvePointSerializer(serializers.Serializer):
    step = serializers.IntegerField()
    epoch = serializers.IntegerField()
    loss = serializers.FloatField(allow_null=True)
    mse = serializers.FloatField(allow_null=True)
    l0 = serializers.FloatField(allow_null=True)
    explained_variance = serializers.FloatField(allow_null=True, help_text="Of the training batches since the previous point")
    tokens_per_s = serializers.FloatField(allow_null=True)


class CurvesSerializer(serializers.Serializer):
    job_id = serializers.CharField()
    status = serializers.CharField()
    phase = serializers.CharField()
    progress = serializers.FloatField()
    message = serializers.CharField()
    points = CurvePointSerializer(many=True, help_text="One point per progress report, thinned to at most 400")
    loss_history = serializers.ListField(child=serializers.FloatField(), help_text="Mean loss per completed epoch (once the job completes)")
    features_ready = serializers.BooleanField(help_text="The feature analysis is done: /features answers")
