"""mathrl/scheduler.py with fake processes: at most `parallel` jobs at a time, none before what it starts from exists,
ready ones in list order, a failure stops new starts and is raised after the running jobs finish."""

from pathlib import Path

import pytest

from mathrl.errors import UserError
from mathrl.scheduler import Job, Running, run_jobs


class FakeProcess:
    """Finishes after `polls` polls with `status`; `on_exit` runs then (the checkpoint the job writes)."""

    def __init__(self, polls: int, status: int = 0, on_exit=lambda: None, during=()):
        self.left, self.status, self.on_exit, self.during = polls, status, on_exit, list(during)

    def poll(self):
        self.left -= 1
        if self.during and self.left == self.during[0][0]:  # a checkpoint saved while the job still runs
            self.during.pop(0)[1]()
        if self.left > 0:
            return None
        self.on_exit()
        return self.status

    def wait(self):
        return self.status


class FakeLog:
    def close(self):
        pass


class Recorder:
    """start(job, argv, env) for run_jobs: records each start and the jobs running at that moment."""

    def __init__(self, processes: dict):
        self.processes, self.started, self.concurrent, self.running = processes, [], [], set()

    def __call__(self, job, argv, env):
        self.started.append(job.name)
        process = self.processes[job.name]
        finish = process.on_exit

        def on_exit():
            self.running.discard(job.name)
            finish()
        process.on_exit = on_exit
        self.running.add(job.name)
        self.concurrent.append(set(self.running))
        return Running(job, process, FakeLog())


def job(name: str, tmp: Path, needs: Path | None = None, after=()) -> Job:
    return Job(name, tmp / f"{name}.log", lambda: (f"training {name}", ["true"]),
               ready=lambda finished: (needs is None or needs.exists()) and set(after) <= finished,
               needs=str(needs))


def test_dependencies_and_at_most_two_at_a_time(tmp_path, capsys):
    """The experiment's shape: sft writes step_2/ after 2 polls and final/ at its end (6 polls). grpo needs nothing
    and starts beside sft; h2h_sft and h2h_grpo need step_2/, sft_grpo needs final/, evaluate needs every run."""
    warm, final = tmp_path / "sft" / "step_2", tmp_path / "sft" / "final"
    processes = {
        "sft": FakeProcess(6, on_exit=lambda: final.mkdir(), during=[(4, lambda: warm.mkdir(parents=True))]),
        "grpo": FakeProcess(1), "sft_grpo": FakeProcess(1), "h2h_sft": FakeProcess(1), "h2h_grpo": FakeProcess(1),
        "evaluate": FakeProcess(1),
    }
    runs = ["sft", "grpo", "sft_grpo", "h2h_sft", "h2h_grpo"]
    jobs = [job("sft", tmp_path), job("grpo", tmp_path), job("sft_grpo", tmp_path, final),
            job("h2h_sft", tmp_path, warm), job("h2h_grpo", tmp_path, warm), job("evaluate", tmp_path, after=runs)]
    recorder = Recorder(processes)
    run_jobs(jobs, 2, start=recorder, poll_seconds=0)
    # sft and grpo first; the head-to-head while sft still runs (its step_2/ exists), sft_grpo after sft's final/
    assert recorder.started == ["sft", "grpo", "h2h_sft", "h2h_grpo", "sft_grpo", "evaluate"]
    assert recorder.concurrent[:3] == [{"sft"}, {"sft", "grpo"}, {"sft", "h2h_sft"}]
    assert max(len(c) for c in recorder.concurrent) == 2
    assert recorder.concurrent[-1] == {"evaluate"}
    out = capsys.readouterr().out
    assert f"training h2h_sft (log: {tmp_path / 'h2h_sft.log'}); running: sft, h2h_sft" in out
    assert "finished sft" in out


def test_one_at_a_time_is_the_list_order(tmp_path):
    processes = {name: FakeProcess(2) for name in ("a", "b", "c")}
    recorder = Recorder(processes)
    run_jobs([job(n, tmp_path) for n in ("a", "b", "c")], 1, start=recorder, poll_seconds=0)
    assert recorder.started == ["a", "b", "c"] and all(len(c) == 1 for c in recorder.concurrent)


def test_a_failure_stops_new_starts_and_names_the_log(tmp_path, capsys):
    (tmp_path / "sft.log").write_text("step 1\nerror: non-finite loss at step 2\n")
    processes = {"sft": FakeProcess(1, status=1), "grpo": FakeProcess(3), "later": FakeProcess(1)}
    recorder = Recorder(processes)
    with pytest.raises(UserError, match=r"sft failed \(exit status 1\); end of .*sft.log:\nstep 1\nerror: non-finite"):
        run_jobs([job("sft", tmp_path), job("grpo", tmp_path), job("later", tmp_path)], 2, start=recorder,
                 poll_seconds=0)
    assert recorder.started == ["sft", "grpo"]  # grpo was running: it finished; "later" never started
    assert processes["grpo"].left == 0
    assert "waiting for grpo to finish" in capsys.readouterr().out


def test_a_job_whose_checkpoint_never_appears_is_an_error(tmp_path):
    recorder = Recorder({"sft": FakeProcess(1)})
    missing = tmp_path / "sft" / "step_600"
    with pytest.raises(UserError, match="h2h_sft cannot start: .*step_600 is missing"):
        run_jobs([job("sft", tmp_path), job("h2h_sft", tmp_path, missing)], 2, start=recorder, poll_seconds=0)


def test_nothing_to_do_counts_as_finished(tmp_path):
    """An evaluation with nothing stale (command None) starts no process and lets what waits on it start."""
    idle = Job("evaluate", tmp_path / "e.log", lambda: None, ready=lambda finished: True)
    recorder = Recorder({"report": FakeProcess(1)})
    run_jobs([idle, job("report", tmp_path, after=["evaluate"])], 2, start=recorder, poll_seconds=0)
    assert recorder.started == ["report"]


def test_ctrl_c_waits_for_the_running_jobs_to_stop(tmp_path, capsys):
    """Ctrl-C reaches the children too (each saves a step_N/ and exits): compare waits for them, then stops."""
    waited = []
    process = FakeProcess(100)
    process.wait = lambda: waited.append("sft")

    def interrupted():
        raise KeyboardInterrupt

    jobs = [job("sft", tmp_path), Job("grpo", tmp_path / "grpo.log", interrupted, ready=lambda finished: True)]
    with pytest.raises(KeyboardInterrupt):
        run_jobs(jobs, 2, start=Recorder({"sft": process}), poll_seconds=0)
    assert waited == ["sft"]
    assert "stopping sft (each saves a step_N/; the same command resumes it)" in capsys.readouterr().out
