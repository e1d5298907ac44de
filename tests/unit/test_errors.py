"""The error tree: the JSON shape clients see, and survival through pickle (Ray)."""

from __future__ import annotations

import pickle

import pytest

from serve_app import errors
from serve_app.errors import DeadlineExceeded, InvalidRequest, ServiceError

ALL = [
    (errors.ServiceError, 500, "internal_error"),
    (errors.InvalidRequest, 400, "invalid_request"),
    (errors.NotFound, 404, "not_found"),
    (errors.VideoNotReady, 409, "video_not_ready"),
    (errors.DeadlineExceeded, 504, "deadline_exceeded"),
    (errors.RequestCancelled, 499, "cancelled"),
    (errors.ModelLoadError, 503, "model_unavailable"),
    (errors.StageFailed, 500, "stage_failed"),
]


def test_to_dict_shape():
    err = InvalidRequest("width=65 is not a multiple of 32", param="width")
    assert err.to_dict() == {
        "error": {
            "code": "invalid_request",
            "message": "width=65 is not a multiple of 32",
            "type": "invalid_request_error",
            "param": "width",
        }
    }


def test_details_are_merged_into_the_error_body():
    err = DeadlineExceeded("too slow", stage="denoise", step=3, total_steps=20)
    body = err.to_dict()["error"]
    assert body == {
        "code": "deadline_exceeded",
        "message": "too slow",
        "type": "timeout_error",
        "param": None,
        "stage": "denoise",
        "step": 3,
        "total_steps": 20,
    }


@pytest.mark.parametrize("cls, status, code", ALL)
def test_status_and_code_are_stable(cls, status, code):
    err = cls("m")
    assert isinstance(err, ServiceError)
    assert (err.status_code, err.code) == (status, code)
    assert str(err) == "m"


@pytest.mark.parametrize("cls, status, code", ALL)
def test_pickle_round_trip_keeps_everything(cls, status, code):
    err = cls("step 3 of 20", param="p", step=3, total_steps=20, video_id="video_x")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls
    assert (back.message, back.param, str(back)) == ("step 3 of 20", "p", "step 3 of 20")
    assert back.details == {"step": 3, "total_steps": 20, "video_id": "video_x"}
    assert back.to_dict() == err.to_dict()
    assert back.status_code == status
