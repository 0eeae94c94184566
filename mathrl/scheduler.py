"""compare.py's subprocesses, up to `parallel` at a time, each started once what it needs is there.

A job is one command (a training run, an evaluate.py call) with its log file. It starts when a slot is free and
its `ready` says so: a training run once the checkpoint it starts from exists (a finished run's final/, or the
SFT run's step_N/ warm start while that run goes on; checkpoints appear by an atomic rename, so one that exists
is complete), an evaluation once its seed's training runs finished. Ready jobs start in list order. When a job
fails, no new job starts; the running ones finish (a training run stopped with Ctrl-C saves a step_N/ that the
next compare.py resumes) and the failure is raised then.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mathrl.errors import UserError

POLL_SECONDS = 0.5


@dataclass
class Job:
    name: str                                             # on the console, e.g. "sft" or "seed-43/h2h_grpo"
    log: Path                                             # the command's stdout and stderr, appended
    command: Callable[[], tuple[str, list[str]] | None]   # called at start: (what it does, argv); None: nothing to do
    ready: Callable[[set[str]], bool]                     # given the names of the jobs finished so far
    needs: str = ""                                       # what `ready` waits for, for the error if it never comes
    done: Callable[[], None] = lambda: None               # after the command exited with status 0


@dataclass
class Running:
    job: Job
    process: subprocess.Popen
    log_file: object
    started: float = field(default_factory=time.perf_counter)


def launch(job: Job, argv: list[str], env: dict | None) -> Running:
    """Start the command with stdout and stderr appended to its log, after a `$ command` line."""
    job.log.parent.mkdir(parents=True, exist_ok=True)
    log_file = job.log.open("a")
    log_file.write(f"$ {shlex.join(argv)}\n")
    log_file.flush()
    return Running(job, subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, env=env), log_file)


def log_tail(log: Path, lines: int = 5) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def run_jobs(jobs: list[Job], parallel: int, env: dict | None = None, start=launch,
             poll_seconds: float = POLL_SECONDS) -> None:
    """Run every job, at most `parallel` at a time; `start(job, argv, env)` starts one (a test passes a fake).
    Raises UserError naming each failed job with the end of its log, or the jobs that could never start."""
    pending, running, finished, failed = list(jobs), {}, set(), []

    def others() -> str:
        return f"; running: {', '.join(running)}" if running and parallel > 1 else ""

    try:
        while True:
            for name, run in list(running.items()):
                status = run.process.poll()
                if status is None:
                    continue
                del running[name]
                run.log_file.close()
                if status == 0:
                    run.job.done()
                    finished.add(name)
                    print(f"finished {name} ({time.perf_counter() - run.started:.0f} s){others()}", flush=True)
                else:
                    failed.append((run.job, status))
                    wait = f"; waiting for {', '.join(running)} to finish" if running else ""
                    print(f"{name} failed (exit status {status}; log: {run.job.log}){wait}", flush=True)
            while not failed and len(running) < parallel:
                job = next((j for j in pending if j.ready(finished)), None)
                if job is None:
                    break
                pending.remove(job)
                what = job.command()
                if what is None:
                    finished.add(job.name)
                    continue
                title, argv = what
                running[job.name] = start(job, argv, env)
                print(f"{title} (log: {job.log}){others()}", flush=True)
            if not running:
                break
            time.sleep(poll_seconds)
    except BaseException as error:  # Ctrl-C reached the children too (each saves a step_N/); else they finish
        if running:
            stopping = isinstance(error, KeyboardInterrupt)
            print(f"{'stopping' if stopping else 'waiting for'} {', '.join(running)}"
                  + (" (each saves a step_N/; the same command resumes it)" if stopping else ""), flush=True)
        for run in running.values():
            run.process.wait()
        raise
    if failed:
        raise UserError("; ".join(f"{job.name} failed (exit status {status}); end of {job.log}:\n{log_tail(job.log)}"
                                  for job, status in failed))
    if pending:
        raise UserError("; ".join(f"{job.name} cannot start: {job.needs or 'what it needs'} is missing after every "
                                  "other run finished" for job in pending))
