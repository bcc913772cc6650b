"""``--engine ray``: the build's tasks run in Ray actors, on one machine or a cluster.

What runs where: the driver (``python -m indexer build``) lists the dataset, cuts the same chunks
and tasks as the local engine (:func:`indexer.build.plan_tasks`), hands tasks to a pool of actors,
checkpoints each finished chunk to ``<out>.partial/`` and assembles the index exactly as the local
build does. Each actor runs the very function a local worker runs, :func:`indexer.build._process_chunk`
(decode, detect/align, chip, descriptor, pixel vector), with its models loaded once in
``__init__``: one torch thread per CPU actor, as a local worker; ``num_gpus=1`` actors embedding
on their GPU when the cluster has GPUs (a capability check; untested here, no GPU).

Faults: actors are created with ``max_restarts=-1`` and ``max_task_retries=-1``: when an actor's
process dies (OOM killer, kill -9) Ray starts it again and retries its tasks. When a whole node
dies, Ray can only restart its actors where resources are free; the driver therefore also watches
``ray.nodes()``, and resubmits the tasks of actors on a dead node to the live actors (a result
that arrives twice is the same result, and is taken once). Tasks are deterministic, so the index
equals an uninterrupted build. The dataset must be readable at the same absolute path on every
node (a shared filesystem); the ``indexer`` package travels to the cluster with the job
(``runtime_env`` ``py_modules``), its dependencies must be installed there (requirements.txt).
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from . import build as build_mod
from .datasets import Item

log = logging.getLogger(__name__)

IN_FLIGHT_PER_ACTOR = 2  # tasks queued per actor: it never waits for the driver between tasks
NODE_POLL_S = 1.0  # how often the driver checks for dead nodes
STALL_S = 600.0  # no actor alive for this long: give up (the finished chunks stay for --resume)
START_GRACE_S = 20.0  # work starts when every actor is ready, or this long after the first one is
LOCAL_OBJECT_STORE = 512 << 20  # object store of a Ray instance the build starts itself


class FaceWorker:
    """A Ray actor: the local build's per-task function, with models loaded once."""

    def __init__(self, embedder: str, device: str):
        import ray

        build_mod.init_task_worker(embedder, device, torch_threads=1)
        self.node = ray.get_runtime_context().get_node_id()
        self.pid = os.getpid()

    def ready(self) -> dict:
        return {"node": self.node, "pid": self.pid}

    def run(self, args: tuple) -> tuple[str, dict]:
        """One task: exactly what a local worker process computes for it."""
        return self.node, build_mod._process_chunk(args)


def _gpu_available(resources: dict, device: str) -> bool:
    """GPU actors only when the cluster advertises GPUs and the user did not ask for the CPU."""
    return device != "cpu" and float(resources.get("GPU", 0)) >= 1


class RayEngine:
    """Connect to (or start) Ray, start the actor pool, run tasks; see the module docstring."""

    def __init__(self, cfg: build_mod.BuildConfig):
        self.cfg = cfg
        self._started_ray = False
        self.started = False
        self.workers = 0
        self.gpu = False
        self.device = "cpu"
        self.address = cfg.ray_address or "local"
        self.actors: list = []
        self.info: list[dict | None] = []
        self._ready: dict = {}  # ready() ref -> actor slot

    def start(self) -> None:
        import ray

        cfg = self.cfg
        self.started = True
        if not ray.is_initialized():
            kw: dict = {"include_dashboard": False, "logging_level": logging.WARNING}
            if cfg.ray_address is None:  # a fresh local instance, never someone else's cluster
                ray.init(
                    address="local",
                    num_cpus=cfg.workers or None,
                    object_store_memory=LOCAL_OBJECT_STORE,
                    _node_ip_address="127.0.0.1",  # a private instance: nothing listens beyond loopback
                    **kw,
                )
            else:
                import indexer

                ray.init(
                    address=cfg.ray_address,
                    runtime_env={"py_modules": [str(Path(indexer.__file__).parent)]},
                    **kw,
                )
            self._started_ray = True
        res = ray.cluster_resources()
        self.gpu = _gpu_available(res, cfg.device)
        if cfg.device == "cuda" and not self.gpu:
            raise RuntimeError("--device cuda requested but the Ray cluster has no GPU")
        if self.gpu and cfg.embedder != "torch":
            raise RuntimeError("GPU actors embed with torch; use --embedder torch or --device cpu")
        self.device = "cuda" if self.gpu else "cpu"
        n = cfg.workers or int(res.get("GPU", 0) if self.gpu else res.get("CPU", 1))
        self.workers = max(1, n)
        opts = {"num_cpus": 1, "num_gpus": 1 if self.gpu else 0, "max_restarts": -1, "max_task_retries": -1}
        self._actor_cls = ray.remote(**opts)(FaceWorker)
        for _ in range(self.workers):
            self._add_actor()
        log.info(
            "Ray %s: %d %s actors over %d node(s) (cluster: %s)",
            self.address,
            self.workers,
            "GPU" if self.gpu else "CPU",
            len([x for x in ray.nodes() if x.get("Alive")]),
            {k: v for k, v in res.items() if k in ("CPU", "GPU")},
        )

    def _add_actor(self, slot: int | None = None) -> None:
        actor = self._actor_cls.remote(self.cfg.embedder, self.device)
        if slot is None:
            self.actors.append(actor)
            self.info.append(None)
            slot = len(self.actors) - 1
        else:
            self.actors[slot], self.info[slot] = actor, None
        self._ready[actor.ready.remote()] = slot

    def manifest_info(self) -> dict:
        return {"ray": {"address": self.address, "actors": self.workers, "gpu_actors": self.gpu}}

    def _alive_nodes(self) -> set[str]:
        import ray

        return {n["NodeID"] for n in ray.nodes() if n.get("Alive")}

    def run(self, chunks: list[list[Item]], todo: list[int], save: Callable[[int, dict], None]) -> None:
        """Run every task of the ``todo`` chunks and ``save(chunk, merged result)`` each finished
        chunk (in completion order; checkpoints are per chunk, so order does not matter)."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        tasks = build_mod.plan_tasks(chunks, todo)
        if not tasks:
            return
        n_parts = build_mod.parts_per_chunk(chunks, todo)
        embed = self.cfg.embedder

        def args(task: tuple[int, int]) -> tuple:
            items = [(os.path.abspath(p), f) for p, f in build_mod.task_items(chunks, task)]
            return items, self.cfg.detector, embed

        queue = deque(tasks)
        done: dict[tuple[int, int], tuple[str, dict]] = {}
        inflight: dict = {}  # ref -> (task, slot)
        load = [0] * len(self.actors)
        last_poll = 0.0
        last_alive = time.monotonic()
        parts: dict[int, int] = {}
        first_ready: float | None = None
        started = False
        while len(done) < len(tasks):
            # Hand out work to ready, live actors (once all have started, or the grace time is over,
            # so that a fast actor does not take the whole job while the others load their models).
            if first_ready is None and any(i is not None for i in self.info):
                first_ready = time.monotonic()
            started = started or (
                first_ready is not None
                and (all(i is not None for i in self.info) or time.monotonic() - first_ready > START_GRACE_S)
            )
            for slot, actor in enumerate(self.actors if started else ()):
                while queue and self.info[slot] is not None and load[slot] < IN_FLIGHT_PER_ACTOR:
                    task = queue.popleft()
                    if task in done:
                        continue
                    inflight[actor.run.remote(args(task))] = (task, slot)
                    load[slot] += 1
            waiting = list(inflight) + list(self._ready)
            if any(i is not None for i in self.info):
                last_alive = time.monotonic()
            if not waiting or time.monotonic() - last_alive > STALL_S:
                raise SystemExit(
                    f"no Ray actor has been alive for {STALL_S:.0f} s to run the remaining tasks; the finished "
                    f"chunks are kept: rerun with --resume"
                )
            ready, _ = ray.wait(waiting, num_returns=1, timeout=NODE_POLL_S)
            for ref in ready:
                if ref in self._ready:
                    slot = self._ready.pop(ref)
                    try:
                        self.info[slot] = ray.get(ref)
                    except (RayActorError, RayTaskError) as e:
                        raise SystemExit(f"a Ray actor could not start: {e}") from None
                    inf = self.info[slot]
                    log.info("Ray worker %d ready on node %s (pid %d)", slot, inf["node"], inf["pid"])
                    continue
                task, slot = inflight.pop(ref)
                load[slot] -= 1
                try:
                    node, res = ray.get(ref, timeout=60)
                except (RayActorError, GetTimeoutError) as e:  # the actor is gone for good: redo elsewhere
                    log.warning("Ray actor %d failed on task %s (%s); resubmitting it", slot, task, type(e).__name__)
                    queue.appendleft(task)
                    continue
                except RayTaskError as e:  # the task itself raised (images never do: each gets a status)
                    raise SystemExit(f"a build task failed on Ray: {e}") from None
                if task in done:
                    continue  # a resubmitted task whose first run finished after all
                done[task] = (node, res)
                i = task[0]
                parts[i] = parts.get(i, 0) + 1
                if parts[i] == n_parts[i]:
                    los = range(0, len(chunks[i]), build_mod.TASK_SIZE)
                    got = [done[(i, lo)] for lo in los]
                    merged = build_mod._merge_parts([r for _, r in got])
                    merged["nodes"] = sorted({nd for nd, _ in got})
                    save(i, merged)
                    for lo in los:  # keep only the node id of saved tasks, not their arrays
                        done[(i, lo)] = (done[(i, lo)][0], {})
            if time.monotonic() - last_poll >= NODE_POLL_S:
                last_poll = time.monotonic()
                self._handle_dead_nodes(inflight, queue, load)

    def _handle_dead_nodes(self, inflight: dict, queue: deque, load: list[int]) -> None:
        """Actors on a node that died: resubmit their tasks, replace them (Ray schedules the new
        actor wherever resources are free; until then the live actors take all the work)."""
        import ray

        alive = self._alive_nodes()
        for slot, info in enumerate(self.info):
            if info is None or info["node"] in alive:
                continue
            lost = [(ref, t) for ref, (t, s) in inflight.items() if s == slot]
            log.warning(
                "Ray node %s died: resubmitting the %d task(s) of its actor %d to the others",
                info["node"],
                len(lost),
                slot,
            )
            for ref, t in lost:
                del inflight[ref]
                queue.appendleft(t)
            load[slot] = 0
            ray.kill(self.actors[slot], no_restart=True)
            self._add_actor(slot)

    def close(self) -> None:
        if not self.started:
            return
        import ray

        for a in self.actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        if self._started_ray:
            ray.shutdown()
