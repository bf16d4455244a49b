"""The entry model's request handling without a server: requests batched into one run, each
answered with its own rows, bad requests refused one by one (their batch-mates answered)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from serving import sample_images

import tokcompile
from tokcompile.deploy.triton_model import Refusal, bundle_path, check_images, run_requests

SHAPE = (3, 160, 160)


@pytest.fixture(scope="module")
def ats_runner(method_bundle):
    return tokcompile.load(method_bundle("ats"))


def test_check_images() -> None:
    good = np.zeros((2, *SHAPE), np.float32)
    assert check_images(good, SHAPE) is None
    assert "got float64" in check_images(good.astype(np.float64), SHAPE)
    assert "got shape [2, 3, 80, 160]" in check_images(good[:, :, :80], SHAPE)
    assert "got shape [3, 160, 160]" in check_images(good[0], SHAPE)
    assert "empty batch" in check_images(good[:0], SHAPE)
    bad = good.copy()
    bad[1, 2, 5, 7] = np.inf
    assert "NaN or Inf values (image(s) [1] of 2)" in check_images(bad, SHAPE)


def test_requests_run_as_one_batch_and_get_their_own_rows(ats_runner) -> None:
    images = sample_images(9, 160)
    requests = [images[:1], images[1:4], images[4:9]]
    answers = run_requests(ats_runner, requests)
    for request, answer in zip(requests, answers):
        alone = ats_runner.run(request)
        assert sorted(answer) == ["features", "logits"]
        for name in answer:
            assert answer[name].dtype == np.float32 and answer[name].shape == alone[name].shape
            np.testing.assert_allclose(answer[name], alone[name], rtol=0, atol=1e-4, err_msg=name)


def test_a_bad_request_fails_alone(ats_runner) -> None:
    images = sample_images(5, 160)
    nan = images[:2].copy()
    nan[0, 0, 0, 0] = np.nan
    requests = [images[2:4], nan, images[:0], images[4:5], images[:3, :, :100]]
    answers = run_requests(ats_runner, requests)
    assert [type(a).__name__ for a in answers] == ["dict", "Refusal", "Refusal", "dict", "Refusal"]
    assert "NaN or Inf" in answers[1].message and "empty batch" in answers[2].message
    assert not any(a.internal for a in answers if isinstance(a, Refusal))
    for i in (0, 3):
        np.testing.assert_allclose(answers[i]["logits"], ats_runner.run(requests[i])["logits"], rtol=0, atol=1e-4)


def test_a_failing_batch_is_rerun_request_by_request(ats_runner, monkeypatch) -> None:
    """The runner raising on a batch (not on bad input it can check): each request is retried alone,
    so only the one that breaks the runner fails, as an internal error."""
    images = sample_images(4, 160)
    poisoned = images[3:4]
    real_run = ats_runner.run

    def run(batch: np.ndarray):
        if any(np.array_equal(row, poisoned[0]) for row in batch):
            raise RuntimeError("runner broke")
        return real_run(batch)

    monkeypatch.setattr(ats_runner, "run", run)
    answers = run_requests(ats_runner, [images[:2], poisoned, images[2:3]])
    assert isinstance(answers[1], Refusal) and answers[1].internal and "runner broke" in answers[1].message
    for i, request in ((0, images[:2]), (2, images[2:3])):
        np.testing.assert_allclose(answers[i]["logits"], real_run(request)["logits"], rtol=0, atol=1e-4)


def test_bundle_parameter(tmp_path: Path) -> None:
    assert bundle_path("bundle", "/repo/m", "1") == Path("/repo/m/1/bundle")
    assert bundle_path(str(tmp_path), "/repo/m", "1") == tmp_path
