"""What the Hugging Face hub is told on a user's behalf: the user's own token, or none.

huggingface_hub sends the login saved on the machine (HF_TOKEN, ~/.cache/huggingface/token) with
every call that names no token, so a server that passed the user's missing token along as None
would let anyone validate and train on the operator's private and gated models. The hub calls of a
request get the user's token or False (send none); the operator may lend the server's login to every
user on purpose with MISTUDIO_HUB_USE_SERVER_LOGIN. At start-up (training.apps) the process also
stops huggingface_hub from filling in the login where transformers calls the hub without passing
the caller's token on (engine.models.resolve.forbid_implicit_token)."""
from django.conf import settings


def hub_token(user_token: str | None) -> str | bool:
    """The token the engine hands huggingface_hub for a user who gave `user_token` (or none)."""
    if user_token:
        return user_token
    if settings.HUB_USE_SERVER_LOGIN:
        from huggingface_hub import get_token

        return get_token() or False
    return False
