"""sq_client's API against a real sq-server (started here, see support.SqServer)."""
from __future__ import annotations

import hashlib
import shutil
import tempfile
import threading
import time
import unittest
from pathlib import Path

import sq_client
from sq_client import (Client, DataLoss, FailedPrecondition, InvalidArgument, JobFailed, JobState,
                       NotFound, QuantizeOptions, RetryPolicy, Unauthenticated, Unavailable)

from sq_client._stubs import sq_pb2

from .support import SqServer, free_port, matmul_chain, write_npy

WORK: Path
SERVER: SqServer
MODEL: Path


def setUpModule() -> None:
    global WORK, SERVER, MODEL
    WORK = Path(tempfile.mkdtemp(prefix="sq_client-test-"))
    MODEL = matmul_chain(WORK / "tiny.onnx", layers=2, width=64, seed=7)
    SERVER = SqServer(WORK, workers=1).start()


def tearDownModule() -> None:
    SERVER.stop()
    shutil.rmtree(WORK, ignore_errors=True)


class ModelFilesTest(unittest.TestCase):
    def test_external_data_travels_with_the_model(self) -> None:
        d = WORK / "ext"
        d.mkdir(exist_ok=True)
        m = matmul_chain(d / "m.onnx", layers=2, width=32, external="weights.bin")
        files = sq_client.model_files(m)
        self.assertEqual([f.name for f in files], ["m.onnx", "weights.bin"])
        self.assertEqual(files[1].path, (d / "weights.bin").resolve())

    def test_refuses_data_outside_the_folder_missing_files_and_non_models(self) -> None:
        d = WORK / "bad"
        (d / "inner").mkdir(parents=True, exist_ok=True)
        matmul_chain(d / "inner" / "m.onnx", width=8, external="../w.bin")
        with self.assertRaisesRegex(InvalidArgument, r"\.\."):
            sq_client.model_files(d / "inner" / "m.onnx")
        m = matmul_chain(d / "gone.onnx", width=8, external="gone.bin")
        (d / "gone.bin").unlink()
        with self.assertRaisesRegex(NotFound, "gone.bin"):
            sq_client.model_files(m)
        (d / "junk.onnx").write_bytes(b"\xff\xff\xff\xff not protobuf")
        with self.assertRaisesRegex(InvalidArgument, "not an ONNX model"):
            sq_client.model_files(d / "junk.onnx")
        with self.assertRaises(NotFound):
            sq_client.model_files(d / "missing.onnx")


class ClientTest(unittest.TestCase):
    def setUp(self) -> None:
        self.client = Client(SERVER.target)
        self.tmp = Path(tempfile.mkdtemp(dir=WORK))

    def tearDown(self) -> None:
        self.client.close()

    def test_health(self) -> None:
        self.assertTrue(self.client.health())
        self.assertTrue(self.client.health("sq.v1.SqService"))

    def test_submit_watch_download(self) -> None:
        job = self.client.submit(MODEL, bits=4)
        self.assertEqual(len(job.id), 32)
        self.assertEqual(job.name, f"jobs/{job.id}")
        self.assertEqual(job.model, f"models/{job.model_id}")
        self.assertIn(job.state, (JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED))
        states = [snap.state for snap in job.watch(timeout=120)]
        self.assertEqual(states[-1], JobState.SUCCEEDED, job.error)
        self.assertTrue(all(not s.is_terminal for s in states[:-1]), states)
        self.assertEqual(job.proto.options.bits, 4)
        self.assertEqual(job.summary.layers_quantized, 2)
        self.assertGreater(job.summary.compression_ratio, 1.0)

        results = job.download(self.tmp / "out.onnx")
        self.assertEqual(len(results), len(job.artifacts))
        data = (self.tmp / "out.onnx").read_bytes()
        self.assertEqual(hashlib.sha256(data).hexdigest(), job.artifacts[0].sha256)
        self.assertEqual(len(data), job.artifacts[0].size)
        self.assertFalse((self.tmp / "out.onnx.partial").exists())

        report = job.report()
        self.assertTrue(report.summary)
        self.assertIn("layers", report.data)
        # A second upload of the same files is recognised by content.
        self.assertTrue(self.client.upload(MODEL).deduplicated)

    def test_external_data_model(self) -> None:
        d = self.tmp / "ext"
        d.mkdir()
        m = matmul_chain(d / "m.onnx", layers=1, width=64, external="w.bin")
        up = self.client.upload(m)
        self.assertEqual([f.name for f in up.files], ["m.onnx", "w.bin"])
        self.assertEqual(up.name, f"models/{up.model_id}")
        self.assertTrue(self.client.inspect(up.model_id).uses_external_data)
        self.assertTrue(self.client.inspect(up.name).uses_external_data)
        job = self.client.submit_model(up.model_id, QuantizeOptions(bits=8, granularity="channel"))
        self.assertEqual(job.wait(timeout=120).state, JobState.SUCCEEDED, job.error)

    def test_ids_and_resource_names_are_both_accepted(self) -> None:
        self.assertEqual(sq_client.job_name("abc"), "jobs/abc")
        self.assertEqual(sq_client.job_name("jobs/abc"), "jobs/abc")
        self.assertEqual(sq_client.model_name("beef"), "models/beef")
        self.assertEqual(sq_client.model_name("models/beef"), "models/beef")
        up = self.client.upload(MODEL)
        by_name = self.client.submit_model(up.name, QuantizeOptions(bits=8)).wait(timeout=120, check=True)
        by_id = self.client.submit_model(up.model_id, QuantizeOptions(bits=8)).wait(timeout=120, check=True)
        self.assertEqual(by_name.model, up.name)
        self.assertEqual(by_id.model, up.name)
        for job in (by_name, by_id):
            self.assertEqual(self.client.get(job.id).name, job.name)
            self.assertEqual(self.client.get(job.name).id, job.id)
            self.assertTrue(self.client.report(job.name).summary)
        self.assertIn(up.name, [m.name for m in self.client.list_models()])
        self.assertIn(by_name.name, [j.name for j in self.client.list_jobs()])
        dest = self.tmp / "by_name.onnx"
        self.client.download_artifact(by_name.name, "", dest)
        self.assertTrue(dest.exists())
        self.client.delete(by_id.name)
        self.client.delete(by_name.id)
        with self.assertRaises(NotFound):
            self.client.get(by_name.name)
        # Another collection's name is the server's to refuse; it says what it wants.
        with self.assertRaises(InvalidArgument) as refused:
            self.client.get(f"models/{by_name.id}")
        self.assertIn('name must be "jobs/{job}"', str(refused.exception))
        with self.assertRaises(InvalidArgument):
            self.client.submit_model(f"jobs/{up.model_id}")

    def test_download_resumes_and_checks_sha256(self) -> None:
        job = self.client.submit(MODEL, bits=3).wait(timeout=120, check=True)
        art = job.artifacts[0]
        whole = self.tmp / "whole.onnx"
        self.client.download_artifact(job.id, art.name, whole)
        content = whole.read_bytes()
        half = len(content) // 2

        dest = self.tmp / "resumed.onnx"
        Path(str(dest) + ".partial").write_bytes(content[:half])
        r = self.client.download_artifact(job.id, art.name, dest)
        self.assertEqual((r.resumed_from, r.bytes_received), (half, len(content) - half))
        self.assertEqual(dest.read_bytes(), content)

        corrupt = self.tmp / "corrupt.onnx"
        partial = Path(str(corrupt) + ".partial")
        partial.write_bytes(bytes(b ^ 0xFF for b in content[:half]))
        with self.assertRaisesRegex(DataLoss, "sha256"):
            self.client.download_artifact(job.id, art.name, corrupt)
        self.assertFalse(partial.exists(), "a partial file that fails the hash is removed")
        self.assertFalse(corrupt.exists())
        r = self.client.download_artifact(job.id, art.name, corrupt)  # runs again from 0
        self.assertEqual((r.resumed_from, corrupt.read_bytes()), (0, content))

        stale = self.tmp / "stale.onnx"
        Path(str(stale) + ".partial").write_bytes(content + b"extra")
        r = self.client.download_artifact(job.id, "", stale)  # "" = the .onnx
        self.assertEqual((r.resumed_from, stale.read_bytes()), (0, content))

    def test_list_and_idempotency(self) -> None:
        a = self.client.submit(MODEL, bits=5, idempotency_key="list-test-a")
        again = self.client.submit(MODEL, bits=5, idempotency_key="list-test-a")
        self.assertEqual(a.id, again.id)
        b = self.client.submit(MODEL, bits=6).wait(timeout=120)
        a.wait(timeout=120)
        ids = [j.id for j in self.client.list_jobs()]
        self.assertLess(ids.index(b.id), ids.index(a.id), "newest first")
        self.assertEqual(len(self.client.list_jobs(limit=1)), 1)
        paged = [j.id for j in self.client.list_jobs(page_size=1)]
        self.assertEqual(paged, ids)
        succeeded = self.client.list_jobs(states=[JobState.SUCCEEDED])
        self.assertTrue(all(j.state == JobState.SUCCEEDED for j in succeeded))
        self.assertIn(b.id, [j.id for j in succeeded])
        others = self.client.list_jobs(states=[JobState.QUEUED, JobState.FAILED])
        self.assertTrue(all(j.state in (JobState.QUEUED, JobState.FAILED) for j in others))
        self.assertNotIn(b.id, [j.id for j in others])

    def test_cancel_a_queued_job(self) -> None:
        blocker_model = matmul_chain(self.tmp / "big.onnx", layers=24, width=512, seed=3)
        blocker = self.client.submit(blocker_model, bits=4, threads=1)
        queued = self.client.submit(MODEL, bits=7)  # waits: the server has one worker
        self.assertEqual(queued.cancel().state, JobState.CANCELLED)
        with self.assertRaises(JobFailed) as failed:
            queued.wait(timeout=60, check=True)
        self.assertEqual(failed.exception.job.state, JobState.CANCELLED)
        with self.assertRaises(FailedPrecondition):
            queued.download(self.tmp / "never.onnx")
        self.assertFalse((self.tmp / "never.onnx").exists())
        blocker.cancel()
        self.assertIn(blocker.wait(timeout=120).state, (JobState.CANCELLED, JobState.SUCCEEDED))
        queued.delete()
        with self.assertRaises(NotFound):
            self.client.get(queued.id)

    def test_delete_model_keeps_finished_artifacts(self) -> None:
        model = matmul_chain(self.tmp / "to_delete.onnx", layers=2, width=16, seed=11)
        job = self.client.submit(model, bits=4).wait(timeout=60, check=True)
        stored = {m.model_id: m for m in self.client.list_models(page_size=1)}
        self.assertIn(job.model_id, stored)
        self.assertEqual(stored[job.model_id].files[0].name, "to_delete.onnx")
        self.assertGreater(stored[job.model_id].size_bytes, 0)
        self.assertIsNotNone(stored[job.model_id].last_use_time)
        self.client.delete_model(job.model_id)
        self.assertNotIn(job.model_id, [m.model_id for m in self.client.list_models()])
        with self.assertRaises(NotFound):
            self.client.delete_model(job.model_id)
        with self.assertRaises(NotFound):
            self.client.submit_model(job.model_id)
        job.download(self.tmp / "kept.onnx")  # the finished job still delivers
        self.assertTrue((self.tmp / "kept.onnx").exists())
        with self.assertRaises(InvalidArgument):
            self.client.delete_model("not-an-id")

    def test_calibration_samples_travel_with_the_model(self) -> None:
        d = self.tmp / "calib"
        d.mkdir()
        for k, name in enumerate(("s1.npy", "s0.npy")):
            write_npy(d / name, [[0.1 * k - 0.05] * 64] * 2)   # X is [2, 64]
        (d / "notes.txt").write_text("not a sample")
        job = self.client.submit(MODEL, activations="int8", calibration=[d],
                                 calibration_method="minmax", input_ranges=["X=-1:1"])
        options = job.proto.options
        self.assertEqual(list(options.calibration_inputs), ["s0.npy", "s1.npy"])  # names, in order
        self.assertEqual(options.activations, sq_pb2.ACTIVATION_TYPE_INT8)
        self.assertEqual(options.target, sq_pb2.TARGET_QDQ)  # implied by the server
        self.assertEqual(options.calibration_method, sq_pb2.CALIBRATION_METHOD_MINMAX)
        self.assertEqual(list(options.input_ranges), ["X=-1:1"])
        job.wait(timeout=120)  # its outcome is the engine's business
        (d / "nested").mkdir()
        with self.assertRaisesRegex(InvalidArgument, "nested is a directory"):
            self.client.submit(MODEL, activations="int8", calibration=[d])
        with self.assertRaisesRegex(InvalidArgument, r"input_ranges\[0\]"):
            self.client.submit(MODEL, activations="int8", input_ranges=["X=1"])
        with self.assertRaisesRegex(InvalidArgument, "activations"):
            self.client.submit(MODEL, activations="int4")

    def test_bad_options_are_invalid_argument(self) -> None:
        with self.assertRaisesRegex(InvalidArgument, "bits") as e:
            self.client.submit(MODEL, bits=9)  # checked by the server
        self.assertIs(e.exception.code, sq_client.InvalidArgument.code)
        with self.assertRaisesRegex(InvalidArgument, "layer_overrides"):
            self.client.submit(MODEL, layer_overrides=["(=bits:4"])
        with self.assertRaisesRegex(InvalidArgument, "granularity"):
            self.client.submit(MODEL, granularity="diagonal")  # checked here
        with self.assertRaises(ValueError):  # InvalidArgument is a ValueError too
            self.client.submit(MODEL, no_such_option=1)
        with self.assertRaisesRegex(InvalidArgument, "malformed|job id|invalid"):
            self.client.get("not-a-job-id")
        with self.assertRaises(NotFound):
            self.client.get("0" * 32)


class UnavailableTest(unittest.TestCase):
    def test_stopped_server_fails_after_the_retries(self) -> None:
        policy = RetryPolicy(attempts=3, initial_backoff=0.2, max_backoff=0.4)
        with Client(f"127.0.0.1:{free_port()}", retry=policy) as c:
            start = time.monotonic()
            with self.assertRaisesRegex(Unavailable, "3 tries"):
                c.list_jobs()
            self.assertGreaterEqual(time.monotonic() - start, 0.6)  # 0.2 + 0.4 of backoff
            with self.assertRaises(Unavailable):
                c.submit(MODEL)

    def test_client_made_before_the_server_starts(self) -> None:
        port = free_port()
        server = SqServer(WORK, port=port)
        policy = RetryPolicy(attempts=30, initial_backoff=0.2, max_backoff=1.0)
        with Client(f"127.0.0.1:{port}", retry=policy) as c:
            timer = threading.Timer(1.0, server.launch)
            timer.start()
            try:
                self.assertTrue(c.health())
                self.assertEqual(c.list_jobs(), [])
            finally:
                timer.join()
                server.stop()


class AuthTest(unittest.TestCase):
    TOKEN = "py-client-token-0123456789"

    @classmethod
    def setUpClass(cls) -> None:
        token_file = WORK / "tokens.txt"
        token_file.write_text(f"# shared\n{cls.TOKEN}\n")
        cls.server = SqServer(WORK, token_file=token_file).start()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.stop()

    def test_token_required(self) -> None:
        with Client(self.server.target) as anonymous:
            with self.assertRaises(Unauthenticated):
                anonymous.list_jobs()
            with self.assertRaises(Unauthenticated):
                anonymous.submit(MODEL)
            self.assertTrue(anonymous.health())  # health stays open
        with Client(self.server.target, token="wrong-token-0123456789") as wrong:
            with self.assertRaises(Unauthenticated):
                wrong.get("0" * 32)
        with Client(self.server.target, token=self.TOKEN) as c:
            job = c.submit(MODEL, bits=4).wait(timeout=120, check=True)
            self.assertIn(job.id, [j.id for j in c.list_jobs()])


if __name__ == "__main__":
    unittest.main()
