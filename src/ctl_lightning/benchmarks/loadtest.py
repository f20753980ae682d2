"""Load test of a real ``ctl-serve`` on 127.0.0.1 (issue 14): concurrent clients, a reload under load, memory.

    python -m ctl_lightning.benchmarks.loadtest [RUN_DIR] [--clients 64] [--seconds 30] [--max-requests N]

Starts ``ctl-serve`` as a subprocess on a free loopback port with a random ``CTL_SERVE_TOKEN``, waits
for ``/healthz``, then runs ``--clients`` closed-loop clients (one ``httpx.AsyncClient``, each client
sends its next request when its last one is answered) for ``--seconds`` or ``--max-requests``,
whichever comes first. The mix: product queries (``GET /v1/similar/{product}``,
``GET /v1/complementary/{product}``), ``POST /v1/batch`` of 8 product queries, and image uploads
(``POST /v1/similar``, ``POST /v1/complementary``) of the store's own collages with a product's box,
half of them with its category and half left to inference. Halfway, ``POST /admin/reload`` promotes a
second run (or the same run, read again) while the load goes on. The server's resident memory
(``VmRSS``) is sampled every 0.5 s. The server is always stopped (SIGINT, then SIGKILL after 15 s),
on errors and Ctrl-C too, and dies with this process if it is killed (``PR_SET_PDEATHSIG``).

Without RUN_DIR it serves two small runs it builds offline (``ctl_lightning.serve.sample_run``).
``make bench`` runs it as its ``loadtest`` step (the figures land in RESULTS.md, per host);
``make loadtest`` runs it alone and writes ``loadtest.json`` and ``LOADTEST.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np

import ctl_lightning
from ctl_lightning.errors import CtlError, friendly_errors

REPO = Path(__file__).resolve().parents[3]
ENDPOINTS = (
    "GET /v1/similar/{product}",
    "GET /v1/complementary/{product}",
    "POST /v1/batch",
    "POST /v1/similar (image)",
    "POST /v1/complementary (image)",
)
MIX = (0.3, 0.3, 0.1, 0.15, 0.15)  # share of each endpoint in a client's requests
BATCH_QUERIES = 8
RSS_EVERY_S = 0.5
KEEPALIVE_S = 2.0  # how long the clients keep an idle connection: under uvicorn's --timeout-keep-alive (5 s)
# Flat memory: over the steady part of the run (from 1 s after the reload's answer to the end), the
# server's RSS grows by at most this share of its size at the window's start. On a 2-core host, once
# warm, allocator noise (the thread pool's arenas, the micro-batcher's buffers) moves it by about 1 MiB
# in 15 s; 2% of a ~1 GiB server (torch, two models after the reload) is ~20 MiB, which a leak of one
# decoded upload (a 320 px collage: 300 KiB) per image query passes within seconds. A leak of a few KiB
# a request hides in that noise over 15 s: ``growth_kib_per_request`` says what was seen, and a longer
# run (--seconds 600) is the way to bound it further.
FLAT_GROWTH = 0.02


@dataclass(frozen=True)
class LoadPlan:
    clients: int = 64
    seconds: float = 30.0
    max_requests: int = 200_000  # a bound whatever the server's speed
    reload_at: float = 0.5  # the reload's start, as a share of the run
    request_timeout_s: float = 60.0  # a request unanswered this long counts as an error
    startup_timeout_s: float = 180.0
    seed: int = 0


# --- the server ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent():
    """A ``preexec_fn`` asking Linux to SIGTERM the child when this process dies (kill -9 included); None elsewhere."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Server:
    """``ctl-serve RUN_DIR`` on 127.0.0.1 and a free port; a context manager that always stops it."""

    def __init__(self, run_dir: Path, log: Path, token: str):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path, self.token = log, token
        env = {
            **os.environ,
            "CTL_SERVE_TOKEN": token,
            "PYTHONPATH": os.pathsep.join([str(Path(ctl_lightning.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
        }
        command = [sys.executable, "-m", "ctl_lightning.serve", str(run_dir), "--host", "127.0.0.1", "--port", str(self.port)]
        self.log = log.open("wb")
        self.process = subprocess.Popen(
            [*command, "--log-level", "warning"], env=env, stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent()
        )
        self.pid = self.process.pid
        self.stopped_by: str | None = None
        self.exit_code: int | None = None

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def last_error(self) -> str:
        lines = [line for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        said = [line for line in lines if "error" in line.lower()]
        return (said or lines or ["(nothing in its log)"])[-1].strip()

    def wait_healthy(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise CtlError(f"ctl-serve exited with status {self.process.returncode} before answering: {self.last_error()}")
            try:
                response = httpx.get(f"{self.base}/healthz", timeout=2)
                if response.status_code == 200:
                    return response.json()
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise CtlError(f"ctl-serve did not answer {self.base}/healthz within {timeout:.0f} s (its log: {self.log_path})")
            time.sleep(0.2)

    def stop(self, grace_s: float = 15.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown, then exit status 0
            self.stopped_by = "SIGINT"
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.stopped_by = "SIGKILL"
                self.process.wait()
        self.exit_code = self.process.returncode
        self.log.close()

    def cpu_seconds(self) -> float | None:
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class RssSampler(threading.Thread):
    """``(seconds since start, RSS MiB)`` of ``pid`` every ``every`` seconds, until :meth:`stop`."""

    def __init__(self, pid: int, start: float, every: float = RSS_EVERY_S):
        super().__init__(name="rss-sampler", daemon=True)
        self.pid, self.start_at, self.every = pid, start, every
        self.samples: list[tuple[float, float]] = []
        self._finished = threading.Event()

    def run(self) -> None:
        while True:
            rss = rss_mib(self.pid)
            if rss is not None:
                self.samples.append((time.perf_counter() - self.start_at, rss))
            if self._finished.wait(self.every):
                return

    def stop(self) -> list[tuple[float, float]]:
        self._finished.set()
        self.join(timeout=5)
        return self.samples


# --- the clients -----------------------------------------------------------------------------------


@dataclass
class Done:
    endpoint: str
    start: float
    end: float
    status: int | None  # None: no answer (a transport error or a timeout)
    problem: str | None  # why it counts as an error, None when it does not
    detail: str | None = None  # the exception, for a request that got no answer


class Workload:
    """What the clients send: the served run's row ids, and uploads of its products' collages with their boxes."""

    def __init__(self, run_dir: Path, uploads: int = 32):
        from ctl_lightning.retrieval.recommend import Recommender

        recommender = Recommender(run_dir)  # a bad RUN_DIR is a CtlError here, before any server starts
        self.products = [int(r) for r in recommender.similar.row_ids]
        self.uploads = []
        rng = np.random.default_rng(0)
        for position in rng.choice(len(recommender), size=min(uploads, len(recommender)), replace=False):
            spec = recommender.table.spec(int(position))
            path = Path(spec.image_path)
            form = {"box": ",".join(str(v) for v in spec.box)}
            if len(self.uploads) % 2 == 0:
                form["category"] = spec.category
            self.uploads.append((path.name, path.read_bytes(), form))

    def request(self, http: httpx.AsyncClient, endpoint: str, rng: np.random.Generator):
        product = self.products[int(rng.integers(len(self.products)))]
        if endpoint == ENDPOINTS[0]:
            return http.get(f"/v1/similar/{product}", params={"k": 10})
        if endpoint == ENDPOINTS[1]:
            return http.get(f"/v1/complementary/{product}", params={"k": 10, "per_category": 2})
        if endpoint == ENDPOINTS[2]:
            queries = [
                {"mode": ("similar", "complementary")[i % 2], "product": self.products[int(p)], "k": 5}
                for i, p in enumerate(rng.integers(len(self.products), size=BATCH_QUERIES))
            ]
            return http.post("/v1/batch", json={"queries": queries})
        name, data, form = self.uploads[int(rng.integers(len(self.uploads)))]
        path = "/v1/similar" if endpoint == ENDPOINTS[3] else "/v1/complementary"
        return http.post(path, params={"k": 10}, files={"image": (name, data, "image/jpeg")}, data=form)


def problem_of(endpoint: str, response: httpx.Response) -> str | None:
    """Why an answer is wrong (None: a 200 with the document the endpoint promises)."""
    if response.status_code != 200:
        try:
            return response.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            return "non-JSON error"
    body = response.json()
    if endpoint == ENDPOINTS[2]:
        bad = [r["error"]["code"] for r in body["results"] if r.get("error")]
        return f"batch query error {bad[0]}" if bad or len(body["results"]) != BATCH_QUERIES else None
    return None if body.get("items") else "no items"


async def _load(base: str, token: str, workload: Workload, plan: LoadPlan, reload_run: Path, t0: float) -> tuple[list[Done], dict]:
    done: list[Done] = []
    started = [0]
    # Idle connections expire on the client before uvicorn closes them (its keep-alive timeout is 5 s): a request
    # written on a connection the server is closing fails with a ReadError the server never saw, the
    # keep-alive race every HTTP/1.1 client has to avoid, not a dropped request. Seen in the first 64-client runs,
    # on the spare connections the reload's request left in the pool.
    limits = httpx.Limits(max_connections=plan.clients + 2, max_keepalive_connections=plan.clients + 2, keepalive_expiry=KEEPALIVE_S)
    async with httpx.AsyncClient(base_url=base, timeout=plan.request_timeout_s, limits=limits) as http:

        async def client(number: int) -> None:
            rng = np.random.default_rng([plan.seed, number])
            while time.perf_counter() - t0 < plan.seconds and started[0] < plan.max_requests:
                started[0] += 1
                endpoint = ENDPOINTS[int(rng.choice(len(ENDPOINTS), p=MIX))]
                start, detail = time.perf_counter() - t0, None
                try:
                    response = await workload.request(http, endpoint, rng)
                    status, problem = response.status_code, problem_of(endpoint, response)
                except httpx.HTTPError as error:
                    status, problem = None, type(error).__name__
                    detail = f"{error!r} caused by {error.__cause__!r}"
                done.append(Done(endpoint, start, time.perf_counter() - t0, status, problem, detail))

        async def reload() -> dict:
            await asyncio.sleep(max(0.0, plan.seconds * plan.reload_at - (time.perf_counter() - t0)))
            start = time.perf_counter() - t0
            try:
                response = await http.post(
                    "/admin/reload", headers={"Authorization": f"Bearer {token}"}, json={"run_dir": str(reload_run)}, timeout=300
                )
                status, body = response.status_code, response.json()
            except httpx.HTTPError as error:
                status, body = None, {"error": type(error).__name__}
            return {"start_s": start, "end_s": time.perf_counter() - t0, "status": status, "answer": body}

        reloaded, *_ = await asyncio.gather(reload(), *(client(n) for n in range(plan.clients)))
    return done, reloaded


# --- the figures -----------------------------------------------------------------------------------


def _latency(seconds: list[float]) -> dict:
    if not seconds:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    ms = 1000 * np.asarray(seconds)
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max())}


def memory(samples: list[tuple[float, float]], window_start: float, window_requests: int = 0) -> dict:
    """RSS at the load's start, its peak and its end, and its trend over the steady window (``window_start`` to the end)."""
    t = np.array([s[0] for s in samples])
    rss = np.array([s[1] for s in samples])
    steady = t >= window_start
    out = {"first_mib": float(rss[0]), "peak_mib": float(rss.max()), "last_mib": float(rss[-1]), "window_start_s": window_start}
    if steady.sum() >= 3 and np.ptp(t[steady]) > 0:
        slope = float(np.polyfit(t[steady], rss[steady], 1)[0])  # MiB a second
        span = float(np.ptp(t[steady]))
        growth = slope * span
        out.update(
            window_s=span,
            window_samples=int(steady.sum()),
            slope_mib_per_min=60 * slope,
            growth_mib=growth,
            growth_share=growth / float(rss[steady][0]),
            window_requests=window_requests,
            growth_kib_per_request=1024 * growth / window_requests if window_requests else None,
            flat=bool(growth <= FLAT_GROWTH * float(rss[steady][0])),
        )
    else:
        out.update(window_s=0.0, window_samples=int(steady.sum()), slope_mib_per_min=None, growth_mib=None, growth_share=None, flat=None)
    step = max(1, round(3.0 / RSS_EVERY_S))  # every 3 s, for the report
    out["every_3s_mib"] = [round(float(v), 1) for v in rss[::step]]
    return out


def summarize(done: list[Done], reloaded: dict, samples, plan: LoadPlan, wall_s: float) -> dict:
    endpoints = {}
    for endpoint in ENDPOINTS:
        mine = [d for d in done if d.endpoint == endpoint]
        endpoints[endpoint] = {
            "requests": len(mine),
            "ok": sum(d.problem is None for d in mine),
            "errors": sum(d.problem is not None for d in mine),
            **_latency([d.end - d.start for d in mine]),
        }
    errors: dict[str, int] = {}
    for d in done:
        if d.problem is not None:
            key = f"{d.endpoint}: {d.status if d.status is not None else 'no answer'} {d.problem}"
            errors[key] = errors.get(key, 0) + 1
    # Around the reload: every request that was in flight at any moment from its start to 1 s after its answer.
    near = [d for d in done if d.end >= reloaded["start_s"] and d.start <= reloaded["end_s"] + 1.0]
    during = [d for d in done if d.end >= reloaded["start_s"] and d.start <= reloaded["end_s"]]
    reload = {
        **{k: reloaded[k] for k in ("start_s", "end_s", "status")},
        "seconds": reloaded["end_s"] - reloaded["start_s"],
        "served_after": reloaded["answer"].get("run") if isinstance(reloaded["answer"], dict) else None,
        "fingerprint_after": reloaded["answer"].get("model_fingerprint") if isinstance(reloaded["answer"], dict) else None,
        "error": None if reloaded["status"] == 200 else reloaded["answer"],
        "requests_in_flight": len(during),
        "requests_in_flight_by_endpoint": {e: sum(d.endpoint == e for d in during) for e in ENDPOINTS},
        "requests_around": len(near),
        "errors_around": sum(d.problem is not None for d in near),
    }
    window_start = max(plan.seconds * plan.reload_at, reloaded["end_s"] + 1.0)
    last_answer = max((d.end for d in done), default=0.0)
    return {
        "requests": len(done),
        "errors": sum(d.problem is not None for d in done),
        "errors_by_kind": errors,
        "failures": [asdict(d) for d in done if d.problem is not None][:20],  # the first ones, with their times
        "load_seconds": last_answer,
        "throughput_per_s": len(done) / last_answer if last_answer else 0.0,
        "wall_seconds": wall_s,
        "endpoints": endpoints,
        "reload": reload,
        "rss": memory(samples, window_start, sum(d.start >= window_start for d in done)) if samples else None,
    }


def metrics_summary(text: str) -> dict:
    """From the server's /metrics: answers by status, image forward passes and their mean batch size."""
    by_status: dict[str, float] = {}
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("ctl_serve_requests_total{"):
            status = line.split('status="', 1)[1].split('"', 1)[0]
            by_status[status] = by_status.get(status, 0) + float(line.rsplit(" ", 1)[1])
        elif line.startswith(("ctl_serve_embed_batch_size_sum ", "ctl_serve_embed_batch_size_count ")):
            name, value = line.split()
            values[name] = float(value)
    count = values.get("ctl_serve_embed_batch_size_count", 0.0)
    return {
        "answers_by_status": {k: int(v) for k, v in sorted(by_status.items())},
        "forward_passes": int(count),
        "mean_images_per_pass": values.get("ctl_serve_embed_batch_size_sum", 0.0) / count if count else None,
    }


# --- the whole run ---------------------------------------------------------------------------------


def sample_runs(root: Path, outfits: int = 150, size: int = 32) -> tuple[Path, Path]:
    """Two runs (two random-init models) over one toy-world store, made offline under ``root``: the one
    served first and the one the reload promotes."""
    from ctl_lightning.serve.sample_run import make_run, toy_store

    store = toy_store(root / "data", outfits=outfits, size=size)
    runs = []
    for seed, name in enumerate(("run_a", "run_b")):
        shutil.rmtree(root / name, ignore_errors=True)
        runs.append(make_run(root / name, store, seed))
    return runs[0], runs[1]


def run(run_dir: Path, plan: LoadPlan, out: Path, reload_run: Path | None = None) -> dict:
    """Serve ``run_dir``, load it as ``plan`` says with a reload to ``reload_run`` (default: itself) halfway, and return the figures."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CtlError(f"{run_dir}: no such run folder (a run directory written by train.py or eval.py)")
    reload_run = Path(reload_run or run_dir)
    workload = Workload(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    client_cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    with Server(run_dir, out / "server.log", secrets.token_hex(16)) as server:
        started = time.perf_counter()
        health = server.wait_healthy(plan.startup_timeout_s)
        startup_s = time.perf_counter() - started
        cpu_before = server.cpu_seconds()
        t0 = time.perf_counter()
        sampler = RssSampler(server.pid, t0)
        sampler.start()
        try:
            done, reloaded = asyncio.run(_load(server.base, server.token, workload, plan, reload_run, t0))
        finally:
            samples = sampler.stop()
        wall_s = time.perf_counter() - t0
        cpu_after = server.cpu_seconds()
        server_metrics = metrics_summary(httpx.get(f"{server.base}/metrics", timeout=30).text)
    client_cpu = resource.getrusage(resource.RUSAGE_SELF)
    figures = summarize(done, reloaded, samples, plan, wall_s)
    return {
        "plan": asdict(plan),
        "mix": dict(zip(ENDPOINTS, MIX)),
        "served": {
            "run": str(run_dir),
            "reload_to": str(reload_run),
            "products": health["products"],
            "categories": len(health["categories"]),
            "embedder": health["embedder"],
            "startup_seconds": startup_s,
        },
        **figures,
        "server": {
            "pid": server.pid,
            "stopped_by": server.stopped_by,
            "exit_code": server.exit_code,
            "cpu_seconds": cpu_after - cpu_before if cpu_before is not None and cpu_after is not None else None,
            **server_metrics,
        },
        "client_cpu_seconds": (client_cpu.ru_utime + client_cpu.ru_stime) - (client_cpu_before.ru_utime + client_cpu_before.ru_stime),
        "cores": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),  # the server's torch threads follow it
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
        "flat_growth_threshold": FLAT_GROWTH,
    }


def main(argv: list[str] | None = None) -> None:
    from ctl_lightning.benchmarks.report import loadtest_section

    defaults = LoadPlan()
    parser = argparse.ArgumentParser(
        prog="python -m ctl_lightning.benchmarks.loadtest", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", nargs="?", help="the run to serve; default: two small runs built offline")
    parser.add_argument("--reload-run", help="the run the reload promotes (default: the second built run, or RUN_DIR itself)")
    parser.add_argument("--clients", type=int, default=defaults.clients)
    parser.add_argument("--seconds", type=float, default=defaults.seconds)
    parser.add_argument("--max-requests", type=int, default=defaults.max_requests)
    parser.add_argument("--out", default=str(REPO / ".bench-data" / "loadtest"), help="where loadtest.json, LOADTEST.md and server.log go")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.seconds <= 0 or args.max_requests < 1:
        parser.error("--clients and --max-requests must be at least 1 and --seconds positive")
    plan = LoadPlan(clients=args.clients, seconds=args.seconds, max_requests=args.max_requests)
    out = Path(args.out)
    with friendly_errors("loadtest"):
        if args.run_dir:
            served, reload_run = Path(args.run_dir), args.reload_run
        else:
            print("[loadtest] building two small runs offline ...", flush=True)
            served, built = sample_runs(out / "runs")
            reload_run = args.reload_run or built
        print(f"[loadtest] {plan.clients} clients for {plan.seconds:g} s against ctl-serve {served} ...", flush=True)
        result = run(served, plan, out, reload_run)
    from ctl_lightning.benchmarks.__main__ import _commit

    result["commit"] = _commit()
    result["command"] = " ".join(["python -m ctl_lightning.benchmarks.loadtest", *(argv if argv is not None else sys.argv[1:])])
    (out / "loadtest.json").write_text(json.dumps(result, indent=2) + "\n")
    text = "\n".join(loadtest_section(result)) + "\n"
    (out / "LOADTEST.md").write_text(text)
    print(text)
    print(f"[loadtest] {out / 'loadtest.json'}, {out / 'LOADTEST.md'}")
    if result["errors"] or result["reload"]["status"] != 200:
        sys.exit(1)


if __name__ == "__main__":
    main()
