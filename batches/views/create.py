"""Creating a batch from a validated JSONL upload or an uploaded file id."""

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from batches import access, actions, events
from batches.forms import CreateBatchForm, metadata_field_names
from batches.models import DESCRIPTION_KEY
from batches.views.common import CONNECTION_PARAMETER


def _redirect_to_batch(batch, page: str = "batches:detail"):
    response = redirect(page, batch_id=batch.batch_id)
    if not batch.connection.is_default:  # the new id may exist in another connection (compatible providers)
        response["Location"] += f"?{CONNECTION_PARAMETER}={batch.connection.slug}"
    response.status_code = 303  # See Other: the browser GETs the new page, and a reload does not resubmit.
    return response


def _retry_form(form: CreateBatchForm, uploaded_file_id: str) -> CreateBatchForm:
    """A fresh form with everything the user chose, pointing at the file that was uploaded, to create from it."""
    initial = {
        name: form.cleaned_data.get(name)
        for name in ("description", "endpoint", "completion_window", "output_expiry_amount", "output_expiry_unit")
    }
    others = {
        k: v for k, v in form.cleaned_data["metadata"].items() if not (k == DESCRIPTION_KEY and initial["description"])
    }
    for number, (key, value) in enumerate(others.items(), start=1):
        key_name, value_name = metadata_field_names(number)
        initial[key_name], initial[value_name] = key, value
    if form.cleaned_data.get("connection") is not None:
        initial["connection"] = form.cleaned_data["connection"].pk
    return CreateBatchForm(initial={**initial, "input_file_id": uploaded_file_id}, connections=form.allowed_connections)


def first_problem(form: CreateBatchForm) -> str:
    for field, errors in form.errors.items():
        label = "form" if field == "__all__" else field
        return f"invalid {label}: {errors[0]}" + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")
    return ""


def audit_create(request, form: CreateBatchForm, outcome: str, batch_id: str = "", detail: str = "") -> None:
    upload = form.files.get("input_file")
    target = upload.name if upload else form.data.get("input_file_id", "")
    connection = form.cleaned_data.get("connection") if hasattr(form, "cleaned_data") else None
    events.note_action(
        request, events.CREATE, outcome, batch_id=batch_id, target=target, detail=detail, connection=connection
    )


@require_http_methods(["GET", "HEAD", "POST"])
def batch_create(request):
    creatable = access.connections(request.user, access.CREATE)
    if not creatable:
        if request.method == "POST":
            events.note_action(request, events.CREATE, events.REFUSED, detail="no permission to create")
        raise PermissionDenied("You may not create batches.")
    if request.method != "POST":
        return render(request, "batches/batch_create.html", {"form": CreateBatchForm(connections=creatable)})

    form = CreateBatchForm(request.POST, request.FILES, connections=creatable, split=True)
    checking = "check" in request.POST  # "Check file": validate and show what the file holds; nothing to audit
    valid = form.is_valid()
    if not valid and not checking:
        audit_create(request, form, events.REFUSED, detail=first_problem(form))
    if not valid or checking:
        return _checked(request, form, checking=checking)
    outcome = create_from_form(request, form)
    if outcome.is_job:
        return _job_answer(request, form, outcome)
    if outcome.batch is not None:
        if outcome.repeated:
            messages.info(request, f"This form was already submitted: it created {outcome.batch.batch_id}.")
        else:
            messages.success(request, f"Batch {outcome.batch.batch_id} created.")
        return _redirect_to_batch(outcome.batch)
    if outcome.uploaded_file_id:
        form = _retry_form(form, outcome.uploaded_file_id)
        return render(request, "batches/batch_create.html", {"form": form, "create_error": outcome.error})
    form.add_error(outcome.error_field, outcome.error)
    return render(request, "batches/batch_create.html", {"form": form})


def _job_answer(request, form: CreateBatchForm, outcome: actions.CreateOutcome):
    """A split file: to the job's page (its parts, progress and merged results), or the form again with exactly which
    parts were sent when one failed (the same form sent again sends the rest)."""
    if outcome.batch is not None:
        ids = ", ".join(part.batch_id for part in outcome.parts)
        if outcome.repeated:
            messages.info(request, f"This form was already submitted: it sent the file as {ids}.")
        else:
            messages.success(request, f"The file was sent as {len(outcome.parts)} batches of one job: {ids}.")
        return _redirect_to_batch(outcome.batch, "retries:final")
    context = {
        "form": form,
        "create_error": outcome.error,
        "sent_parts": outcome.parts,
        "part_count": outcome.part_count,
    }
    return render(request, "batches/batch_create.html", context, status=409 if outcome.conflict else 502)


def create_from_form(request, form: CreateBatchForm) -> actions.CreateOutcome:
    """Create the batch a valid create form describes, on its connection, and audit the outcome: the one path of the
    create page and the JSON API. A file over the API's limits (form.report.parts) is sent as the parts of one job,
    each part audited."""
    data = form.cleaned_data
    upload = data.get("input_file")
    options = {
        "user": request.user.get_username(),
        "endpoint": data["endpoint"],
        "completion_window": data["completion_window"],
        "output_expires_after": data["output_expires_after"],
        "connection": data.get("connection"),
    }
    if upload and form.report is not None and form.report.is_split:
        outcome = actions.create_job(
            token=data["token"],
            upload=upload,
            filename=upload.name,
            plan=form.report.parts,
            metadata=data["metadata"],
            **options,
        )
        for part in outcome.parts:
            part.note_model_from_file(form.report.model)
            audit_create(
                request, form, events.OK if part.batch_id in outcome.sent_now else events.ALREADY, part.batch_id
            )
        if outcome.batch is None:
            audit_create(request, form, events.ERROR, detail=outcome.error)
        return outcome
    outcome = actions.create_batch(
        token=data["token"],
        upload=upload,
        filename=upload.name if upload else "",
        input_file_id=data["input_file_id"],
        metadata=data["metadata"],
        **options,
    )
    if outcome.batch is not None:
        outcome.batch.note_model_from_file(form.report.model if form.report else None)
        audit_create(request, form, events.ALREADY if outcome.repeated else events.OK, outcome.batch.batch_id)
    else:
        audit_create(request, form, events.ERROR, detail=outcome.error)
    return outcome


def _checked(request, form: CreateBatchForm, *, checking: bool):
    """The form with its problems, or (for "Check file") what the file holds; nothing is created.

    htmx's Check file gets only the check's result, so the chosen file stays selected in the page.
    """
    valid_file = checking and form.report is not None and form.report.is_valid
    context = {"form": form, "report": form.report if valid_file else None, "checked": checking}
    if checking and request.htmx:
        return render(request, "batches/batch_create.html#file-check", context)
    return render(request, "batches/batch_create.html", context)
