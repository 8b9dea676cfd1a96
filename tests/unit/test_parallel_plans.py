"""`parallel = {...}` entries: parsed, and checked against the worker group and the family.

Every refusal happens when the worker starts and names the entry and why; these read configs
written here (a `model_index.json`, a transformer `config.json`), as real weights carry them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from videoserve.jobs.failures import FailureCode
from videoserve.models.backends import parallel
from videoserve.models.options import ParallelOptions, parse_options
from videoserve.models.registry import ModelRegistry
from videoserve.settings import Settings
from videoserve.worker.group import RankFailed, WorkerGroup, check_plans
from videoserve.worker.model_stage import failure_of


def weights(folder: Path, pipeline: str, transformer: str, heads: int = 2) -> Path:
    """A folder with the configs the checks read (no weights)."""
    (folder / "transformer").mkdir(parents=True)
    index = {"_class_name": pipeline, "transformer": ["diffusers", transformer]}
    (folder / "model_index.json").write_text(json.dumps(index))
    config = {"num_attention_heads": heads}
    (folder / "transformer" / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"ulysses": 0}, "parallel.ulysses must be an integer >= 1 (Ulysses degree) (got 0)"),
        ({"rings": 2}, "parallel.rings: unknown key (parallel has ulysses, ring and cfg)"),
        ({"cfg": "yes"}, "parallel.cfg must be true or false"),
        (3, "parallel must be a table { ulysses = N, ring = M, cfg = true } (got 3)"),
    ],
)
def test_a_bad_parallel_table_is_refused_by_name(table: object, message: str) -> None:
    with pytest.raises(ValueError, match=r"^model 'x': ") as refused:
        parse_options("x", "diffusers", {"parallel": table})
    assert message in str(refused.value)


def test_the_split_says_its_ranks() -> None:
    assert ParallelOptions(ulysses=2).describe() == {"ranks": 2, "ulysses": 2}
    assert ParallelOptions(ring=2, cfg=True).describe() == {"ranks": 4, "ring": 2, "cfg": 2}


@pytest.mark.parametrize(
    ("plan", "pipeline", "transformer", "family", "group", "reason"),
    [
        (
            ParallelOptions(ulysses=2),
            "WanPipeline",
            "WanTransformer3DModel",
            "wan",
            1,
            "needs a worker group: set VIDEOSERVE_WORKER_DEVICES to 2 devices",
        ),
        (
            ParallelOptions(ulysses=2, cfg=True),
            "WanPipeline",
            "WanTransformer3DModel",
            "wan",
            2,
            "splits over 4 ranks (ulysses 2 x ring 1 x cfg 2) but this worker group has 2",
        ),
        (
            ParallelOptions(ring=2),
            "HunyuanVideo15Pipeline",
            "HunyuanVideo15Transformer3DModel",
            "hunyuan15",
            2,
            "diffusers has none for HunyuanVideo15Transformer3DModel (HunyuanVideo 1.5)",
        ),
        (
            ParallelOptions(cfg=True),
            "LTX2Pipeline",
            "LTX2VideoTransformer3DModel",
            "ltx2",
            2,
            "cfg = true is implemented for Wan pipelines only (this is ltx2)",
        ),
        (
            ParallelOptions(cfg=True),
            "WanVACEPipeline",
            "WanVACETransformer3DModel",
            "wan",
            2,
            "cfg = true is implemented for WanPipeline, WanImageToVideoPipeline, not WanVACE",
        ),
        (
            ParallelOptions(ulysses=4),
            "WanPipeline",
            "WanTransformer3DModel",
            "wan",
            4,
            "ulysses = 4 must divide the transformer's 2 attention heads",
        ),
    ],
)
def test_a_split_that_cannot_run_is_refused_with_its_reason(
    tmp_path: Path,
    plan: ParallelOptions,
    pipeline: str,
    transformer: str,
    family: str,
    group: int,
    reason: str,
) -> None:
    folder = weights(tmp_path / "m", pipeline, transformer)
    refusal = parallel.refusal("m", plan, folder, family, group)
    assert refusal is not None and refusal.startswith("model 'm': parallel")
    assert reason in refusal


@pytest.mark.parametrize(
    "plan", [ParallelOptions(ulysses=2), ParallelOptions(ring=2), ParallelOptions(cfg=True)]
)
def test_wan_splits_over_two_ranks(tmp_path: Path, plan: ParallelOptions) -> None:
    folder = weights(tmp_path / "m", "WanPipeline", "WanTransformer3DModel")
    assert parallel.refusal("m", plan, folder, "wan", 2) is None


def test_wan_vace_splits_by_our_plan(tmp_path: Path) -> None:
    folder = weights(tmp_path / "m", "WanVACEPipeline", "WanVACETransformer3DModel")
    assert parallel.refusal("m", ParallelOptions(ulysses=2), folder, "wan", 2) is None
    assert parallel.own_plan("WanVACETransformer3DModel") is not None
    assert parallel.own_plan("WanTransformer3DModel") is None  # diffusers' own


def registry_with(tmp_path: Path, plan: str) -> ModelRegistry:
    models = tmp_path / "models.toml"
    models.write_text(f'[models.split]\nbackend = "tiny"\nparallel = {plan}\n')
    return ModelRegistry.from_settings(Settings(data_dir=tmp_path, models=models))


def test_a_worker_without_a_group_leaves_parallel_entries_to_others(tmp_path: Path) -> None:
    registry = registry_with(tmp_path, "{ ulysses = 2 }")
    served = registry.served_models()
    assert "split" in served
    assert check_plans(registry, served, None) == [n for n in served if n != "split"]


def test_a_group_of_the_wrong_size_stops_the_worker(tmp_path: Path) -> None:
    registry = registry_with(tmp_path, "{ ulysses = 2, cfg = true }")
    settings = Settings(data_dir=tmp_path, worker_devices="cpu,cpu")
    group = WorkerGroup(settings, settings.worker_devices)  # not started: nothing spawned
    with pytest.raises(ValueError, match="model 'split': parallel splits over 4 ranks"):
        check_plans(registry, registry.served_models(), group)


@pytest.mark.parametrize(
    ("devices", "message"),
    [
        ("cuda0", "devices must be cpu or cuda:N (got cuda0)"),
        ("cpu,cuda:1", "must all be cpu or all cuda:N"),
        ("cuda:0,cuda:0", "names each GPU once"),
    ],
)
def test_bad_worker_devices_are_refused(devices: str, message: str) -> None:
    with pytest.raises(ValueError) as refused:
        Settings(worker_devices=devices)
    assert message in str(refused.value)


def test_out_of_memory_is_its_own_failure_code() -> None:
    on_a_rank = failure_of(RankFailed("out_of_memory", "out of memory on rank 1 (cuda:1)"))
    assert on_a_rank.code == FailureCode.OUT_OF_MEMORY
    assert on_a_rank.message == "out of memory on rank 1 (cuda:1)"
    assert failure_of(MemoryError()).code == FailureCode.OUT_OF_MEMORY
    assert failure_of(RankFailed("input_invalid", "bad")).code == FailureCode.INPUT_INVALID
    assert failure_of(RankFailed("model_error", "boom")).code == FailureCode.MODEL_ERROR
