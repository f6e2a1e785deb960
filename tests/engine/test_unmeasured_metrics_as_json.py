"""engine.finite: a document with NaN or infinite metrics becomes strict JSON, each null with its
reason beside the name that holds it."""
import json
import math

from engine.finite import NOT_FINITE, json_ready

NAN, INF = math.nan, math.inf


def test_it_puts_null_and_a_reason_beside_each_unmeasured_metric():
    ready = json_ready({"final_loss": NAN, "total_epochs": 0, "features": {"mean_activation": INF}},
                       {"final_loss": "no step ran"})
    assert ready == {"final_loss": None, "final_loss_reason": "no step ran", "total_epochs": 0,
                     "features": {"mean_activation": None, "mean_activation_reason": NOT_FINITE}}
    json.dumps(ready, allow_nan=False)


def test_entries_keyed_by_data_and_list_items_get_their_reason_on_the_name_that_holds_them():
    ready = json_ready({"prefix_explained_variance": {"8": NAN, "32": 0.5}, "loss_history": [1.0, NAN]})
    assert ready["prefix_explained_variance"] == {"8": None, "32": 0.5} and ready["loss_history"] == [1.0, None]
    assert ready["prefix_explained_variance_reason"] == ready["loss_history_reason"] == NOT_FINITE
    assert "8_reason" not in ready["prefix_explained_variance"]


def test_a_reason_the_document_already_gives_is_kept_and_a_null_one_is_filled():
    assert json_ready({"x": NAN, "x_reason": "known"})["x_reason"] == "known"
    assert json_ready({"x": NAN, "x_reason": None}, {"x": "why"})["x_reason"] == "why"
    assert json_ready({"x_reason": None, "x": NAN}, {"x": "why"})["x_reason"] == "why"


def test_finite_documents_come_back_equal():
    document = {"a": 1.5, "b": [1, 2.0, None], "c": {"d": "text", "e": True}}
    assert json_ready(document) == document
