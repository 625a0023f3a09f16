"""`python3 -m sq_client ...` end to end against a real sq-server: output and exit codes."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

from sq_client import Client

from .support import PACKAGE_ROOT, SqServer, clean_env, free_port, matmul_chain


def sq(*args: str, env_extra: dict = {}) -> subprocess.CompletedProcess:
    """Runs the CLI with the current interpreter; stdout and stderr as text."""
    env = clean_env()
    env.update(env_extra)
    env["PYTHONPATH"] = str(PACKAGE_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "sq_client", *args], cwd=PACKAGE_ROOT, env=env,
                          capture_output=True, text=True, timeout=180)


class CliTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.work = Path(tempfile.mkdtemp(prefix="sq_client-cli-"))
        cls.model = matmul_chain(cls.work / "tiny.onnx", layers=2, width=64, seed=11)
        cls.server = SqServer(cls.work, workers=1).start()
        cls.s = ["--server", cls.server.target]

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.stop()
        shutil.rmtree(cls.work, ignore_errors=True)

    def ok(self, *args: str) -> subprocess.CompletedProcess:
        r = sq(*args)
        self.assertEqual(r.returncode, 0, f"{args}: {r.stderr}")
        return r

    def test_submit_downloads_and_prints_json(self) -> None:
        out = self.work / "out.onnx"
        r = self.ok("submit", str(self.model), "--bits", "4", *self.s, "-o", str(out), "--json")
        job = json.loads(r.stdout)
        self.assertEqual(job["state"], "JOB_STATE_SUCCEEDED")
        self.assertEqual(job["options"]["bits"], 4)
        self.assertEqual(hashlib.sha256(out.read_bytes()).hexdigest(), job["artifacts"][0]["sha256"])

    def test_detach_then_the_job_commands(self) -> None:
        r = self.ok("submit", str(self.model), "--bits", "8", "--granularity", "tensor",
                    "--rounding", "nearest", "--boundaries", "auto", *self.s, "--detach")
        job_id = r.stdout.strip()
        self.assertRegex(job_id, r"^[0-9a-f]{32}$")
        self.ok("watch", job_id, *self.s)
        status = self.ok("status", job_id, *self.s).stdout
        self.assertRegex(status, r"state\s+SUCCEEDED")
        self.assertIn("artifact", status)
        got = json.loads(self.ok("get", job_id, *self.s, "--json").stdout)
        self.assertEqual(got["options"]["granularity"], "GRANULARITY_TENSOR")
        self.assertEqual(got["options"]["rounding"], "ROUNDING_NEAREST")
        self.assertNotIn("quant_aware_boundaries", got["options"])  # auto: unset on the wire
        self.assertEqual(got["name"], f"jobs/{job_id}")
        # The resource name works wherever the id does.
        by_name = json.loads(self.ok("status", f"jobs/{job_id}", *self.s, "--json").stdout)
        self.assertEqual(by_name["job_id"], job_id)
        listed = json.loads(self.ok("list", *self.s, "--json", "--state", "succeeded").stdout)
        self.assertIn(job_id, [j["job_id"] for j in listed["jobs"]])
        self.assertIn(job_id, self.ok("list", *self.s).stdout)
        dest = self.work / "dl" / "model.onnx"
        dest.parent.mkdir()
        self.assertIn("saved", self.ok("download", job_id, "-o", str(dest), *self.s).stdout)
        self.assertEqual(hashlib.sha256(dest.read_bytes()).hexdigest(), got["artifacts"][0]["sha256"])
        self.assertTrue(self.ok("report", job_id, *self.s).stdout.strip())
        self.assertIn("layers", json.loads(self.ok("report", job_id, "--json", *self.s).stdout))
        self.assertIn("deleted", self.ok("delete", job_id, *self.s).stdout)
        self.assertEqual(sq("status", job_id, *self.s).returncode, 4)

    def test_inspect_and_health(self) -> None:
        r = self.ok("inspect", str(self.model), *self.s)
        self.assertRegex(r.stdout, r"layers\s+2 quantizable")
        self.assertEqual(self.ok("health", *self.s).stdout.strip(), "SERVING")
        self.assertEqual(json.loads(self.ok("health", *self.s, "--json").stdout)["status"], "SERVING")

    def test_cancelled_job_exits_1(self) -> None:
        # Two slow jobs (~2 s each) ahead of it on the server's one worker keep the CLI's job
        # queued while two more CLI processes start.
        big = matmul_chain(self.work / "big.onnx", layers=24, width=512, seed=5)
        with Client(self.server.target) as c:
            blockers = [c.submit(big, threads=1, idempotency_key=f"blocker-{i}") for i in range(2)]
        self.ok("submit", str(big), "--threads", "1", *self.s, "--detach", "--idempotency-key",
                "blocker-0")  # the same key: the same job, nothing new queued
        queued = self.ok("submit", str(self.model), "--bits", "2", *self.s, "--detach").stdout.strip()
        self.assertIn("CANCELLED", self.ok("cancel", queued, *self.s).stdout)
        r = sq("watch", queued, *self.s)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("was cancelled", r.stderr)
        r = sq("download", queued, "-o", str(self.work / "x.onnx"), *self.s)
        self.assertEqual(r.returncode, 1, r.stderr)
        for b in blockers:
            self.ok("cancel", b.id, *self.s)

    def test_timeout_and_delete_model(self) -> None:
        big = matmul_chain(self.work / "slow.onnx", layers=24, width=512, seed=9)
        job_id = self.ok("submit", str(big), "--threads", "1", *self.s, "--detach").stdout.strip()
        r = sq("watch", job_id, *self.s, "--timeout", "0.1")
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertIn("goes on on the server", r.stderr)
        self.assertEqual(sq("status", job_id, *self.s, "--timeout", "soon").returncode, 2)
        done = json.loads(self.ok("watch", job_id, *self.s, "--json", "--timeout", "10m").stdout)
        self.assertEqual(done["state"], "JOB_STATE_SUCCEEDED")
        model_id = done["model_id"]
        listed = json.loads(self.ok("models", *self.s, "--json").stdout)["models"]
        self.assertIn(model_id, [m["model_id"] for m in listed])
        self.assertIn(f"models/{model_id}", [m["name"] for m in listed])
        self.assertIn(model_id, self.ok("models", *self.s).stdout)
        self.assertEqual(json.loads(self.ok("delete-model", model_id, *self.s, "--json").stdout),
                         {"deleted_model": model_id})
        self.assertEqual(sq("delete-model", model_id, *self.s).returncode, 4)
        self.assertEqual(sq("delete-model", f"models/{model_id}", *self.s).returncode, 4)

    def test_exit_codes(self) -> None:
        def rc(*args: str) -> int:
            return sq(*args).returncode
        self.assertEqual(rc("status", "0" * 32, *self.s), 4)                      # NOT_FOUND
        self.assertEqual(rc("submit", str(self.work / "missing.onnx"), *self.s), 4)
        self.assertEqual(rc("submit", str(self.model), "--bits", "9", *self.s), 2)  # usage
        self.assertEqual(rc("submit", str(self.model), "--target", "ort-cpu", "--format", "fake",
                            *self.s), 2)
        r = sq("submit", str(self.model), "--layer", "(=bits:4", *self.s)        # server-side
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("layer_overrides", r.stderr)
        r = sq("submit", str(self.model), "--activations", "int8", "--input-range", "x=1", *self.s)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("input_ranges", r.stderr)
        self.assertEqual(rc("submit", str(self.model), "--activations", "int4", *self.s), 2)
        r = sq("submit", str(self.model), "--calibration", str(self.model), *self.s)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("nothing reads it", r.stderr)
        self.assertEqual(rc("frobnicate"), 2)
        self.assertEqual(rc("watch", *self.s), 2)
        r = sq("health", "--server", f"127.0.0.1:{free_port()}")
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertIn("server unavailable", r.stderr)
        self.assertEqual(len(r.stderr.strip().splitlines()), 1, "one line on stderr")

    def test_auth_exit_code_and_token_from_env(self) -> None:
        token = "cli-token-abcdefghijklmnop"
        tokens = self.work / "tokens"
        tokens.write_text(token + "\n")
        server = SqServer(self.work, token_file=tokens).start()
        try:
            s = ["--server", server.target]
            r = sq("list", *s)
            self.assertEqual(r.returncode, 5, r.stderr)
            self.assertIn("not authenticated", r.stderr)
            self.assertEqual(sq("list", *s, "--token", token).returncode, 0)
            self.assertEqual(sq("list", env_extra={"SQ_TOKEN": token, "SQ_SERVER": server.target}).returncode, 0)
        finally:
            server.stop()


if __name__ == "__main__":
    unittest.main()
