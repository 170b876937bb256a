"""`medseg serve` under load: a real server process on loopback against in-process `Predictor.predict`.

    python benchmarks/serve.py --out serve.json [--run RUN_DIR] [--size 512] [--seconds 20]

1, 4 and 16 concurrent clients (threads with keep-alive connections, each a loop that stops by itself after
``--seconds``) post the same images; the table gives throughput, p50/p95/p99 latency, errors other than deliberate
503s, and the server's peak and drift of RSS. The same images go through `Predictor.predict` in this process, one
at a time, for the overhead at one client. 16 clients run once more with batching on, to measure whether it helps
on this machine. Without ``--run`` the demo's run is made (synthetic cells, 30 s of training).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def make_images(size: int, count: int = 8) -> list[np.ndarray]:
    from medseg.data.synthetic import synthetic_cell_image

    rng = np.random.default_rng(0)
    return [synthetic_cell_image(rng, size)[0] for _ in range(count)]


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def in_process(run: Path, images: list[np.ndarray], seconds: float) -> dict[str, Any]:
    """`Predictor.predict` on decoded PNG bytes (the server decodes them too), one image at a time."""
    from medseg.data.readers import decode_image_bytes
    from medseg.inference.predictor import Predictor

    predictor = Predictor.from_run(run)
    bodies = [png(image) for image in images]
    predictor.predict(decode_image_bytes(bodies[0], predictor.spec.channels))
    latencies, started = [], time.perf_counter()
    while time.perf_counter() - started < seconds:
        body = bodies[len(latencies) % len(bodies)]
        tick = time.perf_counter()
        labels = predictor.predict(decode_image_bytes(body, predictor.spec.channels))
        png((labels * 255).astype(np.uint8))  # the server encodes the mask too
        latencies.append(time.perf_counter() - tick)
    return summary(latencies, [200] * len(latencies), time.perf_counter() - started)


def summary(latencies: list[float], statuses: list[int], seconds: float) -> dict[str, Any]:
    ok = [t for t, s in zip(latencies, statuses) if s == 200]
    return {"requests": len(statuses), "ok": len(ok), "busy_503": statuses.count(503),
            "errors": sum(s not in (200, 503) for s in statuses), "throughput": len(ok) / seconds,
            "p50_ms": 1000 * percentile(ok, 50), "p95_ms": 1000 * percentile(ok, 95),
            "p99_ms": 1000 * percentile(ok, 99), "mean_ms": 1000 * statistics.fmean(ok) if ok else float("nan")}


class Server:
    """`medseg serve` in a subprocess, its RSS sampled every 0.2 s."""

    def __init__(self, run: Path, extra: list[str]) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.process = subprocess.Popen([sys.executable, "-m", "medseg", "serve", str(run), "--port", str(self.port),
                                         "--max-queue", "64", *extra], stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        for line in self.process.stdout:
            if "Uvicorn running on" in line:
                break
        threading.Thread(target=self.process.stdout.read, daemon=True).start()  # keep the pipe drained
        self.rss: list[tuple[float, int]] = []
        self.sampling = True
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while self.sampling:
            try:
                for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        self.rss.append((time.perf_counter(), int(line.split()[1]) * 1024))
            except OSError:
                return
            time.sleep(0.2)

    def stop(self) -> None:
        self.sampling = False
        self.process.terminate()
        self.process.wait(timeout=60)


def load(port: int, bodies: list[bytes], clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` threads posting in a loop for ``seconds``."""
    latencies: list[float] = []
    statuses: list[int] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        sent = index
        while time.perf_counter() < stop_at:
            tick = time.perf_counter()
            connection.request("POST", "/v1/segment", body=bodies[sent % len(bodies)],
                               headers={"Content-Type": "image/png"})
            response = connection.getresponse()
            response.read()
            with lock:
                latencies.append(time.perf_counter() - tick)
                statuses.append(response.status)
            sent += 1
        connection.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return summary(latencies, statuses, time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="run folder to serve (default: make the demo's run)")
    parser.add_argument("--size", type=int, default=512, help="side of the square test images")
    parser.add_argument("--seconds", type=float, default=20.0, help="per load level")
    parser.add_argument("--out", default="serve.json")
    args = parser.parse_args()
    if args.run:
        run = Path(args.run)
    else:
        from medseg.demo import run_demo

        out = Path(tempfile.mkdtemp(prefix="medseg-serve-"))
        run_demo(out, minutes=0.5)
        run = out / "run"
    images = make_images(args.size)
    bodies = [png(image) for image in images]
    results: dict[str, Any] = {"size": args.size, "seconds": args.seconds, "machine": platform.machine(),
                               "in_process": in_process(run, images, args.seconds)}
    for label, extra in (("batch 1", ["--batch-size", "1"]), ("batch 4", ["--batch-size", "4"])):
        server = Server(run, extra)
        load(server.port, bodies[:1], 1, 2.0)  # warm-up
        levels = (1, 4, 16) if label == "batch 1" else (16,)
        for clients in levels:
            mark = len(server.rss)
            row = load(server.port, bodies, clients, args.seconds)
            samples = [rss for _, rss in server.rss[mark:]] or [0]
            tenth = max(1, len(samples) // 10)
            row.update(clients=clients, server=label, peak_rss_mb=max(samples) / 2**20,
                       rss_drift_mb=(np.mean(samples[-tenth:]) - np.mean(samples[:tenth])) / 2**20)
            results.setdefault("server", []).append(row)
            print(f"{label:8} {clients:>2} clients: {row['throughput']:.2f} img/s, p50 {row['p50_ms']:.0f} ms, "
                  f"p95 {row['p95_ms']:.0f}, p99 {row['p99_ms']:.0f}; errors {row['errors']}, 503 {row['busy_503']}; "
                  f"RSS peak {row['peak_rss_mb']:.0f} MB, drift {row['rss_drift_mb']:+.1f} MB", flush=True)
        server.stop()
    base = results["in_process"]
    one = next(r for r in results["server"] if r["clients"] == 1)
    sixteen = next(r for r in results["server"] if r["clients"] == 16 and r["server"] == "batch 1")
    results["targets"] = {
        "overhead_at_1_client": one["p50_ms"] / base["p50_ms"] - 1,
        "errors_at_16_clients": sixteen["errors"],
        "p99_over_p50_at_16_clients": sixteen["p99_ms"] / sixteen["p50_ms"],
        "rss_drift_mb_at_16_clients": sixteen["rss_drift_mb"],
    }
    print(f"in-process: {base['throughput']:.2f} img/s, p50 {base['p50_ms']:.0f} ms; targets: "
          + json.dumps({k: round(v, 3) for k, v in results["targets"].items()}))
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
