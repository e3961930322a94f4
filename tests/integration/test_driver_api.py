"""Gearman::Driver's programmatic API: Driver(...), add_job without decorators, run()."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from tests.driver_util import children_of
from tests.gearmand_util import TestClient, wait_for, worker_lines

SCRIPT = '''
import json, sys
from gearman_driver import Driver, Worker

class Plain(Worker):
    def scale_image(self, job, workload):
        return b"scaled:" + workload

    def do_something_else(self, job, workload):
        return {"len": len(workload)}

    def encode_json(self, result):
        return json.dumps(result)

driver = Driver(server=sys.argv[1], console_port=0, interval=1, loglevel="INFO")
worker = Plain(server=sys.argv[1])
driver.add_job("alias", worker, min_processes=2, max_processes=3, methods=[
    {"name": "scale_image", "body": Plain.scale_image},
    {"name": "do_something_else", "body": worker.do_something_else, "encode": "encode_json"},
])
assert driver.has_job("alias") and [j.name for j in driver.get_jobs()] == ["alias"]
assert driver.get_job("alias").spec.functions == ("scale_image", "do_something_else")
sys.exit(driver.run())
'''


def test_add_job_shares_one_process_group_and_run_serves_it(gearmand, tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text(SCRIPT)
    log = open(tmp_path / "app.log", "wb")
    proc = subprocess.Popen([sys.executable, str(script), f"127.0.0.1:{gearmand}"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: sum("scale_image" in line and "do_something_else" in line
                                    for line in worker_lines(gearmand)) == 2, 15), \
            (tmp_path / "app.log").read_text()
        with TestClient(gearmand) as client:
            assert client.submit("scale_image", b"cat.png").result == b"scaled:cat.png"
            assert client.submit("do_something_else", b"abcd").result == b'{"len": 4}'
        assert len(children_of(proc.pid)) == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
