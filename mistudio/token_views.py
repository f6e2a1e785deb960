"""A user's own API tokens: listed and revoked through the API and a page, by their key (the first
characters of a token, shown in place of it: only a hash of the token itself is kept)."""
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from mistudio import accounts
from mistudio.errors import ErrorSerializer, ServiceError


class TokenSerializer(serializers.Serializer):
    token_key = serializers.CharField(help_text="The token's first characters: names it, authenticates nothing")
    created = serializers.DateTimeField()
    expiry = serializers.DateTimeField(allow_null=True, help_text="When it stops working; null: never (MISTUDIO_TOKEN_TTL_HOURS 0)")
    current = serializers.BooleanField(help_text="The token this request came with")


class TokenListSerializer(serializers.Serializer):
    tokens = TokenSerializer(many=True)


def token_document(token, current) -> dict:
    return {"token_key": token.token_key, "created": token.created, "expiry": token.expiry,
            "current": current is not None and getattr(current, "pk", None) == token.pk}


class TokenListView(APIView):
    @extend_schema(responses={200: TokenListSerializer}, summary="List your API tokens")
    def get(self, request):
        return Response({"tokens": [token_document(t, request.auth) for t in accounts.tokens_of(request.user)]})


class TokenRevokeView(APIView):
    @extend_schema(request=None, responses={204: None, 404: ErrorSerializer}, summary="Revoke one of your API tokens")
    def delete(self, request, token_key):
        accounts.token_revoke(user=request.user, token_key=token_key)
        return Response(status=status.HTTP_204_NO_CONTENT)


@login_required
def tokens_page(request):
    """The user's tokens, each with a Revoke button (a POST of its key)."""
    if request.method == "POST":
        key = request.POST.get("token_key", "")
        try:
            accounts.token_revoke(user=request.user, token_key=key)
            messages.success(request, f"Token {key} revoked: it no longer works.")
        except ServiceError as err:
            messages.error(request, str(err))
        return redirect("tokens-page")
    return render(request, "mistudio/tokens.html", {"tokens": accounts.tokens_of(request.user)})
