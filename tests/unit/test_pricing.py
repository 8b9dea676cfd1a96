"""Prices: the model option, what an alias costs, and how a refusal words the price."""

from __future__ import annotations

from pathlib import Path

import pytest

from videoserve.jobs import ledger
from videoserve.models.registry import ModelRegistry
from videoserve.settings import Settings


def registry(tmp_path: Path, toml: str) -> ModelRegistry:
    models = tmp_path / "models.toml"
    models.write_text(toml)
    return ModelRegistry.from_settings(Settings(data_dir=tmp_path / "data", models=models))


def test_a_request_costs_the_price_of_the_model_that_serves_it(tmp_path: Path) -> None:
    prices = registry(
        tmp_path,
        '[models.cheap]\nbackend = "tiny"\nprice_per_second = 0.5\n'
        '[aliases]\n"sora-2-pro" = "cheap"\n',
    )
    assert prices.price_per_second("cheap") == 0.5
    assert prices.price_per_second("sora-2-pro") == 0.5  # an alias has no price of its own
    assert prices.price_per_second("tiny-t2v") == 1.0  # the default


@pytest.mark.parametrize("bad", ["-1", '"free"', "true"])
def test_a_bad_price_fails_at_startup(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="price_per_second must be a number >= 0"):
        registry(tmp_path, f'[models.m]\nbackend = "tiny"\nprice_per_second = {bad}\n')


def test_the_refusal_names_balance_and_price() -> None:
    assert ledger.insufficient(3.0, ledger.Charge(8, 1.0)).message == (
        "insufficient credits: balance 3, price 8 (8 s x 1 credit/s)"
    )
    assert ledger.insufficient(-1.5, ledger.Charge(4, 2.5)).message == (
        "insufficient credits: balance -1.5, price 10 (4 s x 2.5 credits/s)"
    )
