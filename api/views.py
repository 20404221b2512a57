"""The API tokens page (make, list, revoke) and the API's documentation page, for signed-in users."""

from __future__ import annotations

from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST, require_safe

from api.endpoints import api
from api.forms import ApiTokenForm
from api.models import ApiToken

METHODS = ("get", "post", "put", "patch", "delete")


def _page(request, form, *, secret: str = "", made: ApiToken | None = None, status: int = 200):
    tokens = ApiToken.objects.filter(user=request.user)
    context = {"form": form, "tokens": tokens, "secret": secret, "made": made, "now": timezone.now()}
    return render(request, "api/tokens.html", context, status=status)  # never cached: NoStoreForUsersMiddleware


@require_http_methods(["GET", "HEAD", "POST"])
def tokens(request):
    """GET lists the user's tokens with the form; POST makes one and shows its secret on this answer only."""
    if request.method != "POST":
        return _page(request, ApiTokenForm())
    form = ApiTokenForm(request.POST)
    if not form.is_valid():
        return _page(request, form, status=400)
    token, secret = ApiToken.make(
        request.user, name=form.cleaned_data["name"], scopes=form.cleaned_data["scopes"], expires_at=form.expires_at
    )
    return _page(request, ApiTokenForm(), secret=secret, made=token)


@require_POST
def revoke(request, pk: int):
    token = get_object_or_404(ApiToken, pk=pk, user=request.user)  # another user's token is a 404
    if token.revoked_at is None:
        ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
        messages.success(request, f"The token “{token.name}” is revoked: it no longer works.")
    return redirect("api_tokens")


@require_safe
def docs(request):
    """The API's operations, read from its OpenAPI document: a plain page (ninja's interactive one loads from a CDN,
    which the content security policy forbids)."""
    schema = api.get_openapi_schema()
    operations = [
        {"method": method.upper(), "path": path, "summary": operation.get("summary", ""), **_texts(operation)}
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]
    return render(request, "api/docs.html", {"operations": operations, "info": schema["info"]})


def _texts(operation: dict) -> dict:
    return {
        "description": operation.get("description", ""),
        "responses": sorted({str(code) for code in operation.get("responses", {})}),
    }
