"""Reads of corpora: a user's own, and the one a training request names. The writes (adding, deleting) are
corpora.services."""
from corpora.models import Corpus
from mistudio.errors import ServiceError


def corpus_for_user(*, user, name: str) -> Corpus:
    """`corpus_file` in a train request names one of the requester's own corpora, staff included:
    a name never reaches someone else's data."""
    found = Corpus.objects.filter(name=name, owner=user).first()
    if found is None:
        raise ServiceError(f"Corpus file '{name}' not found. Please upload it with POST /api/v1/upload first.",
                           field="corpus_file")
    return found


def corpora_of(user):
    """The corpora a user's training requests may name: their own, staff included (corpus_for_user)."""
    return Corpus.objects.filter(owner=user).order_by("name")
