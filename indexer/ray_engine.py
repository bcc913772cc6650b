"""``--engine ray``: the build's tasks run in Ray actors, on one machine or a cluster.

What runs where: the driver (``python -m indexer build``) lists the dataset, cuts the same chunks
and tasks as the local engine (:func:`indexer.chunks.plan_tasks`), hands tasks to a pool of actors,
checkpoints each finished chunk to ``<out>.partial/`` and assembles the index exactly as the local
build does. The actors run the very functions a local worker runs, with their models loaded once
in ``__init__`` (one torch thread per CPU actor, as a local worker):

* without GPUs (the default on a CPU cluster), every actor runs a whole task,
  :func:`indexer.chunks.process_task` (decode, detect/align, chip, descriptor, pixel vector);
* with GPUs (a capability check on the cluster's resources; untested here, there is no GPU), the
  work is split as the local CUDA build splits it: one ``num_gpus=1`` actor per GPU embeds chips
  (:func:`indexer.chunks.embed_chips`, batched on its GPU), and an actor per remaining CPU runs
  :func:`~indexer.chunks.process_task` without the descriptor. Each task's chips go from its
  face actor to an embed actor through Ray's object store, never through the driver. Why: dlib's
  face pipeline is CPU-bound and holds the GIL, so one CPU per GPU would leave the GPU idle.
  ``--ray-embed-actors N`` forces the split (also on CPUs, which is how it is tested).

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

from . import chunks as chunk_work
from .config import BuildConfig
from .datasets import Item

log = logging.getLogger(__name__)

IN_FLIGHT_PER_ACTOR = 2  # tasks queued per face actor: it never waits for the driver between tasks
NODE_POLL_S = 1.0  # how often the driver checks for dead nodes
STALL_S = 600.0  # no actor alive for this long: give up (the finished chunks stay for --resume)
START_GRACE_S = 20.0  # work starts when every actor is ready, or this long after the first one is
LOCAL_OBJECT_STORE = 512 << 20  # object store of a Ray instance the build starts itself


class FaceWorker:
    """A Ray actor: the local build's per-task functions, with models loaded once."""

    def __init__(self, role: str, embedder: str, device: str, flip_average: bool = True, precision: str = "fp32"):
        import ray

        chunk_work.init_task_worker(None if role == "faces" else embedder, device, torch_threads=1, precision=precision)
        self.role, self.embedder, self.flip_average, self.precision = role, embedder, flip_average, precision
        self.node = ray.get_runtime_context().get_node_id()
        self.pid = os.getpid()

    def ready(self) -> dict:
        return {"node": self.node, "pid": self.pid, "role": self.role}

    def run(self, args: tuple) -> tuple[list[str], dict]:
        """One task: exactly what a local worker process computes for it (``args[2]`` None: chips
        instead of descriptors, for an embed actor)."""
        return [self.node], chunk_work.process_task(args)

    def embed(self, staged: tuple[list[str], dict]) -> tuple[list[str], dict]:
        """The descriptors of a face actor's chips, as the local CUDA build's main process computes them."""
        nodes, res = staged
        res = dict(res)
        res.update(chunk_work.embed_chips(self.embedder, res.pop("chips"), self.flip_average, self.precision))
        return [*nodes, self.node], res


def _gpu_available(resources: dict, device: str) -> bool:
    """GPU actors only when the cluster advertises GPUs and the user did not ask for the CPU."""
    return device != "cpu" and float(resources.get("GPU", 0)) >= 1


class RayEngine:
    """Connect to (or start) Ray, start the actor pool, run tasks; see the module docstring."""

    def __init__(self, cfg: BuildConfig):
        self.cfg = cfg
        self._started_ray = False
        self.started = False
        self.workers = 0
        self.embed_workers = 0
        self.gpu = False
        self.device = "cpu"
        self.address = cfg.ray_address or "local"
        self.actors: list = []
        self.roles: list[str] = []
        self.info: list[dict | None] = []
        self._ready: dict = {}  # ready() ref -> actor slot
        self._cls: dict = {}

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
        cpus, gpus = int(res.get("CPU", 1)), int(res.get("GPU", 0))
        n_embed = cfg.ray_embed_actors if cfg.ray_embed_actors is not None else (gpus if self.gpu else 0)
        if n_embed and cfg.embedder != "torch":
            raise RuntimeError("embed actors run the torch embedder; use --embedder torch")
        self.embed_workers = max(0, n_embed)
        self.workers = max(1, cfg.workers or cpus - self.embed_workers)
        common = {"max_restarts": -1, "max_task_retries": -1}
        self._cls = {
            "all": ray.remote(num_cpus=1, **common)(FaceWorker),
            "faces": ray.remote(num_cpus=1, **common)(FaceWorker),
            "embed": ray.remote(num_cpus=1, num_gpus=1 if self.gpu else 0, **common)(FaceWorker),
        }
        for _ in range(self.workers):
            self._add_actor("faces" if self.embed_workers else "all")
        for _ in range(self.embed_workers):
            self._add_actor("embed")
        log.info(
            "Ray %s: %d %s actors%s over %d node(s) (cluster: %s)",
            self.address,
            self.workers,
            "face" if self.embed_workers else "CPU",
            f" + {self.embed_workers} embed actors on the {self.device.upper()}" if self.embed_workers else "",
            len([x for x in ray.nodes() if x.get("Alive")]),
            {k: v for k, v in res.items() if k in ("CPU", "GPU")},
        )

    def _add_actor(self, role: str, slot: int | None = None) -> None:
        device = self.device if role != "faces" else "cpu"
        cfg = self.cfg
        actor = self._cls[role].remote(role, cfg.embedder, device, cfg.flip_average, cfg.descriptor_precision)
        if slot is None:
            self.actors.append(actor)
            self.roles.append(role)
            self.info.append(None)
            slot = len(self.actors) - 1
        else:
            self.actors[slot], self.info[slot] = actor, None
        self._ready[actor.ready.remote()] = slot

    def manifest_info(self) -> dict:
        return {
            "ray": {
                "address": self.address,
                "actors": self.workers,
                "embed_actors": self.embed_workers,
                "gpu_actors": self.gpu,
            }
        }

    def _alive_nodes(self) -> set[str]:
        import ray

        return {n["NodeID"] for n in ray.nodes() if n.get("Alive")}

    def run(self, chunks: list[list[Item]], todo: list[int], save: Callable[[int, dict], None]) -> None:
        """Run every task of the ``todo`` chunks and ``save(chunk, merged result)`` each finished
        chunk (in completion order; checkpoints are per chunk, so order does not matter)."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        tasks = chunk_work.plan_tasks(chunks, todo)
        if not tasks:
            return
        n_parts = chunk_work.parts_per_chunk(chunks, todo)
        split = self.embed_workers > 0
        embed = None if split else self.cfg.embedder

        def args(task: tuple[int, int]) -> tuple:
            items = [(os.path.abspath(p), f) for p, f in chunk_work.task_items(chunks, task)]
            return items, self.cfg.detector, embed, self.cfg.flip_average, self.cfg.descriptor_precision

        queue = deque(tasks)
        done: dict[tuple[int, int], tuple[list[str], dict]] = {}
        inflight: dict = {}  # final ref -> (task, slots that hold it)
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
            ready_embed = [s for s, r in enumerate(self.roles) if r == "embed" and self.info[s] is not None]
            for slot, actor in enumerate(self.actors if started else ()):
                if self.roles[slot] == "embed" or (split and not ready_embed):
                    continue
                while queue and self.info[slot] is not None and load[slot] < IN_FLIGHT_PER_ACTOR:
                    task = queue.popleft()
                    if task in done:
                        continue
                    ref = actor.run.remote(args(task))
                    slots = (slot,)
                    if split:  # the chips go from this actor to the least busy embed actor
                        e = min(ready_embed, key=lambda s: load[s])
                        ref = self.actors[e].embed.remote(ref)
                        slots = (slot, e)
                    inflight[ref] = (task, slots)
                    for s in slots:
                        load[s] += 1
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
                    log.info("Ray worker %d (%s) ready on node %s (pid %d)", slot, inf["role"], inf["node"], inf["pid"])
                    continue
                task, slots = inflight.pop(ref)
                for s in slots:
                    load[s] -= 1
                try:
                    nodes, res = ray.get(ref, timeout=60)
                except (RayActorError, GetTimeoutError) as e:  # an actor is gone for good: redo elsewhere
                    log.warning("Ray actor %s failed on task %s (%s); resubmitting it", slots, task, type(e).__name__)
                    queue.appendleft(task)
                    continue
                except RayTaskError as e:  # the task itself raised (images never do: each gets a status)
                    raise SystemExit(f"a build task failed on Ray: {e}") from None
                if task in done:
                    continue  # a resubmitted task whose first run finished after all
                done[task] = (nodes, res)
                i = task[0]
                parts[i] = parts.get(i, 0) + 1
                if parts[i] == n_parts[i]:
                    los = range(0, len(chunks[i]), chunk_work.TASK_SIZE)
                    got = [done[(i, lo)] for lo in los]
                    merged = chunk_work.merge_parts([r for _, r in got])
                    merged["nodes"] = sorted({nd for nds, _ in got for nd in nds})
                    save(i, merged)
                    for lo in los:  # keep only the node ids of saved tasks, not their arrays
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
            lost = [(ref, t, slots) for ref, (t, slots) in inflight.items() if slot in slots]
            log.warning(
                "Ray node %s died: resubmitting the %d task(s) of its actor %d to the others",
                info["node"],
                len(lost),
                slot,
            )
            for ref, t, slots in lost:
                del inflight[ref]
                for s in slots:
                    load[s] -= 1
                queue.appendleft(t)
            ray.kill(self.actors[slot], no_restart=True)
            self._add_actor(self.roles[slot], slot)

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
