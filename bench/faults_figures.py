"""Run the fault suite (tests/faults) and write its figures to docs/faults.md.

Each fault test appends one JSON line per scenario to the file named by GD_FAULT_FIGURES:
jobs sent / completed / failed / lost, time to recover, the master's peak RSS (VmHWM) and notes.
This script runs the suite with that variable set, times it, and renders the table.

    .venv/bin/python bench/faults_figures.py                  # run the suite, write docs/faults.md
    .venv/bin/python bench/faults_figures.py --from f.jsonl   # render from an earlier run
    .venv/bin/python bench/faults_figures.py -- -k storm      # extra pytest arguments
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "faults.md"

INTRO = """\
# Faults and bad input

The fault suite (`tests/faults/`, every test `@pytest.mark.slow`) runs the real daemon against a
real gearmand and breaks things on purpose: workers killed with SIGKILL, gearmand crashed and
restarted, gearmand frozen, jobs that hang, workers that cannot start, poison jobs, generated bad
configs, abusive console clients, SIGTERM under load. Every test ends by checking counts: no job
lost, every result right, how many processes were started, how much memory the master holds.

Run it: `.venv/bin/python -m pytest tests/faults` (about {runtime}). Regenerate this page:
`.venv/bin/python bench/faults_figures.py` (runs the suite with `GD_FAULT_FIGURES` set; each
test appends one JSON line per scenario to that file, and the script renders the table below).
`GD_FAULT_BACKEND=pygearman` (or `native`, the default) runs every scenario on one backend; both
pass the same checks.

"""

TABLE_HEAD = """\
## Figures

Run of {date} on {machine}: {summary}, {wall:.0f} s wall time for the whole directory.
*Recover* is the scenario's own recovery time (see its notes); *peak RSS* is the master's
`VmHWM` from `/proc/<pid>/status` at the end of the scenario (children not included).

| scenario | sent | completed | failed | lost | recover (s) | master peak RSS (MB) | notes |
| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |
"""

SCENARIO_ROWS: list[tuple[str, str, str]] = [
    (
        '`test_kill_storm.py`',
        '10,000 foreground jobs from 8 client connections through 8 processes (min = max '
        '= 8); every 200 ms a random worker gets SIGKILL. Jobs sleep 5 ms so most kills '
        'catch a job in hand; the worker appends each attempt to a file, so retries are '
        'counted.',
        'every job completes with its own correct result; more than 8 pids served; most '
        'kills produced a retried job; 8 workers registered again afterwards',
    ),
    (
        '`test_gearmand_restart.py`',
        'gearmand with `--queue-type=libsqlite3`; 10,000 background jobs (the id is both '
        'workload and unique id) submitted in pipelined batches of 200; after 5,000 are '
        'acknowledged gearmand is killed with SIGKILL and restarted on the same port 1 s '
        'later; the submitter resubmits any unacknowledged batch.',
        'every id recorded at least once (duplicates counted, not failed); the driver '
        'never exited; workers registered again < 5 s after gearmand returned',
    ),
    (
        '`test_gearmand_frozen.py`',
        'gearmand SIGSTOPped for 10 s; console `status` polled every 0.5 s with a 1 s '
        'timeout; one worker (that has delivered a job) SIGKILLed once the master has found '
        'the frozen gearmand down; SIGCONT in a `finally`; then a burst of 16 one-second jobs.',
        'every poll answered; the killed worker replaced while gearmand was still '
        'stopped; after SIGCONT the job grows from 1 to at least 4 processes and drains',
    ),
    (
        '`test_job_timeout.py`',
        'a job that hangs forever the first time it runs, with `job_runtime_attributes: '
        '{f.hang.work: {timeout: 2}}`, min = max = 2; a second client keeps submitting '
        'quick jobs.',
        'the hung process replaced 1.5–10 s after the job started; quick jobs kept '
        'completing; the log line names job, pid and duration; gearmand re-queued the '
        'killed job and its retry completed for the waiting client',
    ),
    (
        '`test_failed_starts.py`',
        'a worker class whose `process_name` hook (run in the child right after the fork)'
        ' calls `os._exit(1)`, min_processes 2, observed for 30 s; a healthy job in the '
        'same driver is pinged every second.',
        '≤ 8 starts in 30 s (exponential backoff), master CPU < 5 % (utime + stime from '
        '`/proc/<pid>/stat`), every console poll answered, the console shows the failure,'
        ' every ping answered',
    ),
    (
        '`test_poison_job.py`',
        'gearmand `--job-retries=3`; one foreground and one background job that kill the '
        'process taking them, then 200 good jobs.',
        'each poison job tried exactly 3 times, the foreground client gets WORK_FAIL, ≤ 7'
        ' processes started in all (the first plus one per death), all 200 good jobs '
        'complete',
    ),
    (
        '`test_poison_job.py` (2)',
        "the same poison job under gearmand's default `--job-retries=0`, watched until the "
        'sixth death in a row.',
        'one process started per death, 6 when the sixth backs the next start off by 3.2 s; '
        'the figure shows the fork rate',
    ),
    (
        '`test_undelivered.py`',
        'one background poison job under `--job-retries=0`, watched for 5 s, on both '
        'backends, four ways for its process to die before the result reaches gearmand: '
        'the `end` hook or the job closes every descriptor (sending the result fails), '
        '`os._exit` in the `end` hook, `os._exit` in the job while a client keeps sending '
        'good jobs to the two processes of the job.',
        'at most 8 replacements in 5 s (288–428 before the fix: a death after the job '
        'counted as done was replaced at once); the logged waits double from 0.1 s with '
        'every death of that job, also while good jobs complete; every good job completes',
    ),
    (
        '`test_memory_limits.py`',
        'on both backends: (1) a job that keeps 20 MB per call, `max_rss_mb: 120` for the '
        'job in `job_runtime_attributes` (4000 at the top level), 20 foreground jobs; '
        '(2) `max_workload_mb: 1`, a 3 MiB foreground job between two small ones, under '
        "gearmand's default `--job-retries=0`.",
        '(1) every job completes; ≥ 3 pids; no job ends with RSS above limit + one job\'s '
        'leak; each recycle logged with function, handle, pid, RSS and limit. (2) the client '
        'gets WORK_FAIL, one log line names function, handle, size and limit, the next job '
        "is served by the same pid on the same gearmand connection (fd in `workers`). "
        'Before: the key was refused (exit 78); with the limit at 1 MiB the old native '
        'backend dropped the connection and took the job again 54 times in 5 s',
    ),
    (
        '`test_orphans.py`',
        'on both backends, `graceful_timeout: 3`: (1) a job makes its process ignore SIGTERM, '
        'or blocks SIGTERM and sleeps for ever (in hand); the master gets SIGKILL; 5 jobs '
        'for the function are queued once the orphan has noticed. (2) a job forks a process '
        'that sleeps 120 s; then the driver stops.',
        '(1) the orphan is gone < graceful_timeout + 3 s after the master\'s SIGKILL and took '
        'none of the 5 jobs, which stay queued; before, it lived on (and served jobs). '
        "(2) the worker's connection is gone from gearmand's `workers` once the driver has "
        'stopped; before, the forked process kept it registered',
    ),
    (
        '`test_recycling.py`',
        '`max_jobs_per_process: 100`, min = max = 1, 1,000 foreground jobs that return '
        'their pid.',
        'no job failed; 9–11 distinct pids (10 expected), none served more than 100',
    ),
    (
        '`test_bad_config.py`',
        'every listed (key, bad value) pair (~100), then hypothesis: 400 invalid '
        'documents made from a valid config (wrong value for a '
        "key, unknown key at the top or in a job's attributes, min_processes > "
        'max_processes, bad servers, broken YAML, bytes that are not UTF-8) checked '
        'in-process with `load_settings` + `Driver.load` (what `--check-config` runs); '
        '200 arbitrary texts; 20 runs of the real `gearman-driver --check-config` (bad '
        'files and bad flags).',
        'each invalid one refused with one line starting `file:line:col:` (or `command '
        'line:` for flags), exit 78 and no traceback for the CLI runs; arbitrary text '
        'never raises anything else',
    ),
    (
        '`test_config_bounds.py`',
        'an alias bomb (six levels of ten aliases: 10^6 values inside `worker_options`), a '
        '50 MB file and a symlink to `/dev/zero` as the config: started with the real CLI, '
        'and written over a running driver\'s config before a SIGHUP while `status` is '
        'polled on the console.',
        'start: exit 78 with one line naming the file (and the key, for the bomb) and '
        '`(the limit)`; reload: one `reload failed` line, every console poll answered, '
        'the same processes, no traceback',
    ),
    (
        '`test_console_abuse.py`',
        '10 s of three abusive clients on the console: random bytes (up to 64 KiB), 1 MiB'
        ' lines, 10,000 commands whose replies are never read, 100 connections at once '
        '(one abuser), garbage lines around real commands, half lines; meanwhile a burst '
        'of 16 one-second jobs and a `status` poll every 0.5 s.',
        'every poll answered (with the status, or promptly with `ERR '
        'too_many_connections` while the crowd is in), the job scaled to 4+ processes, '
        'the queue drained, master RSS grew < 20 MB, no traceback in the log',
    ),
    (
        '`test_sigterm_busy.py`',
        "8 processes each running a 3 s foreground job (checked in gearmand's `status`), "
        'then SIGTERM to the master, graceful_timeout 10 s.',
        'all 8 clients get `slept 3`, the master exits 0 before graceful_timeout, no '
        'child survives, nothing re-queued',
    ),
    (
        '`test_process_ceiling.py`',
        "`set_processes <job> 99999999999 99999999999` and `set_max_processes <job> "
        "99999999999` on the console; then the daemon run as nobody under `prlimit --nproc` "
        'with room for its master and 2 of the 4 processes `min_processes` asks for, watched '
        'for 8 s while the console is polled every 0.5 s, then room is made.',
        'the console answers `ERR invalid_value: max_processes must be <= 4096` and nothing '
        'changes; under the limit: one ERROR line, at most 8 fork attempts in 8 s, every poll '
        'answered, the 2 missing processes registered once there is room',
    ),
    (
        '`test_console_access.py`',
        'the daemon as root with a TCP console and a unix socket opened to everyone (mode '
        '0666); as user nobody (setpriv), every changing command (`set_*`, `kill`, '
        '`killall`, `reload`, `shutdown`) and every read (`status`, `show`, `ps`, `help`) '
        'through `gearman-driver-console` on both transports, then `set_processes` as root; '
        'the daemon as nobody with a nobody client; `console_allow_users: [nobody]` by '
        'reload.',
        'nobody gets `ERR permission_denied: uid 65534 …` for each change and its answer for '
        'each read; the worker pid, the limits and the daemon are untouched; root may, on '
        'both transports; the daemon\'s own user may; after the reload nobody may',
    ),
    (
        '`test_console_flood.py`',
        '64 idle and 64 slow (one byte `s` a second, never a newline) TCP connections to '
        'the console, each reopened as soon as the daemon closes it; meanwhile 20 `status` '
        'calls 0.5 s apart, alternating between TCP and the unix socket.',
        'all 20 answered with the job table (latencies in the figures; the README\'s 1 s is '
        'the slowest measured), the daemon closed the slow ones (line timeout 5 s) and '
        'logged its summary line, no traceback',
    ),
    (
        '`test_startup_errors.py`',
        'the daemon started with a pid file in a missing directory, a directory, a FIFO or a '
        'planted symlink (to a 0600 file) as pid file, a planted symlink as log file, a '
        'console socket in a missing directory, a symlink or a regular file at the console '
        'socket path, and a console port another socket listens on.',
        'exit 73 (78 for the log file), exactly one stderr line naming the path or port and '
        'the reason, no traceback; the symlinks\' target unchanged (contents and mode)',
    ),
    (
        '`test_reload_refused.py`',
        'a running driver (min 3 processes, clients submitting 50 ms jobs from 2 '
        'connections) gets a SIGHUP after a `namespaces` typo, after its worker module '
        'was changed to raise at import, and after its constructor was made to sleep '
        'for an hour, by a code change and by a `worker_options` change '
        '(`graceful_timeout: 2`, and a SIGUSR1 during the trial); the '
        'console is polled throughout; then a good code change.',
        'one `reload failed: …; running on the previous configuration` line (with '
        '`file:line:col` of the typo, `(at file:line)` of the raise, the time limit and'
        ' the killed trial pid), the same in STATUS, the same processes, every job '
        'completed, every console poll answered, the old code still serving, SIGUSR1 '
        'handled during the hang, the trial process gone; the good change still '
        're-executes and serves the new code',
    ),
    (
        '`test_reexec_signals.py`',
        'four reloads that each change `lib` (so the master drains and re-executes '
        'itself) while 2 clients submit 50 ms jobs; after each SIGHUP, more SIGHUPs '
        'every 20 ms from 50 ms later until the new master has logged its start.',
        'the master never dies (same pid); each re-exec happens once; the held SIGHUPs '
        'make the new master reload once it is ready; every job completed; no traceback',
    ),
    (
        '`test_logging_faults.py`',
        'with `logfile` set and 2 clients submitting jobs: a reload whose new `logfile`'
        " lies in a missing directory; then SIGUSR1 after the log's directory was "
        'removed while 0.3 s jobs are in hand, a reload, the directory recreated and '
        'SIGUSR1 again.',
        'the reload refused with `file:line:col: logfile: …` in the old log, no '
        'directory created; after the removal the master keeps running on the old '
        '(unlinked) file, exactly one warning there and one on stderr, a later reload '
        'still logged, the next SIGUSR1 reopens the new file; every process kept, every'
        ' job completed, no traceback',
    ),
    (
        '`test_console_reload.py`',
        'the driver listens on TCP and on a unix socket; a reload names a console '
        'socket in a missing directory, at a path that is a regular file, or in /sys '
        '(no one may create files there, root included); a console connection is open '
        'across the reload.',
        'the reload refused with `file:line:col: console_socket <path>: <reason>`, no '
        '`configuration reloaded`; the open connection, a new TCP connection and the '
        'old unix socket all answer `status`; the regular file untouched, nothing '
        'created; every process kept',
    ),
]

SCENARIOS = """\
## The scenarios, and the counts actually used

| test | what it does | checked |
| --- | --- | --- |
{rows}
The sqlite file lives on tmpfs (`/dev/shm`, or `GD_FAULT_SQLITE_DIR`): gearmand commits every
insert and delete of its sqlite queue, and on this machine's ext4 it manages ~460 background
submissions/s, so the same 10,000-job test takes ~60 s instead of ~6 s. tmpfs keeps the file
across a gearmand crash, which is what the test is about.
"""

GEARMAND = """\
## gearmand settings that decide what "no job lost" means

- **`--job-retries=N`** (`-j`, default `0`): how many times gearmand hands a job to a worker
  before it gives up on it. When a worker's connection closes while it holds a job (the process
  crashed, was killed, or hit its `timeout`), gearmand puts the job back in the queue; with
  `0` it does so forever, so a job that kills every process that takes it (a *poison job*) is
  retried for ever, each time costing a process. With `N > 0` the job is dropped after its
  N-th try: a foreground client receives `WORK_FAIL` (measured: exactly N tries, then FAIL), a
  background job is deleted. gearman-driver counts each death of a process holding a job
  as a failed start (bugs 4 and 5 below), so with the default a poison job costs forks at a
  rate that halves with each try, down to one a minute, for ever; set
  `--job-retries` on gearmand (e.g. `3`) in production: on Debian, add it to `PARAMS` in
  `/etc/default/gearman-job-server`
  (its systemd unit passes `$PARAMS` to gearmand).
- **`timeout`** (our job attribute) kills a process whose job ran too long; gearmand then
  re-queues that job like any other crash, so a job that *always* hangs is retried under the
  same `--job-retries` rule. Give such work a unique id and a retry budget.
- **`--queue-type=libsqlite3 --libsqlite3-db=FILE`** keeps background jobs across a gearmand
  crash or restart (foreground jobs die with their client's connection anyway). Two things seen
  with gearmand 1.1.20: (1) the table is keyed by (unique id, function), so background jobs
  submitted *without* a unique id collapse into a single persisted row: 10,000 such jobs
  became 1 after a restart. Always give background jobs a unique id when the queue is
  persistent. (2) every insert and delete is its own transaction: ~460 submissions/s on ext4
  here, far below the in-memory queue. Delivery is at least once: a job that completed in a
  worker just before gearmand died is replayed after the restart (a few duplicates per run,
  counted in the figures), so make background work idempotent.
"""

BUGS = """\
## Driver bugs found by the suite

Each was found by a test of this suite, fixed in the driver, and the test stays as a regression
check.

1. **The job-timeout log line did not name the job's handle** (commit c0d1dbf) —
   `tests/faults/test_job_timeout.py::test_timeout_log_line_names_the_job_handle`. A SIGKILLed
   child cannot log, and the scoreboard slot had no field for the handle; the slot now carries
   the handle of the job in hand and the master names it.
2. **An unopenable `logfile` was reported without its location** (commit c4321d8) —
   `tests/faults/test_bad_config.py::test_unwritable_logfile_is_reported_with_its_location`.
   Now `file:line:col: logfile: expected a file that can be opened for appending, got ...`.
3. **A namespace that cannot be imported was reported without its config location** (commit
   c4321d8) — `tests/faults/test_bad_config.py::`
   `test_missing_namespace_is_reported_at_its_config_location`.
   A namespace that does not exist is now reported at its `namespaces[i]` entry; errors inside
   the user's own modules keep their `(at file:line)`, without importlib's frames.
4. **A poison job under gearmand's default `--job-retries=0` was a fork loop** (commit c4321d8)
   — `tests/faults/test_poison_job.py::test_poison_job_with_unlimited_retries_does_not_fork_storm`.
   A process that died holding its first job was replaced at once, and gearmand handed the same
   job straight to the replacement: ~340 processes in 5 s. Such a death now counts as a failed
   start, with a backoff ramping from 0.1 s (1 s for a process that died idle), reset once a
   process of the job completes a job: 6 starts in 5 s, and fewer each second after.
5. **A death after the job ran but before its result reached gearmand bypassed that backoff**
   — `tests/faults/test_undelivered.py`. The scoreboard counted the job as done when its code
   returned, so a process whose `end` hook closed its descriptors (the send fails, the process
   dies, gearmand re-queues) was "replaced at once": 288–428 forks in 5 s; and a healthy
   sibling's results reset the backoff of a poison job that killed its processes after their
   first job. A slot now stays BUSY until the backend has written the result to the socket
   (LOST when the write failed); any death BUSY or LOST is a failed start whose wait doubles
   with every death of the same job handle: 5–6 forks in 5 s, then at most one a minute.
6. **A job that ignored or blocked SIGTERM left an orphan serving jobs after kill -9 of the
   master**, and **a process forked by a job kept the worker registered at gearmand after the
   worker exited** — `tests/faults/test_orphans.py`. On the master's death each child now gets
   a signal of its own (`SIGRTMIN` via `PR_SET_PDEATHSIG`, not the SIGTERM a job may ignore) and
   forks a guard that SIGKILLs it `graceful_timeout` later; `os.register_at_fork`
   closes the worker's sockets in processes its jobs fork.
7. **A workload over the native backend's 256 MiB packet limit was a connection-drop loop**
   (gearmand handed it out again ~11 times a second, for ever under `--job-retries=0`) —
   `tests/faults/test_memory_limits.py`. It is now read past and failed (WORK_FAIL), the limit
   is `max_workload_mb`; and `max_rss_mb` recycles a process a leaking job has grown.
8. **A reload whose new code could not be loaded took the service down** —
   `tests/faults/test_reload_refused.py`. A `namespaces` typo or worker code raising at import
   drained every process, re-executed the master, and the new master exited 78 (which systemd
   does not restart); a constructor that hung froze the master for good. The new code is now
   loaded first in a throw-away process (pipe in the master's selector, killed by pid after
   `graceful_timeout`): refused in 0.04–0.06 s, or 2.1 s for a hang with `graceful_timeout: 2`,
   with every process kept and the console answering.
9. **A SIGHUP during the master's re-exec killed it** (SIGHUP's default action before the new
   image had its handler) — `tests/faults/test_reexec_signals.py`. The handled signals are
   blocked across the exec and unblocked once the new master's handlers are in place.
10. **A log file that could not be (re)opened killed the master** (exit 1, a traceback, the
    children SIGKILLed: a job lost) — `tests/faults/test_logging_faults.py`. A reload naming
    one is refused at its `logfile` key; SIGUSR1 after its directory was removed keeps the old
    file with one warning.
11. **A reload with a bad `console_socket` was "configuration reloaded" and closed the working
    TCP console too** — `tests/faults/test_console_reload.py`. The new addresses are bound
    (and let go) before anything changes; a failure refuses the reload at the key's file:line.
12. **Reading a config was unbounded**: an alias bomb took 42 s and 1.2 GB, a 50 MB file 152 s,
    `/dev/zero` 1.8 GB and a traceback — `tests/faults/test_config_bounds.py`. Now 128 KiB,
    50,000 values after alias expansion and 32 levels at most, each refused in one located line.
13. **The fix for bug 5 made a kill -9 storm starve** — `tests/faults/test_kill_storm.py` took
    44–60 s instead of 7.4 s (client time-outs on a loaded machine): every busy death pushed the
    job's next start 0.1 s ahead while the loop woke only at the next death, and the streak
    ramped to 6.4 s once the pool was down to one process. The streak now restarts when a live
    sibling delivered since the last failure (a poison handle still ramps on its own count) and
    the loop wakes when a backed-off start is due (unit tests in `tests/unit/test_processes.py`).
14. **The orphan watcher thread of bug 6's first fix broke starts under RLIMIT_NPROC** (a thread
    is a task: "can't start new thread", exit 70, in `tests/faults/test_process_ceiling.py`) and
    woke every worker once a second; replaced by the death signal and forked guard of bug 6.
"""

ROUND_TWO = """\
## Second adversarial round (issue 21)

The surfaces added after the first round — the `reload` command and CLI, trial reloads,
re-exec, the metrics endpoint, reloading settings, logging when the disk is full, signals
early in start-up — were tried again as a new user and as a hostile local user would. What
held up then still holds (peer-uid access control over IPv4, `::1` and dual-stack; the config
limits; 2,800 scrapes during heavy recycling; odd HTTP methods, folded headers, an HTTP/2
preface, 64 scrapers that never read; memory recycling; SIGSTOP/SIGCONT of the master; five
concurrent reloads plus SIGHUPs). Each defect found is reproduced by a test of this suite as it
was found (each failed before its fix), and the fix went to the class, not only the instance:

| # | found | test | what holds now |
| --- | --- | --- | --- |
{rows}
The smaller ones: a 9,000-byte request head arriving whole is now 431 (`test_metrics_abuse.py`);
`reload` during shutdown is refused; `reload --socket ""` is a usage error; a trial's deadline
never signals a pid already reaped (`tests/unit/test_trial.py`).
"""

#: (item, what was found, its test, what holds now) for the section above
ROUND_TWO_ROWS: list[tuple[int, str, str, str]] = [
    (1,
     "a config file broken during a re-exec's drain: the new master exited 78, the service "
     'was gone',
     '`test_reexec_reloads.py`',
     'the new master starts from the settings the reload read and checked (handed over '
     'across the exec); code that changed during the drain refuses the reload and the old '
     'code starts again'),
    (2,
     'SIGHUP, SIGUSR1 or SIGUSR2 while the master imports worker code killed it',
     '`test_early_signals.py`',
     'remembered from the first instruction of `main` and acted on once the loop runs (the '
     'reload done, the log reopened)'),
    (3,
     '`sys.exit(0)` in a constructor: `--check-config` and the daemon exited 0 silently; '
     '`sys.exit("msg")` at import exited 1',
     '`test_load_exits.py`',
     'exit 78, one line naming the module or class, at import, in a constructor or in '
     "`prefix()`; a callback's `sys.exit()` no longer ends the master"),
    (4,
     'a reload sent during a re-exec drain, or one moving the console, was answered by EOF '
     '(exit 2) although applied; one pending at SIGTERM was never answered',
     '`test_reload_answers.py`, `test_reexec_reloads.py`',
     'connections survive a move; waiting clients are handed to the new master, which '
     'answers them; SIGTERM and shutdown refuse pending reloads in words'),
    (5,
     '`metrics_port` moved onto a busy port: OK, and no endpoint at all',
     '`test_reload_answers.py`',
     'the new address is bound before the reload is applied; refused at the key, the old '
     'endpoint keeps serving'),
    (6,
     'a changed `wanted` or `pidfile`: OK, and neither applied',
     '`test_reload_applies.py`',
     '`wanted` and `unknown_job_callback` re-execute the master; `pidfile` moves live; '
     '`daemonize` refuses the reload; a unit test fails for any setting without a rule'),
    (7,
     'new code with its old mtime, or a changed helper in `lib`, kept running the old code',
     '`test_reload_applies.py`',
     'code is compared by content (sha256 of every module imported from the worker paths) '
     'and by the modules each namespace holds'),
    (8,
     "a module forking a helper at import held the trial's pipe: refused after "
     '`graceful_timeout`, helper left behind',
     '`test_trial_helpers.py`',
     'the answer is framed, the trial kills its own process group once it answered, the '
     'master kills that group only while the trial is unreaped'),
    (9,
     'a job ending in `sys.exit()` or KeyboardInterrupt counted `complete`',
     '`test_job_exits.py`',
     'WORK_FAIL, counted `failed`, the process goes on (both backends)'),
    (10,
     'pipelined `HEAD /metrics` rendered back to back: the console silent for > 10 s',
     '`test_metrics_abuse.py`',
     'at most 4 renders per loop turn, 16 answers per connection per turn; the console '
     'answers throughout (figure in the table above)'),
    (11,
     '`Accept: ...; version=abc`: a 500 and a traceback in the log on every request',
     '`test_metrics_abuse.py`',
     'the text format; a failing render logs at most once a minute'),
    (12,
     'a full disk under the log file: Python\'s "--- Logging error ---" for every line',
     '`test_log_files.py`',
     'one line per process on stderr, one more when the log can be written again (with the '
     'lines lost); jobs go on'),
    (13,
     '`reload --timeout` nan, inf or 1e400, `gearman-driver-console --timeout nan`: a '
     'traceback, exit 1',
     '`test_cli_usage.py`',
     'exit 64, one message line and the usage line'),
    (14,
     'after logrotate and SIGUSR1, or a reload to another `logfile`, workers kept writing '
     'to the old file',
     '`test_log_files.py`',
     'the master publishes the log target in shared memory; every process opens it on its '
     'next line (a lower level reaches them at once by signal)'),
]


ORDER = ["kill -9", "gearmand (sqlite", "gearmand frozen", "job timeout", "processes die",
         "poison job, gearmand --job", "poison job, gearmand default",
         "result not delivered",
         "max_jobs_per_process",
         "max_rss_mb", "workload over", "master kill -9, a job", "job forks a process",
         "bad config", "config read bounds", "console abuse", "SIGTERM", "process ceiling",
         "fork fails", "console control", "console flood", "start-up error", "reload refused",
         "SIGHUP storm", "log faults", "console reload refused", "metrics", "logging",
         "reload", "re-exec", "trial"]


def run_suite(figures: Path, extra: list[str]) -> tuple[float, str]:
    env = dict(os.environ, GD_FAULT_FIGURES=str(figures))
    cmd = [sys.executable, "-m", "pytest", "tests/faults", "-q", "-p", "no:cacheprovider", *extra]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    sys.stdout.write(proc.stdout[-4000:])
    sys.stderr.write(proc.stderr[-2000:])
    lines = [x for x in proc.stdout.splitlines() if re.search(r"\d+ (passed|failed)", x)]
    summary = lines[-1].strip("= ").rsplit(" in ", 1)[0] if lines else "no summary"
    return wall, summary


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    return str(value).replace("|", "\\|")


def render(rows: list[dict[str, Any]], wall: float, summary: str, date: str) -> str:
    machine = f"{os.cpu_count()} cores, {platform.system()} {platform.release()}, " \
              f"Python {platform.python_version()}"
    latest: dict[str, dict[str, Any]] = {}
    for row in rows:  # a re-run scenario keeps its latest line
        latest[row["scenario"]] = row
    out = [INTRO.format(runtime=f"{wall / 60:.1f} minutes on 2 cores" if wall else "3 minutes"),
           TABLE_HEAD.format(date=date, machine=machine, summary=summary, wall=wall)]
    def rank(name: str) -> int:
        return next((i for i, prefix in enumerate(ORDER) if name.startswith(prefix)), len(ORDER))

    for row in sorted(latest.values(), key=lambda r: rank(r["scenario"])):
        out.append("| " + " | ".join(_cell(row.get(k)) for k in (
            "scenario", "sent", "completed", "failed", "lost", "recover_s", "peak_rss_mb",
            "notes")) + " |\n")
    out.append("\n")
    table = "".join(f"| {a} | {b} | {c} |\n" for a, b, c in SCENARIO_ROWS)
    found = "".join(f"| {n} | {a} | {b} | {c} |\n" for n, a, b, c in ROUND_TWO_ROWS)
    out.append(SCENARIOS.format(rows=table) + "\n" + GEARMAND + "\n" + BUGS + "\n"
               + ROUND_TWO.format(rows=found))
    return "".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", type=Path,
                        help="render from this JSON-lines file instead of running the suite")
    parser.add_argument("--wall", type=float, default=0.0, help="wall time to print with --from")
    parser.add_argument("--summary", default="figures from an earlier run")
    parser.add_argument("--out", type=Path, default=DOC)
    parser.add_argument("--keep", type=Path, help="also save the run's JSON lines here")
    parser.add_argument("pytest_args", nargs="*")
    args = parser.parse_args()
    if args.source:
        rows = [json.loads(x) for x in args.source.read_text().splitlines() if x.strip()]
        wall, summary = args.wall, args.summary
    else:
        with tempfile.TemporaryDirectory(prefix="gd-faults-figures-") as tmp:
            figures = Path(tmp) / "figures.jsonl"
            wall, summary = run_suite(figures, args.pytest_args)
            rows = [json.loads(x) for x in figures.read_text().splitlines()] \
                if figures.exists() else []
            if args.keep:
                args.keep.write_text("".join(json.dumps(r) + "\n" for r in rows))
    date = rows[-1]["at"][:10] if rows else time.strftime("%Y-%m-%d")
    args.out.write_text(render(rows, wall, summary, date))
    print(f"wrote {args.out} ({len(rows)} scenarios, {wall:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
