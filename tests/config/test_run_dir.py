"""The run folder: a new one next to an earlier run (resume: false), the same one on every DDP process."""

import datetime
from types import SimpleNamespace

import pytest

import mvmr.training as training
from mvmr.training import RUN_PATH_ENV, RunDir


def cfg_for(tmp_path, resume=False):
    return SimpleNamespace(name="run", comment=None, run_dir=str(tmp_path), resume=resume)


@pytest.fixture
def earlier_run(tmp_path, monkeypatch):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    for key in ("LOCAL_RANK", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", RUN_PATH_ENV):
        monkeypatch.delenv(key, raising=False)
    return tmp_path


class Clock(datetime.datetime):
    now_value = datetime.datetime(2026, 1, 1, 12, 0, 0)

    @classmethod
    def now(cls, tz=None):
        return cls.now_value


def test_processes_lightning_starts_later_take_the_first_ones_folder(earlier_run, monkeypatch):
    monkeypatch.setattr(training.datetime, "datetime", Clock)
    first = RunDir.for_config(cfg_for(earlier_run), None, "x").path
    assert first == earlier_run / "run-20260101-120000"
    Clock.now_value = datetime.datetime(2026, 1, 1, 12, 0, 7)  # the GPU-1 process reads its clock 7 s later
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert RunDir.for_config(cfg_for(earlier_run), None, "x").path == first


def test_a_launcher_job_id_names_the_folder_on_every_process(earlier_run, monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "f00d")
    assert RunDir.for_config(cfg_for(earlier_run), None, "x").path == earlier_run / "run-f00d"
    monkeypatch.delenv(RUN_PATH_ENV)  # torchrun starts every process itself: nothing inherited
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert RunDir.for_config(cfg_for(earlier_run), None, "x").path == earlier_run / "run-f00d"


def test_resume_keeps_the_folder_and_the_first_process_never_reads_the_inherited_one(earlier_run, monkeypatch):
    monkeypatch.setenv(RUN_PATH_ENV, str(earlier_run / "elsewhere"))
    assert RunDir.for_config(cfg_for(earlier_run, resume=True), None, "x").path == earlier_run / "run"
