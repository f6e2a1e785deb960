"""The New sweep form, and a sweep's page: its members' fronts (L0 against explained variance, and against CE loss
recovered for a causal LM), a table of the members with links to their job pages, and what its one
pass over the corpus did. The owner and staff only; anyone else's sweep answers 404, as in the API."""
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import render

from mistudio.errors import NotFound
from mistudio.throttles import throttled_page
from training import sweeps
from training.pages import job_form
from training.pages import sweep_form


@login_required
@throttled_page
def new_sweep_page(request):
    return job_form.form_page(request, submit=sweep_form.sweep_submit, context=sweep_form.sweep_form_context,
                              template="training/new_sweep_page.html", page="sweep-page")


@login_required
def sweep_page(request, sweep_id):
    try:
        sweep = sweeps.sweep_get(user=request.user, sweep_id=sweep_id)
    except NotFound:
        raise Http404(f"Sweep {sweep_id} not found") from None
    document = sweeps.sweep_document(sweep)
    members = document["members"]
    causal = bool((sweep.jobs.values_list("model_info", flat=True).first() or {}).get("is_causal_lm"))
    points = [{"x": (m["metrics"] or {}).get("l0"), "ev": (m["metrics"] or {}).get("explained_variance"),
               "ce": (m["metrics"] or {}).get("ce_loss_recovered"), "group": f"layer {m['layer_number']} {m['hook_point']}",
               "label": f"{m['job_id']} {settings_label(m['settings'])}", "href": f"/jobs/{m['job_id']}/"}
              for m in members]
    return render(request, "training/sweep_page.html", {
        "sweep": sweep, "document": document, "causal": causal, "points": points,
        "rows": [{**m, "settings_label": settings_label(m["settings"])} for m in members],
    })


def settings_label(overrides: dict) -> str:
    """A member's overrides as people read them: "k=8, learning_rate=0.0003"; the base's own: "base"."""
    return ", ".join(f"{name}={value}" for name, value in overrides.items()) or "base"
