import pytest


@pytest.fixture
def fail_at_call():
    """A function making a model's local branch raise on its ``call``-th use, as a crash would."""

    def arm(model, monkeypatch, call):
        calls = []

        def local_features(*args, **kwargs):
            calls.append(1)
            if len(calls) == call:
                raise RuntimeError("device lost")
            return type(model).local_features(model, *args, **kwargs)

        monkeypatch.setattr(model, "local_features", local_features)

    return arm
