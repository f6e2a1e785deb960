"""The sweep endpoints' request and documents: the training request's fields as every member's
base, the sites and the members' overrides, each override checked by the base's own field."""
from rest_framework import serializers

from engine.models.hooks import HOOK_POINTS
from training import sweeps
from training.models import TrainingJob
from training.api.serializers import TrainRequestSerializer
from training.requests import JobRequest, SweepRequest


class SweepRequestSerializer(TrainRequestSerializer):
    layers = serializers.ListField(child=serializers.IntegerField(min_value=0), required=False, allow_null=True,
                                   default=None, min_length=1, max_length=1024,
                                   help_text="Layers the members read at; default [layer_number]")
    hook_points = serializers.ListField(child=serializers.ChoiceField(choices=list(HOOK_POINTS)), required=False,
                                        allow_null=True, default=None, min_length=1, max_length=len(HOOK_POINTS),
                                        help_text="Hook points read in each layer; default [hook_point]")
    members = serializers.ListField(
        child=serializers.DictField(), required=False, default=list, max_length=1024,
        help_text="One object per member, each overriding SAE fields of the base (architecture, hidden_dim, k, "
                  "target_l0, matryoshka_widths, sparsity_coeff, learning_rate, sae_batch_tokens, min_loss, max_epochs); default [{}]. "
                  "Jobs: one per layer x hook point x member")

    def validate(self, data):
        members, errors = [], {}
        allowed = sweeps.member_fields()
        for number, overrides in enumerate(data.get("members") or [{}]):
            typed = {}
            for name, value in overrides.items():
                if name not in allowed:
                    errors[f"members[{number}].{name}"] = [
                        "cannot differ between members (one pass over the corpus feeds them all): set it on the "
                        f"sweep. A member may set {', '.join(allowed)}."]
                    continue
                try:
                    typed[name] = self.fields[name].run_validation(value)
                except serializers.ValidationError as err:
                    errors[f"members[{number}].{name}"] = err.detail
            members.append(typed)
        if errors:
            raise serializers.ValidationError(errors)
        return {**data, "members": members}

    def to_request(self) -> SweepRequest:
        values = dict(self.validated_data)
        layers, points, members = values.pop("layers"), values.pop("hook_points"), values.pop("members")
        return SweepRequest(base=JobRequest(**values), layers=layers, hook_points=points,
                                   members=members)


class SweepCreatedSerializer(serializers.Serializer):
    sweep_id = serializers.CharField()
    status = serializers.ChoiceField(choices=TrainingJob.Status.values)
    message = serializers.CharField()
    job_ids = serializers.ListField(child=serializers.CharField(), help_text="One per layer x hook point x member")
    memory_check = serializers.CharField(help_text="The members' memory checks: 'passed', or the first warning")


class MemberMetricsSerializer(serializers.Serializer):
    explained_variance = serializers.FloatField(allow_null=True)
    l0 = serializers.FloatField(allow_null=True)
    mse = serializers.FloatField(allow_null=True)
    cosine_similarity = serializers.FloatField(allow_null=True)
    dead_features = serializers.IntegerField(allow_null=True)
    ce_loss_recovered = serializers.FloatField(allow_null=True)
    kl_div_score = serializers.FloatField(allow_null=True)


class SweepMemberSerializer(serializers.Serializer):
    job_id = serializers.CharField()
    layer_number = serializers.IntegerField()
    hook_point = serializers.CharField()
    settings = serializers.DictField(help_text="This member's overrides of the base")
    architecture = serializers.CharField()
    hidden_dim = serializers.IntegerField()
    status = serializers.ChoiceField(choices=TrainingJob.Status.values)
    progress = serializers.FloatField()
    message = serializers.CharField(allow_blank=True)
    metrics = MemberMetricsSerializer(allow_null=True, help_text="From its evaluation; null until it has one")


class SweepSerializer(serializers.Serializer):
    sweep_id = serializers.CharField()
    status = serializers.ChoiceField(choices=TrainingJob.Status.values)
    progress = serializers.FloatField()
    model_name = serializers.CharField()
    corpus_file = serializers.CharField()
    layers = serializers.ListField(child=serializers.IntegerField())
    hook_points = serializers.ListField(child=serializers.CharField())
    members_count = serializers.IntegerField()
    members_by_status = serializers.DictField(child=serializers.IntegerField())
    lm_forward_batches = serializers.IntegerField(allow_null=True, help_text="The model's forward passes over the corpus, for all members at once")
    tokens_extracted = serializers.IntegerField(allow_null=True)
    extraction_seconds = serializers.FloatField(allow_null=True)
    created_at = serializers.DateTimeField()
    members = SweepMemberSerializer(many=True)


class SweepListSerializer(serializers.Serializer):
    total_sweeps = serializers.IntegerField()
    sweeps = SweepSerializer(many=True)
