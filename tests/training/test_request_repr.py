"""A request's repr (in a traceback, a log line, a debugger) never shows its Hugging Face token."""
from training.requests import JobRequest, SweepRequest

SENTINEL = "hf_SENTINEL_in_a_repr_5d1c"


def test_a_job_requests_repr_hides_its_token():
    request = JobRequest(model_name="org/private-model", huggingface_token=SENTINEL)
    assert "org/private-model" in repr(request)
    assert SENTINEL not in repr(request) and SENTINEL not in str(request)
    assert request.huggingface_token == SENTINEL


def test_a_sweep_requests_repr_hides_its_bases_token():
    request = SweepRequest(base=JobRequest(model_name="org/private-model", huggingface_token=SENTINEL), layers=[1, 2])
    assert "org/private-model" in repr(request) and SENTINEL not in repr(request)
