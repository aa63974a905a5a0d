"""TEMPORARY (reverted when the model packages land): the current model classes, with the
``load(directory, n_threads)`` signature of :class:`dmp_ml.models.base.BundleModel`."""

from __future__ import annotations

from pathlib import Path

from dmp_ml import affinity, propensity, send_time


class SendTimeModel(send_time.SendTimeModel):
    @classmethod
    def load(cls, directory: str | Path, n_threads: int | None = None) -> send_time.SendTimeModel:
        return send_time.SendTimeModel.load(directory)


class PropensityModel(propensity.PropensityModel):
    @classmethod
    def load(
        cls, directory: str | Path, n_threads: int | None = None
    ) -> propensity.PropensityModel:
        model = propensity.PropensityModel.load(directory)
        if n_threads is not None:
            model.n_threads = n_threads
        return model


class AffinityModel(affinity.AffinityModel):
    @classmethod
    def load(cls, directory: str | Path, n_threads: int | None = None) -> affinity.AffinityModel:
        return affinity.AffinityModel.load(directory)
