"""The New sweep form, and a sweep's page: its members' fronts (L0 against explained variance, and against CE loss
recovered for a causal LM), a table of the members with links to their job pages, and what its one
pass over the corpus did. The owner and staff only; anyone else's sweep answers 404, as in the API."""
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render

from mistudio.errors import NotFound
from training import job_form, sweep_form, sweeps


@login_required
def new_sweep_page(request):
    """As the New job page: re-rendered with what was sent and each error by its field after a
    refused sweep (400) and after "Check memory" (for the base's fields), which makes nothing."""
    data, errors, memory = None, {}, None
    if request.method == "POST":
        data = request.POST
        if "check_memory" in data:
            memory, errors = job_form.memory_check_submit(user=request.user, data=data)
        else:
            sweep, errors = sweep_form.sweep_submit(user=request.user, data=data)
            if sweep is not None:
                return redirect("sweep-page", sweep_id=sweep.id)
    context = sweep_form.sweep_form_context(user=request.user, data=data, errors=errors, initial=request.GET.dict())
    sizes = job_form.readable_sizes(memory) if memory else None
    return render(request, "training/new_sweep_page.html", {**context, "memory": memory, "sizes": sizes},
                  status=400 if errors else 200)


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
